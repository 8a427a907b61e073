"""Training VT models on an image folder: ``vtviz train`` / ``python -m vtviz.train.loop``.

Recipe (measured on Imagenette; see ``vtviz/pretrained/README.md``):

* data decoded once into a uint8 cache, augmented on whole batches (random-resized crop
  by ``roi_align``, horizontal flip);
* progressive resizing (``--schedule 128:56,160:4`` = 56 epochs at 128 px, then 4 at 160;
  the bundled models: ``160:85,192:15`` on a GPU); evaluation above the last training size
  (``--eval-size``; the default is the last training size): random crops make objects look
  larger in training than in whole test images ("FixRes");
* AdamW, linear warm-up then cosine decay, label smoothing, gradient clipping;
* **token diversity penalty**: the mean cosine similarity between different tokens'
  attention maps of one image, for every VT layer, added to the loss (weight
  ``--diversity``). Without it the recurrent tokenizer's tokens collapse onto one pixel
  and the filter tokenizer's maps go uniform;
* optional distillation from EfficientNet-Lite0 (``--teacher efficientnet-lite0``), whose
  logits on the training images are computed once and cached;
* bfloat16 autocast and channels-last on CPUs with native bf16 and on CUDA; on CUDA the
  decoded split sits in GPU memory, AdamW is fused, cuDNN autotunes (bitwise
  reproducibility is then traded for speed) and the loop never waits on the host;
* a resumable checkpoint after every epoch (``--resume``; ``--save-every N`` for fast
  GPUs), deterministic with ``--seed`` on CPU;
* ``--init CHECKPOINT`` fine-tunes a trained model, e.g. a few epochs at a larger size with
  milder crops, which aligns its BatchNorm statistics and apparent object sizes with whole
  test images ("FixRes" fine-tuning); the parent's summary is kept under ``init``;
* ``val/`` is optional: without it the run only trains, and ``vtviz evaluate MODEL --data
  VAL --record`` later stores the val accuracy in the checkpoint;
* DistributedDataParallel under ``torchrun`` (gloo on CPU, NCCL on CUDA).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vtviz.data import ImageFolderData, normalize_batch, random_resized_crop, read_image_folder, resize_batch
from vtviz.jobs.evaluate import evaluate_arrays
from vtviz.maps.diagnostics import image_mixing, self_attention
from vtviz.maps.thresholds import SELF_SHARE
from vtviz.maps.tokens import border_mass, mean_offdiagonal_cosine, nearest_token_cosine, normalized_entropy
from vtviz.models.checkpoint import load_model, model_meta, save_model
from vtviz.models.meta import ModelMeta
from vtviz.models.registry import ARCHITECTURES, SUFFIX, build_model
from vtviz.models.vt import (
    Model,
    ModelConfig,
    Projector,
    RecurrentTokenizer,
    TokenTransformer,
    VTLayerOutput,
    VTModel,
    VTModule,
    count_parameters,
)
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import Dist, autocast_for, close_distributed, init_distributed


def parse_schedule(text: str) -> list[int]:
    """``"128:14,224:2"`` -> input size per epoch ``[128]*14 + [224]*2``."""
    sizes: list[int] = []
    for part in text.split(","):
        size, _, epochs = part.strip().partition(":")
        sizes += [int(size)] * int(epochs or 1)
    if not sizes:
        raise ValueError(f"empty schedule {text!r}")
    return sizes


class _Objective(nn.Module):
    """Forward used for training: logits and every VT layer's output (attention, mixing, ...).

    A module of its own so that DistributedDataParallel sees one ``forward``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[VTLayerOutput, ...], tuple[int, int]]:
        if isinstance(self.model, VTModel):
            out = self.model.explain(x)
            return out.logits, out.layers, out.map_size
        return self.model(x), (), (0, 0)


def _imbalance(share: Tensor) -> Tensor:
    """``(L * sum(p^2) - 1) / (L - 1)`` of shares ``[B, L]`` summing to 1: 0 balanced, 1 one-hot."""
    n = share.shape[-1]
    return ((share * share).sum(-1) * n - 1).mean() / max(n - 1, 1)


def _routing_rows(layers: Sequence[VTLayerOutput]) -> list[Tensor]:
    """The distributions over tokens that load balancing acts on, each ``[B, N, L]``: per
    layer the rows of the token mixing (registers out) and, with a projector, each pixel's
    assignment (null slot out), both renormalised to sum to 1."""
    rows = []
    for out in layers:
        rows.append(image_mixing(out.mixing))
        if out.assignment is not None:
            rows.append(_assignment_rows(out.assignment))
    return rows


def _assignment_rows(assignment: Tensor) -> Tensor:
    """Each pixel's projector assignment ``[B, HW, L]`` renormalised over the tokens (null slot out)."""
    a = assignment.float()
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


def balance_penalty(layers: Sequence[VTLayerOutput]) -> Tensor:
    """Load balancing of the token transformer and the projector, averaged over their terms.

    As the auxiliary loss of mixture-of-experts routers (Fedus et al., Switch Transformers):
    the share of attention each token *receives* in the transformer (column means of the
    mixing, registers out) and the share of pixels it takes in the projector (mean
    assignment, null slot out) should not pile onto one token. The first trained models,
    without it, had every token read one sink token and one token own 96-100% of the pixels.
    """
    terms = [_imbalance(r.mean(1)) for r in _routing_rows(layers)]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def _switch_imbalance(probs: Tensor) -> Tensor:
    """Switch-Transformer load-balancing loss of rows ``[B, N, L]`` (each a distribution over
    L tokens), rescaled to 0 when balanced: ``(L * sum_j f_j P_j - 1) / (L - 1)`` with f_j the
    share of rows whose argmax is j (no gradient) and P_j the mean probability of j."""
    n = probs.shape[-1]
    f = F.one_hot(probs.detach().argmax(-1), n).float().mean(1)  # [B, L]
    return ((f * probs.mean(1)).sum(-1) * n - 1).mean() / max(n - 1, 1)


def hard_balance_penalty(layers: Sequence[VTLayerOutput]) -> Tensor:
    """Load balancing of *argmax* ownership (Fedus et al. 2021's auxiliary loss).

    :func:`balance_penalty` balances soft shares, which leaves argmax ownership free to
    collapse where rows are nearly flat (version 2's recurrent model: one projector owner of
    99% of the pixels, ~6 distinct mixing targets). Weighting each token's mean probability by
    the share of rows (tokens in the mixing, pixels in the projector) it wins pushes down
    exactly the tokens that win too often.
    """
    terms = [_switch_imbalance(r) for r in _routing_rows(layers)]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def mixing_diversity_penalty(layers: Sequence[VTLayerOutput]) -> Tensor:
    """Mean cosine between different tokens' rows of the token mixing, diagonal out ``[0, 1]``.

    Balancing what tokens *receive* leaves every row free to read the same few tokens (version
    2's last layers: 3-6 distinct argmax targets of 16, ~7% of the attention at most per token):
    the transformer then relates every token to the same summary. Asking different tokens to
    read different *other* tokens (the diagonal, a token reading itself, does not count) is what
    "tokens relate to one another" means; uniform rows score (L-2)/(L-1), one sink column nearly 1.
    """
    terms = []
    for out in layers:
        m = image_mixing(out.mixing)
        n = m.shape[-1]
        if n < 3:
            continue
        off = m * (1 - torch.eye(n, device=m.device, dtype=m.dtype))
        unit = off / off.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        gram = unit @ unit.transpose(1, 2)
        terms.append(((gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))).mean())
    return torch.stack(terms).mean() if terms else torch.zeros(())


def register_penalty(layers: Sequence[VTLayerOutput], allowed: float = 0.5) -> Tensor:
    """Mean excess of ``-log`` of the attention image tokens give one another over ``-log(1 - allowed)``.

    Registers give the transformer a place to park attention; without a cap version 2's
    filter-only model gave them all of it in its first module (the image tokens then read one
    another only through the registers' summary). In log form the gradient on an image token's
    logit is its share among the image tokens, which does not vanish as the registers take
    nearly everything (it does once the image share underflows to 0: start such a model with
    fresh attention).
    """
    if not layers:
        return torch.zeros(())
    floor = -math.log(1 - allowed)
    return torch.stack([F.relu(-o.mixing.float().sum(-1).clamp_min(1e-30).log() - floor).mean()
                        for o in layers]).mean()


def projector_balance_penalty(layers: Sequence[VTLayerOutput]) -> Tensor:
    """Argmax load balancing (:func:`_switch_imbalance`) of the projector's pixel assignment
    alone, null slot out; 0 without a projector.

    :func:`hard_balance_penalty` averages the projector's term with the mixing's, so a model
    with two transformers and one projector gives it a third of the weight; version 3's
    recurrent model kept 3.4 owners of >= 5% of the pixels under it.
    """
    terms = [_switch_imbalance(_assignment_rows(o.assignment)) for o in layers if o.assignment is not None]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def self_attention_penalty(layers: Sequence[VTLayerOutput], allowed: float = SELF_SHARE) -> Tensor:
    """Mean excess over ``allowed`` of the attention tokens give themselves (the diagonal of
    the image-token mixing), per image and layer.

    Identity-like mixing has 16 distinct argmax targets yet relates no token to another
    (version 3's filter-only model: 93% on the diagonal in its first transformer); the
    diagonal is large there, so the penalty's gradient does not vanish.
    """
    if not layers:
        return torch.zeros(())
    return torch.stack([F.relu(self_attention(o.mixing) - allowed).mean() for o in layers]).mean()


def border_penalty(layers: Sequence[VTLayerOutput], map_size: tuple[int, int],
                   allowed: float = 0.4) -> Tensor:
    """Mean excess of each token's attention on the map's outer ring over ``allowed``.

    Tokens that park on the border ("border sinks", > 0.5 of their mass on the ring) carry
    no content; the first bundled models had 1.5-2.5 per image.
    """
    if not layers:
        return torch.zeros(())
    h, w = map_size
    terms = [F.relu(border_mass(o.attention.view(*o.attention.shape[:2], h, w)) - allowed).mean()
             for o in layers]
    return torch.stack(terms).mean()


def border_weight(cfg: TrainConfig, size: int) -> float:
    """The border penalty's weight for crops of ``size`` px: 0 below ``cfg.border_min_size``.

    On small inputs the outer ring is much of the map (at 128 px, 28 of 8x8 cells: a uniform map
    already has 44% there), and the penalty kept every token map diffuse in a from-scratch trial
    (bundled models' card)."""
    return cfg.border if size >= cfg.border_min_size else 0.0


def diversity_penalty(attentions: Sequence[Tensor]) -> Tensor:
    """Token-map similarity to penalise, averaged over layers and images.

    ``attentions``: per layer ``[B, L, HW]``. Per layer, the mean of (a) the mean cosine
    between different tokens' maps and (b) each token's cosine to its nearest other token.
    (a) alone kept the filter layer diverse but left 16 recurrent tokens on ~5 peaks (mean
    cosine 0.28, nearest-token cosine 0.96); (b) alone made the maps diffuse.
    """
    if not attentions:
        return torch.zeros(())
    per_layer = [0.5 * (mean_offdiagonal_cosine(a[..., None]) + nearest_token_cosine(a[..., None])).mean()
                 for a in attentions]
    return torch.stack(per_layer).mean()


def coverage_penalty(attentions: Sequence[Tensor]) -> Tensor:
    """Mean squared deviation of the tokens' joint coverage from uniform, ``N * mean_l A - 1``.

    ``attentions``: per layer ``[B, L, HW]``. When the maps jointly cover every pixel equally,
    the mean of the tokens is the global average pool, so selective maps can still keep a
    distilled model's predictions (VT-Lite0: the shipped phase 3 lost 7 points of agreement
    to an uneven coverage, mean |N c - 1| 0.82 on dev).
    """
    if not attentions:
        return torch.zeros(())
    per_layer = [(a.float().mean(1) * a.shape[-1] - 1).pow(2).mean() for a in attentions]
    return torch.stack(per_layer).mean()


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-1 of every parameter and buffer: equal on all ranks when DDP kept them in sync."""
    h = hashlib.sha1()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def default_description(config: ModelConfig, data: str, init: str | None = None) -> str:
    """A one-line description for a checkpoint trained without ``--description``, e.g.
    ``"VT-ResNet-18 (filter, recurrent tokenizers), imagenette, fine-tuned from vt-r18-imagenette-v4"``."""
    depth = config.arch.rsplit("resnet", 1)[-1]
    if config.arch.startswith("vt_"):
        text = f"VT-ResNet-{depth} ({', '.join(config.tokenizers)} tokenizers), {data}"
    else:
        text = f"ResNet-{depth}, {data}"
    return f"{text}, fine-tuned from {init}" if init else text


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name}, {torch.get_num_threads()} threads"
    return f"{world} x {name}" if world > 1 else name


def teacher_cache_path(data: ImageFolderData, indices: Sequence[int], cache_dir: str | Path) -> Path:
    """Where the teacher's logits for ``data`` are cached (keyed by file list and classes).

    File names count without their suffix and folders, so logits computed on the JPEGs
    also serve a re-encoded copy of the same split elsewhere (e.g. on a GPU machine).
    """
    names = [Path(f).parent.name + "/" + Path(f).stem for f in data.files]
    key = hashlib.sha1(json.dumps([names, list(indices)]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"teacher-effnet-lite0-{key}.npy"


def teacher_logits(data: ImageFolderData, cache_dir: Path | None, progress: bool,
                   batch_size: int = 64) -> Tensor:
    """EfficientNet-Lite0 logits over ``data``'s classes for every image ``[N, classes]`` (cached)."""
    from vtviz.models.teacher import MEAN, STD, imagenet_indices, load_efficientnet_lite0

    indices = imagenet_indices(data.classes)
    cache = teacher_cache_path(data, indices, cache_dir) if cache_dir is not None else None
    if cache is not None and cache.exists():
        return torch.from_numpy(np.load(cache))
    teacher = load_efficientnet_lite0().to(memory_format=torch.channels_last)
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc="teacher logits", disable=not progress):
        imgs = torch.from_numpy(np.array(data.images[start:start + batch_size]))
        x = normalize_batch(imgs.permute(0, 3, 1, 2).float(), MEAN, STD)
        with torch.inference_mode(), autocast_for(torch.device("cpu")):
            out.append(teacher(x.contiguous(memory_format=torch.channels_last))[:, indices].float())
    logits = torch.cat(out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, logits.numpy())
    return logits


class CropTeacher:
    """EfficientNet-Lite0 run on the very crops the student sees ("consistent" distillation,
    Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent"):
    logits cached per photo describe the whole photo, not the random crop being trained on."""

    def __init__(self, classes: Sequence[str], student: Preprocess, device: torch.device) -> None:
        from vtviz.models.teacher import MEAN, STD, imagenet_indices, load_efficientnet_lite0

        self.model = load_efficientnet_lite0().to(device).to(memory_format=torch.channels_last).eval()
        self.indices = torch.tensor(imagenet_indices(classes), device=device)
        # student-normalised x -> the teacher's normalisation, one affine map per channel
        mean_s, std_s = torch.tensor(student.mean), torch.tensor(student.std)
        self.gain = (std_s / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
        self.bias = ((mean_s - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
        self.device = device

    def __call__(self, x: Tensor) -> Tensor:
        """Teacher logits ``[B, classes]`` (float32) of a student batch ``[B, 3, S, S]``."""
        with torch.inference_mode(), autocast_for(self.device):
            z = self.model((x * self.gain + self.bias).contiguous(memory_format=torch.channels_last))
        return z[:, self.indices].float().clone()


def _arch_changes(cfg: TrainConfig) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if cfg.registers is not None:
        changes["registers"] = cfg.registers
    if cfg.projector_null is not None:
        changes["projector_null"] = cfg.projector_null
    if cfg.static_filter is not None:
        changes["static_filter"] = cfg.static_filter
    return changes


def dev_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a per-class random hold-out of ``fraction`` (dev) and the rest (train)."""
    rng = np.random.default_rng(seed + 7919)
    dev = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        dev += list(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False))
    dev_idx = np.sort(np.asarray(dev))
    return np.setdiff1d(np.arange(len(labels)), dev_idx), dev_idx


def evaluate_dev(model: nn.Module, data: ImageFolderData, dev_idx: np.ndarray, pre: Preprocess,
                 sizes: Sequence[int] | None, progress: bool) -> dict[str, Any]:
    """Top-1 on the dev split at each size; ``chosen_size`` is the best (smallest on ties)."""
    sub = ImageFolderData(np.asarray(data.images)[dev_idx], data.labels[dev_idx], data.class_ids,
                          data.classes, tuple(np.asarray(data.files, dtype=object)[dev_idx]))
    results = {}
    for size in sizes or [pre.size]:
        ev = evaluate_arrays(model, sub, Preprocess(**{**pre.__dict__, "size": size}),
                             progress=progress)
        results[size] = ev
    best = max(results, key=lambda k: (results[k]["top1"], -k))
    return {"images": len(dev_idx), "chosen_size": best,
            "top1_by_size": {str(k): v["top1"] for k, v in results.items()},
            "token_stats": results[best].get("token_stats")}


def _recurrent_tokenizers(model: nn.Module) -> list[RecurrentTokenizer]:
    return [m for m in model.modules() if isinstance(m, RecurrentTokenizer)]


def _set_static_gain(model: nn.Module, gain: float) -> None:
    for tok in _recurrent_tokenizers(model):
        tok.static_gain.fill_(gain)


@torch.no_grad()
def fit_dynamic_filters(model: nn.Module, data: ImageFolderData, idx: np.ndarray, pre: Preprocess,
                        progress: bool, images: int = 768, ridge: float = 1e-2) -> None:
    """Hand the recurrent maps from ``W_0`` to the token-dependent term, keeping the function.

    For each recurrent tokenizer, ``W_T->R`` is refitted by ridge least squares so that
    ``centre(LN(T_in)) W_T->R / sqrt(C)`` reproduces ``W_0 - mean_L(W_0)`` plus the current
    dynamic term on ``images`` training images, and ``W_0`` is replaced by its mean over the
    tokens (the part that centred tokens cannot produce; annealed away afterwards).
    """
    if not isinstance(model, VTModel):
        return
    sel = np.sort(np.random.default_rng(0).choice(idx, size=min(images, len(idx)), replace=False))
    inputs: dict[int, list[Tensor]] = {}
    for start in range(0, len(sel), 64):
        imgs = torch.from_numpy(np.asarray(data.images[sel[start:start + 64]]))
        x = normalize_batch(resize_batch(imgs, pre.size), pre.mean, pre.std)
        was = model.training
        model.eval()
        out = model.explain(x)
        model.train(was)
        for i, layer in enumerate(model.vt_layers):
            if isinstance(layer.tokenizer, RecurrentTokenizer):
                inputs.setdefault(i, []).append(out.layers[i - 1].tokens)
    for i, chunks in inputs.items():
        tok = model.vt_layers[i].tokenizer
        assert isinstance(tok, RecurrentTokenizer) and tok.filters is not None
        z = tok.norm(torch.cat(chunks))
        z = z - z.mean(dim=1, keepdim=True)  # [N, L, C_T]
        w0 = tok.filters.weight  # [L, C]
        target = tok.token_to_filter(z) * tok.scale + (w0 - w0.mean(0, keepdim=True))  # [N, L, C]
        zz = z.reshape(-1, z.shape[-1]).double()
        yy = target.reshape(-1, target.shape[-1]).double() / tok.scale
        gram = zz.T @ zz + ridge * len(zz) * torch.eye(zz.shape[1], dtype=zz.dtype)
        m = torch.linalg.solve(gram, zz.T @ yy)  # [C_T, C]
        fitted = (zz @ m) * tok.scale
        r2 = 1 - ((fitted - yy * tok.scale) ** 2).sum() / ((yy * tok.scale - (yy * tok.scale).mean(0)) ** 2).sum()
        tok.token_to_filter.weight.copy_(m.T.float())
        tok.filters.weight.copy_(w0.mean(0, keepdim=True).expand_as(w0))
        if progress:
            print(f"fit-dynamic: layer {i}: R^2 {float(r2):.3f} on {len(sel)} images", file=sys.stderr)


def reinit_attention(model: nn.Module, seed: int) -> None:
    """Fresh query/key maps in every token transformer and projector (near-uniform attention at
    the start), so that a collapsed attention (every token reading one sink) can be re-learnt."""
    gen = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (TokenTransformer, Projector)):
                for lin in (module.key, module.query):
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.02)


@torch.no_grad()
def recurrent_from_values(model: nn.Module, data: ImageFolderData, idx: np.ndarray, pre: Preprocess,
                          progress: bool, images: int = 96, target_entropy: float = 0.5) -> None:
    """Start each recurrent tokenizer's ``W_T->R`` as ``gamma * pinv(W_V)`` of the previous
    module's value map: token k's filter is then the feature it pooled (less what all tokens
    share), so it attends to pixels like its own content. ``gamma`` is the one of a log grid
    whose maps' mean normalised entropy on ``images`` training images is nearest ``target_entropy``."""
    if not isinstance(model, VTModel):
        return
    sel = np.sort(np.random.default_rng(1).choice(idx, size=min(images, len(idx)), replace=False))
    x = normalize_batch(resize_batch(torch.from_numpy(np.asarray(data.images[sel])), pre.size), pre.mean, pre.std)
    was = model.training
    model.eval()
    for i, layer in enumerate(model.vt_layers):
        tok = layer.tokenizer
        if not isinstance(tok, RecurrentTokenizer):
            continue
        previous = model.vt_layers[i - 1]
        assert isinstance(previous, VTModule)
        value = previous.tokenizer.value
        inverse = torch.linalg.pinv(value.weight.double()).float()  # [C, C_T]
        best: tuple[float, float] | None = None
        for gamma in np.geomspace(1, 4096, 13):
            tok.token_to_filter.weight.copy_(inverse * float(gamma))
            ent = float(normalized_entropy(model.explain(x).layers[i].attention).mean())
            if best is None or abs(ent - target_entropy) < abs(best[1] - target_entropy):
                best = (float(gamma), ent)
        assert best is not None
        tok.token_to_filter.weight.copy_(inverse * best[0])
        if progress:
            print(f"recurrent-from-values: layer {i}: gain {best[0]:.1f}, entropy {best[1]:.3f}", file=sys.stderr)
    model.train(was)


@torch.no_grad()
def precise_bn(model: nn.Module, data: ImageFolderData, idx: np.ndarray, pre: Preprocess, images: int = 2048,
               batch_size: int = 64, seed: int = 0, progress: bool = False) -> None:
    """Recompute every BatchNorm's running statistics as exact averages over ``images`` training
    photos (whole photos at ``pre.size``), in place ("precise BN", Wu & Johnson 2021).

    After fine-tuning at a high learning rate the running averages lag behind the weights: a
    checkpoint of the first VT fine-tuning scored 0.65 on dev photos with them and 0.91 after this.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was = model.training
    model.train()
    sel = np.random.default_rng(seed).choice(idx, size=min(images, len(idx)), replace=False)
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(sel), batch_size), desc="precise BN", disable=not progress):
            chunk = np.sort(sel[start:start + batch_size])
            x = normalize_batch(resize_batch(torch.from_numpy(np.asarray(data.images[chunk])), pre.size),
                                pre.mean, pre.std)
            with autocast_for(device):
                model(x.to(device).contiguous(memory_format=torch.channels_last))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was)


def _drop_static_filters(model: Model, config: ModelConfig) -> tuple[Model, ModelConfig]:
    """After annealing ``W_0`` to 0, the same function without it (``static_filter=False``)."""
    new_config = ModelConfig.from_dict({**config.to_dict(), "static_filter": False})
    slim = build_model(new_config)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("tokenizer.filters.weight")
             or not isinstance(model.get_submodule(k.rsplit(".", 2)[0]), RecurrentTokenizer)}
    slim.load_state_dict(state)
    return slim.to(next(model.parameters()).device), new_config


@dataclass(frozen=True)
class TrainConfig:
    """A training job, typed; ``vtviz train``'s options map onto it one to one
    (:meth:`from_namespace`). See :func:`add_arguments` for each field's meaning."""

    data: str
    out: str
    name: str = "model"
    description: str = ""
    arch: str = "vt_resnet18"
    tokenizers: str | None = None
    tokens: int = 16
    init: str | None = None
    padding: str = "reflect"
    schedule: str = "128:56,160:4"
    eval_size: int | None = None
    cache_size: int | None = None
    batch_size: int = 64
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    min_scale: float = 0.35
    clip: float = 2.0
    diversity: float = 0.5
    balance: float = 0.0
    hard_balance: float = 0.0
    mixing_diversity: float = 0.0
    register_cap: float = 0.0
    projector_balance: float = 0.0
    self_cap: float = 0.0
    border: float = 0.0
    border_min_size: int = 0
    registers: int | None = None
    projector_null: bool | None = None
    static_filter: bool | None = None
    anneal_static: float = 0.0
    fit_dynamic: bool = False
    precise_bn: int = 0
    reinit_attention: bool = False
    recurrent_from_values: bool = False
    dev_fraction: float = 0.0
    dev_seed: int | None = None
    dev_sizes: tuple[int, ...] | None = None
    no_val: bool = False
    teacher: str | None = None
    kd_weight: float = 0.7
    kd_temperature: float = 2.0
    kd_consistent: bool = False
    mixup: float = 0.0
    amp: bool = True
    half: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    cache_dir: str | None = None
    eval_every: int = 0
    save_every: int = 1
    resume: bool = True
    stop_after: int = 0
    quiet: bool = False

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> TrainConfig:
        """The config of parsed ``vtviz train`` arguments."""
        values = {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}
        if values.get("dev_sizes") is not None:
            values["dev_sizes"] = tuple(values["dev_sizes"])
        return cls(**values)

    def check(self) -> None:
        """Raise ``ValueError`` on options that contradict each other (before any work)."""
        if self.anneal_static and self.static_filter is False:
            raise ValueError("--anneal-static fades the per-token filter W_0 out, and --no-static-filter "
                             "leaves none: use one of them")
        if self.mixup < 0:
            raise ValueError(f"--mixup {self.mixup}: alpha must be positive (0 = off)")
        if self.mixup and self.teacher and not self.kd_consistent:
            raise ValueError("--mixup with a --teacher needs --kd-consistent: cached whole-photo "
                             "logits do not describe a mixed crop")

    @property
    def split_seed(self) -> int:
        """The dev split's seed: ``dev_seed``, else the training ``seed``."""
        return self.seed if self.dev_seed is None else self.dev_seed

    def recipe(self) -> dict[str, Any]:
        """What the summary records of the recipe (no paths; no architecture under ``init``)."""
        skip = {"data", "out", "cache_dir", "quiet", "resume", "save_every", "init"}
        if self.init:
            skip |= {"arch", "tokenizers", "tokens", "padding"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class _Data:
    """Decoded training data and what goes with it."""

    train: ImageFolderData
    train_idx: np.ndarray
    dev_idx: np.ndarray | None
    val: ImageFolderData | None
    soft: Tensor | None  # teacher logits [N, classes] on the device, or None
    pre: Preprocess  # evaluation preprocessing
    teacher: CropTeacher | None = None  # the teacher itself, on each augmented crop (--kd-consistent)


def _setup(cfg: TrainConfig) -> tuple[Dist, torch.device]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d, device = init_distributed(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size within each phase
    return d, device


def _load_data(cfg: TrainConfig, d: Dist, device: torch.device, schedule: list[int]) -> _Data:
    root = Path(cfg.data)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    pre = Preprocess(size=cfg.eval_size or schedule[-1], fit=Fit.STRETCH)
    train_pre = Preprocess(size=cfg.cache_size or max(max(schedule), pre.size), fit=Fit.STRETCH)
    progress = d.main and not cfg.quiet
    train_data = read_image_folder(root / "train", train_pre, cache_dir=cache_dir, progress=progress)
    teacher = CropTeacher(train_data.classes, pre, device) if cfg.teacher and cfg.kd_consistent else None
    soft = teacher_logits(train_data, cache_dir, progress) if cfg.teacher and teacher is None else None
    if cfg.dev_fraction > 0:
        train_idx, dev_idx = dev_split(train_data.labels, cfg.dev_fraction, cfg.split_seed)
    else:
        train_idx, dev_idx = np.arange(len(train_data)), None
    val = None
    if not cfg.no_val and (root / "val").is_dir():
        val = read_image_folder(root / "val", pre, class_ids=train_data.class_ids,
                                cache_dir=cache_dir, progress=progress)
    elif not cfg.no_val and d.main:
        print(f"warning: {root / 'val'} not found: no evaluation during training; measure the "
              "checkpoint later with `vtviz evaluate MODEL --data VAL --record`", file=sys.stderr)
    return _Data(train_data, train_idx, dev_idx, val, None if soft is None else soft.to(device), pre, teacher)


def _build(cfg: TrainConfig, data: _Data, d: Dist) -> tuple[Model, ModelConfig, dict[str, Any] | None]:
    """The model to train: fresh, or ``cfg.init``'s weights (grown by new parts), its config
    and the parent's summary."""
    torch.manual_seed(cfg.seed)
    if not cfg.init:
        config = ModelConfig.from_dict({
            **ARCHITECTURES[cfg.arch]().config.to_dict(),  # the builder's defaults (e.g. 4 stages)
            "num_classes": len(data.train.class_ids),
            **({"tokenizers": tuple(cfg.tokenizers.split(","))} if cfg.tokenizers else {}),
            "num_tokens": cfg.tokens, "padding_mode": cfg.padding, **_arch_changes(cfg),
        })
        return build_model(config), config, None
    model = load_model(cfg.init, device="cpu")
    meta = model_meta(model)
    if tuple(meta.class_ids) != tuple(data.train.class_ids):
        raise ValueError(f"{cfg.init}: its classes {list(meta.class_ids)[:5]} are not "
                         f"the data's {list(data.train.class_ids)[:5]}")
    parent = {"checkpoint": Path(cfg.init).name, "training": meta.training}
    config = meta.config
    changes = _arch_changes(cfg)
    if cfg.recurrent_from_values:
        changes["static_filter"] = False
    if changes:  # new parts (registers, null slot) start from their init, the rest loads
        config = ModelConfig.from_dict({**config.to_dict(), **changes})
        grown = build_model(config)
        missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
        dropped = "tokenizer.filters.weight" if cfg.recurrent_from_values else "\0"  # W_0, on purpose
        unexpected = [k for k in unexpected if not k.endswith(dropped)]
        if unexpected:
            raise ValueError(f"--init: the new architecture drops {unexpected[:4]}")
        if d.main:
            print(f"--init: new parameters {missing}", file=sys.stderr)
        model = grown
    return model, config, parent


@dataclass
class _Loop:
    """The optimisation state that one epoch reads and updates."""

    model: Model
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    warmup: int
    per_rank: int
    history: list[dict[str, Any]]
    start_epoch: int = 0
    wall: float = 0.0


def _make_loop(cfg: TrainConfig, model: Model, data: _Data, d: Dist, device: torch.device,
               epochs: int, state_path: Path) -> _Loop:
    model = model.to(device).to(memory_format=torch.channels_last)
    objective: nn.Module = _Objective(model)
    if d.world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                                  betas=(0.9, 0.99), fused=device.type == "cuda" or None)
    per_rank = len(data.train_idx) // d.world
    steps = per_rank // cfg.batch_size
    if steps == 0:
        raise ValueError(f"batch size {cfg.batch_size} exceeds the {per_rank} images per rank")
    total = steps * epochs
    loop = _Loop(model, objective, optimizer, steps, total,
                 min(steps * cfg.warmup_epochs, total // 2) or 1, per_rank, [])
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loop.start_epoch, loop.wall = int(state["epoch"]) + 1, float(state["wall"])
        loop.history = list(state["history"])
        if d.main:
            print(f"resumed from {state_path} after epoch {loop.start_epoch}", file=sys.stderr)
    return loop


def mixup_batch(x: Tensor, y: Tensor, alpha: float, gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha,
    alpha)`` drawn from ``gen``. ``x`` ``[B, 3, S, S]``, ``y`` ``[B]``; returns the mixed batch, the
    partner labels ``y[perm]`` ``[B]`` and ``lam``."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(y), generator=gen).to(y.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def _train_step(cfg: TrainConfig, loop: _Loop, x: Tensor, y: Tensor, soft: Tensor | None,
                device: torch.device, mix: tuple[Tensor, float] | None = None) -> Tensor:
    """One optimisation step on ``x`` ``[B, 3, S, S]`` with labels ``y`` ``[B]`` and teacher
    logits ``soft`` ``[B, classes]`` (or None); ``mix`` = (partner labels ``[B]``, lam) when ``x``
    is a mixup batch. Returns [loss, correct, diversity, balance, border] (summed; "correct"
    weighted by lam under mixup)."""
    with autocast_for(device, None if cfg.amp else False):
        logits, layers, map_size = loop.objective(x)
    logits = logits.float()
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    hit = (logits.argmax(-1) == y).float()
    if mix is not None:
        y2, lam = mix
        loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y2, label_smoothing=cfg.label_smoothing)
        hit = lam * hit + (1 - lam) * (logits.argmax(-1) == y2).float()
    if soft is not None:
        t = cfg.kd_temperature
        kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(soft / t, -1),
                      reduction="batchmean", log_target=True) * t * t
        loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd
    div = diversity_penalty([o.attention for o in layers]).to(loss.device)
    bal = balance_penalty(layers).to(loss.device)
    bor = border_penalty(layers, map_size).to(loss.device)
    total = loss + cfg.diversity * div + cfg.balance * bal + border_weight(cfg, x.shape[-1]) * bor
    if cfg.hard_balance:
        total = total + cfg.hard_balance * hard_balance_penalty(layers).to(loss.device)
    if cfg.mixing_diversity:
        total = total + cfg.mixing_diversity * mixing_diversity_penalty(layers).to(loss.device)
    if cfg.register_cap:
        total = total + cfg.register_cap * register_penalty(layers).to(loss.device)
    if cfg.projector_balance:
        total = total + cfg.projector_balance * projector_balance_penalty(layers).to(loss.device)
    if cfg.self_cap:
        total = total + cfg.self_cap * self_attention_penalty(layers).to(loss.device)
    loop.optimizer.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.clip)
    loop.optimizer.step()
    n = len(y)
    # summed on the device: no host sync per step (it stalls a GPU)
    return torch.stack([loss.detach() * n, hit.sum(),
                        div.detach() * n, bal.detach() * n, bor.detach() * n]).double()


def _run_epoch(cfg: TrainConfig, loop: _Loop, data: _Data, d: Dist, device: torch.device,
               epoch: int, size: int, epochs: int, images_dev: Tensor | None,
               labels: Tensor) -> dict[str, Any]:
    """Train one epoch at ``size`` px; returns its history record."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # same on every rank
    order = torch.from_numpy(data.train_idx)[torch.randperm(len(data.train_idx), generator=gen)]
    order = order[d.rank:loop.per_rank * d.world:d.world]
    loop.model.train()
    sums = torch.zeros(5, device=device, dtype=torch.float64)
    seen = 0
    bar = tqdm(range(loop.steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs} @{size}px",
               disable=not d.main or cfg.quiet, unit="batch")
    for i in bar:
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size].sort().values
        if images_dev is not None:
            idx = idx.to(device)
            imgs = images_dev[idx]
        else:
            imgs = torch.from_numpy(data.train.images[idx.numpy()])
        x = random_resized_crop(imgs, size, gen, scale=(cfg.min_scale, 1.0))
        x = normalize_batch(x, data.pre.mean, data.pre.std).contiguous(memory_format=torch.channels_last)
        step = epoch * loop.steps_per_epoch + i
        for group in loop.optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, loop.total_steps, loop.warmup)
        if cfg.anneal_static:
            _set_static_gain(loop.model, max(0.0, 1 - step / (cfg.anneal_static * loop.steps_per_epoch)))
        y = labels[idx]
        mix = None
        if cfg.mixup:
            x, y2, lam = mixup_batch(x, y, cfg.mixup, gen)
            mix = (y2, lam)
        soft = (data.teacher(x) if data.teacher is not None
                else data.soft[idx] if data.soft is not None else None)
        sums += _train_step(cfg, loop, x, y, soft, device, mix)
        seen += len(idx)
        if not bar.disable and (i % 20 == 19 or i == loop.steps_per_epoch - 1):
            m = (sums / seen).tolist()
            bar.set_postfix(loss=f"{m[0]:.3f}", acc=f"{m[1]:.3f}", div=f"{m[2]:.3f}", bal=f"{m[3]:.3f}",
                            bor=f"{m[4]:.3f}", ips=f"{seen * d.world / max(time.time() - t0, 1e-9):.0f}")
    if d.world > 1:  # BatchNorm statistics are per rank: average them
        import torch.distributed as dist

        for buf in loop.model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= d.world
    m = (sums / seen).tolist()
    loop.wall += time.time() - t0
    return {"epoch": epoch + 1, "size": size, "loss": m[0], "train_acc": m[1], "diversity": m[2],
            "balance": m[3], "border": m[4], "images_per_s": seen * d.world / (time.time() - t0)}


def _save_state(loop: _Loop, epoch: int, path: Path) -> None:
    state = {"model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
             "epoch": epoch, "wall": loop.wall, "history": loop.history}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _finish(cfg: TrainConfig, loop: _Loop, data: _Data, config: ModelConfig, parent: dict[str, Any] | None,
            final_eval: dict[str, Any] | None, d: Dist, device: torch.device, epochs: int) -> dict[str, Any]:
    """Dev-split choice of input size, the summary and the checkpoint (rank 0)."""
    fingerprints = [weights_fingerprint(loop.model)]
    if d.world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * d.world
        dist.all_gather_object(gathered, fingerprints[0])
        fingerprints = gathered
    if not d.main:
        return {}
    pre = data.pre
    if cfg.precise_bn:
        precise_bn(loop.model, data.train, data.train_idx, pre, cfg.precise_bn, seed=cfg.seed, progress=not cfg.quiet)
    dev_eval = None
    if data.dev_idx is not None:
        dev_eval = evaluate_dev(loop.model, data.train, data.dev_idx, pre, cfg.dev_sizes,
                                not cfg.quiet)
        if cfg.dev_sizes:
            pre = Preprocess(**{**pre.__dict__, "size": dev_eval["chosen_size"]})
    model = loop.model
    if cfg.anneal_static:
        model, config = _drop_static_filters(model, config)
    if final_eval is None and data.val is not None:  # resumed a finished run
        final_eval = evaluate_arrays(model, data.val, pre, progress=False)
    summary: dict[str, Any] = {
        "data": {"root": Path(cfg.data).name, "train_images": len(data.train_idx),
                 "dev_images": 0 if data.dev_idx is None else len(data.dev_idx),
                 "val_images": len(data.val) if data.val is not None else 0},
        "recipe": cfg.recipe(), "epochs": epochs, "wall_time_s": round(loop.wall, 1),
        "hardware": _hardware(device, d.world), "torch": torch.__version__,
        "parameters": count_parameters(model), "world_size": d.world,
        "ranks_identical": len(set(fingerprints)) == 1, "val": final_eval, "dev": dev_eval,
        "history": loop.history,
    }
    if parent is not None:
        summary["init"] = parent
    meta = ModelMeta(config=config, classes=data.train.classes, class_ids=data.train.class_ids,
                     preprocess=pre, name=cfg.name, training=summary,
                     description=cfg.description or default_description(
                         config, Path(cfg.data).name,
                         None if parent is None else str(parent["checkpoint"]).removesuffix(SUFFIX)))
    path = save_model(model, Path(cfg.out) / cfg.name, meta, dtype=torch.float16 if cfg.half else None)
    if not cfg.quiet:
        print(json.dumps({"checkpoint": str(path), "val_top1": final_eval["top1"] if final_eval else None}))
    return summary


def train(cfg: TrainConfig | argparse.Namespace) -> dict[str, Any]:
    """Run a training job; returns the final summary (empty on ranks > 0 or when stopped early)."""
    if isinstance(cfg, argparse.Namespace):
        cfg = TrainConfig.from_namespace(cfg)
    cfg.check()
    d, device = _setup(cfg)
    schedule = parse_schedule(cfg.schedule)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "last.pt"
    data = _load_data(cfg, d, device, schedule)
    model, config, parent = _build(cfg, data, d)
    fresh = not (cfg.resume and state_path.exists())
    if cfg.fit_dynamic and d.main and fresh:
        fit_dynamic_filters(model, data.train, data.train_idx, data.pre, not cfg.quiet)
    if cfg.reinit_attention and fresh:
        reinit_attention(model, cfg.seed)
    if cfg.recurrent_from_values and fresh:
        recurrent_from_values(model, data.train, data.train_idx, data.pre, not cfg.quiet)
    loop = _make_loop(cfg, model, data, d, device, len(schedule), state_path)
    labels = torch.from_numpy(data.train.labels).to(device)
    # On a GPU the whole split lives in device memory (Imagenette at 224 px: 1.4 GB);
    # on a CPU it stays a (memory-mapped) array and each batch is gathered from it.
    images_dev = (torch.from_numpy(np.ascontiguousarray(data.train.images)).to(device)
                  if device.type == "cuda" else None)
    final_eval: dict[str, Any] | None = None
    for epoch in range(loop.start_epoch, len(schedule)):
        record = _run_epoch(cfg, loop, data, d, device, epoch, schedule[epoch], len(schedule),
                            images_dev, labels)
        last = epoch == len(schedule) - 1
        if d.main and data.val is not None and (last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
            ev = evaluate_arrays(loop.model, data.val, data.pre, progress=False)
            record.update(val_top1=ev["top1"], val_top5=ev["top5"], token_stats=ev.get("token_stats"))
            final_eval = ev if last else None
        loop.history.append(record)
        if d.main:
            print(json.dumps(record), file=sys.stderr)
        stopping = bool(cfg.stop_after) and epoch + 1 - loop.start_epoch >= cfg.stop_after and not last
        if d.main and (last or stopping or (epoch + 1) % max(1, cfg.save_every) == 0):
            _save_state(loop, epoch, state_path)
        if d.world > 1:
            import torch.distributed as dist

            dist.barrier()
        if stopping:
            if d.main:
                print(f"stopping after epoch {epoch + 1} (--stop-after); rerun to resume", file=sys.stderr)
            close_distributed(d)
            return {}
    summary = _finish(cfg, loop, data, config, parent, final_eval, d, device, len(schedule))
    close_distributed(d)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``vtviz train`` options."""
    p.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--out", required=True, help="output folder (checkpoint, last.pt)")
    p.add_argument("--name", default="model", help="checkpoint name (NAME.safetensors)")
    p.add_argument("--description", default="",
                   help="one line for `vtviz info` (default: architecture, tokenizers, data, parent)")
    p.add_argument("--arch", default="vt_resnet18", choices=["vt_resnet18", "vt_resnet34", "resnet18"])
    p.add_argument("--tokenizers", default=None, help="e.g. filter,recurrent (default: the arch's)")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="fine-tune this checkpoint (its architecture; --arch/--tokenizers ignored)")
    p.add_argument("--padding", default="reflect", choices=["reflect", "zeros"])
    p.add_argument("--schedule", default="128:56,160:4", help="SIZE:EPOCHS,... per phase")
    p.add_argument("--eval-size", type=int, default=None, help="default: the schedule's last size")
    p.add_argument("--cache-size", type=int, default=None,
                   help="size the training images are decoded at, random crops come from it "
                        "(default: the largest of the schedule's sizes and --eval-size)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--min-scale", type=float, default=0.35, help="random-resized-crop min area")
    p.add_argument("--clip", type=float, default=2.0, help="gradient-norm clipping")
    p.add_argument("--diversity", type=float, default=0.5, help="token-map diversity penalty weight")
    p.add_argument("--balance", type=float, default=0.0,
                   help="load-balancing penalty on received attention and projector ownership")
    p.add_argument("--hard-balance", type=float, default=0.0,
                   help="load-balancing penalty on argmax ownership (Switch Transformer's loss) of "
                        "the token mixing and the projector")
    p.add_argument("--mixing-diversity", type=float, default=0.0,
                   help="penalty on similar rows of the token mixing (tokens reading the same others)")
    p.add_argument("--register-cap", type=float, default=0.0, metavar="WEIGHT",
                   help="penalty on attention to the register tokens beyond half of a token's")
    p.add_argument("--projector-balance", type=float, default=0.0,
                   help="argmax load balancing of the projector alone (tokens owning pixels)")
    p.add_argument("--self-cap", type=float, default=0.0, metavar="WEIGHT",
                   help="penalty on the attention tokens give themselves in the mixing beyond half")
    p.add_argument("--border", type=float, default=0.0, help="penalty on attention on the map's border")
    p.add_argument("--border-min-size", type=int, default=0, metavar="PX",
                   help="apply the border penalty only to phases of at least this input size")
    p.add_argument("--registers", type=int, default=None, help="register tokens per transformer")
    p.add_argument("--projector-null", action=argparse.BooleanOptionalAction, default=None,
                   help="a null slot in the projector's softmax")
    p.add_argument("--static-filter", action=argparse.BooleanOptionalAction, default=None,
                   help="the recurrent tokenizer's per-token filter W_0 (--no-static-filter: the "
                        "paper's tokenizer, filters from the previous tokens alone)")
    p.add_argument("--anneal-static", type=float, default=0.0, metavar="EPOCHS",
                   help="scale the recurrent tokenizer's per-token filter W_0 from 1 to 0 over "
                        "EPOCHS, then remove it from the saved model")
    p.add_argument("--fit-dynamic", action="store_true",
                   help="before training, fit W_T->R by least squares so that the token-dependent "
                        "filters reproduce W_0's per-token part (use with --anneal-static)")
    p.add_argument("--precise-bn", type=int, default=0, metavar="IMAGES",
                   help="at the end, recompute BatchNorm statistics on this many training photos")
    p.add_argument("--reinit-attention", action="store_true",
                   help="with --init: start the token transformers' and projectors' query/key maps "
                        "afresh (near-uniform attention), keeping every other weight")
    p.add_argument("--recurrent-from-values", action="store_true",
                   help="with --init: drop the recurrent tokenizer's W_0 and start W_T->R as the "
                        "pseudo-inverse of the previous tokenizer's value map (each token looks for "
                        "pixels like the content it carries), its gain set on training images")
    p.add_argument("--dev-fraction", type=float, default=0.0,
                   help="hold out this share of train/ (per class, by --dev-seed) as a dev split")
    p.add_argument("--dev-seed", type=int, default=None,
                   help="seed of the dev split (default: --seed); fix it to compare training seeds "
                        "on the same dev photos")
    p.add_argument("--dev-sizes", type=lambda t: [int(v) for v in t.split(",")], default=None,
                   help="evaluate the dev split at these sizes and keep the best as input size")
    p.add_argument("--no-val", action="store_true", help="do not read val/ (measure it once, later)")
    p.add_argument("--teacher", choices=["efficientnet-lite0"], default=None)
    p.add_argument("--kd-weight", type=float, default=0.7)
    p.add_argument("--kd-temperature", type=float, default=2.0)
    p.add_argument("--kd-consistent", action="store_true",
                   help="run the teacher on each augmented crop (instead of cached whole-photo logits)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup of the crops with lam ~ Beta(ALPHA, ALPHA); with a teacher it needs "
                        "--kd-consistent, so that the teacher labels the mixed crop (function matching)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision where the hardware has it")
    p.add_argument("--half", action="store_true", help="store the checkpoint in float16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/vtviz"))
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N epochs (0: last only)")
    p.add_argument("--save-every", type=int, default=1,
                   help="write the resumable last.pt every N epochs (and always at the end)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/last.pt when it exists")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after N epochs in this run (resume later); 0 = run to the end")
    p.add_argument("--quiet", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vtviz.train.loop``."""
    parser = argparse.ArgumentParser(prog="vtviz train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    train(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

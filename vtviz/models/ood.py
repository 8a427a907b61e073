"""Is a photo one of the model's classes at all? Two unfamiliar-photo flags.

:class:`ReferenceFlag` (the 10-class VT-R18 models' flag): a 1000-class reference model says
how much of its probability falls on the model's own classes, and what the photo looks like
instead. :class:`OODScorer` (older checkpoints): a distance in the model's own features, below.

A model that knows 10 classes forces every photo into one of them, often with a softmax of
99% (a butterfly as "chain saw"), so softmax scores (maximum probability, energy) cannot say
"none of these". This module scores a photo by how far its pooled tokens (the classifier's
input, L2-normalised) lie from those of the training photos: the cosine distance to the
k-th nearest of a bank of training features (Sun et al., "Out-of-distribution detection with
deep nearest neighbors", ICML 2022). The threshold is the ``quantile`` of the scores of
held-out *training* photos (a dev split), so about ``1 - quantile`` of in-distribution photos
are flagged by design; it is never chosen on val.

The bank (``[N, C]`` float16) travels in the checkpoint as the tensor ``ood.bank``; the
settings in the metadata's ``ood`` entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtviz.image import prepare
from vtviz.models.meta import ModelMeta
from vtviz.models.teacher import imagenet_indices
from vtviz.runtime import inference, to_model_input

BANK_KEY = "ood.bank"


def pooled_features(tokens: Tensor) -> Tensor:
    """The classifier's input, L2-normalised: last layer tokens ``[B, L, C]`` -> ``[B, C]``."""
    return F.normalize(tokens.float().mean(dim=1), dim=-1)


@dataclass(frozen=True)
class OODScorer:
    """k-nearest-neighbour distance of pooled features to a bank of training features.

    bank: ``[N, C]`` L2-normalised training features; k: which neighbour; threshold: scores
    above it are flagged; info: how it was calibrated (quantile, dev images, dev rate, ...).
    """

    bank: Tensor
    k: int
    threshold: float
    info: dict[str, Any]

    def score(self, features: Tensor) -> Tensor:
        """Cosine distance ``[B]`` to the k-th nearest bank feature (0 = a training photo's twin)."""
        sim = features.float().to(self.bank.device) @ self.bank.float().T  # [B, N]
        kth = sim.topk(min(self.k, sim.shape[1]), dim=-1).values[:, -1]
        return (1 - kth).cpu()

    def flag(self, features: Tensor) -> Tensor:
        """True ``[B]`` where a photo is unlike the training photos (out of distribution)."""
        return self.score(features) > self.threshold

    def meta(self) -> dict[str, Any]:
        """What the checkpoint metadata stores (the bank goes in as a tensor)."""
        return {"k": self.k, "threshold": self.threshold, **self.info}

    @classmethod
    def from_meta(cls, bank: Tensor, meta: dict[str, Any]) -> OODScorer:
        """Inverse of :meth:`meta` with the stored bank; raises ValueError on a bad entry."""
        k, threshold = int(meta["k"]), float(meta["threshold"])
        if bank.ndim != 2 or not 1 <= k <= len(bank):
            raise ValueError(f"bad OOD bank {list(bank.shape)} for k = {k}")
        info = {key: v for key, v in meta.items() if key not in ("k", "threshold")}
        return cls(F.normalize(bank.float(), dim=-1), k, threshold, info)


def fit_ood(bank: Tensor, held_out: Tensor, k: int = 10, quantile: float = 0.95,
            **info: Any) -> OODScorer:
    """A scorer from training features ``bank`` ``[N, C]``, thresholded at the ``quantile`` of
    the scores of held-out training features ``[M, C]`` (not in the bank)."""
    scorer = OODScorer(F.normalize(bank.float(), dim=-1), k, 0.0, {})
    scores = scorer.score(F.normalize(held_out.float(), dim=-1))
    threshold = float(torch.quantile(scores, quantile))
    details = {"quantile": quantile, "bank_images": len(bank), "held_out_images": len(held_out),
               "held_out_flagged": float((scores > threshold).float().mean()), **info}
    return OODScorer(scorer.bank, k, threshold, details)


def auroc(inside: Tensor, outside: Tensor) -> float:
    """Area under the ROC curve of scores that should be higher ``outside`` than ``inside``
    (the probability that a random outside score beats a random inside one; ties count half)."""
    a, b = inside.float().flatten(), outside.float().flatten()
    greater = (b[:, None] > a[None, :]).float().mean()
    ties = (b[:, None] == a[None, :]).float().mean()
    return float(greater + 0.5 * ties)


@dataclass(frozen=True)
class ReferenceFlag:
    """The unfamiliar-photo flag of a model whose classes are a subset of ImageNet-1k, by a
    1000-class reference model (the bundled VT-Lite0): score = 1 - the reference's probability
    mass on the model's own classes. A photo is flagged when the score exceeds ``threshold``
    (chosen on training photos and foreign calibration photos, never on val), and the
    reference's top class says what it looks like instead ("baboon").

    reference: the 1000-class model (with metadata); indices: ImageNet label index of each of
    the model's classes; name: the reference's bundled name; info: how it was calibrated.
    """

    reference: nn.Module
    indices: tuple[int, ...]
    threshold: float
    name: str
    info: dict[str, Any]

    def judge(self, images: Sequence[np.ndarray], batch_size: int = 32) -> tuple[Tensor, list[str]]:
        """Scores ``[B]`` (higher: less like the model's classes) and the reference's top class
        name for RGB uint8 photos of any size, each seen with the reference's own preprocessing."""
        meta = cast(ModelMeta, self.reference.meta)
        scores, names = [], []
        for s in range(0, len(images), batch_size):
            batch, _ = prepare(list(images[s:s + batch_size]), meta.preprocess)
            with inference(self.reference):
                probs = self.reference(to_model_input(self.reference, batch)).float().softmax(-1).cpu()
            scores.append(1 - probs[:, list(self.indices)].sum(-1))
            names += [meta.classes[int(i)] for i in probs.argmax(-1)]
        return torch.cat(scores) if scores else torch.zeros(0), names

    def meta(self) -> dict[str, Any]:
        """What the checkpoint metadata stores (the reference is named, never copied)."""
        return {"method": "reference", "reference": self.name, "threshold": self.threshold, **self.info}

    @classmethod
    def from_meta(cls, reference: nn.Module, classes: Sequence[str], meta: dict[str, Any]) -> ReferenceFlag:
        """Inverse of :meth:`meta` with the loaded reference; ValueError on a bad entry."""
        threshold = float(meta["threshold"])
        if not 0 <= threshold <= 1:
            raise ValueError(f"reference flag threshold {threshold}: expected 0..1")
        info = {k: v for k, v in meta.items() if k not in ("method", "reference", "threshold")}
        return cls(reference, tuple(imagenet_indices(classes)), threshold, str(meta["reference"]), info)


Flag = OODScorer | ReferenceFlag

"""Is a photo one of the model's classes at all? An out-of-distribution flag from features.

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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

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

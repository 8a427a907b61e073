"""Regularisers: penalties on a VT forward pass that keep its parts doing their job.

Each is a function of the layers' outputs (and the map size), named in :data:`REGULARISERS`;
a training step sums ``weight * penalty`` over the weights its config gives
(:func:`regularise`). ``vtviz train`` and ``vtviz distill`` share them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vtviz.maps.diagnostics import image_mixing, self_attention
from vtviz.maps.thresholds import SELF_SHARE
from vtviz.maps.tokens import border_mass, mean_offdiagonal_cosine, nearest_token_cosine
from vtviz.models.vt import VTLayerOutput


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


Penalty = Callable[[Sequence[VTLayerOutput], tuple[int, int]], Tensor]

#: Every regulariser by name: ``(layers, map_size) -> scalar``. A config's weight of the same
#: name switches it on (``vtviz train --hard-balance 2``; a distillation recipe's ``w_*`` fields).
REGULARISERS: dict[str, Penalty] = {
    "diversity": lambda layers, size: diversity_penalty([o.attention for o in layers]),
    "balance": lambda layers, size: balance_penalty(layers),
    "hard_balance": lambda layers, size: hard_balance_penalty(layers),
    "mixing_diversity": lambda layers, size: mixing_diversity_penalty(layers),
    "register_cap": lambda layers, size: register_penalty(layers),
    "projector_balance": lambda layers, size: projector_balance_penalty(layers),
    "self_cap": lambda layers, size: self_attention_penalty(layers),
    "border": lambda layers, size: border_penalty(layers, size),
    "coverage": lambda layers, size: coverage_penalty([o.attention for o in layers]),
}


def regularise(weights: Mapping[str, float], layers: Sequence[VTLayerOutput], map_size: tuple[int, int],
               logged: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum(weight * penalty)`` over the nonzero ``weights`` (names of :data:`REGULARISERS`),
    and the value of each penalty computed (those weighted, plus ``logged``), detached."""
    unknown = set(weights) - set(REGULARISERS)
    if unknown:
        raise KeyError(f"unknown regularisers {sorted(unknown)}; known: {sorted(REGULARISERS)}")
    total = torch.zeros(())
    values: dict[str, Tensor] = {}
    for name in dict.fromkeys([*logged, *(n for n, w in weights.items() if w)]):
        value = REGULARISERS[name](layers, map_size).float()
        total = total.to(value.device)
        if weights.get(name):
            total = total + weights[name] * value
        values[name] = value.detach()
    return total, values

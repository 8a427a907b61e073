"""Class-specific token maps beside Grad-CAM, and the measures that say whether maps are true.

``class_maps`` answers "why this class" for a batch in one forward and one backward pass:

* the **class token map** of each VT layer, ``M_c = relu(sum_k a_k(c) * A_k)``, where ``A_k`` is
  token k's tokenizer attention ``[h, w]`` (sums to 1) and ``a_k(c) = dlogit_c/dT_k . T_k`` is
  the token's contribution to the logit of class c (gradient x token). For the last layer this
  is *exact*: the logits are ``fc(mean_k T_k)``, linear in its tokens, so the ``a_k`` sum to
  ``logit_c - bias_c``. For earlier layers it is the first-order (Taylor) share of each token;
  Integrated Gradients on the tokens (:func:`vtviz.analysis.token_attribution`) is the
  path-integrated alternative at ~64x the cost, which is why the evaluation uses this one.
* **Grad-CAM** (Selvaraju et al. 2017) on the last ResNet stage's feature map (stride 16, the
  grid the tokens attend over), from the same backward pass and without hooks:
  ``relu(sum_ch mean_hw(dlogit_c/dF) * F)``.

The measures (pure functions, tested on constructed maps): quadrant shares of a map's positive
mass (the grid pointing game of Böhle et al. 2022), deletion/insertion curves and their areas
(Petsiuk et al. 2018), token-space deletion for the last layer (exact, no re-run), Spearman
rank correlation for the model-randomisation check (Adebayo et al. 2018), and bootstrap
confidence intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtviz.maps.explain import _require_vt
from vtviz.models.vt import VTModel
from vtviz.runtime import to_model_input


@dataclass(frozen=True)
class ClassMaps:
    """Class-specific maps of a batch for the classes ``target`` ``[B]``.

    logits ``[B, K]``; attention: per VT layer the tokenizer attention ``[B, L, h, w]``;
    tokens: per layer the output tokens ``[B, L, C]``; contributions: per layer ``a_k(c)``
    ``[B, L]`` (gradient x token; exact for the last layer); token_maps: per layer
    ``relu(sum_k a_k A_k)`` ``[B, h, w]``; gradcam ``[B, h, w]``; signed_token_maps and
    signed_gradcam: the same before the positive part (never empty; what the randomisation
    check compares). All float32 on the CPU.
    """

    target: Tensor
    logits: Tensor
    attention: tuple[Tensor, ...]
    tokens: tuple[Tensor, ...]
    contributions: tuple[Tensor, ...]
    token_maps: tuple[Tensor, ...]
    gradcam: Tensor
    signed_token_maps: tuple[Tensor, ...] = ()
    signed_gradcam: Tensor | None = None


def _targets(logits: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
    if target is None:
        return logits.argmax(-1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device)
    return t.expand(logits.shape[0]) if t.ndim == 0 else t


def class_maps(model: nn.Module, batch: Tensor, target: int | Sequence[int] | Tensor | None = None) -> ClassMaps:
    """Class token maps of every VT layer and Grad-CAM for ``batch`` ``[B, 3, H, W]`` (preprocessed)
    and ``target`` (a class index, one per image, or None: the predicted class). Float32."""
    vt: VTModel = _require_vt(model)
    vt.eval()
    x = to_model_input(vt, batch).float()
    with torch.no_grad():
        fmap = vt.stem(x)
    fmap = fmap.detach().float().requires_grad_(True)
    with torch.enable_grad():
        out = vt.explain_features(fmap)
        tgt = _targets(out.logits.detach(), target)
        picked = out.logits.gather(1, tgt[:, None]).sum()
        tokens = [layer.tokens for layer in out.layers]
        grads = torch.autograd.grad(picked, [fmap, *tokens])
    g_fmap, g_tokens = grads[0], grads[1:]
    h, w = out.map_size
    cam = (g_fmap.mean((2, 3), keepdim=True) * fmap.detach()).sum(1).detach().float().cpu()
    attention, contributions, signed = [], [], []
    for layer, tok, g in zip(out.layers, tokens, g_tokens):
        a = (g * tok.detach()).sum(-1).float()  # [B, L]
        att = layer.attention.detach().float().view(a.shape[0], a.shape[1], h, w)
        attention.append(att.cpu())
        contributions.append(a.cpu())
        signed.append(torch.einsum("bl,blhw->bhw", a, att).cpu())
    return ClassMaps(tgt.cpu(), out.logits.detach().float().cpu(), tuple(attention),
                     tuple(t.detach().float().cpu() for t in tokens), tuple(contributions),
                     tuple(F.relu(m) for m in signed), F.relu(cam), tuple(signed), cam)


def class_panels(cm: ClassMaps, image: int) -> list[tuple[str, Tensor]]:
    """(label, map ``[h, w]``) of one image of ``cm``: each layer's class token map, then
    Grad-CAM: what :func:`vtviz.viz.views.class_map_view` draws."""
    n = len(cm.token_maps)
    panels = [(f"tokens, layer {i}" + (" (exact)" if i == n - 1 else ""), m[image])
              for i, m in enumerate(cm.token_maps)]
    return panels + [("Grad-CAM", cm.gradcam[image])]


def class_title(cm: ClassMaps, image: int, classes: Sequence[str], logits: Tensor | None = None) -> str:
    """"why CLASS (p ...)" for one image of ``cm``. ``logits`` ``[classes]``: the image's logits
    from the pass whose prediction is shown beside it (so that a photo shows one probability in
    every view); by default those of the class-map pass itself (float32, no mixed precision)."""
    t = int(cm.target[image])
    p = float((cm.logits[image] if logits is None else logits.float()).softmax(-1)[t])
    return f"why '{classes[t]}' (p {p:.2f}): class token map per layer beside Grad-CAM"


# --------------------------------------------------------------------------- pointing game
def quadrant_shares(maps: Tensor) -> Tensor:
    """Share of each map's positive mass in its four quadrants: ``[B, h, w]`` -> ``[B, 4]``
    (top-left, top-right, bottom-left, bottom-right; 0.25 each for a uniform map; NaN for a
    map with no positive mass, which points nowhere)."""
    m = maps.clamp(min=0).float()
    h, w = m.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"quadrants need an even map size, got {h}x{w}")
    q = m.unflatten(-2, (2, h // 2)).unflatten(-1, (2, w // 2)).sum((-3, -1))  # [B, 2, 2]
    total = q.sum((-2, -1), keepdim=True)
    shares = (q / total.clamp(min=1e-30)).flatten(-2)
    return torch.where(total.flatten(-2) > 0, shares, torch.full_like(shares, float("nan")))


def pointing_scores(maps: Tensor, quadrant: Tensor) -> Tensor:
    """Grid pointing game: the share of each map's positive mass in its image's quadrant.

    maps ``[B, h, w]`` (one map per (mosaic, class)); quadrant ``[B]`` (0..3) -> ``[B]``."""
    return quadrant_shares(maps).gather(1, quadrant.long()[:, None])[:, 0]


def centre_prior(h: int, w: int, sigma: float = 0.25) -> Tensor:
    """A Gaussian centred on the map (sigma as a share of the side), ``[h, w]``: the baseline
    that knows nothing about the image. On a 2x2 mosaic it scores exactly 0.25 by symmetry."""
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None] ** 2) / (2 * sigma**2))


def object_bound(attention: Tensor, threshold: float = 0.8) -> Tensor:
    """Whether each token's attention falls >= ``threshold`` inside one quadrant:
    ``[B, L, h, w]`` -> bool ``[B, L]`` (True: object-bound, False: context)."""
    b, n = attention.shape[:2]
    shares = quadrant_shares(attention.reshape(b * n, *attention.shape[-2:])).nan_to_num(0.0)
    return shares.max(-1).values.view(b, n) >= threshold


# --------------------------------------------------------------------------- deletion / insertion
def blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of images ``[B, C, H, W]`` (sigma in pixels, reflect padding)."""
    radius = max(1, int(3 * sigma))
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def pixel_ranks(maps: Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """Rank of each pixel (0 = most important) when ``maps`` ``[B, h, w]`` are upsampled
    bilinearly to ``size``; ties broken at random -> ``[B, H*W]`` (long)."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].flatten(1)
    noise = torch.rand(up.shape, generator=generator) * 1e-6 * up.abs().amax(1, keepdim=True).clamp(min=1e-12)
    order = torch.argsort(up + noise, dim=1, descending=True)
    return torch.argsort(order, dim=1)


def deletion_insertion(score: Callable[[Tensor], Tensor], x: Tensor, baseline: Tensor, ranks: Tensor,
                       steps: int = 10) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves (Petsiuk et al. 2018): ``[B, steps + 1]`` each.

    Deletion replaces the first ``i/steps`` of each image's pixels, in ``ranks`` order
    (``[B, H*W]``, 0 = first), by ``baseline``; insertion starts from ``baseline`` and puts the
    image's pixels back in the same order. ``score`` maps images ``[N, 3, H, W]`` to the target
    class probability ``[N]`` (one batched call per curve).
    """
    b, _, h, w = x.shape
    frac = torch.arange(steps + 1, dtype=torch.float32) / steps
    keep = ranks[:, None, :] >= (frac * h * w).round().long()[None, :, None]  # [B, S+1, HW] not yet deleted
    keep = keep.view(b, steps + 1, 1, h, w).to(x)
    xs, bs = x[:, None], baseline[:, None]
    deleted = (xs * keep + bs * (1 - keep)).flatten(0, 1)
    inserted = (bs * keep + xs * (1 - keep)).flatten(0, 1)
    return score(deleted).view(b, steps + 1), score(inserted).view(b, steps + 1)


def curve_auc(curve: Tensor) -> Tensor:
    """Area under curves ``[..., S+1]`` sampled evenly on [0, 1] (trapezoid rule) -> ``[...]``."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def token_curves(tokens: Tensor, weight: Tensor, bias: Tensor, target: Tensor,
                 order: Tensor) -> tuple[Tensor, Tensor]:
    """Token-space deletion and insertion for the last layer, exact (no re-run): logits are
    ``bias + weight @ mean_k T_k`` with removed tokens set to zero.

    tokens ``[B, L, C]``; weight ``[K, C]``; bias ``[K]``; target ``[B]``; order ``[B, L]``
    (tokens in removal order) -> target probabilities ``[B, L + 1]`` after removing (deletion)
    or keeping only (insertion) the first i tokens.
    """
    b, n, _ = tokens.shape
    per_token = torch.einsum("blc,kc->blk", tokens.float(), weight.float()) / n  # [B, L, K]
    ordered = per_token.gather(1, order[..., None].expand(-1, -1, per_token.shape[-1]))
    first = torch.cat([torch.zeros_like(ordered[:, :1]), ordered.cumsum(1)], 1)  # [B, L+1, K]
    total = per_token.sum(1, keepdim=True)
    idx = target[:, None, None].expand(-1, n + 1, 1)
    deletion = (bias + total - first).softmax(-1).gather(2, idx)[..., 0]
    insertion = (bias + first).softmax(-1).gather(2, idx)[..., 0]
    return deletion, insertion


# --------------------------------------------------------------------------- randomisation, statistics
def randomise_(module: nn.Module, generator: torch.Generator) -> None:
    """Destroy what ``module`` learned, in place: every parameter tensor's values are randomly
    permuted (each keeps its value distribution, so activations keep their scale)."""
    with torch.no_grad():
        for p in module.parameters():
            flat = p.view(-1)
            flat.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)])


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps ``[N, ...]`` (flattened) -> ``[N]``
    (ties ranked by position: fine for continuous maps; NaN when a map is constant)."""
    ra = torch.argsort(torch.argsort(a.flatten(1).float(), 1), 1).float()
    rb = torch.argsort(torch.argsort(b.flatten(1).float(), 1), 1).float()
    const = (a.flatten(1).amax(1) == a.flatten(1).amin(1)) | (b.flatten(1).amax(1) == b.flatten(1).amin(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    r = (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)
    return torch.where(const, torch.full_like(r, float("nan")), r)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (NaNs dropped) and its bootstrap ``level`` confidence interval."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


__all__ = [
    "ClassMaps", "blur", "bootstrap_ci", "centre_prior", "class_maps", "class_panels", "class_title",
    "curve_auc", "deletion_insertion",
    "object_bound", "pixel_ranks", "pointing_scores", "quadrant_shares", "randomise_", "spearman",
    "token_curves",
]

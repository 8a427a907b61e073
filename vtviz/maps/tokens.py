"""Typed token-attention results, resizing, normalising and token statistics.

Everything here works on tensors that a model already returned; no model is run.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vtviz.errors import require
from vtviz.image import Geometry
from vtviz.maps.thresholds import STATS_COSINE, STATS_ENTROPY, STATS_PEAKS, WEAK_MATCH
from vtviz.models.vt import VTOutput


@dataclass(frozen=True)
class LayerMaps:
    """Maps of one VT module for a batch.

    kind: ``"filter"`` or ``"recurrent"`` tokenizer.
    attention: ``[B, L, h, w]`` tokenizer spatial attention, sums to 1 over h*w.
    token_mixing: ``[B, L, L]`` transformer attention, row i sums to 1 over tokens.
    assignment: ``[B, L, h, w]`` projector weights of each pixel over tokens, sums to
        1 over L; None for the last module (its projector would feed nothing).
    tokens: ``[B, L, C_T]`` output tokens.
    to_registers: ``[B, L]`` attention each token gives the transformer's register tokens
        (rows of ``token_mixing`` sum to 1 minus it); None for models without registers.
    """

    kind: str
    attention: Tensor
    token_mixing: Tensor
    assignment: Tensor | None
    tokens: Tensor
    to_registers: Tensor | None = None

    @property
    def mixed_attention(self) -> Tensor:
        """``token_mixing @ attention``: ``[B, L, h, w]``, the maps after token mixing.

        The paper's Figure 6 (second row): what each output token finally pools.
        """
        b, n, h, w = self.attention.shape
        mixed = torch.bmm(self.token_mixing.float(), self.attention.float().flatten(2))
        return mixed.view(b, n, h, w)

    @property
    def num_tokens(self) -> int:
        """L, the number of tokens."""
        return self.attention.shape[1]


@dataclass(frozen=True)
class TokenMaps:
    """Result of :func:`vtviz.token_maps`: logits and per-layer maps of one batch.

    logits: ``[B, classes]``; layers: one :class:`LayerMaps` per VT module;
    input_size: (H, W) of the network input the maps are aligned with.
    """

    logits: Tensor
    layers: tuple[LayerMaps, ...]
    input_size: tuple[int, int]

    @property
    def batch_size(self) -> int:
        """B."""
        return self.logits.shape[0]

    @property
    def kinds(self) -> list[str]:
        """Tokenizer kind per layer."""
        return [layer.kind for layer in self.layers]

    def to(self, device: torch.device | str) -> TokenMaps:
        """A copy with every tensor on ``device``."""
        return _map_tensors(self, lambda t: t.to(device))

    def cpu(self) -> TokenMaps:
        """A copy with every tensor on the CPU."""
        return self.to("cpu")

    def select(self, index: int | slice | Sequence[int]) -> TokenMaps:
        """The maps of some images of the batch (batch dimension kept), as copies: they keep no
        reference to the whole batch's memory (and pickle at their own size)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return _map_tensors(self, lambda t: t[index].clone())

    def __iter__(self) -> Iterator[LayerMaps]:
        return iter(self.layers)

    @staticmethod
    def concat(parts: Sequence[TokenMaps]) -> TokenMaps:
        """Join batches of the same model along the batch dimension."""
        return _zip_tensors(parts, lambda ts: torch.cat(list(ts)))


def _zip_tensors(parts: Sequence[TokenMaps], fn: Callable[[Sequence[Tensor]], Tensor]) -> TokenMaps:
    """Apply ``fn`` to the matching tensors of several :class:`TokenMaps` (None stays None)."""
    first = parts[0]
    def joined(i: int, layer: LayerMaps) -> LayerMaps:
        tensors: dict[str, Any] = {f.name: fn([getattr(p.layers[i], f.name) for p in parts])
                                   for f in fields(layer) if isinstance(getattr(layer, f.name), Tensor)}
        return replace(layer, **tensors)

    layers = tuple(joined(i, layer) for i, layer in enumerate(first.layers)
    )
    return TokenMaps(fn([p.logits for p in parts]), layers, first.input_size)


def _map_tensors(maps: TokenMaps, fn: Callable[[Tensor], Tensor]) -> TokenMaps:
    return _zip_tensors([maps], lambda ts: fn(ts[0]))


@dataclass(frozen=True)
class ImageMaps:
    """Maps of a batch of images, with what is needed to draw them over the originals.

    images: original RGB uint8 arrays ``[H_i, W_i, 3]``; geometries: where each sits in
    the input; maps: :class:`TokenMaps` for the batch (on the CPU); classes: label names;
    ood_scores: each image's out-of-distribution score (:mod:`vtviz.models.ood`) and ood_threshold
    the model's flag level, both None for a model without the flag; looks_like: per image, the
    1000-class reference's top class (a reference flag only, else None).
    """

    images: list[np.ndarray]
    geometries: list[Geometry]
    maps: TokenMaps
    classes: tuple[str, ...]
    ood_scores: tuple[float, ...] | None = None
    ood_threshold: float | None = None
    looks_like: tuple[str, ...] | None = None

    def unfamiliar(self) -> list[bool] | None:
        """Per image: True when it is unlike the training photos (its prediction is then not to
        be trusted: probably none of the model's classes); None without an OOD flag."""
        if self.ood_scores is None or self.ood_threshold is None:
            return None
        return [s > self.ood_threshold for s in self.ood_scores]

    def prediction_label(self, i: int) -> str:
        """E.g. ``"tench 97%"``, or for a flagged photo ``"unfamiliar: looks like baboon"`` (the
        model's own label for it would be a confident wrong answer)."""
        cls, p = self.top_k(1)[i][0]
        flags = self.unfamiliar()
        if flags and flags[i]:
            return f"unfamiliar: looks like {self.looks_like[i]}" if self.looks_like else \
                f"{cls} {p:.0%} · unfamiliar photo"
        return f"{cls} {p:.0%}"

    def unfamiliar_note(self, i: int) -> str | None:
        """For a flagged photo, what to tell a person, e.g. ``"looks like: baboon — not one of
        this model's 10 classes"``; None when it is not flagged or there is no flag."""
        flags = self.unfamiliar()
        if not flags or not flags[i]:
            return None
        seen = f"looks like: {self.looks_like[i]} — " if self.looks_like else "unfamiliar photo: probably "
        return f"{seen}not one of this model's {len(self.classes)} classes"

    def top_k(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per image."""
        return top_k(self.maps.logits, self.classes, k)

    def __len__(self) -> int:
        return len(self.images)

    def select(self, index: Sequence[int]) -> ImageMaps:
        """The given images, in that order."""
        idx = list(index)
        scores = None if self.ood_scores is None else tuple(self.ood_scores[i] for i in idx)
        looks = None if self.looks_like is None else tuple(self.looks_like[i] for i in idx)
        return ImageMaps([self.images[i] for i in idx], [self.geometries[i] for i in idx],
                         self.maps.select(idx), self.classes, scores, self.ood_threshold, looks)

    @staticmethod
    def concat(parts: Sequence[ImageMaps]) -> ImageMaps:
        """Join results of separate runs of the same model (images in order)."""
        scores = (None if any(p.ood_scores is None for p in parts)
                  else tuple(s for p in parts for s in p.ood_scores or ()))
        looks = (None if any(p.looks_like is None for p in parts)
                 else tuple(s for p in parts for s in p.looks_like or ()))
        return ImageMaps([im for p in parts for im in p.images],
                         [g for p in parts for g in p.geometries],
                         TokenMaps.concat([p.maps for p in parts]), parts[0].classes, scores,
                         parts[0].ood_threshold, looks)


def top_k(logits: Tensor, classes: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, softmax probability) for each row of ``[B, classes]`` logits."""
    probs = logits.float().softmax(-1)
    vals, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(classes[i] if i < len(classes) else str(i), float(v)) for v, i in zip(vr, ir)]
            for vr, ir in zip(vals.tolist(), idx.tolist())]


def from_output(out: VTOutput, kinds: Sequence[str], input_size: tuple[int, int],
                registers: int = 0) -> TokenMaps:
    """Wrap a model's :class:`~vtviz.models.vt.VTOutput` into :class:`TokenMaps` (float32 maps)."""
    h, w = out.map_size
    layers = []
    for kind, layer in zip(kinds, out.layers):
        b, n, _ = layer.attention.shape
        assignment = None
        if layer.assignment is not None:
            assignment = layer.assignment.transpose(1, 2).reshape(b, n, h, w).float()
        layers.append(LayerMaps(
            kind=kind,
            attention=layer.attention.view(b, n, h, w).float(),
            token_mixing=layer.mixing.float(),
            assignment=assignment,
            tokens=layer.tokens.float(),
            to_registers=layer.to_registers.float() if registers else None,
        ))
    return TokenMaps(out.logits.float(), tuple(layers), input_size)


# --------------------------------------------------------------------------- resizing
def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[..., h, w]`` maps to ``[..., H, W]`` (half-pixel aligned)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


class Scale(str, enum.Enum):
    """How maps are brought to [0, 1] for display (the one definition every view uses).

    PER_MAP: each map on its own min..max (shapes comparable, strengths not).
    PER_LAYER: 0..max over all tokens of one image and layer (tokens of one image comparable).
    SHARED: 0..max over everything drawn together (tokens comparable across images too).
    ABSOLUTE: the same 0..max range as SHARED (kept as a name for old callers).
    All but PER_MAP keep zero at zero: attention is a share of mass, 0 means none.
    """

    PER_MAP = "per_map"
    PER_LAYER = "per_layer"
    SHARED = "shared"
    ABSOLUTE = "absolute"


def normalize(maps: Tensor, scale: Scale | str = Scale.PER_MAP, eps: float = 1e-12) -> Tensor:
    """Scale ``[B, L, h, w]`` (or ``[L, h, w]``, ``[h, w]``) maps into [0, 1] by ``scale``."""
    return normalize_with_range(maps, scale, eps)[0]


def normalize_with_range(maps: Tensor, scale: Scale | str = Scale.PER_MAP,
                         eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """:func:`normalize`, also returning the upper ends of the ranges used (``hi``, broadcastable)."""
    scale = Scale(scale)
    x = maps.float()
    if scale is Scale.PER_MAP:
        dims: tuple[int, ...] = (-2, -1)
    elif scale is Scale.PER_LAYER:
        dims = tuple(range(-min(3, x.ndim), 0))
    else:
        dims = tuple(range(x.ndim))
    hi = x.amax(dim=dims, keepdim=True)
    lo = x.amin(dim=dims, keepdim=True) if scale is Scale.PER_MAP else torch.zeros_like(hi)
    return ((x - lo) / (hi - lo).clamp_min(eps)).clamp(0, 1), hi


# --------------------------------------------------------------------------- statistics
def normalized_entropy(attention: Tensor) -> Tensor:
    """Entropy / ln(h*w) of each map ``[..., h, w]`` -> ``[...]``; 1 = uniform, 0 = one pixel."""
    p = attention.float().flatten(-2)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)
    n = p.shape[-1]
    return ent / math.log(n) if n > 1 else torch.zeros_like(ent)


def pairwise_cosine(attention: Tensor) -> Tensor:
    """Cosine similarity between the maps of different tokens: ``[B, L, h, w]`` -> ``[B, L, L]``."""
    v = F.normalize(attention.float().flatten(2), dim=-1)
    return torch.bmm(v, v.transpose(1, 2))


def mean_offdiagonal_cosine(attention: Tensor) -> Tensor:
    """Mean cosine similarity over pairs of different tokens, per image: ``[B, L, h, w]`` -> ``[B]``.

    Differentiable: used as the training loss's diversity penalty.
    """
    cos = pairwise_cosine(attention)
    n = cos.shape[-1]
    off = cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)
    return off / max(n * (n - 1), 1)


def nearest_token_cosine(attention: Tensor) -> Tensor:
    """Mean over tokens of the cosine to its most similar other token: ``[B, L, h, w]`` -> ``[B]``.

    1 when every token has a duplicate. Differentiable: the training's diversity penalty
    (it targets duplicates directly, where the mean cosine is diluted by all other pairs).
    """
    cos = pairwise_cosine(attention)
    n = cos.shape[-1]
    if n < 2:
        return cos.new_zeros(cos.shape[0])
    eye = torch.eye(n, dtype=torch.bool, device=cos.device)
    return cos.masked_fill(eye, -1.0).amax(-1).mean(-1)


def peak_positions(attention: Tensor) -> Tensor:
    """(row, col) of each map's maximum: ``[..., h, w]`` -> ``[..., 2]`` (long)."""
    w = attention.shape[-1]
    idx = attention.flatten(-2).argmax(-1)
    return torch.stack((idx // w, idx % w), dim=-1)


def distinct_peaks(attention: Tensor) -> Tensor:
    """Number of distinct peak locations among the L tokens of each image: ``[B]``."""
    idx = attention.flatten(-2).argmax(-1).sort(-1).values  # [B, L]
    return (idx[:, 1:] != idx[:, :-1]).sum(-1) + 1


def border_mass(attention: Tensor, ring: int = 1) -> Tensor:
    """Share of each map's mass on the outer ``ring`` pixels of the map: ``[..., h, w]`` -> ``[...]``."""
    a = attention.float()
    h, w = a.shape[-2:]
    inner = a[..., ring:h - ring, ring:w - ring].sum(dim=(-2, -1))
    total = a.sum(dim=(-2, -1)).clamp_min(1e-12)
    return 1 - inner / total


def top_share(attention: Tensor, fraction: float = 0.1) -> Tensor:
    """Share of each map's mass in its top ``fraction`` of pixels: ``[..., h, w]`` -> ``[...]``."""
    p = attention.float().flatten(-2)
    k = max(1, round(fraction * p.shape[-1]))
    return p.topk(k, dim=-1).values.sum(-1) / p.sum(-1).clamp_min(1e-12)


def map_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of corresponding maps: ``[..., h, w]`` x2 -> ``[...]``."""
    x = a.float().flatten(-2)
    y = b.float().flatten(-2)
    x = x - x.mean(-1, keepdim=True)
    y = y - y.mean(-1, keepdim=True)
    return (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1)).clamp_min(1e-12)


@dataclass(frozen=True)
class TokenStat:
    """Statistics of one token's map in one image and layer.

    entropy: normalised entropy (1 = uniform, 0 = one pixel); peak: (row, col) map cell;
    peak_xy: (x, y) of that cell's centre on the original image, in its pixels (None when
    the geometry is unknown);
    spread: root-mean-square distance of the attention from its centre of mass, in cells;
    top10: share of attention in the top 10% of pixels; overlap: mean IoU of this token's
    50%-mass region with the other tokens' regions.
    """

    image: int
    layer: int
    kind: str
    token: int
    entropy: float
    peak: tuple[int, int]
    peak_xy: tuple[float, float] | None
    spread: float
    top10: float
    overlap: float

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """A JSON-ready row (floats rounded to ``digits``)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # (asdict deep-copies: slow per row)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, digits)
        if self.peak_xy is not None:
            d["peak_xy"] = [round(v, 1) for v in self.peak_xy]
        d["peak"] = list(self.peak)
        return d


def spread(maps: Tensor) -> Tensor:
    """RMS distance (in cells) of each map's mass from its centre of mass: ``[..., h, w]`` -> ``[...]``."""
    p = maps.float()
    p = p / p.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    h, w = p.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, w)
    cy = (p * ys).sum(dim=(-2, -1), keepdim=True)
    cx = (p * xs).sum(dim=(-2, -1), keepdim=True)
    return ((p * ((ys - cy) ** 2 + (xs - cx) ** 2)).sum(dim=(-2, -1))).sqrt()


def mass_threshold(map2d: np.ndarray, mass: float) -> float:
    """Value t such that the pixels with value >= t hold ``mass`` of the map's total."""
    return float(mass_thresholds(np.asarray(map2d)[None], mass)[0])


def mass_thresholds(maps: np.ndarray, mass: float, bins: int = 1024) -> np.ndarray:
    """:func:`mass_threshold` of each of ``maps`` ``[N, H, W]`` at once -> ``[N]`` (inf for an all-zero map).

    The one definition of a map's ``mass`` region (:func:`mass_regions`, the manifest's overlap,
    the pieces count and the drawn outlines all use it): the largest value t such that the pixels
    at or above t hold ``mass`` of the map. Token grids (up to :data:`EXACT_SIDE` cells a side)
    get it exactly, by a sort. Larger maps (the smooth upsamplings that pictures trace) take a
    fast path, ~5x cheaper: a histogram of ``bins`` levels between 0 and each map's maximum, on a
    regular sub-grid of about 128 a side; its region holds ``mass`` within ~1.5% on such maps.
    """
    maps = np.asarray(maps)
    if max(maps.shape[-2:]) <= EXACT_SIDE:
        flat = np.maximum(maps.reshape(len(maps), -1).astype(np.float64), 0)
        ordered = -np.sort(-flat, axis=1)
        cum = np.cumsum(ordered, axis=1)
        total = cum[:, -1]
        k = np.minimum((cum < (mass * total)[:, None]).sum(1), flat.shape[1] - 1)  # the pixel reaching mass
        exact = ordered[np.arange(len(flat)), k]
        exact[total <= 0] = np.inf
        return exact
    step = -(-max(maps.shape[-2:]) // 128)
    v = np.maximum(np.asarray(maps[:, ::step, ::step], np.float32).reshape(len(maps), -1), 0)
    top = v.max(axis=1)
    scale = np.where(top > 0, (bins - 1) / np.maximum(top, 1e-30), 0).astype(np.float32)
    q = (v * scale[:, None]).astype(np.int32)
    q += (np.arange(len(v), dtype=np.int32) * bins)[:, None]
    # each level's mass as its count times its centre (within 1/(2 bins) of the max per pixel;
    # counting is ~15x faster than a weighted bincount); level 0 takes the exact remainder
    hist = np.bincount(q.ravel(), minlength=len(v) * bins).reshape(len(v), bins) * (
        (np.arange(bins, dtype=np.float64) + 0.5) / np.where(scale > 0, scale, 1)[:, None])
    hist[:, 0] = np.maximum(v.sum(1, dtype=np.float64) - hist[:, 1:].sum(1), 0)
    from_top = np.cumsum(hist[:, ::-1], axis=1)  # mass at or above each level, highest first
    total = from_top[:, -1]
    k = np.minimum((from_top < (mass * total)[:, None]).sum(1), bins - 1)  # levels needed, minus one
    level = bins - 1 - k
    t = level.astype(np.float64) / np.where(scale > 0, scale, 1)
    t = np.minimum(t, top)  # float rounding must not lift the top level above the maximum itself
    t[total <= 0] = np.inf
    return t


#: Maps up to this many cells a side (token grids) get the exact mass threshold.
EXACT_SIDE = 64


def mass_regions(maps: Tensor, mass: float = 0.5) -> Tensor:
    """Bool masks of each map's smallest region holding ``mass`` of it: ``[..., h, w]``
    (the pixels at or above :func:`mass_thresholds`)."""
    flat = maps.detach().float().cpu().reshape(-1, *maps.shape[-2:]).numpy()
    levels = mass_thresholds(flat, mass) if len(flat) else np.zeros(0)
    return torch.from_numpy(flat >= levels[:, None, None]).view(maps.shape).to(maps.device)


def region_iou(maps: Tensor, mass: float = 0.5) -> Tensor:
    """IoU of every pair of tokens' ``mass`` regions: ``[B, L, h, w]`` -> ``[B, L, L]``."""
    r = mass_regions(maps, mass).flatten(2).float()
    inter = torch.bmm(r, r.transpose(1, 2))
    area = r.sum(-1)
    union = area[:, :, None] + area[:, None, :] - inter
    return inter / union.clamp_min(1)


def token_table(maps: TokenMaps, geometries: Sequence[Geometry] | None = None,
                layers: Sequence[int] | None = None) -> list[TokenStat]:
    """The per-token statistics table: one :class:`TokenStat` per (image, layer, token).

    Used by the export manifest, the app and :func:`vtviz.analysis.token_stats` alike.
    ``geometries`` (one per image) place each peak on the original image (``peak_xy``).
    (``[s.to_dict() for s in rows]`` gives rows for any table library.)
    """
    rows: list[TokenStat] = []
    for li, layer in enumerate(maps.layers):
        if layers is not None and li not in layers:
            continue
        a = layer.attention.float().cpu()
        ent, peaks, spr, top = normalized_entropy(a), peak_positions(a), spread(a), top_share(a)
        iou = region_iou(a)
        n, h, w = a.shape[1:]
        mean_iou = (iou.sum(-1) - iou.diagonal(dim1=1, dim2=2)) / max(n - 1, 1)
        # as Python lists first: indexing tensors element by element costs ~1 us a number
        ent_l, peaks_l, spr_l, top_l, iou_l = (x.tolist() for x in (ent, peaks, spr, top, mean_iou))
        for b in range(a.shape[0]):
            geo = geometries[b] if geometries is not None else None
            for t in range(n):
                row, col = int(peaks_l[b][t][0]), int(peaks_l[b][t][1])
                xy = geo.cell_to_original(row, col, (h, w)) if geo is not None else None
                rows.append(TokenStat(b, li, layer.kind, t, float(ent_l[b][t]), (row, col), xy,
                                      float(spr_l[b][t]), float(top_l[b][t]), float(iou_l[b][t])))
    return rows


@dataclass(frozen=True)
class LayerStats:
    """Token statistics of one layer averaged over images (see :func:`layer_stats`)."""

    kind: str
    entropy: float  # mean normalised entropy of the maps (1 = uniform)
    cosine: float  # mean cosine similarity between different tokens' maps of one image
    distinct_peaks: float  # mean number of distinct peak locations per image (of L)
    border_sinks: float  # mean number of tokens per image with > half their mass on the ring
    top10_share: float  # mean share of attention in the top 10% of pixels
    images: int

    def within_bounds(self, entropy: float = STATS_ENTROPY, cosine: float = STATS_COSINE,
                      peaks: float = STATS_PEAKS) -> bool:
        """True when the layer's tokens are focused, diverse and spread out enough to show."""
        return self.entropy <= entropy and self.cosine <= cosine and self.distinct_peaks >= peaks


class StatsAccumulator:
    """Running per-layer token statistics over many batches of :class:`TokenMaps`."""

    def __init__(self) -> None:
        self._sums: dict[int, np.ndarray] = {}
        self._kinds: dict[int, str] = {}
        self._count = 0

    def update(self, maps: TokenMaps) -> None:
        """Add one batch."""
        for i, layer in enumerate(maps.layers):
            a = layer.attention
            row = np.array([
                normalized_entropy(a).mean(-1).sum().item(),
                mean_offdiagonal_cosine(a).sum().item(),
                distinct_peaks(a).float().sum().item(),
                (border_mass(a) > 0.5).float().sum(-1).sum().item(),
                top_share(a).mean(-1).sum().item(),
            ])
            self._sums[i] = self._sums.get(i, 0) + row
            self._kinds[i] = layer.kind
        self._count += maps.batch_size

    def result(self) -> list[LayerStats]:
        """Per-layer means over all images seen."""
        n = max(self._count, 1)
        return [
            LayerStats(self._kinds[i], *(float(v) / n for v in self._sums[i]), images=self._count)  # type: ignore[misc, arg-type]
            for i in sorted(self._sums)
        ]


def layer_stats(maps: TokenMaps) -> list[LayerStats]:
    """Per-layer token statistics of one batch of maps, averaged over its images."""
    acc = StatsAccumulator()
    acc.update(maps)
    return acc.result()


# --------------------------------------------------------------------------- matching tokens


@dataclass(frozen=True)
class TokenMatching:
    """A one-to-one correspondence between the tokens of two layers or models.

    pairs: ``(i, j)`` for each token ``i`` of the first that has a partner ``j`` in the second;
    similarity: the mean cosine similarity of their maps over the images compared (same order);
    images: how many images the similarity is averaged over.
    """

    pairs: tuple[tuple[int, int], ...]
    similarity: tuple[float, ...]
    images: int

    def partner(self, token: int) -> tuple[int, float] | None:
        """(j, similarity) of token ``token`` of the first, or None when it has no partner."""
        for (i, j), s in zip(self.pairs, self.similarity):
            if i == token:
                return j, s
        return None

    def label(self, token: int) -> str:
        """E.g. ``"token 7 · sim 0.82"``, ``"token 3 · sim 0.12 (weak)"`` or ``"unmatched"``."""
        found = self.partner(token)
        if found is None:
            return "unmatched"
        j, s = found
        return f"token {j} · sim {s:.2f}" + (" (weak)" if s < WEAK_MATCH else "")


def match_tokens(a: Tensor, b: Tensor) -> TokenMatching:
    """Hungarian matching (SciPy's ``linear_sum_assignment``) of the tokens of two sets of maps
    of the same images, ``[B, L, h, w]`` and ``[B, L', h', w']``, maximising the summed mean
    cosine similarity of paired maps (maps of another size are resized to ``a``'s)."""
    linear_sum_assignment = require("scipy.optimize").linear_sum_assignment

    if a.shape[0] != b.shape[0]:
        raise ValueError(f"match_tokens needs maps of the same images, got {a.shape[0]} and {b.shape[0]}")
    if b.shape[-2:] != a.shape[-2:]:
        b = upsample(b, (a.shape[-2], a.shape[-1]))
    va = F.normalize(a.float().flatten(2), dim=-1)
    vb = F.normalize(b.float().flatten(2), dim=-1)
    sim = torch.bmm(va, vb.transpose(1, 2)).mean(0).cpu().numpy()  # [L, L']
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return TokenMatching(tuple((int(i), int(j)) for i, j in zip(rows, cols)),
                         tuple(float(sim[i, j]) for i, j in zip(rows, cols)), int(a.shape[0]))


# --------------------------------------------------------------------------- saved maps
@dataclass(frozen=True)
class SavedMaps:
    """Maps read back from a ``maps.npz`` (app download or ``vtviz export``): everything but the
    photos themselves. maps: :class:`TokenMaps` ``[N, ...]``; names, classes, model; geometries
    place the maps on the original photos (:func:`vtviz.maps_to_original`); token vectors are
    not stored (``tokens`` is ``[N, L, 0]``); ood_scores and
    ood_threshold when the model had the flag."""

    maps: TokenMaps
    names: list[str]
    classes: tuple[str, ...]
    model: str
    geometries: list[Geometry]
    ood_scores: tuple[float, ...] | None = None
    ood_threshold: float | None = None

    @property
    def kinds(self) -> list[str]:
        """Tokenizer kind per layer."""
        return self.maps.kinds


def read_maps_npz(source: str | Path | bytes) -> SavedMaps:
    """Read a ``maps.npz`` written by the app or by ``vtviz export`` (keys of
    :func:`vtviz.viz.views.raw_arrays`); raises ValueError naming what is missing."""
    import io

    f = np.load(io.BytesIO(source) if isinstance(source, bytes) else source, allow_pickle=False)
    need = {"logits", "names", "classes", "kinds", "input_size", "original_size", "scale", "offset"}
    missing = sorted(need - set(f.files))
    if missing:
        raise ValueError(f"{source if not isinstance(source, bytes) else 'npz'}: not a vtviz maps file "
                         f"(missing {missing})")
    kinds = [str(k) for k in f["kinds"]]
    layers = []
    for i, kind in enumerate(kinds):
        att = torch.from_numpy(f[f"layer{i}_attention"])
        mix = torch.from_numpy(f[f"layer{i}_token_mixing"])
        asg = torch.from_numpy(f[f"layer{i}_assignment"]) if f"layer{i}_assignment" in f.files else None
        layers.append(LayerMaps(kind, att, mix, asg, torch.zeros(att.shape[0], att.shape[1], 0)))
    input_size = (int(f["input_size"][0]), int(f["input_size"][1]))
    geos = [Geometry((int(o[0]), int(o[1])), input_size, (float(s[0]), float(s[1])), (float(t[0]), float(t[1])))
            for o, s, t in zip(f["original_size"], f["scale"], f["offset"])]
    scores = tuple(float(v) for v in f["ood_scores"]) if "ood_scores" in f.files else None
    threshold = float(f["ood_threshold"]) if "ood_threshold" in f.files else None
    return SavedMaps(TokenMaps(torch.from_numpy(f["logits"]), tuple(layers), input_size),
                     [str(n) for n in f["names"]], tuple(str(c) for c in f["classes"]),
                     str(f["model"]) if "model" in f.files else "", geos, scores, threshold)

"""Diagnostics of a VT model's token transformer, projector and tokenizers.

They say when a view is meaningless: every token reading one "sink" token (the mixing
matrix is one column, token-mixed maps are sixteen copies of one map), one token owning
every pixel of the projector (the assignment partition is one colour), tokens parked at
a fixed place whatever the image ("positional" tokens), tokens on the map's border, and
tokens whose vectors are norm outliers ("high-norm" tokens, Darcet et al. 2023).

Per-image quantities are computed on a batch of :class:`~vtviz.maps.tokens.TokenMaps`;
:class:`DiagnosticsAccumulator` adds them up over a dataset (peak locations need many
images: a token is positional when its peak hardly moves across them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtviz.maps.thresholds import (
    BORDER_SHARE,
    HIGH_NORM_FACTOR,
    MAX_BORDER_SINKS,
    MAX_POSITIONAL,
    MIN_MIXING_TARGETS,
    MIN_OWNERS,
    OWNER_SHARE,
    POSITIONAL_CELLS,
    REGISTER_SHARE,
    SELF_SHARE,
    SINK_SHARE,
)
from vtviz.maps.tokens import LayerMaps, TokenMaps, border_mass, peak_positions


def image_mixing(mixing: Tensor) -> Tensor:
    """Rows of ``[B, L, L]`` token mixing renormalised over the image tokens (registers out)."""
    m = mixing.float()
    return m / m.sum(-1, keepdim=True).clamp_min(1e-12)


def self_attention(mixing: Tensor) -> Tensor:
    """Mean attention a token gives itself, ``[B, L, L]`` -> ``[B]``: the diagonal of the
    (renormalised) mixing; 1 for the identity, which relates no token to another."""
    return image_mixing(mixing).diagonal(dim1=1, dim2=2).mean(-1)


def received_attention(mixing: Tensor) -> Tensor:
    """Share of all attention each token receives, ``[B, L, L]`` -> ``[B, L]`` (sums to 1).

    Column means of the (renormalised) mixing matrix: 1/L each for uniform or identity
    mixing, 1 for a sink token that every token reads.
    """
    return image_mixing(mixing).mean(dim=1)


def distinct_targets(mixing: Tensor) -> Tensor:
    """Number of distinct argmax targets among the rows of ``[B, L, L]`` mixing: ``[B]``."""
    idx = mixing.argmax(-1).sort(-1).values  # [B, L]
    return (idx[:, 1:] != idx[:, :-1]).sum(-1) + 1


def argmax_ownership(assignment: Tensor) -> Tensor:
    """Share of pixels each token owns (largest weight there): ``[B, L, h, w]`` -> ``[B, L]``
    (:func:`vtviz.analysis.soft_ownership` shares each pixel among tokens instead)."""
    b, n = assignment.shape[:2]
    owner = assignment.flatten(2).argmax(1)  # [B, hw]
    counts = torch.zeros(b, n, device=assignment.device)
    counts.scatter_add_(1, owner, torch.ones_like(owner, dtype=counts.dtype))
    return counts / owner.shape[-1]


def token_norm_ratio(tokens: Tensor) -> Tensor:
    """Each token vector's norm over the image's median token norm: ``[B, L, C]`` -> ``[B, L]``."""
    norms = tokens.float().norm(dim=-1)
    return norms / norms.median(dim=-1, keepdim=True).values.clamp_min(1e-12)


@dataclass(frozen=True)
class LayerDiagnostics:
    """Diagnostics of one VT module over a set of images (means over images unless noted).

    mixing_targets: distinct argmax targets of the token mixing per image (of L; 1 = all
    read one token; 16 for the identity, so read it with ``self_read``). self_read: mean
    attention a token gives itself (the mixing's diagonal): near 1, the tokens read no other
    token. max_received: largest share of attention one token receives, per
    image. sink_tokens: tokens per image that receive more than half of all attention.
    received: ``[L]`` mean share each token receives (1/L each when balanced).
    to_registers: mean attention image tokens give the register tokens (None: no registers).
    owners: tokens per image that own at least 5% of the pixels in the projector
    (None: no projector). top_owner: the largest owner's share of the pixels.
    border_sinks: tokens per image with more than half their attention on the outer ring.
    high_norm: tokens per image whose vector norm is 3x the image's median or more.
    positional: tokens whose peak stays within 1.5 cells (mean) of one place across the
    images (needs several images; None for fewer than 8). peak_spread: ``[L]`` that mean
    distance per token, in map cells.
    """

    kind: str
    images: int
    mixing_targets: float
    max_received: float
    sink_tokens: float
    received: list[float]
    to_registers: float | None
    owners: float | None
    top_owner: float | None
    border_sinks: float
    high_norm: float
    positional: list[int] | None = None
    peak_spread: list[float] | None = field(default=None)
    self_read: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def warnings(self) -> list[str]:
        """Plain-language warnings for views that these numbers make misleading."""
        out = []
        top = int(np.argmax(self.received))
        if self.to_registers is not None and self.to_registers > REGISTER_SHARE:
            out.append(f"the tokens give {self.to_registers:.0%} of their transformer attention to the "
                       "register tokens: they read one another only through the registers' summary, and the "
                       "mixing among image tokens shown is what little is left")
        elif self.self_read is not None and self.self_read > SELF_SHARE:
            out.append(f"the tokens give {self.self_read:.0%} of their transformer attention to themselves: "
                       "they barely read one another (the mixing is close to the identity), whatever the "
                       "number of distinct targets says")
        elif self.mixing_targets < 2 or self.max_received > SINK_SHARE:
            out.append(f"token mixing is degenerate: on average the tokens read token {top} "
                       f"({self.max_received:.0%} of all attention, {self.mixing_targets:.1f} "
                       "distinct targets per image), so token-mixed maps are nearly one map")
        if self.owners is not None and self.owners < 2:
            out.append(f"one token owns {self.top_owner:.0%} of the pixels in the projector: "
                       "the assignment partition is nearly one colour")
        if self.positional:
            out.append(f"token(s) {', '.join(map(str, self.positional))} sit at the same place "
                       "on every image (positional): their maps do not follow content")
        if self.border_sinks >= 1.5:
            out.append(f"{self.border_sinks:.1f} tokens per image put most of their attention on "
                       "the map's border")
        return out

    def within_targets(self) -> bool:
        """The targets of the models issue: mixing, projector, positional and border tokens."""
        ok = self.mixing_targets >= MIN_MIXING_TARGETS and self.max_received <= SINK_SHARE
        ok = ok and (self.to_registers is None or self.to_registers <= REGISTER_SHARE)
        ok = ok and (self.self_read is None or self.self_read <= SELF_SHARE)  # the identity relates nothing
        if self.owners is not None:
            ok = ok and self.owners >= MIN_OWNERS
        if self.positional is not None:
            ok = ok and len(self.positional) <= MAX_POSITIONAL
        return ok and self.border_sinks <= MAX_BORDER_SINKS


class DiagnosticsAccumulator:
    """Running diagnostics over batches of :class:`TokenMaps` (call :meth:`update`, then
    :meth:`result`). Peak positions are kept per image (``[N, L, 2]``, small)."""

    def __init__(self) -> None:
        self._sums: dict[int, dict[str, Any]] = {}
        self._kinds: dict[int, str] = {}
        self._peaks: dict[int, list[Tensor]] = {}
        self._count = 0

    def update(self, maps: TokenMaps) -> None:
        """Add one batch."""
        for i, layer in enumerate(maps.layers):
            per = per_image(layer)
            acc = self._sums.setdefault(i, {})
            for key, value in per.items():
                acc[key] = acc.get(key, 0) + value.sum(0).double().cpu()
            self._kinds[i] = layer.kind
            self._peaks.setdefault(i, []).append(peak_positions(layer.attention).cpu())
        self._count += maps.batch_size

    def result(self) -> list[LayerDiagnostics]:
        """Per-layer diagnostics over all images seen."""
        n = max(self._count, 1)
        out = []
        for i in sorted(self._sums):
            s = {k: (v / n) for k, v in self._sums[i].items()}
            peaks = torch.cat(self._peaks[i]).float()  # [N, L, 2]
            positional = spread = None
            if len(peaks) >= 8:
                spread_t = (peaks - peaks.mean(0, keepdim=True)).norm(dim=-1).mean(0)  # [L]
                spread = [round(float(v), 3) for v in spread_t]
                positional = [j for j, v in enumerate(spread) if v < POSITIONAL_CELLS]
            out.append(LayerDiagnostics(
                kind=self._kinds[i], images=self._count,
                mixing_targets=float(s["targets"]), max_received=float(s["max_received"]),
                sink_tokens=float(s["sinks"]),
                received=[round(float(v), 4) for v in s["received"]],
                to_registers=float(s["to_registers"]) if "to_registers" in s else None,
                owners=float(s["owners"]) if "owners" in s else None,
                top_owner=float(s["top_owner"]) if "top_owner" in s else None,
                border_sinks=float(s["border_sinks"]), high_norm=float(s["high_norm"]),
                positional=positional, peak_spread=spread, self_read=float(s["self_read"]),
            ))
        return out


def table(diagnostics: list[LayerDiagnostics]) -> list[dict[str, Any]]:
    """One row per layer for people (the app's diagnostics table): rounded numbers, None where a
    quantity does not apply (no registers, no projector)."""
    def r(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)
    return [{"layer": f"{i} · {d.kind}", "mixing targets": round(d.mixing_targets, 2),
             "reads itself": r(d.self_read, 3), "max received": round(d.max_received, 3),
             "to registers": r(d.to_registers, 3), f"owners >= {OWNER_SHARE:.0%}": r(d.owners, 2),
             "border sinks": round(d.border_sinks, 2), "positional": ", ".join(map(str, d.positional or [])) or "-"}
            for i, d in enumerate(diagnostics)]


def per_image(layer: LayerMaps) -> dict[str, Tensor]:
    """Per-image diagnostics of one layer, each ``[B]`` (``received``: ``[B, L]``)."""
    received = received_attention(layer.token_mixing)
    out = {
        "targets": distinct_targets(layer.token_mixing).float(),
        "received": received,
        "max_received": received.amax(-1),
        "self_read": self_attention(layer.token_mixing),
        "sinks": (received > SINK_SHARE).float().sum(-1),
        "border_sinks": (border_mass(layer.attention) > BORDER_SHARE).float().sum(-1),
        "high_norm": (token_norm_ratio(layer.tokens) >= HIGH_NORM_FACTOR).float().sum(-1),
    }
    if layer.to_registers is not None:
        out["to_registers"] = layer.to_registers.float().mean(-1)
    if layer.assignment is not None:
        owned = argmax_ownership(layer.assignment)
        out["owners"] = (owned >= OWNER_SHARE).float().sum(-1)
        out["top_owner"] = owned.amax(-1)
    return out


def diagnose(maps: TokenMaps) -> list[LayerDiagnostics]:
    """Diagnostics of one batch of maps, per layer (positional tokens need >= 8 images)."""
    acc = DiagnosticsAccumulator()
    acc.update(maps)
    return acc.result()


def image_diagnostics(maps: TokenMaps) -> list[list[dict[str, Any]]]:
    """Per image, per layer: the per-image diagnostics as JSON-ready dicts (the export
    manifest's ``diagnostics``): mixing targets, the most-read token and its share, projector
    owners and the top owner's share, border sinks, high-norm tokens."""
    per_layer = [per_image(layer) for layer in maps.layers]
    out = []
    for b in range(maps.batch_size):
        rows = []
        for layer, per in zip(maps.layers, per_layer):
            row: dict[str, Any] = {
                "kind": layer.kind, "mixing_targets": int(per["targets"][b]),
                "most_read_token": int(per["received"][b].argmax()),
                "max_received": round(float(per["max_received"][b]), 4),
                "self_read": round(float(per["self_read"][b]), 4),
                "border_sinks": int(per["border_sinks"][b]), "high_norm": int(per["high_norm"][b]),
            }
            if "owners" in per:
                row.update(owners=int(per["owners"][b]), top_owner=round(float(per["top_owner"][b]), 4))
            rows.append(row)
        out.append(rows)
    return out

"""Region geometry: each token's 50%-mass region traced as outlines, drawn on a photo (one
map, all tokens at once, or an argmax partition), labelled, and counted in pieces.

RGB uint8 images ``[H, W, 3]`` and float maps ``[H, W]`` in, RGB uint8 out; no model is run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vtviz.maps.tokens import mass_threshold, mass_thresholds
from vtviz.viz.colors import TOKEN_COLORS, resize_map

#: Sub-pixel bits of the outlines of :meth:`Regions.outlines` (cv2's ``shift``).
OUTLINE_SHIFT = 3


#: Samples across the shorter side on which :func:`trace_regions` traces a large map.
TRACE_SAMPLES = 96


@dataclass(frozen=True)
class Regions:
    """The mass regions of maps ``[N, H, W]`` of one photo, traced once, drawable at any size.

    ``levels`` ``[N]``: the value at and above which a map's pixels form its region (inf for an
    all-zero map); ``polygons``: per map, the outer contours of its region as float ``[n, 2]``
    (x, y) pixel-centre coordinates on the traced maps' grid ``shape`` = (H, W). Maps of one photo
    at other sizes (smooth resamplings) have their regions within a pixel or two of these.
    """

    levels: np.ndarray
    polygons: tuple[tuple[np.ndarray, ...], ...]
    shape: tuple[int, int]
    peaks: np.ndarray  # [N, 2] float (x, y): each map's maximum on the traced grid

    def _scale(self, size: tuple[int, int], bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Factor and offset from the traced grid to a picture of ``size``, pixel centres aligned
        ((x + 0.5) * s - 0.5), in units of 1 / 2**bits pixel."""
        factor = np.array([size[1] / self.shape[1], size[0] / self.shape[0]], np.float32) * (1 << bits)
        return factor, (factor - (1 << bits)) / 2

    def outlines(self, size: tuple[int, int]) -> list[list[np.ndarray]]:
        """Each map's polygons on a picture of ``size`` = (H, W) of the same photo, as int32
        ``[n, 1, 2]`` for ``cv2.polylines(..., shift=OUTLINE_SHIFT)``."""
        factor, offset = self._scale(size, OUTLINE_SHIFT)
        return [[np.rint(p * factor + offset).astype(np.int32)[:, None] for p in polys]
                for polys in self.polygons]

    def points(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Each map's peak (x, y) in pixels of a picture of ``size`` = (H, W) of the same photo."""
        factor, offset = self._scale(size, 0)
        xy = np.clip(np.rint(self.peaks * factor + offset), 0, [size[1] - 1, size[0] - 1])
        return [(int(x), int(y)) for x, y in xy]


def trace_regions(maps: np.ndarray, mass: float = 0.5, smooth: bool = False) -> Regions:
    """The ``mass`` regions (the fewest pixels holding that share of each map's total:
    :func:`mass_thresholds`) of maps ``[N, H, W]`` and their outlines.

    Maps here are smooth resamplings of a token grid, so a large map's regions are traced on a
    regular sub-grid (:data:`TRACE_SAMPLES` across its shorter side, several per token cell) and
    the polygons are smoothed (two passes of a [1, 2, 1] filter along each, rounding the
    sub-grid's steps): within a few pixels of the full-resolution outline, at a fraction of the
    cost. A region the sub-grid misses is traced at full resolution. ``smooth`` smooths the
    polygons of maps traced at full resolution too (maps to be drawn larger than they are).
    """
    maps = np.asarray(maps, np.float32)
    levels = mass_thresholds(maps, mass)
    step = max(1, min(maps.shape[-2:]) // TRACE_SAMPLES)
    found: list[list[np.ndarray]] = []
    rounded: list[bool] = []
    for m, level in zip(maps, levels):
        at = step
        small = np.ascontiguousarray(m[::at, ::at] >= level).view(np.uint8)
        if at > 1 and not small.any() and np.isfinite(level) and (m >= level).any():
            at, small = 1, np.ascontiguousarray(m >= level).view(np.uint8)
        sampled = at > 1 or smooth
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE if sampled else cv2.CHAIN_APPROX_SIMPLE)
        found.append([c[:, 0].astype(np.float32) * at for c in contours])
        rounded.append(sampled)
    polygons = _smooth_polygons([p if r else [] for p, r in zip(found, rounded)])
    polygons = tuple(s if r else tuple(p) for s, p, r in zip(polygons, found, rounded))
    peaks = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), maps.shape[-2:])
    return Regions(np.asarray(levels), polygons, (int(maps.shape[-2]), int(maps.shape[-1])),
                   np.stack([peaks[1], peaks[0]], 1).astype(np.float32))


def _smooth_polygons(polygons: list[list[np.ndarray]]) -> tuple[tuple[np.ndarray, ...], ...]:
    """Each closed polygon ``[n, 2]`` filtered along itself with [1, 4, 6, 4, 1] / 16 (= [1, 2, 1]
    / 4 twice), all polygons of all maps in one pass."""
    flat = [p for polys in polygons for p in polys]
    if not flat:
        return tuple(() for _ in polygons)
    lens = np.array([len(p) for p in flat])
    starts = np.cumsum(lens) - lens
    pts = np.concatenate(flat)
    first, n = np.repeat(starts, lens), np.repeat(lens, lens)
    local = np.arange(len(pts)) - first
    smooth = sum(w * pts[first + (local + k) % n] for k, w in ((-2, 1), (-1, 4), (0, 6), (1, 4), (2, 1))) / 16
    pieces = np.split(smooth.astype(np.float32), starts[1:])
    out, i = [], 0
    for polys in polygons:
        out.append(tuple(pieces[i:i + len(polys)]))
        i += len(polys)
    return tuple(out)


def constellation(image: np.ndarray, regions: Regions, labels: Sequence[str], fill: float = 0.3,
                  faint: Sequence[bool] | None = None, palette: np.ndarray = TOKEN_COLORS) -> np.ndarray:
    """Every map at once on one (dimmed) photo, from the maps' ``regions`` (:func:`trace_regions`,
    traced at any size of the same photo, e.g. once for all its pictures).

    Map ``k`` gets ``palette[k]``: its region lightly filled (the inside of its outlines) and
    outlined, and ``labels[k]`` written at its peak. ``faint[k]`` draws a map as a thin outline
    only (to isolate the others). No map is resampled to the picture: each region is filled
    within its own bounding box, so the cost follows the regions' area, not the picture's.
    Returns RGB uint8 ``[H, W, 3]``.
    """
    canvas = np.array(image, np.uint8, copy=True)
    height, width = canvas.shape[:2]
    outlines = regions.outlines((height, width))
    for k, polys in enumerate(outlines):
        if polys and (faint is None or not faint[k]):
            _tint(canvas, polys, palette[k % len(palette)], fill)
    thick = max(1, round(min(height, width) / 200))
    for k, polys in enumerate(outlines):
        color = tuple(int(c) for c in palette[k % len(palette)])
        weak = faint is not None and faint[k]
        if not weak:  # a dark halo (its edge need not be antialiased: ~4x cheaper)
            cv2.polylines(canvas, polys, True, (0, 0, 0), thick + 2, cv2.LINE_8, OUTLINE_SHIFT)
        cv2.polylines(canvas, polys, True, color, 1 if weak else thick, cv2.LINE_AA, OUTLINE_SHIFT)
    for k, (x, y) in enumerate(regions.points((height, width))):
        if np.isfinite(regions.levels[k]) and (faint is None or not faint[k]):
            r, g, b = (int(c) for c in palette[k % len(palette)])
            draw_label(canvas, labels[k], (x - 4, y - 8), (r, g, b))
    return canvas


def _tint(canvas: np.ndarray, polys: list[np.ndarray], color: np.ndarray, fill: float) -> None:
    """Blend ``color`` with weight ``fill`` (in place) into the inside of polygons (int32
    ``[n, 1, 2]`` with :data:`OUTLINE_SHIFT` sub-pixel bits), within their bounding box."""
    pts = np.concatenate(polys)[:, 0]
    lo = np.maximum(pts.min(0) >> OUTLINE_SHIFT, 0)
    hi = np.minimum((pts.max(0) >> OUTLINE_SHIFT) + 2, (canvas.shape[1], canvas.shape[0]))
    if (hi <= lo).any():
        return
    mask = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
    cv2.fillPoly(mask, [p - (lo << OUTLINE_SHIFT).astype(np.int32) for p in polys], 1, cv2.LINE_8, OUTLINE_SHIFT)
    roi = canvas[lo[1]:hi[1], lo[0]:hi[0]]  # (OpenCV below: SIMD, and writes into this view)
    scalar = (*(float(c) * fill for c in color), 0.0)  # (a per-channel scalar, which cv2's stubs omit)
    tinted = cv2.add(cv2.addWeighted(roi, 1 - fill, roi, 0.0, 0.0), scalar)  # type: ignore[call-overload]
    cv2.copyTo(tinted, mask, roi)


def region_pieces(maps: np.ndarray, mass: float = 0.5) -> np.ndarray:
    """Number of separate pieces (8-connected) of each map's ``mass`` region, ``[N, h, w]`` ->
    ``[N]`` int (0 for an all-zero map). On token grids: how fragmented each token's region is."""
    maps = np.asarray(maps, np.float32)
    if len(maps) == 0:
        return np.zeros(0, np.int64)
    levels = mass_thresholds(maps, mass)
    n, h, w = maps.shape
    # all regions labelled in one pass: side by side, each in its own columns, one empty column
    # between them (no 8-connected piece crosses it); a piece belongs to the map its left edge is in
    strip = np.zeros((h, n, w + 1), np.uint8)
    strip[:, :, :w] = (maps >= levels[:, None, None]).transpose(1, 0, 2)  # (inf: an empty region)
    count, _, stats, _ = cv2.connectedComponentsWithStats(strip.reshape(h, n * (w + 1)), connectivity=8)
    owner = stats[1:count, cv2.CC_STAT_LEFT] // (w + 1)
    return np.bincount(owner, minlength=n).astype(np.int64)


def mass_region(map2d: np.ndarray, mass: float = 0.5) -> np.ndarray:
    """Bool mask of the smallest set of pixels holding ``mass`` of the map's total."""
    return np.asarray(map2d) >= mass_threshold(map2d, mass)


def draw_mass_contour(image: np.ndarray, map2d: np.ndarray, mass: float = 0.5,
                      color: tuple[int, int, int] = (255, 255, 255), thickness: int = 1) -> np.ndarray:
    """Outline (in place) the region holding ``mass`` of the map; returns the image."""
    return draw_outline(image, mass_region(resize_map(map2d, image.shape[:2]), mass), color, thickness)


def draw_outline(image: np.ndarray, region: np.ndarray, color: tuple[int, int, int] = (255, 255, 255),
                 thickness: int = 1) -> np.ndarray:
    """Outline (in place) a bool region ``[H, W]`` of the image's size; returns the image."""
    contours, _ = cv2.findContours(np.asarray(region, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, color, thickness, lineType=cv2.LINE_AA)
    return image


def draw_peak_marker(image: np.ndarray, map2d: np.ndarray, color: tuple[int, int, int] = (255, 255, 255),
                     label: str = "") -> np.ndarray:
    """Ring (in place) the maximum of a map already at the image's size; returns the image.

    The ring is drawn white over a dark outline, so it reads on light and dark photos alike;
    ``label`` (e.g. a token number) is written next to it.
    """
    y, x = np.unravel_index(int(np.argmax(map2d)), map2d.shape)
    r = max(4, round(min(image.shape[:2]) / 18))
    # the dark ring is a halo under the white one: its edge need not be antialiased (~3x cheaper)
    cv2.circle(image, (int(x), int(y)), r, (0, 0, 0), 3, lineType=cv2.LINE_8)
    cv2.circle(image, (int(x), int(y)), r, color, 1, lineType=cv2.LINE_AA)
    if label:
        draw_label(image, label, (int(x) + r + 1, int(y) - r), color)
    return image


def draw_label(image: np.ndarray, text: str, xy: tuple[int, int], color: tuple[int, int, int]) -> np.ndarray:
    """Write ``text`` (in place) with its top-left corner near ``xy``, on a dark halo, inside the image."""
    scale = max(0.35, min(image.shape[:2]) / 500)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(max(0, min(xy[0], image.shape[1] - tw - 1)))  # (np.clip on scalars: ~40x slower)
    y = int(max(th, min(xy[1] + th, image.shape[0] - base - 1)))
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return image


def partition(image: np.ndarray, weights: np.ndarray, alpha: float = 0.35,
              mask: np.ndarray | None = None, palette: np.ndarray = TOKEN_COLORS,
              labels: bool = True) -> np.ndarray:
    """Colour each pixel by the token that owns it (argmax over ``weights`` ``[L, h, w]``).

    Returns RGB uint8 ``[H, W, 3]``; token ``i`` has colour ``palette[i % len(palette)]`` at
    opacity ``alpha`` (the photo stays visible), with borders between regions drawn dark and,
    with ``labels``, each owner's number written inside its territory (at least 1% of it).
    """
    img = np.asarray(image)
    w = resize_map(weights, img.shape[:2])
    owner = owners(w)
    color = palette[owner % len(palette)]
    if mask is None:
        out = cv2.addWeighted(img, 1 - alpha, color, alpha, 0.0)
    else:
        a = np.asarray(mask, np.float32) * np.float32(alpha)
        out = cv2.blendLinear(color, np.ascontiguousarray(img), a, 1 - a)
    edges = np.zeros(owner.shape, bool)
    edges[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edges[1:, :] |= owner[1:, :] != owner[:-1, :]
    out[edges] = (out[edges] * 0.3).astype(np.uint8)
    if labels:
        counts = np.bincount(owner.ravel(), minlength=len(w))
        for k in np.flatnonzero(counts >= 0.01 * owner.size):
            ys, xs = np.nonzero(owner == k)
            i = int(np.argmin((ys - np.median(ys)) ** 2 + (xs - np.median(xs)) ** 2))  # a pixel it owns
            r, g, b = (int(c) for c in palette[k % len(palette)])
            draw_label(out, str(k), (int(xs[i]) - 4, int(ys[i]) - 8), (r, g, b))
    return out


def owners(weights: np.ndarray) -> np.ndarray:
    """Index of the largest of ``weights`` ``[L, H, W]`` at each pixel (the first on ties) ->
    ``[H, W]`` int64; as ``argmax(0)``, in L contiguous passes instead of a strided reduction
    (~4x faster on a photo-sized stack)."""
    w = np.asarray(weights)
    best = w[0].copy()
    owner = np.zeros(best.shape, np.int64)
    for k in range(1, len(w)):
        better = w[k] > best
        owner[better] = k
        np.maximum(best, w[k], out=best)
    return owner

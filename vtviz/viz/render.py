"""Pixels only: colour maps, overlays, contours, partition maps, labelled grids and colour bars.

Inputs are RGB uint8 images ``[H, W, 3]`` and float maps ``[H, W]``; outputs are RGB uint8.
OpenCV's colour maps return BGR: the conversion happens inside :func:`colorize` only.
No model is run here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vtviz.maps.tokens import mass_threshold, mass_thresholds


class Colormap(str, enum.Enum):
    """OpenCV colour maps by name."""

    TURBO = "turbo"
    JET = "jet"
    VIRIDIS = "viridis"
    INFERNO = "inferno"
    MAGMA = "magma"
    PLASMA = "plasma"
    CIVIDIS = "cividis"
    HOT = "hot"
    PARULA = "parula"
    BONE = "bone"

    @property
    def cv2_code(self) -> int:
        return getattr(cv2, f"COLORMAP_{self.name}")


#: 20 clearly distinct colours (Kelly's list, minus white/black), RGB, for token partitions.
PALETTE: np.ndarray = np.array([
    (255, 179, 0), (128, 62, 117), (255, 104, 0), (166, 189, 215), (193, 0, 32), (206, 162, 98),
    (0, 125, 52), (246, 118, 142), (0, 83, 138), (255, 122, 92), (83, 55, 122), (255, 142, 0),
    (179, 40, 81), (244, 200, 0), (127, 24, 13), (147, 170, 0), (89, 51, 21), (241, 58, 19),
    (35, 44, 22), (129, 112, 102),
], dtype=np.uint8)


#: 16 token colours, pairwise CIEDE2000 distance >= 22 and far from the greys of a dimmed
#: photo (greedy max-min selection over an HSV grid), RGB: token k is drawn in TOKEN_COLORS[k % 16].
TOKEN_COLORS: np.ndarray = np.array([
    (255, 198, 140), (0, 255, 85), (0, 234, 255), (255, 140, 255), (128, 0, 255), (255, 42, 0),
    (77, 151, 255), (0, 140, 0), (204, 0, 102), (255, 255, 0), (140, 82, 0), (140, 0, 12),
    (0, 140, 129), (255, 140, 150), (0, 70, 140), (140, 129, 0),
], dtype=np.uint8)


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


@lru_cache(maxsize=32)
def colormap_lut(colormap: Colormap | str) -> np.ndarray:
    """The 256 RGB colours of a colour map: ``[256, 3]`` uint8."""
    cmap = Colormap(colormap)
    bgr = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cmap.cv2_code)[:, 0]
    lut = np.ascontiguousarray(bgr[:, ::-1])  # BGR -> RGB, here and nowhere else
    lut.setflags(write=False)
    return lut


def scale_map(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map values into [0, 1] by ``vmin``..``vmax`` (default: the array's own min..max)."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(v.min()) if vmin is None else vmin
    hi = float(v.max()) if vmax is None else vmax
    if lo == 0 and hi == 1:  # already unit maps (the views' case): one pass
        return np.clip(v, 0.0, 1.0)
    return np.clip((v - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def colorize(unit: np.ndarray, colormap: Colormap | str = Colormap.TURBO) -> np.ndarray:
    """``[..., H, W]`` values in [0, 1] -> ``[..., H, W, 3]`` RGB uint8 through a colour map."""
    idx = np.clip(np.rint(np.asarray(unit, np.float32) * 255), 0, 255).astype(np.uint8)
    return colormap_lut(colormap)[idx]


def resize_map(map2d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map ``[h, w]`` (or ``[..., h, w]``) to ``size`` = (H, W)."""
    m = np.asarray(map2d, np.float32)
    if m.shape[-2:] == tuple(size):
        return m
    if m.ndim == 2:
        return cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    flat = m.reshape(-1, *m.shape[-2:])
    out = np.stack([cv2.resize(x, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for x in flat])
    return out.reshape(*m.shape[:-2], *size)


def dim_image(image: np.ndarray, amount: float) -> np.ndarray:
    """The photo desaturated and darkened by ``amount`` (0: unchanged, 1: dark grey), so that
    coloured maps stand out on any photo: RGB uint8 ``[H, W, 3]``."""
    if amount <= 0:
        return image
    # out = (img * (1 - a) + grey * a) * (1 - 0.55 a): one 3x3 colour transform (SIMD, saturating)
    keep, dark = 1 - amount, 1 - 0.55 * amount
    mix = (np.eye(3) * keep + np.array([[0.299, 0.587, 0.114]] * 3) * amount) * dark
    return cv2.transform(np.ascontiguousarray(image), mix.astype(np.float32))


def overlay(image: np.ndarray, map2d: np.ndarray, colormap: Colormap | str = Colormap.TURBO,
            alpha: float = 0.6, vmin: float | None = None, vmax: float | None = None,
            mask: np.ndarray | None = None, weighted: bool = True,
            contour: float | None = None, dim: float = 0.0, gamma: float = 1.0,
            marker: bool = False, regions: Regions | None = None) -> np.ndarray:
    """Draw a map over an RGB image: ``[H, W, 3]`` uint8 and ``[h, w]`` float -> ``[H, W, 3]`` uint8.

    The map is resized to the image, scaled by ``vmin``/``vmax`` (default: its own range) and
    coloured. ``weighted`` (default) blends each pixel with opacity ``alpha * value**gamma``, so
    that where the map is 0 the image shows unchanged (``gamma`` < 1 widens the visible halo of
    a sharp map); otherwise a uniform ``alpha``. ``dim`` desaturates and darkens the photo
    underneath (:func:`dim_image`). Pixels outside ``mask`` (``[H, W]`` bool: what the network
    saw) keep the (dimmed) image. ``contour`` outlines the smallest region holding that share of
    the map's mass (e.g. 0.5), or ``regions`` gives the regions outlined (traced beforehand,
    e.g. once for several pictures of the photo: :func:`trace_regions`); ``marker`` rings the
    map's peak.
    Also takes several maps ``[N, h, w]`` at once -> ``[N, H, W, 3]``.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {img.dtype} {list(img.shape)}")
    img = dim_image(img, dim)
    raw = resize_map(map2d, img.shape[:2])
    if vmin is None and vmax is None and raw.ndim == 3:  # per-map range, each map on its own
        lo = raw.min(axis=(-2, -1), keepdims=True)
        hi = raw.max(axis=(-2, -1), keepdims=True)
        unit = np.clip((raw - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    else:
        unit = scale_map(raw, vmin, vmax)
    level = _levels(unit)
    stack_levels = level.reshape((-1,) + level.shape[-2:])
    alpha_lut = _alpha_lut(alpha, gamma if weighted else 0.0)
    keep = None
    if mask is not None and np.asarray(mask, bool).all():  # (a stretched photo: all seen)
        mask = None
    if mask is not None:
        if alpha_lut[0] == 0:  # weighted: level 0 is transparent, so outside the mask is level 0
            stack_levels = np.where(np.asarray(mask, bool), stack_levels, np.uint8(0))
        else:
            keep = ~np.asarray(mask, bool)
    out = _blend(stack_levels, img, colormap, alpha, gamma if weighted else 0.0)
    if keep is not None:
        out[:, keep] = img[keep]
    out = out.reshape(level.shape + (3,))
    stack = raw if raw.ndim == 3 else raw[None]
    if regions is None and contour is not None:
        regions = trace_regions(stack, contour)
    outlines = regions.outlines(img.shape[:2]) if regions is not None else None
    for i, (o, r) in enumerate(zip(out if out.ndim == 4 else out[None], stack)):
        if outlines is not None:
            cv2.polylines(o, outlines[i], True, (255, 255, 255),
                          max(1, round(min(o.shape[:2]) / 150)), cv2.LINE_AA, OUTLINE_SHIFT)
        if marker:
            draw_peak_marker(o, r)
    return out


def _levels(unit: np.ndarray) -> np.ndarray:
    """Colour levels ``round(255 * unit)`` as uint8 of values in [0, 1] ``[..., H, W]``
    (OpenCV's saturating conversion: one SIMD pass instead of rint, astype and a copy)."""
    u = np.ascontiguousarray(unit, np.float32)
    flat = u.reshape(-1, u.shape[-1]) if u.ndim != 2 else u
    return cv2.convertScaleAbs(flat, alpha=255.0).reshape(u.shape)


def _blend(levels: np.ndarray, image: np.ndarray, colormap: Colormap | str, alpha: float,
           gamma: float) -> np.ndarray:
    """Colour levels ``[N, H, W]`` uint8 blended over ``image`` ``[H, W, 3]`` -> ``[N, H, W, 3]``
    uint8: ``colour(l) * a(l) + image * (1 - a(l))`` with ``a(l) = alpha * (l / 255) ** gamma``.

    Colour and opacity depend on the level only, so the colour already multiplied by its
    opacity and the photo's weight come from look-up tables (OpenCV's LUT, all N maps at once),
    and the blend is one saturating multiply-add per map (SIMD, no GIL held): ~2.5x faster than a
    per-map float blend, within 1.5 levels of it (both tables are rounded)."""
    n, h, w = levels.shape
    rows = np.ascontiguousarray(levels).reshape(n * h, w)
    premultiplied, weight = _blend_luts(Colormap(colormap), alpha, gamma)
    colour = cv2.merge([cv2.LUT(rows, channel) for channel in premultiplied])  # (3 one-channel LUTs: 2x one RGB LUT)
    keep = cv2.LUT(rows, weight)
    out, keep3 = colour.reshape(n, h, w, 3), cv2.merge([keep, keep, keep]).reshape(n, h, w, 3)
    photo = np.ascontiguousarray(image)
    for k in range(n):  # in place, map by map (no copy of the photo per map)
        cv2.add(out[k], cv2.multiply(photo, keep3[k], scale=1 / 255), dst=out[k])
    return out


@lru_cache(maxsize=64)
def _blend_luts(colormap: Colormap, alpha: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """For :func:`_blend`: each level's colour times its opacity ``[3, 256]`` (R, G, B) and the photo's
    weight ``255 * (1 - opacity)`` ``[256]``, uint8."""
    a = _alpha_lut(alpha, gamma).astype(np.float64)
    premultiplied = np.ascontiguousarray(np.rint(colormap_lut(colormap) * a[:, None]).astype(np.uint8).T)
    weight = np.rint(255 * (1 - a)).astype(np.uint8)
    return premultiplied, weight


@lru_cache(maxsize=64)
def _alpha_lut(alpha: float, gamma: float) -> np.ndarray:
    """Opacity (0..1) of each of the 256 colour levels: ``alpha * (level/255)**gamma`` ``[256]``."""
    lut = (alpha * np.linspace(0, 1, 256) ** gamma).astype(np.float32)
    lut.setflags(write=False)
    return lut


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


# --------------------------------------------------------------------------- text, grids
@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_strip(text: str, width: int, height: int = 18, size: int = 12,
               background: tuple[int, int, int] = (255, 255, 255), align: str = "left") -> np.ndarray:
    """A label as an RGB strip ``[height, width, 3]`` (text cut to fit; left/center/right).

    A left-aligned title made of parts joined by :data:`SEPARATOR` (e.g. a file name, the layer,
    the prediction) that fits is pasted from its parts, each drawn once and kept: the parts
    repeat across the pictures of a photo and across photos, whole titles do not."""
    width, bg = max(width, 1), tuple(background)
    parts = _title_parts(text)
    if align == "left" and len(parts) > 1:
        pieces = [_text_piece(part, height, size, bg) for part in parts]
        if sum(p.shape[1] for p in pieces) <= width - 4:
            out = np.empty((height, width, 3), np.uint8)
            out[:] = bg
            x = 2
            for piece in pieces:
                out[:, x:x + piece.shape[1]] = piece
                x += piece.shape[1]
            return out
    return _text_strip(text, width, height, size, bg, align).copy()


#: What joins the parts of the titles (``"name · layer 0 · filter"``), where they may be split.
SEPARATOR = " · "


def _title_parts(text: str) -> list[str]:
    """``text`` on one line, cut after each :data:`SEPARATOR` (which stays with its part)."""
    parts = _one_line(text).split(SEPARATOR)
    return [part + SEPARATOR for part in parts[:-1]] + parts[-1:]


def _one_line(text: str) -> str:
    """Control characters (newlines included) as spaces: labels are drawn on one line."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)


@lru_cache(maxsize=1024)  # (file names are parts too: bounded by count)
def _text_piece(text: str, height: int, size: int, background: tuple[int, int, int]) -> np.ndarray:
    """``text`` drawn as :func:`_text_strip` draws it, on a strip exactly as wide as the text
    (rounded to whole pixels): ``[height, w, 3]`` uint8, read-only."""
    img = Image.new("RGB", (_part_width(text, size), height), background)
    ImageDraw.Draw(img).text((0, (height - size) // 2 - 1), text, fill=(20, 20, 20), font=_font(size))
    out = np.asarray(img)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=4096)  # labels repeat ("token 3", legends, colour-bar ends): draw each once
def _text_strip(text: str, width: int, height: int, size: int, background: tuple[int, int, int],
                align: str) -> np.ndarray:
    text = _one_line(text)
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    font = _font(size)
    if len(text) > 1 and draw.textlength(text, font=font) > width - 4:  # cut: the longest prefix + "…" that fits
        lo, hi = 0, len(text) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if draw.textlength(text[:mid] + "…", font=font) <= width - 4 else (lo, mid - 1)
        text = text[:max(lo, 0)] + "…"
    free = width - 4 - draw.textlength(text, font=font)
    x = 2 + {"left": 0.0, "center": free / 2, "right": free}[align]
    draw.text((x, (height - size) // 2 - 1), text, fill=(20, 20, 20), font=font)
    out = np.asarray(img)
    out.setflags(write=False)
    return out


def legend(labels: Sequence[str], palette: np.ndarray = PALETTE, columns: int = 4,
           cell: tuple[int, int] = (90, 18)) -> np.ndarray:
    """Colour swatches with labels, ``columns`` per row: RGB uint8."""
    rows = -(-len(labels) // columns)
    out = np.full((rows * cell[1], columns * cell[0], 3), 255, np.uint8)
    for i, label in enumerate(labels):
        r, c = divmod(i, columns)
        y, x = r * cell[1], c * cell[0]
        out[y + 3:y + cell[1] - 3, x + 2:x + 14] = palette[i % len(palette)]
        out[y:y + cell[1], x + 16:x + cell[0]] = text_strip(label, cell[0] - 16, cell[1])
    return out


@lru_cache(maxsize=4096)
def text_width(text: str, size: int = 12) -> int:
    """Width in pixels that :func:`text_strip` needs to show ``text`` uncut."""
    parts = _title_parts(text)
    if len(parts) == 1:
        return int(np.ceil(_text_length(parts[0], size))) + 6
    return sum(_part_width(part, size) for part in parts) + 6


def _text_length(text: str, size: int) -> float:
    return float(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=_font(size)))


@lru_cache(maxsize=4096)
def _part_width(text: str, size: int) -> int:
    """Width in whole pixels of one part of a title (:func:`_text_piece`)."""
    return max(1, round(_text_length(text, size)))


@lru_cache(maxsize=64)
def colorbar(colormap: Colormap | str, vmin: float, vmax: float, length: int,
             thickness: int = 14, label: str = "", alpha: float | None = None, gamma: float = 1.0,
             dim: float = 0.6) -> np.ndarray:
    """A horizontal colour bar, ``vmin`` and ``vmax`` under its ends and ``label`` on its own line
    (never cut: the picture widens to fit it): RGB uint8.

    With ``alpha`` the bar is drawn as overlays are, over a grey photo dimmed by ``dim``, with
    opacity ``alpha * value**gamma``: where a map is near 0 the bar is as transparent as it.
    Cached (every sheet of an export has the same bar): the array is read-only.
    """
    unit = np.tile(np.linspace(0, 1, length, dtype=np.float32), (thickness, 1))
    if alpha is None:
        bar = colorize(unit, colormap)
    else:
        grey = np.full((thickness, length, 3), 150, np.uint8)
        grey[:, (np.arange(length) // 6) % 2 == 0] = 110  # a stripe, so transparency shows
        bar = overlay(grey, unit, colormap, alpha, 0.0, 1.0, dim=dim, gamma=gamma)
    half = length // 2
    ends = np.concatenate([text_strip(_fmt(vmin), half), text_strip(_fmt(vmax), length - half, align="right")],
                          axis=1)
    rows = [bar, ends]
    if label:
        rows.append(text_strip(label, max(length, text_width(label))))
    out = stack_vertical(rows)
    out.setflags(write=False)
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def grid(cells: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] = (),
         col_labels: Sequence[str] = (), gap: int = 2, label_width: int = 70,
         footer: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """Tile RGB images (``cells[row][col]``, all of one size) with labels: RGB uint8.

    ``col_labels`` go above the columns, ``row_labels`` left of the rows; ``footer`` (e.g. a
    :func:`colorbar`) is added under the grid, left-aligned.
    """
    nrows = len(cells)
    ncols = max(len(r) for r in cells) if nrows else 0
    if not nrows or not ncols:
        raise ValueError("grid needs at least one cell")
    h, w = cells[0][0].shape[:2]
    left = label_width if row_labels else 0
    top = 18 if col_labels else 0
    head = 20 if title else 0
    height = head + top + nrows * (h + gap) + gap
    width = max(left + ncols * (w + gap) + gap, text_width(title, 13) if title else 0)  # titles uncut
    out = np.full((height, width, 3), 255, np.uint8)
    if title:
        out[:head] = text_strip(title, width, head, size=13)
    for c, label in enumerate(col_labels[:ncols]):
        x = left + gap + c * (w + gap)
        out[head:head + top, x:x + w] = text_strip(label, w, top)
    for r, row in enumerate(cells):
        y = head + top + gap + r * (h + gap)
        if r < len(row_labels):
            out[y:y + min(h, 18), :left] = text_strip(row_labels[r], left, min(h, 18))
        for c, cell in enumerate(row):
            if cell.shape[:2] != (h, w):
                raise ValueError(f"grid cell {r},{c} is {cell.shape[:2]}, expected {(h, w)}")
            x = left + gap + c * (w + gap)
            out[y:y + h, x:x + w] = cell
    if footer is not None:
        pad = np.full((footer.shape[0] + gap, width, 3), 255, np.uint8)
        fw = min(footer.shape[1], width - left - gap)
        pad[:footer.shape[0], left + gap:left + gap + fw] = footer[:, :fw]
        out = np.concatenate([out, pad], axis=0)
    return out


def labelled(image: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """``image`` with a text strip above it: RGB uint8 ``[H + height, W, 3]``."""
    return np.concatenate([text_strip(text, image.shape[1], height), image], axis=0)


def tile(cells: Sequence[np.ndarray], columns: int = 4, **grid_kwargs) -> np.ndarray:
    """Lay equal-size images out ``columns`` per row (blank cells fill the last row)."""
    columns = max(1, min(columns, len(cells)))
    rows = [list(cells[r:r + columns]) for r in range(0, len(cells), columns)]
    rows[-1] += [np.full_like(cells[0], 255)] * (columns - len(rows[-1]))
    return grid(rows, **grid_kwargs)


def stack_vertical(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack RGB images top to bottom, left-aligned on white."""
    width = max(im.shape[1] for im in images)
    out = np.full((sum(im.shape[0] for im in images), width, 3), 255, np.uint8)
    y = 0
    for im in images:
        out[y:y + im.shape[0], :im.shape[1]] = im
        y += im.shape[0]
    return out


def fit_size(shape: tuple[int, int], size: int | None) -> tuple[int, int]:
    """(H, W) scaled so that the longer side is ``size`` (unchanged when ``size`` is falsy)."""
    h, w = shape
    if not size:
        return h, w
    r = size / max(h, w)
    return max(1, round(h * r)), max(1, round(w * r))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 image to (H, W): pixel-area averaging when shrinking to half or less
    (no aliasing), else bilinear (area averaging at fractional factors costs ~7x more for no
    visible gain)."""
    if image.shape[:2] == tuple(size):
        return image
    shrink = 2 * size[0] <= image.shape[0] and 2 * size[1] <= image.shape[1]
    return cv2.resize(image, (size[1], size[0]),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode_image(path: str | Path) -> np.ndarray:
    """Read a picture this module encoded (PNG, JPEG, WebP) back as RGB uint8 ``[H, W, 3]``."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable picture")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV boundary


def encode(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """Encode RGB uint8 as PNG, JPEG or WebP bytes (fast PNG compression)."""
    fmt = fmt.lower().lstrip(".")
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)  # OpenCV boundary
    if fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    elif fmt in ("jpg", "jpeg"):
        fmt, params = "jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    else:
        raise ValueError(f"unknown image format {fmt!r} (png, jpg, webp)")
    ok, buf = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        raise RuntimeError(f"encoding {fmt} failed")
    return buf.tobytes()

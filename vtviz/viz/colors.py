"""Colour: colour maps and token colours, scaling maps to [0, 1], resizing a map, dimming a photo.

OpenCV's colour maps return BGR: the conversion happens inside :func:`colorize` only.

RGB uint8 images ``[H, W, 3]`` and float maps ``[H, W]`` in, RGB uint8 out; no model is run here.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import cv2
import numpy as np


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

"""Pixels in and out: sizes, resizing, and encoding / decoding PNG and JPEG (RGB everywhere;
BGR only at the OpenCV boundary).

RGB uint8 images ``[H, W, 3]`` and float maps ``[H, W]`` in, RGB uint8 out; no model is run here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


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

"""Images in: safe decoding to RGB uint8, preprocessing, and the geometry to undo it.

RGB everywhere; OpenCV is only used for resizing (channel order does not matter there).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from vtviz.errors import ImageError
from vtviz.preprocess import Fit, Preprocess

ImageSource = Union[str, Path, bytes, Image.Image, np.ndarray]

#: Largest image accepted by default (pixels); above it decoding is refused.
MAX_PIXELS = 64_000_000
#: Largest image file read (bytes), checked before reading: a decoder may need several times
#: a file's size (a 200 MB PNG with a huge text chunk cost 800 MB in a fault run).
MAX_FILE_BYTES = 128 * 2**20
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
)


def _label(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return f"<{type(source).__name__}>"


def load_image(source: ImageSource, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` into an RGB uint8 array ``[H, W, 3]``.

    Accepts a path, encoded bytes, a PIL image or an array (``[H, W]``, ``[H, W, 1|3|4]``;
    uint8, uint16 or float in [0, 1]). EXIF orientation is applied; greyscale, palette,
    CMYK and 16-bit images are converted; transparency is composited on white.
    Raises :class:`~vtviz.errors.ImageError` naming the source and the reason for
    missing, empty, non-image, truncated, corrupt or over-large (``max_pixels``) input.
    """
    return load_image_reduced(source, None, name=name, max_pixels=max_pixels).image


class ReducedImage(NamedTuple):
    """An image decoded at ``1 / factor`` of its size (pixel (x, y) covers the full image's
    ``[factor * x, factor * (x + 1))``): RGB uint8 ``image`` ``[h, w, 3]`` and the full image's
    ``full_size`` (H, W), both after EXIF orientation."""

    image: np.ndarray
    factor: int
    full_size: tuple[int, int]


def load_image_reduced(source: ImageSource, least: tuple[int, int] | None, *, name: str | None = None,
                       max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES) -> ReducedImage:
    """:func:`load_image`, but a JPEG is decoded at 1/2, 1/4 or 1/8 of its size by the decoder
    itself (DCT scaling: a 12 MP photo ~6x faster) as long as its longer and shorter sides stay
    at least ``least`` = (longer, shorter) px; other formats, or ``least`` None, at full size."""
    label = _label(source, name)
    if isinstance(source, np.ndarray):
        image = _array_to_rgb(source, label, max_pixels)
        return ReducedImage(image, 1, (image.shape[0], image.shape[1]))
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            if len(data) > max_bytes:
                raise ImageError(label, f"file too large: {len(data) / 2**20:.0f} MiB, the limit is "
                                        f"{max_bytes / 2**20:.0f} MiB")
        else:
            path = Path(source)
            if not path.exists():
                raise ImageError(label, "a dangling or looping symbolic link" if os.path.lexists(path)
                                 else "no such file")
            if not path.is_file():
                raise ImageError(label, "not a file")
            if (nbytes := path.stat().st_size) > max_bytes:
                raise ImageError(label, f"file too large: {nbytes / 2**20:.0f} MiB, the limit is "
                                        f"{max_bytes / 2**20:.0f} MiB")
            data = path.read_bytes()
        if not data:
            raise ImageError(label, "empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(label, "not an image (unrecognised format)") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(label, f"image too large ({exc})") from None
        except OSError as exc:
            raise ImageError(label, f"cannot read image header ({exc})") from None
        except Exception as exc:  # any other decoder failure (e.g. a huge PNG text chunk) is this file's
            raise ImageError(label, f"cannot decode ({type(exc).__name__}: {exc})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(label, f"image too large: {w}x{h} = {w * h / 1e6:.1f} megapixels, "
                                f"the limit is {max_pixels / 1e6:.1f}")
    if w == 0 or h == 0:
        raise ImageError(label, f"image has no pixels ({w}x{h})")
    factor = 1
    try:
        # (a PIL image of the caller's is left as it is)
        if least is not None and img.format == "JPEG" and not isinstance(source, Image.Image):
            r = max(least[0] / max(w, h), least[1] / min(w, h))
            if r <= 0.5 and (drafted := img.draft(None, (math.ceil(w * r), math.ceil(h * r)))) is not None:
                factor = round(w / drafted[1][2])  # its box: (0, 0, w / factor, h / factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            turned = img.size
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as exc:
        raise ImageError(label, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(label, f"corrupt or truncated image data ({exc})") from None
    except Exception as exc:
        raise ImageError(label, f"cannot decode ({type(exc).__name__}: {exc})") from None
    try:
        image = _pil_to_rgb(img, label)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(label, f"cannot convert to RGB ({type(exc).__name__}: {exc})") from None
    full = (h, w) if img.size == turned else (w, h)  # EXIF orientation may swap the sides
    return ReducedImage(image, factor, full)


def _pil_to_rgb(img: Image.Image, label: str) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return _array_to_rgb((arr / peak).astype(np.float32), label, None)
    if mode == "F":
        return _array_to_rgb(np.asarray(img, dtype=np.float32), label, None)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB")).copy()
    return np.array(img if mode == "RGB" else img.convert("RGB"))  # (one copy: 2x faster on 3 MP)


def _array_to_rgb(arr: np.ndarray, label: str, max_pixels: int | None) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(label, f"array of shape {list(arr.shape)} is not an image "
                                "(expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4])")
    if max_pixels is not None and arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageError(label, f"image too large: {arr.shape[1]}x{arr.shape[0]} pixels")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = (arr // 257).astype(np.uint8)
    elif arr.dtype == bool:
        out = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError(label, "array holds NaN or infinite values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        out = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        out = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ImageError(label, f"unsupported array dtype {arr.dtype}")
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    elif out.shape[-1] == 4:
        alpha = out[..., 3:4].astype(np.float32) / 255.0
        out = np.rint(out[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Where an original image sits in the network input.

    ``input = original * scale + offset`` per axis, in pixel units (y, x order);
    ``original_size`` and ``input_size`` are (H, W).
    """

    original_size: tuple[int, int]
    input_size: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    def of_full_image(self, factor: int, full_size: tuple[int, int]) -> Geometry:
        """This geometry, of an image decoded at ``1 / factor`` (:class:`ReducedImage`), restated
        for the full image of ``full_size`` (H, W): ``input = full * scale / factor + offset``."""
        if factor == 1:
            return self
        return Geometry(full_size, self.input_size, (self.scale[0] / factor, self.scale[1] / factor),
                        self.offset)

    def input_box(self) -> tuple[float, float, float, float]:
        """(y0, x0, y1, x1) of the original image in input pixels (may exceed the input)."""
        (h, w), (sy, sx), (oy, ox) = self.original_size, self.scale, self.offset
        return oy, ox, oy + h * sy, ox + w * sx

    def cell_to_original(self, row: int, col: int, map_size: tuple[int, int]) -> tuple[float, float]:
        """(x, y) in original pixels of the centre of cell (row, col) of an ``[h, w]`` map."""
        (ih, iw), (sy, sx), (oy, ox) = self.input_size, self.scale, self.offset
        y = ((row + 0.5) * ih / map_size[0] - oy) / sy
        x = ((col + 0.5) * iw / map_size[1] - ox) / sx
        return x, y

    def visible_box(self) -> tuple[float, float, float, float]:
        """(y0, x0, y1, x1) of the part of the original the network saw, in original pixels."""
        (H, W), (sy, sx), (oy, ox) = self.input_size, self.scale, self.offset
        h, w = self.original_size
        return (max(0.0, -oy / sy), max(0.0, -ox / sx),
                min(float(h), (H - oy) / sy), min(float(w), (W - ox) / sx))


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if (h, w) == img.shape[:2]:
        return img
    shrink = h < img.shape[0] and w < img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _crop_long(img: np.ndarray, s: int, rh: int, rw: int, y0: int, x0: int) -> tuple[np.ndarray, Geometry]:
    """The centre crop of a very long image without resizing all of it (a 1 x 60000 strip would
    otherwise become a 224 x 13 million image): cut the original around the crop window (two
    pixels of margin), resize that piece by the same factors, take the window."""
    h, w = img.shape[:2]
    ry, rx = rh / h, rw / w
    a = max(0, int(np.floor(y0 / ry)) - 2)
    b = min(h, int(np.ceil((y0 + s) / ry)) + 2)
    c = max(0, int(np.floor(x0 / rx)) - 2)
    d = min(w, int(np.ceil((x0 + s) / rx)) + 2)
    piece = _resize(img[a:b, c:d], max(1, round((b - a) * ry)), max(1, round((d - c) * rx)))
    py, px = y0 - round(a * ry), x0 - round(c * rx)
    out = piece[py:py + s, px:px + s]
    if out.shape[:2] != (s, s):  # rounding at the very edge: pad with the nearest pixels
        out = cv2.copyMakeBorder(out, 0, s - out.shape[0], 0, s - out.shape[1], cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out), Geometry((h, w), (s, s), (ry, rx), (-y0, -x0))


def fit_image(img: np.ndarray, pre: Preprocess) -> tuple[np.ndarray, Geometry]:
    """Bring RGB ``[H, W, 3]`` to ``[S, S, 3]`` (S = ``pre.size``) by ``pre.fit``; with geometry."""
    h, w = img.shape[:2]
    s = pre.size
    if pre.fit is Fit.STRETCH:
        out = _resize(img, s, s)
        return out, Geometry((h, w), (s, s), (s / h, s / w), (0.0, 0.0))
    if pre.fit is Fit.CROP:
        short = max(s, round(s / pre.crop_pct))
        r = short / min(h, w)
        rh, rw = max(s, round(h * r)), max(s, round(w * r))
        y0, x0 = (rh - s) // 2, (rw - s) // 2
        if rh * rw > 16 * s * s:  # a very long image: resize only the part the centre crop uses
            return _crop_long(img, s, rh, rw, y0, x0)
        resized = _resize(img, rh, rw)
        out = resized[y0:y0 + s, x0:x0 + s]
        return np.ascontiguousarray(out), Geometry((h, w), (s, s), (rh / h, rw / w), (-y0, -x0))
    r = s / max(h, w)
    rh, rw = max(1, round(h * r)), max(1, round(w * r))
    resized = _resize(img, rh, rw)
    mean = np.asarray(pre.mean) * 255.0
    out = np.empty((s, s, 3), np.uint8)
    out[:] = np.rint(mean).astype(np.uint8)  # pads become ~0 after normalising
    y0, x0 = (s - rh) // 2, (s - rw) // 2
    out[y0:y0 + rh, x0:x0 + rw] = resized
    return out, Geometry((h, w), (s, s), (rh / h, rw / w), (float(y0), float(x0)))


def to_tensor(images: Sequence[np.ndarray], pre: Preprocess) -> Tensor:
    """Stack fitted RGB uint8 ``[S, S, 3]`` images into a normalised ``[B, 3, S, S]`` float tensor."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # channels-last, as the model wants
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    # (x / 255 - mean) / std in place, in two passes
    return batch.mul_(1.0 / (255.0 * std)).sub_(torch.tensor(pre.mean).view(1, 3, 1, 1) / std)


def prepare(images: Sequence[np.ndarray], pre: Preprocess) -> tuple[Tensor, list[Geometry]]:
    """Fit and normalise RGB images: ``[B, 3, S, S]`` tensor and each image's geometry."""
    fitted = [fit_image(img, pre) for img in images]
    return to_tensor([f[0] for f in fitted], pre), [f[1] for f in fitted]


def maps_to_original(maps: Tensor, geometry: Geometry,
                     size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Resample ``[..., h, w]`` maps onto the original image (or ``size`` = (H', W') of it).

    Bilinear, aligned on pixel centres, undoing crop / letterbox / stretch (as ``grid_sample``
    with ``align_corners=False`` and border padding). Returns the maps ``[..., H', W']`` (0
    where the network did not see the image) and a bool mask ``[H', W']`` of the pixels it saw.
    Separable: two small matrix products per map (:func:`resample_matrices`), ~6x faster than
    ``grid_sample`` on a CPU.
    """
    h, w = maps.shape[-2:]
    ry, rx, my, mx = resample_matrices(geometry, (h, w), size)
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, h, w).float()
    if flat.device.type == "cpu":
        out = torch.from_numpy(np.matmul(ry, flat.numpy() @ rx.T))
    else:
        out = torch.from_numpy(ry).to(flat.device) @ flat @ torch.from_numpy(rx).to(flat.device).T
    mask = torch.from_numpy(my[:, None] & mx[None, :])
    return out.reshape(*lead, len(ry), len(rx)), mask


@lru_cache(maxsize=256)
def resample_matrices(geometry: Geometry, map_size: tuple[int, int], size: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear interpolation matrices from a map grid ``map_size`` = (h, w) to the original
    image (or ``size`` of it): ``R_y`` ``[H', h]`` and ``R_x`` ``[W', w]`` (float32, rows of
    pixels the network did not see are 0), and those pixels' masks ``[H']``, ``[W']`` (bool),
    so that ``maps_on_photo = R_y @ map @ R_x.T``. Cached per geometry (read-only arrays)."""
    oh, ow = geometry.original_size
    th, tw = size or (oh, ow)
    out = []
    for n_out, n_orig, n_in, n_map, s, o in ((th, oh, geometry.input_size[0], map_size[0], geometry.scale[0],
                                              geometry.offset[0]),
                                             (tw, ow, geometry.input_size[1], map_size[1], geometry.scale[1],
                                              geometry.offset[1])):
        pos = ((np.arange(n_out) + 0.5) * (n_orig / n_out)) * s + o  # input pixel coordinates
        seen = (pos >= 0) & (pos <= n_in)
        u = np.clip(pos / n_in * n_map - 0.5, 0, n_map - 1)  # map cell coordinates (centres at integers)
        i0 = np.floor(u).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_map - 1)
        frac = (u - i0).astype(np.float32)
        r = np.zeros((n_out, n_map), np.float32)
        rows = np.arange(n_out)
        np.add.at(r, (rows, i0), 1 - frac)
        np.add.at(r, (rows, i1), frac)
        r[~seen] = 0
        r.setflags(write=False)
        seen.setflags(write=False)
        out += [r, seen]
    return out[0], out[2], out[1], out[3]


#: Leading bytes of the image formats vtviz decodes (for files without an image suffix).
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"P6", b"P5")


@dataclass(frozen=True)
class Inputs:
    """What a list of INPUTs expands to: image files to process, files skipped as not images
    (with the reason) and paths that cannot be read as files at all (with the reason)."""

    files: list[Path]
    skipped: list[tuple[Path, str]]
    rejected: list[tuple[Path, str]]


def _looks_like_image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8).startswith(IMAGE_SIGNATURES)
    except OSError:
        return False


def scan_inputs(inputs: Sequence[str | Path]) -> Inputs:
    """Expand files, folders (recursive) and glob patterns, in a stable order, without reading
    anything but regular files' first bytes.

    Rule: inside folders, regular files with an image suffix are taken, and so are other
    non-hidden regular files whose content starts like an image (JPEG, PNG, GIF, BMP, TIFF,
    WebP, PPM/PGM); the rest are ``skipped`` (reported, not errors). Files named explicitly
    are taken whatever their suffix, so that a bad one is reported. Named paths that are not
    regular files (a FIFO, a device, a dangling or looping symbolic link) or that match nothing
    are ``rejected``, with the reason.
    """
    import glob

    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    rejected: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                if not q.is_file() or q.name.startswith("."):
                    continue
                if q.suffix.lower() in IMAGE_SUFFIXES or _looks_like_image(q):
                    found.append(q)
                else:
                    skipped.append((q, "not an image (by name and content)"))
        elif p.is_file():
            found.append(p)
        elif p.exists() or os.path.lexists(p):
            reason = ("not a regular file (a pipe, device or socket)" if p.exists()
                      else "a dangling or looping symbolic link")
            rejected.append((p, reason))
        else:
            matches = sorted(glob.glob(str(item), recursive=True))
            if not matches:  # one missing path never stops the others
                rejected.append((p, "no such file, folder or matching pattern"))
            found += [Path(m) for m in matches if Path(m).is_file()]
    unique: dict[Path, Path] = {}  # first occurrence of each file wins, order kept
    for p in found:
        unique.setdefault(p.resolve(), p)
    return Inputs(list(unique.values()), skipped, rejected)


def iter_image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of :func:`scan_inputs` (files, folders and globs; see its rule)."""
    return scan_inputs(inputs).files


def shown_path(path: str | Path) -> str:
    """A path for one line of output: as it is when printable, else with its control
    characters escaped (a newline in a file name must not split an output line)."""
    text = str(path)
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")

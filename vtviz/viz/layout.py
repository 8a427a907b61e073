"""Text and layout: title strips, legends, colour bars, labelled grids and tiles of pictures.

RGB uint8 images ``[H, W, 3]`` and float maps ``[H, W]`` in, RGB uint8 out; no model is run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vtviz.viz.colors import PALETTE, Colormap, colorize
from vtviz.viz.heatmap import overlay


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

"""Token galleries: for each token, the photos of a folder where it attends most strongly.

``vtviz gallery --model M --out DIR FOLDER...`` streams the photos (batched inference, a
progress bar), keeps for every layer and token the ``k`` highest-scoring crops (bounded
memory), draws the token's map on each crop with its score, and writes::

    DIR/index.json                      # model, layers, tokens, ranked items (source, score, peak)
    DIR/index.html                      # the same as a page
    DIR/layer{i}-{kind}/token{TT}/{RR}.jpg

A token's score on a photo is the largest value of its attention map (the share of its
attention on its peak cell). The work is resumable and shards under ``torchrun``
(:mod:`vtviz.jobs.runner`: units of ``save_every`` photos; rank 0 merges the units' top ``k``). The app and
the notebook read the same files (:func:`load_gallery`).
"""

from __future__ import annotations

import hashlib
import heapq
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from vtviz.errors import ImageError, json_text
from vtviz.files import atomic_write
from vtviz.image import load_image, maps_to_original, prepare
from vtviz.jobs.runner import Parts, Shard, run_units, unit_records
from vtviz.maps.explain import preprocess_for, token_maps
from vtviz.maps.tokens import mass_threshold
from vtviz.models.checkpoint import model_meta
from vtviz.models.vt import VTModel
from vtviz.viz import codecs, colors, contours, heatmap, layout

INDEX = "index.json"


@dataclass(order=True)
class GalleryItem:
    """One photo in a token's gallery: score (the map's peak value), source, the crop at the
    peak with the token's map drawn on it, and the peak's (x, y) on the photo."""

    score: float
    source: str = field(compare=False)
    crop: np.ndarray = field(compare=False, repr=False)
    peak_xy: tuple[float, float] = field(compare=False)


class GalleryBuilder:
    """Keeps, for each token, the ``k`` highest-scoring crops seen so far (bounded memory)."""

    def __init__(self, num_tokens: int, k: int = 8, crop: int = 128, crop_fraction: float = 0.4,
                 colormap: colors.Colormap = colors.Colormap.TURBO) -> None:
        self.k, self.crop, self.crop_fraction, self.colormap = k, crop, crop_fraction, colormap
        self.heaps: list[list[tuple[float, int, GalleryItem]]] = [[] for _ in range(num_tokens)]
        self._count = 0

    def push(self, token: int, item: GalleryItem) -> None:
        """Offer an item to a token's top-k."""
        heap = self.heaps[token]
        self._count += 1
        entry = (item.score, self._count, item)
        if len(heap) < self.k:
            heapq.heappush(heap, entry)
        elif item.score > heap[0][0]:
            heapq.heapreplace(heap, entry)

    def add(self, image: np.ndarray, source: str, maps: Tensor) -> None:
        """Add one photo and its maps on its geometry ``[L, H, W]`` (same size as ``image``)."""
        h, w = image.shape[:2]
        flat = maps.flatten(1)
        scores, idx = flat.max(-1)
        side = max(8, round(self.crop_fraction * min(h, w)))
        for t in range(maps.shape[0]):
            score = float(scores[t])
            heap = self.heaps[t]
            if len(heap) >= self.k and score <= heap[0][0]:
                continue
            py, px = divmod(int(idx[t]), w)
            y0 = int(min(max(0, py - side // 2), h - side))
            x0 = int(min(max(0, px - side // 2), w - side))
            box = (slice(max(0, y0), y0 + side), slice(max(0, x0), x0 + side))
            full = maps[t].numpy()
            crop = heatmap.overlay(image[box], full[box], self.colormap, 0.6, 0.0, score, gamma=0.5)
            crop = codecs.resize_image(crop, (self.crop, self.crop))
            region = full[box] >= mass_threshold(full, 0.5)  # the token's 50%-mass region
            contours.draw_outline(crop, colors.resize_map(region.astype(np.float32), crop.shape[:2]) >= 0.5)
            contours.draw_label(crop, f"{score:.3f}", (3, 2), (255, 255, 255))
            self.push(t, GalleryItem(score, source, crop, (float(px), float(py))))

    def ranked(self) -> list[list[GalleryItem]]:
        """Per token, its items best first."""
        return [[e[2] for e in sorted(h, key=lambda e: -e[0])] for h in self.heaps]

    def result(self, layer: int, kind: str) -> Gallery:
        """The gallery of one layer, best first."""
        return Gallery(layer, kind, self.ranked())


@dataclass
class Gallery:
    """For each token of one layer, the top photos where it attends most strongly."""

    layer: int
    kind: str
    items: list[list[GalleryItem]]  # [token][rank], best first

    def picture(self, labels: bool = True) -> np.ndarray:
        """Rows = tokens, columns = ranks: an RGB uint8 picture."""
        size = next((it.crop.shape[0] for row in self.items for it in row), 96)
        blank = np.full((size, size, 3), 255, np.uint8)
        k = max((len(r) for r in self.items), default=1)
        cells = [[row[j].crop if j < len(row) else blank for j in range(k)] for row in self.items]
        return layout.grid(cells, row_labels=[f"token {t}" for t in range(len(self.items))] if labels else (),
                           col_labels=[f"#{j + 1}" for j in range(k)],
                           title=f"layer {self.layer} ({self.kind}): top photos per token, map and score drawn")

    def figure(self) -> Any:
        """Tokens as rows of crops: a matplotlib Figure."""
        from vtviz.viz.views import figure

        return figure(self.picture())

    def save_png(self, path: str | Path) -> Path:
        """Write :meth:`picture` as a PNG file."""
        path = Path(path)
        path.write_bytes(codecs.encode(self.picture(), "png"))
        return path

    def to_html(self, path: str | Path) -> Path:
        """A self-contained HTML page (crops embedded) for sharing."""
        import base64

        rows = []
        for t, row in enumerate(self.items):
            cells = "".join(
                f'<figure><img src="data:image/png;base64,{base64.b64encode(codecs.encode(it.crop)).decode()}"'
                f' title="{html.escape(it.source)}"><figcaption>{it.score:.3f}</figcaption></figure>'
                for it in row)
            rows.append(f"<tr><th>token {t}</th><td>{cells}</td></tr>")
        path = Path(path)
        path.write_text(_page(f"Layer {self.layer} ({self.kind}): top photos per token", "".join(rows)),
                        encoding="utf-8")
        return path


def _page(title: str, rows: str) -> str:
    return ("<!doctype html><meta charset=utf-8><title>vtviz token gallery</title>"
            "<style>figure{display:inline-block;margin:2px;font:11px sans-serif;text-align:center}"
            "th{font:13px sans-serif;text-align:right;padding-right:8px}</style>"
            f"<h3>{html.escape(title)}</h3><table>{rows}</table>")


# --------------------------------------------------------------------------- building over folders
@dataclass(frozen=True)
class GalleryOptions:
    """k: photos per token; crop: crop side in px; layers: which (None = all); batch_size."""

    k: int = 8
    crop: int = 128
    layers: tuple[int, ...] | None = None
    batch_size: int = 16
    save_every: int = 256


def build_gallery(model: VTModel, inputs: Sequence[Path], out_dir: str | Path,
                  options: GalleryOptions = GalleryOptions(), *, rank: int = 0, world: int = 1,
                  barrier: Callable[[], Any] | None = None, progress: bool = True,
                  model_name: str = "") -> dict[str, Any]:
    """Build (or resume) a token gallery of ``inputs`` in ``out_dir``; returns the index
    (rank 0; ``{}`` on other ranks). Unreadable photos are listed in the index's ``failed``.

    The photos are cut into units of ``save_every``, run by :func:`vtviz.jobs.runner.run_units`:
    each unit keeps its own top ``k`` per token (crops as files in the parts folder), and the
    merge keeps the top ``k`` of all units, which is the top ``k`` of all photos.
    """
    out = Path(out_dir)
    shard = Shard(rank, world, barrier)
    parts = Parts(out, shard)
    pre = preprocess_for(model)
    step = max(1, options.save_every)
    units = [(f"photos {s}", partial(_unit, model, inputs[s:s + step], pre, options, parts.folder / f"photos{s:08d}"))
             for s in range(0, len(inputs), step)]
    run_units(units, parts, shard, desc="gallery", progress=progress)
    shard.wait()
    if not shard.main:
        return {}
    index = _merge(out, options, model, model_name, len(inputs), parts)
    parts.clear()
    return index


def _unit(model: VTModel, paths: Sequence[Path], pre: Any, options: GalleryOptions, folder: Path) -> dict[str, Any]:
    """One unit of photos: its top ``k`` crops per token, written under ``folder``; the record
    lists them (paths relative to the parts folder) and the photos that could not be read."""
    builders: dict[int, GalleryBuilder] = {}
    failed: list[dict[str, str]] = []
    pending: list[tuple[str, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            pending.append((str(path), load_image(path)))
        except ImageError as exc:
            failed.append({"source": str(path), "error": exc.reason})
        if pending and (len(pending) >= options.batch_size or i == len(paths) - 1):
            _add_batch(model, pending, pre, builders, options)
            pending = []
    layers = []
    for li, builder in sorted(builders.items()):
        tokens = []
        for t, items in enumerate(builder.ranked()):
            rows = []
            for it in items:
                key = hashlib.sha1(f"{it.source}|{it.score!r}".encode()).hexdigest()[:10]
                rel = f"{folder.name}/layer{li}/token{t:02d}/{key}.png"
                atomic_write(folder.parent / rel, codecs.encode(it.crop, "png"))
                rows.append({"source": it.source, "score": it.score, "peak_xy": list(it.peak_xy), "file": rel})
            tokens.append(rows)
        layers.append({"layer": li, "tokens": tokens})
    return {"photos": len(paths), "failed": failed, "layers": layers}


def _add_batch(model: VTModel, batch: list[tuple[str, np.ndarray]], pre: Any,
               builders: dict[int, GalleryBuilder], options: GalleryOptions) -> None:
    x, geos = prepare([im for _, im in batch], pre)
    maps = token_maps(model, x).cpu()
    for li, la in enumerate(maps.layers):
        if options.layers is not None and li not in options.layers:
            continue
        builder = builders.setdefault(li, GalleryBuilder(la.num_tokens, options.k, options.crop))
        for (name, img), geo, m in zip(batch, geos, la.attention):
            size = codecs.fit_size(img.shape[:2], 320)
            full, _ = maps_to_original(m, geo, size)
            builder.add(codecs.resize_image(img, size), name, full)


def _kinds(model: VTModel) -> list[str]:
    return list(model.tokenizer_kinds)


def _merge(out: Path, options: GalleryOptions, model: VTModel, model_name: str, inputs: int,
           parts: Parts) -> dict[str, Any]:
    """Rank 0: the top-k of all units, written in the final layout with the index and page."""
    builders: dict[int, GalleryBuilder] = {}
    failed: list[dict[str, str]] = []
    for unit in unit_records(parts):
        failed += unit["failed"]
        for layer in unit["layers"]:
            merged = builders.setdefault(layer["layer"], GalleryBuilder(len(layer["tokens"]), options.k, options.crop))
            for t, rows in enumerate(layer["tokens"]):
                for row in rows:
                    crop = codecs.decode_image(parts.folder / row["file"])
                    merged.push(t, GalleryItem(row["score"], row["source"], crop, tuple(row["peak_xy"])))
    layers = []
    for li, builder in sorted(builders.items()):
        kind = _kinds(model)[li]
        tokens = []
        for t, items in enumerate(builder.ranked()):
            rows = []
            for r, it in enumerate(items):
                rel = f"layer{li}-{kind}/token{t:02d}/{r + 1:02d}.jpg"
                atomic_write(out / rel, codecs.encode(it.crop, "jpg", quality=90))
                rows.append({"rank": r + 1, "source": it.source, "score": round(it.score, 5),
                             "peak_xy": [round(v, 1) for v in it.peak_xy], "file": rel})
            tokens.append({"token": t, "items": rows})
        layers.append({"layer": li, "kind": kind, "tokens": tokens})
    index = {"model": model_name or model_meta(model).name, "images": inputs, "k": options.k,
             "score": "peak value of the token's attention map (share of its attention on its peak cell)",
             "failed": failed, "layers": layers}
    atomic_write(out / INDEX, json_text(index, indent=1, ensure_ascii=False).encode("utf-8"))
    atomic_write(out / "index.html", _index_html(index).encode("utf-8"))
    return index


def _index_html(index: dict[str, Any]) -> str:
    rows = []
    for layer in index["layers"]:
        rows.append(f"<tr><th colspan=2 style='text-align:left'>layer {layer['layer']} ({layer['kind']})</th></tr>")
        for tok in layer["tokens"]:
            cells = "".join(f'<figure><img src="{html.escape(it["file"])}" width=128 '
                            f'title="{html.escape(it["source"])}"><figcaption>{it["score"]:.3f}</figcaption></figure>'
                            for it in tok["items"])
            rows.append(f"<tr><th>token {tok['token']}</th><td>{cells}</td></tr>")
    return _page(f"{index['model']}: top photos per token ({index['images']} photos)", "".join(rows))


def load_gallery(folder: str | Path, layer: int) -> Gallery:
    """Read one layer of a gallery folder written by :func:`build_gallery` (app and notebook)."""
    folder = Path(folder)
    index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    entry = next((la for la in index["layers"] if la["layer"] == layer), None)
    if entry is None:
        raise ValueError(f"{folder}: the gallery has no layer {layer}")
    items = [[GalleryItem(it["score"], it["source"], codecs.decode_image(folder / it["file"]), tuple(it["peak_xy"]))
              for it in tok["items"]] for tok in entry["tokens"]]
    return Gallery(layer, entry["kind"], items)


def gallery_of_images(model: VTModel, images: Sequence[tuple[str, np.ndarray]],
                      options: GalleryOptions = GalleryOptions()) -> dict[int, Gallery]:
    """Galleries (by layer) of photos already in memory, e.g. the app's uploads: ``(name, RGB)``."""
    builders: dict[int, GalleryBuilder] = {}
    pre = preprocess_for(model)
    for start in range(0, len(images), options.batch_size):
        _add_batch(model, list(images[start:start + options.batch_size]), pre, builders, options)
    kinds = _kinds(model)
    return {li: b.result(li, kinds[li]) for li, b in builders.items()}

"""Comparison views shared by the app, the exporter and notebooks: pictures from maps.

Each function takes :class:`~vtviz.maps.explain.ImageMaps` (what a model returned for some images)
and render options, and returns an RGB uint8 picture; :func:`figure` wraps one in matplotlib.
No model is run here: changing colours or tokens only re-renders.
"""

from __future__ import annotations

import enum
import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from torch import Tensor, nn

from vtviz.errors import require
from vtviz.image import Geometry, maps_to_original
from vtviz.maps.diagnostics import LayerDiagnostics
from vtviz.maps.thresholds import ALL_TOKENS_MASS, FRAGMENTED, REGISTER_SHARE, SELF_SHARE, SINK_SHARE
from vtviz.maps.tokens import (
    ImageMaps,
    LayerMaps,
    Scale,
    TokenMatching,
    match_tokens,
    normalize_with_range,
    token_table,
)
from vtviz.viz import codecs, colors, contours, heatmap, layout
from vtviz.viz.colors import Colormap


class MapKind(str, enum.Enum):
    """Which map of a layer to draw.

    ATTENTION: the tokenizer's spatial attention (what each token pools).
    MIXED: ``token_mixing @ attention``, what each token pools after the transformer
    (the paper's Figure 6, second row). ASSIGNMENT: the projector's weight of each pixel
    on the token (not for a last layer, which has no projector).
    """

    ATTENTION = "attention"
    MIXED = "mixed"
    ASSIGNMENT = "assignment"


def select_maps(layer: LayerMaps, kind: MapKind | str) -> Tensor:
    """``[B, L, h, w]`` maps of ``kind`` for a layer; ValueError when it has none."""
    kind = MapKind(kind)
    if kind is MapKind.ATTENTION:
        return layer.attention
    if kind is MapKind.MIXED:
        return layer.mixed_attention
    if layer.assignment is None:
        raise ValueError("this layer has no projector (the last VT module feeds the classifier)")
    return layer.assignment


def available_kinds(layer: LayerMaps) -> list[MapKind]:
    """The map kinds a layer has."""
    return [k for k in MapKind if k is not MapKind.ASSIGNMENT or layer.assignment is not None]


def model_kinds(model: nn.Module, layer: int) -> list[MapKind]:
    """The map kinds VT module ``layer`` of ``model`` computes (no projector assignment in a
    module without projector, e.g. the last one, which feeds the classifier)."""
    has_projector = getattr(model.vt_layers[layer], "projector", None) is not None  # type: ignore[index]
    return [k for k in MapKind if k is not MapKind.ASSIGNMENT or has_projector]


@dataclass(frozen=True)
class RenderOptions:
    """How maps are drawn (the defaults are the readable ones, used by app, export and notebook).

    colormap, alpha (largest opacity), scale (see :class:`~vtviz.maps.tokens.Scale`), contour (outline
    of the region holding this share of a map's mass; None: none), cell (grid cell width, px),
    dim (how much the photo is desaturated and darkened under the maps), gamma (opacity ramp
    ``alpha * value**gamma``: below 1 a sharp, point-like map gets a visible halo), marker (ring
    at each map's peak).
    """

    colormap: Colormap = Colormap.TURBO
    alpha: float = 0.85
    scale: Scale = Scale.PER_MAP
    contour: float | None = 0.5
    cell: int = 224
    dim: float = 0.6
    gamma: float = 0.3
    marker: bool = True


def layer_label(index: int, layer: LayerMaps) -> str:
    """E.g. ``"layer 1 · recurrent"``."""
    return f"layer {index} · {layer.kind}"


def cell_shape(images: Sequence[np.ndarray], width: int) -> tuple[int, int]:
    """(H, W) of grid cells ``width`` px wide with the images' median aspect (0.5..1.5)."""
    aspect = float(np.median([im.shape[0] / im.shape[1] for im in images])) if images else 1.0
    return max(16, round(width * min(1.5, max(0.5, aspect)))), width


def _letterbox(img: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    ch, cw = shape
    r = min(ch / img.shape[0], cw / img.shape[1])
    h, w = max(1, round(img.shape[0] * r)), max(1, round(img.shape[1] * r))
    out = np.full((ch, cw, 3), 255, np.uint8)
    y0, x0 = (ch - h) // 2, (cw - w) // 2
    out[y0:y0 + h, x0:x0 + w] = codecs.resize_image(img, (h, w))
    return out, (y0, x0, h, w)


def overlays(result: ImageMaps, layer: int, tokens: Sequence[int],
             kind: MapKind | str = MapKind.ATTENTION, options: RenderOptions = RenderOptions(),
             images: Sequence[int] | None = None, cell: int | None = None,
             shape: tuple[int, int] | None = None) -> tuple[np.ndarray, float | None]:
    """Overlays ``[N_images, T, H, W, 3]``: each image fitted into a cell ``cell`` px wide
    whose height follows the images' median aspect (see :func:`cell_shape`).

    Maps are scaled by :func:`vtviz.maps.tokens.normalize` with ``options.scale`` over what is
    drawn together; with ``Scale.SHARED`` the common upper end (0..max over all images and
    tokens shown) is returned as the second value (None for the other scales).
    """
    cell = cell or options.cell
    idx = list(range(len(result.images))) if images is None else list(images)
    unit, vmax = _scaled(result, layer, tokens, kind, options.scale, idx)
    raw = select_maps(result.maps.layers[layer], kind)[list(idx)][:, list(tokens)]
    shape = shape or cell_shape([result.images[i] for i in idx], cell)
    out = np.full((len(idx), len(tokens), *shape, 3), 255, np.uint8)
    for n, i in enumerate(idx):
        base, (y0, x0, h, w) = _letterbox(result.images[i], shape)
        regions = _regions(raw[n], result.geometries[i], options.contour)
        out[n, :, y0:y0 + h, x0:x0 + w] = _draw(base[y0:y0 + h, x0:x0 + w], unit[n],
                                                result.geometries[i], options, regions)
    return out, vmax


def _scaled(result: ImageMaps, layer: int, tokens: Sequence[int], kind: MapKind | str,
            scale: Scale | str, idx: Sequence[int]) -> tuple[Tensor, float | None]:
    """Maps ``[N, T, h, w]`` of the images ``idx`` in [0, 1] by ``scale``, and the shared max."""
    maps = select_maps(result.maps.layers[layer], kind)[list(idx)][:, list(tokens)]
    unit, hi = normalize_with_range(maps, scale)
    return unit, float(hi.max()) if Scale(scale) in (Scale.SHARED, Scale.ABSOLUTE) else None


def _draw(base: np.ndarray, unit: Tensor, geometry: Geometry, options: RenderOptions,
          regions: contours.Regions | None) -> np.ndarray:
    """Overlays ``[T, H, W, 3]`` of unit maps ``[T, h, w]`` on ``base`` (the original, resized),
    with ``regions`` outlined (:func:`_regions`)."""
    full, mask = maps_to_original(unit, geometry, base.shape[:2])
    return heatmap.overlay(base, full.numpy(), options.colormap, options.alpha, vmin=0.0, vmax=1.0,
                          mask=mask.numpy(), dim=options.dim, gamma=options.gamma,
                          marker=options.marker, regions=regions)


def _regions(maps: Tensor, geometry: Geometry, mass: float | None) -> contours.Regions | None:
    """The ``mass`` regions of maps ``[T, h, w]`` (of the model's own values, so that every
    picture of a token outlines the same region) on their photo, traced once on a coarse
    sampling of it (:data:`vtviz.viz.contours.TRACE_SAMPLES` across its shorter side) for pictures of
    any size; None when ``mass`` is None (no contours)."""
    return None if mass is None else _traced(maps, geometry, mass)


def _traced(maps: Tensor, geometry: Geometry, mass: float) -> contours.Regions:
    """:func:`_regions` at a given ``mass``."""
    oh, ow = geometry.original_size
    k = min(1.0, contours.TRACE_SAMPLES / max(1, min(oh, ow)))
    full, _ = maps_to_original(maps, geometry, (max(1, round(oh * k)), max(1, round(ow * k))))
    return contours.trace_regions(full.numpy(), mass, smooth=True)


def _scale_footer(options: RenderOptions, vmax: float | None, length: int,
                  kind: MapKind | str) -> np.ndarray:
    label = (f"{MapKind(kind).value}: each map from its min to its max" if vmax is None
             else f"{MapKind(kind).value}: one scale for all maps shown")
    return layout.colorbar(options.colormap, 0.0, 1.0 if vmax is None else vmax, length, label=label,
                           alpha=options.alpha, gamma=options.gamma, dim=options.dim)


def _image_label(result: ImageMaps, i: int, names: Sequence[str] | None) -> str:
    name = names[i] if names and i < len(names) else f"image {i}"
    return f"{result.prediction_label(i)} · {name}"  # the prediction first: long file names get cut


def token_grid(result: ImageMaps, layer: int, tokens: Sequence[int],
               kind: MapKind | str = MapKind.ATTENTION, options: RenderOptions = RenderOptions(),
               names: Sequence[str] | None = None, images: Sequence[int] | None = None) -> np.ndarray:
    """Rows = tokens, columns = images; each column titled with the image's top prediction."""
    idx = list(range(len(result.images))) if images is None else list(images)
    ov, vmax = overlays(result, layer, tokens, kind, options, idx)
    cells = [[ov[n, t] for n in range(len(idx))] for t in range(len(tokens))]
    col_labels = [_image_label(result, i, names) for i in idx]
    title = f"{layer_label(layer, result.maps.layers[layer])} · {MapKind(kind).value}"
    footer = _scale_footer(options, vmax, min(360, options.cell * len(idx)), kind)
    return layout.grid(cells, row_labels=[f"token {t}" for t in tokens], col_labels=col_labels,
                       title=title, footer=footer)


def layer_grid(result: ImageMaps, image: int, tokens: Sequence[int],
               kind: MapKind | str = MapKind.ATTENTION, options: RenderOptions = RenderOptions(),
               layers: Sequence[int] | None = None, name: str = "", match: bool = True) -> np.ndarray:
    """One image: rows = tokens of the first layer, columns = layers (e.g. filter vs recurrent).

    With ``match`` each later layer's column shows the token that corresponds to the row's
    (:func:`vtviz.maps.tokens.match_tokens` on the tokenizer attention over all images of ``result``),
    labelled with its number and similarity; without it, token *i* beside token *i*.
    """
    layers = list(range(len(result.maps.layers))) if layers is None else list(layers)
    first = result.maps.layers[layers[0]].attention
    shape = cell_shape([result.images[image]], options.cell)
    columns, labels = [], []
    for la in layers:
        k = kind if MapKind(kind) in available_kinds(result.maps.layers[la]) else MapKind.ATTENTION
        matching = match_tokens(first, result.maps.layers[la].attention) if match and la != layers[0] else None
        columns.append(_matched_column(result, la, tokens, k, options, image, shape, matching))
        labels.append(layer_label(la, result.maps.layers[la]) + (" (matched)" if matching else ""))
    footer = _scale_footer(options, None, min(360, options.cell * len(layers)), kind)
    cells = [[col[t] for col in columns] for t in range(len(tokens))]
    return layout.grid(cells, row_labels=[f"token {t}" for t in tokens], col_labels=labels,
                       title=name or _image_label(result, image, None), footer=footer)


def _matched_column(result: ImageMaps, layer: int, tokens: Sequence[int], kind: MapKind | str,
                    options: RenderOptions, image: int, shape: tuple[int, int],
                    matching: TokenMatching | None) -> list[np.ndarray]:
    """One column of a comparison: the overlays of ``tokens`` (or of their partners under
    ``matching``), each labelled when matched."""
    if matching is None:
        ov, _ = overlays(result, layer, tokens, kind, options, [image], shape=shape)
        return list(ov[0])
    partners = [(matching.partner(t) or (t, float("nan")))[0] for t in tokens]
    ov, _ = overlays(result, layer, partners, kind, options, [image], shape=shape)
    cells = []
    for t, cell in zip(tokens, ov[0]):
        text = matching.label(t)
        strip = layout.text_strip(text, cell.shape[1], 18, size=12,
                                  background=(255, 235, 200) if "weak" in text else (235, 245, 255))
        cells.append(np.concatenate([strip, cell[18:]], axis=0))
    return cells


def model_grid(results: Sequence[ImageMaps], model_names: Sequence[str], layer: int,
               tokens: Sequence[int], kind: MapKind | str = MapKind.ATTENTION,
               options: RenderOptions = RenderOptions(), names: Sequence[str] | None = None,
               image: int = 0, match: bool = True) -> np.ndarray:
    """One image under several models: rows = tokens of the first model, columns = models.

    With ``match`` the other models' columns show, for each row, the token that corresponds
    (Hungarian matching of their tokenizer maps over all images of ``results``), labelled with
    its number and similarity (weak pairs marked). Column titles name each model, the layer
    used and its top prediction; cells widen so that no title is cut.
    """
    labels = []
    for res, mname in zip(results, model_names):
        la = min(layer, len(res.maps.layers) - 1)
        labels.append(f"{mname} · layer {la} ({res.maps.layers[la].kind}) · {res.prediction_label(image)}")
    width = max(options.cell, *(layout.text_width(t) for t in labels))
    shape = cell_shape([results[0].images[image]], width)
    first = results[0].maps.layers[min(layer, len(results[0].maps.layers) - 1)].attention
    columns = []
    for n, res in enumerate(results):
        la = min(layer, len(res.maps.layers) - 1)
        k = kind if MapKind(kind) in available_kinds(res.maps.layers[la]) else MapKind.ATTENTION
        matching = match_tokens(first, res.maps.layers[la].attention) if match and n else None
        columns.append(_matched_column(res, la, tokens, k, options, image, shape, matching))
    cells = [[col[t] for col in columns] for t in range(len(tokens))]
    image_name = names[image] if names and image < len(names) else f"image {image}"
    footer = _scale_footer(options, None, min(360, width * len(columns)), kind)
    return layout.grid(cells, row_labels=[f"token {t}" for t in tokens], col_labels=labels,
                       title=f"{image_name} · {MapKind(kind).value}" + (" · tokens matched" if match else ""),
                       footer=footer)


def partition_view(result: ImageMaps, image: int, layer: int, size: int = 448,
                   by: MapKind | str = MapKind.ATTENTION) -> np.ndarray:
    """Each pixel coloured by its owning token, with a legend: the argmax over tokens of the
    tokenizer attention (default) or of the projector assignment (``by="assignment"``)."""
    la = result.maps.layers[layer]
    chosen = la.assignment if MapKind(by) is MapKind.ASSIGNMENT else None
    use_assignment = chosen is not None
    weights = (chosen if chosen is not None else la.attention)[image]
    base = result.images[image]
    h, w = codecs.fit_size(base.shape[:2], size)
    full, mask = maps_to_original(weights, result.geometries[image], (h, w))
    part = contours.partition(codecs.resize_image(base, (h, w)), full.numpy(), mask=mask.numpy())
    by = "projector assignment" if use_assignment else "tokenizer attention"
    title = layout.text_strip(f"{layer_label(layer, la)} · owner of each pixel by {by}", w)
    owner = contours.owners(weights.float().numpy())
    share = np.bincount(owner.ravel(), minlength=weights.shape[0]) / weights[0].numel()
    shown = [t for t in range(weights.shape[0]) if share[t] > 0]  # tokens that own no pixel are not listed
    leg = layout.legend([f"token {t} · {share[t]:.0%}" for t in shown],
                        palette=colors.TOKEN_COLORS[[t % len(colors.TOKEN_COLORS) for t in shown]],
                        columns=max(1, min(6, w // 110)), cell=(110, 18))
    return layout.stack_vertical([title, part, leg])


def mixing_view(result: ImageMaps, image: int, layer: int, cell: int = 18,
                colormap: Colormap | str = Colormap.VIRIDIS) -> np.ndarray:
    """The L x L token-mixing matrix (row i: how token i reads the others) as a labelled picture."""
    m = result.maps.layers[layer].token_mixing[image].numpy()
    n = m.shape[0]
    img = colors.colorize(colors.scale_map(m, 0.0, float(m.max())), colormap)
    # one grid cell per matrix entry: the grid's row and column labels are the token numbers
    cells = [[np.broadcast_to(img[i, j], (cell, cell, 3)).copy() for j in range(n)] for i in range(n)]
    footer = layout.colorbar(colormap, 0.0, float(m.max()), min(n * (cell + 1), 360),
                             label="attention weight (each row sums to 1 over the tokens it reads)")
    return layout.grid(cells, row_labels=[f"{i}" for i in range(n)], col_labels=[f"{j}" for j in range(n)],
                       gap=1, label_width=24, footer=footer,
                       title=f"token mixing, layer {layer}: row = reading token, column = token read")


def token_statistics(result: ImageMaps, layer: int, token: int) -> list[dict[str, object]]:
    """Rows of :func:`vtviz.maps.tokens.token_table` for one token of one layer, one per image."""
    return [row.to_dict() for row in token_table(result.maps, result.geometries, [layer])
            if row.token == token]


def constellation_view(result: ImageMaps, image: int, layer: int, tokens: Sequence[int] | None = None,
                       isolate: int | None = None, size: int = 448,
                       options: RenderOptions = RenderOptions(),
                       regions: contours.Regions | None = None, base: np.ndarray | None = None,
                       title: bool = True, legend: bool = True) -> np.ndarray:
    """All tokens of one image at once: each token's 50%-mass region in its own colour
    (:data:`vtviz.viz.colors.TOKEN_COLORS`), outlined, with its number at its peak, on the dimmed
    photo; ``isolate`` keeps one token bright and the others as thin outlines. A title with the
    prediction and a colour legend frame it; when the regions are fragmented (``FRAGMENTED``
    pieces per token or more, on the token grid) a line under the title says so. ``regions``: those of
    ``tokens`` traced beforehand (:func:`_regions` with :data:`ALL_TOKENS_MASS`); ``base``: the
    photo already at this size and dimmed (e.g. shared by several layers); ``title`` False
    leaves the title to the caller (e.g. a caption that wraps instead of being cut). RGB uint8."""
    la = result.maps.layers[layer]
    toks = list(range(la.num_tokens)) if tokens is None else [t for t in tokens if t < la.num_tokens]
    src = result.images[image]
    hw = codecs.fit_size(src.shape[:2], size)
    if base is None or base.shape[:2] != hw:
        base = colors.dim_image(codecs.resize_image(src, hw), options.dim)
    faint = None if isolate is None else [t != isolate for t in toks]
    palette = colors.TOKEN_COLORS[[t % len(colors.TOKEN_COLORS) for t in toks]]
    regions = regions or _traced(la.attention[image, toks], result.geometries[image], ALL_TOKENS_MASS)
    pic = contours.constellation(base, regions, [str(t) for t in toks], faint=faint, palette=palette)
    heading = layout.text_strip(f"{layer_label(layer, la)} · all tokens · {result.prediction_label(image)}", hw[1])
    leg = layout.legend([f"token {t}" for t in toks], palette=palette,
                        columns=max(1, min(8, hw[1] // 90)))
    rows = [heading] if title else []
    rows += [pic, leg] if legend else [pic]
    pieces = float(contours.region_pieces(la.attention[image, toks].float().cpu().numpy()).mean()) if toks else 0.0
    if pieces >= FRAGMENTED:  # say on the view why it is a tangle
        note = f"spread-out maps: {pieces:.1f} pieces per token (see them one by one in the grid)"
        rows.insert(1 if title else 0, layout.text_strip(note, hw[1], size=12))
    return layout.stack_vertical(rows)




def class_map_view(image: np.ndarray, geometry: Geometry, panels: Sequence[tuple[str, Tensor]], title: str,
                   options: RenderOptions = RenderOptions(), size: int = 320) -> np.ndarray:
    """"Why this class" for one photo: each of ``panels`` (label, class map ``[h, w]``, e.g. the
    class token map of each layer and Grad-CAM) drawn over the photo on its own range (its
    positive part from 0 to its max), side by side under ``title``, with the colour bar. RGB uint8."""
    hw = codecs.fit_size(image.shape[:2], size)
    base = codecs.resize_image(image, hw)
    cells = []
    for label, m in panels:
        m = m.float().clamp(min=0)
        unit = m / m.max().clamp(min=1e-12)
        drawn = _draw(base, unit[None], geometry, options, _regions(m[None], geometry, options.contour))
        cells.append(layout.labelled(drawn[0], label))
    footer = layout.colorbar(options.colormap, 0.0, 1.0, min(360, len(cells) * hw[1]),
                             label="class evidence: each map from 0 to its max (positive part only)",
                             alpha=options.alpha, gamma=options.gamma, dim=options.dim)
    return layout.tile(cells, columns=len(cells), title=title, footer=footer)


# --------------------------------------------------------------------------- one image, all outputs
@dataclass(frozen=True)
class LayerPictures:
    """Every picture of one layer of one image (what ``vtviz export`` writes and the app zips).

    overlays: ``[T, H, W, 3]`` one overlay per token over the original image (longer side
    capped by the caller's ``size``; at the grid's cell size when drawn only for the grid);
    grid: the tokens tiled with labels and a colour bar;
    partition: each pixel coloured by its owning token, with a legend; constellation: all
    tokens at once (:func:`constellation_view`).
    """

    layer: int
    kind: str
    tokens: tuple[int, ...]
    overlays: np.ndarray
    grid: np.ndarray | None
    partition: np.ndarray | None
    constellation: np.ndarray | None = None


def image_pictures(result: ImageMaps, image: int, layers: Sequence[int] | None = None,
                   tokens: Sequence[int] | None = None, options: RenderOptions = RenderOptions(),
                   size: int | None = None, title: str = "", sheets: bool = True,
                   full_overlays: bool = True, partition: bool = True) -> list[LayerPictures]:
    """Token overlays, grid and partition of one image for each layer, from one drawing path.

    ``size`` caps the longer side of the pictures (None: the original size); ``sheets``
    False skips the grid and partition (overlays only, e.g. for a ZIP of overlays);
    ``full_overlays`` False draws the token overlays at the grid's cell size only (the grid
    looks the same; the per-token pictures are not wanted at full size, e.g. by the exporter's
    default outputs), which is most of the drawing time saved; ``partition`` False skips the
    partition picture.
    """
    picked = range(len(result.maps.layers)) if layers is None else layers
    src = result.images[image]
    hw = codecs.fit_size(src.shape[:2], size) if size and max(src.shape[:2]) > size else src.shape[:2]
    draw_hw = hw if full_overlays or not sheets else codecs.fit_size(hw, min(SHEET_CELL, max(hw)))
    base = colors.dim_image(codecs.resize_image(src, (draw_hw[0], draw_hw[1])), options.dim)
    stars_hw = codecs.fit_size(src.shape[:2], max(hw))  # the all-tokens view's photo, once for all layers
    stars_base = base if stars_hw == base.shape[:2] else (
        colors.dim_image(codecs.resize_image(src, stars_hw), options.dim) if sheets else None)
    flat = replace(options, dim=0.0)  # the photo is dimmed once for every layer
    out = []
    for li in picked:
        la = result.maps.layers[li]
        toks = tuple(t for t in (range(la.num_tokens) if tokens is None else tokens) if t < la.num_tokens)
        unit, _ = _scaled(result, li, toks, MapKind.ATTENTION, options.scale, [image])
        # each token's region traced once, outlined alike in its overlay and the all-tokens view
        geometry, raw = result.geometries[image], la.attention[image, list(toks)]
        outlined = _regions(raw, geometry, options.contour)  # None without contours
        regions = (outlined if options.contour == ALL_TOKENS_MASS
                   else _regions(raw, geometry, ALL_TOKENS_MASS) if sheets else None)
        drawn = _draw(base, unit[0], geometry, flat, outlined)
        grid = part = stars = None
        if sheets:
            grid = token_sheet(drawn, toks, f"{title} · {layer_label(li, la)}", options)
            part = partition_view(result, image, li, size=max(hw)) if partition else None
            stars = constellation_view(result, image, li, toks, size=max(hw), options=options,
                                       regions=regions, base=stars_base)
        out.append(LayerPictures(li, la.kind, toks, drawn, grid, part, stars))
    return out


SHEET_CELL = 192  # longer side of a token-sheet cell, px


def token_sheet(overlays: np.ndarray, tokens: Sequence[int], title: str,
                options: RenderOptions, cell: int = SHEET_CELL, columns: int = 4) -> np.ndarray:
    """Overlays ``[T, H, W, 3]`` of one image tiled ``columns`` per row, labelled, with a colour bar."""
    cell_size = codecs.fit_size(overlays.shape[1:3], min(cell, max(overlays.shape[1:3])))
    cells = [layout.labelled(codecs.resize_image(img, cell_size), f"token {t}")
             for t, img in zip(tokens, overlays)]
    footer = _scale_footer(options, None, min(300, columns * cell_size[1]), MapKind.ATTENTION)
    return layout.tile(cells, columns=columns, title=title, footer=footer)


# --------------------------------------------------------------------------- downloads
def safe_stem(name: str) -> str:
    """The file-system-safe readable part of a file name: its stem without folders, with
    letters (unicode too), digits, ``.``, ``-`` and ``_`` only, at most 60 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
    return re.sub(r"[^\w.-]+", "_", stem, flags=re.UNICODE).strip("._-")[:60] or "image"


def overlays_zip(result: ImageMaps, layer: int, tokens: Sequence[int], options: RenderOptions,
                 names: Sequence[str], size: int | None = None) -> bytes:
    """ZIP of tokenizer-attention overlays at the photos' own size (capped by ``size``), drawn
    and named as ``vtviz export`` writes them: ``NN-NAME/layerI-KIND/tokenTT.png``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for n in range(len(result.images)):
            folder = f"{n:02d}-{safe_stem(names[n] if n < len(names) else 'image')}"
            (pics,) = image_pictures(result, n, [layer], tokens, options, size, sheets=False)
            for t, img in zip(pics.tokens, pics.overlays):
                zf.writestr(f"{folder}/layer{layer}-{pics.kind}/token{t:02d}.png", codecs.encode(img, "png"))
    return buf.getvalue()


def raw_arrays(result: ImageMaps, images: Sequence[int] | None = None, names: Sequence[str] = (),
               model: str = "") -> dict[str, np.ndarray]:
    """Raw float maps and logits of some images (all by default), keyed as in ``maps.npz``,
    with everything needed to use them alone (:func:`vtviz.maps.tokens.read_maps_npz` reads them back):
    ``logits`` ``[N, classes]``, ``layer{i}_attention`` ``[N, L, h, w]``,
    ``layer{i}_token_mixing`` ``[N, L, L]``, ``layer{i}_assignment`` ``[N, L, h, w]``,
    ``names`` ``[N]``, ``classes``, ``kinds`` (per layer), ``model``, ``input_size`` ``[2]``,
    and each image's geometry on its original: ``original_size``, ``scale``, ``offset`` ``[N, 2]``
    (and ``ood_scores`` ``[N]`` with ``ood_threshold`` when the model has the flag)."""
    idx = list(range(len(result.images))) if images is None else list(images)
    maps = result.maps.select(idx)
    geos = [result.geometries[i] for i in idx]
    arrays: dict[str, np.ndarray] = {
        "logits": maps.logits.numpy(),
        "names": np.array([names[i] if i < len(names) else f"image {i}" for i in idx]),
        "classes": np.array(result.classes), "kinds": np.array(maps.kinds), "model": np.array(model),
        "input_size": np.array(maps.input_size),
        "original_size": np.array([g.original_size for g in geos], np.int64),
        "scale": np.array([g.scale for g in geos], np.float64),
        "offset": np.array([g.offset for g in geos], np.float64),
    }
    if result.ood_scores is not None and result.ood_threshold is not None:
        arrays["ood_scores"] = np.array([result.ood_scores[i] for i in idx])
        arrays["ood_threshold"] = np.array(result.ood_threshold)
    for i, la in enumerate(maps.layers):
        arrays[f"layer{i}_attention"] = la.attention.numpy()
        arrays[f"layer{i}_token_mixing"] = la.token_mixing.numpy()
        if la.assignment is not None:
            arrays[f"layer{i}_assignment"] = la.assignment.numpy()
    return arrays


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``.npz`` bytes of named arrays (stored: float maps barely compress, and zlib cost as
    much as drawing a picture per exported photo)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def maps_npz(result: ImageMaps, names: Sequence[str] = (), model: str = "") -> bytes:
    """Raw float maps, logits and what describes them, of all images, as ``.npz`` bytes
    (:func:`raw_arrays`)."""
    return npz_bytes(raw_arrays(result, names=names, model=model))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 picture."""
    return codecs.encode(image, "png")


def figure(image: np.ndarray, title: str = "", width: float | None = None):
    """A matplotlib Figure showing an RGB picture at its own aspect (for notebooks)."""
    plt = require("matplotlib.pyplot")
    from matplotlib.figure import Figure

    h, w = image.shape[:2]
    width = width or min(16.0, w / 100)
    fig: Figure = plt.figure(figsize=(width, width * h / w + (0.3 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    plt.close(fig)  # the caller shows it; the library never calls plt.show()
    return fig


def select_images(result: ImageMaps, index: Sequence[int]) -> ImageMaps:
    """The given images of a result, in that order (:meth:`ImageMaps.select`)."""
    return result.select(index)


def concat(results: Sequence[ImageMaps]) -> ImageMaps:
    """Join results of separate runs of the same model into one (:meth:`ImageMaps.concat`)."""
    return ImageMaps.concat(results)


# --------------------------------------------------------------------------- what a view cannot show
def view_warnings(diagnostics: LayerDiagnostics, kind: MapKind | str) -> list[str]:
    """Warnings to show next to a view of ``kind`` on a layer with these diagnostics: the
    views that a degenerate transformer or projector makes meaningless say so."""
    kind = MapKind(kind)
    out = []
    mixing_bad = diagnostics.mixing_targets < 2 or diagnostics.max_received > SINK_SHARE
    to_registers = diagnostics.to_registers or 0.0
    if kind is MapKind.MIXED and to_registers > REGISTER_SHARE:
        out.append(f"Here the tokens give {to_registers:.0%} of their transformer attention to register tokens, "
                   "which have no map: the token-mixed maps keep only the small rest.")
    elif kind is MapKind.MIXED and (diagnostics.self_read or 0.0) > SELF_SHARE:
        out.append(f"Here the tokens give {diagnostics.self_read:.0%} of their transformer attention to "
                   "themselves: each token-mixed map is mostly the token's own map.")
    elif kind is MapKind.MIXED and mixing_bad:
        top = int(np.argmax(diagnostics.received))
        out.append(f"Token mixing is degenerate here: the tokens read token {top} "
                   f"({diagnostics.max_received:.0%} of all attention), so the token-mixed maps are "
                   "nearly one map repeated.")
    if kind is MapKind.ASSIGNMENT and diagnostics.owners is not None and diagnostics.owners < 2:
        out.append(f"One token owns {diagnostics.top_owner:.0%} of the pixels in the projector: "
                   "the assignment maps and partition are nearly one colour.")
    if kind is MapKind.ATTENTION and diagnostics.positional:
        out.append(f"Token(s) {', '.join(map(str, diagnostics.positional))} peak at the same place on "
                   "every image (positional tokens): their maps do not follow content.")
    return out

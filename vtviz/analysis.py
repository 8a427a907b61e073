"""Token semantics for notebooks: figures, token galleries over datasets, token statistics,
class profiles, and Captum attributions of predictions to tokens.

Functions return data or matplotlib Figures; nothing here calls ``plt.show()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from vtviz.errors import require
from vtviz.image import ImageSource, iter_image_files, load_image, maps_to_original, prepare
from vtviz.jobs.gallery import Gallery, GalleryBuilder, GalleryItem
from vtviz.maps.explain import explain_images, preprocess_for, token_maps
from vtviz.maps.faithful import class_maps
from vtviz.maps.tokens import (
    ImageMaps,
    TokenMaps,
    TokenStat,
    map_correlation,
    mass_regions,
    region_iou,
    spread,
    token_table,
)
from vtviz.models.checkpoint import model_meta
from vtviz.models.vt import VTModel
from vtviz.runtime import model_device
from vtviz.viz import codecs, heatmap, views
from vtviz.viz.colors import Colormap
from vtviz.viz.views import MapKind, RenderOptions

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# --------------------------------------------------------------------------- figures
def show_tokens(model: nn.Module, images: Sequence[ImageSource], layer: int = 0,
                tokens: Sequence[int] | None = None, kind: MapKind | str = MapKind.ATTENTION,
                names: Sequence[str] | None = None, **render_options: Any) -> Figure:
    """The token x image grid (rows = tokens, columns = images) as a matplotlib Figure.

    ``render_options`` are :class:`~vtviz.viz.views.RenderOptions` fields (colormap, alpha,
    scale, contour, cell) and ``fit`` (crop / letterbox / stretch).
    """
    fit = render_options.pop("fit", None)
    result = explain_images(model, images, fit=fit)
    tokens = list(range(result.maps.layers[layer].num_tokens)) if tokens is None else list(tokens)
    if names is None:
        names = [Path(i).name if isinstance(i, (str, Path)) else f"image {n}" for n, i in enumerate(images)]
    options = RenderOptions(**{"cell": 160, **render_options})
    return views.figure(views.token_grid(result, layer, tokens, kind, options, names=names))


# --------------------------------------------------------------------------- statistics
def token_stats(maps: TokenMaps | ImageMaps, layers: Sequence[int] | None = None) -> list[TokenStat]:
    """One :class:`~vtviz.maps.tokens.TokenStat` per (image, layer, token): :func:`vtviz.maps.tokens.token_table`.

    With :class:`ImageMaps` the peaks are also placed on the original images (``peak_xy``).
    """
    if isinstance(maps, ImageMaps):
        return token_table(maps.maps, maps.geometries, layers)
    return token_table(maps, None, layers)


def _flip(x: Tensor) -> Tensor:
    return x.flip(-1)


def stability_from_maps(original: Tensor, transformed: Tensor, undo: Callable[[Tensor], Tensor]) -> Tensor:
    """Correlation of each map with the map of the transformed image, transform undone: ``[...]``."""
    return map_correlation(original, undo(transformed))


def token_stability(model: nn.Module, images: Sequence[ImageSource], layer: int = 0,
                    shift: int = 16) -> dict[str, np.ndarray]:
    """How stable each token's map is: ``{"flip": [B, L], "shift": [B, L]}`` correlations.

    The images are flipped left-right (maps flipped back), and shifted right by ``shift``
    input pixels (a whole number of 16-px cells; maps shifted back, the uncovered columns left
    out). 1 = the map moves exactly with the image.
    """
    pre = preprocess_for(model)
    batch, _ = prepare([load_image(i) for i in images], pre)
    base = token_maps(model, batch).layers[layer].attention.cpu()
    flipped = token_maps(model, batch.flip(-1)).layers[layer].attention.cpu()
    cells = max(1, shift // 16)
    moved = torch.roll(batch, shifts=cells * 16, dims=-1)
    moved[..., : cells * 16] = 0  # normalised zero = the mean colour
    shifted = token_maps(model, moved).layers[layer].attention.cpu()
    return {
        "flip": stability_from_maps(base, flipped, _flip).numpy(),
        "shift": map_correlation(base[..., : -cells], shifted[..., cells:]).numpy(),
    }


# --------------------------------------------------------------------------- galleries
def _iter_batches(sources: Sequence[ImageSource], batch_size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    batch: list[tuple[str, np.ndarray]] = []
    for s in sources:
        try:
            batch.append((str(s) if isinstance(s, (str, Path)) else f"image {len(batch)}", load_image(s)))
        except Exception as exc:  # a bad file is skipped, the rest go on
            print(f"warning: skipped {exc}")
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sources(images_or_folder: Sequence[ImageSource] | str | Path) -> list:
    if isinstance(images_or_folder, (str, Path)):
        return list(iter_image_files([images_or_folder]))
    return list(images_or_folder)


def token_gallery(model: nn.Module, images_or_folder: Sequence[ImageSource] | str | Path, layer: int = 0,
                  k: int = 8, kind: MapKind | str = MapKind.ATTENTION, batch_size: int = 32,
                  crop: int = 96, progress: bool = True) -> Gallery:
    """For each token, the top-``k`` images by the token's peak attention, cropped at the peak.

    Streams the images (a folder is searched recursively) in batches on the model's device.
    """
    sources = _sources(images_or_folder)
    pre = preprocess_for(model)
    builder: GalleryBuilder | None = None
    kind_name = ""
    bar = tqdm(total=len(sources), desc="token gallery", unit="img", disable=not progress)
    for batch in _iter_batches(sources, batch_size):
        x, geos = prepare([im for _, im in batch], pre)
        maps = token_maps(model, x).cpu()
        la = maps.layers[layer]
        chosen = views.select_maps(la, kind)
        kind_name = la.kind
        builder = builder or GalleryBuilder(la.num_tokens, k, crop)
        for (name, img), geo, m in zip(batch, geos, chosen):
            size = codecs.fit_size(img.shape[:2], 256)
            full, _ = maps_to_original(m, geo, size)
            builder.add(codecs.resize_image(img, size), name, full)
        bar.update(len(batch))
    bar.close()
    if builder is None:
        raise ValueError("no readable image")
    return Gallery(layer, kind_name, builder.ranked())


# --------------------------------------------------------------------------- class profiles
@dataclass
class ClassProfile:
    """``profile[c, t]``: mean share of class ``c``'s image pixels that token ``t`` owns."""

    layer: int
    classes: list[str]
    profile: np.ndarray  # [C, L]
    counts: list[int]

    def figure(self):
        """A heatmap Figure (classes x tokens)."""
        plt = require("matplotlib.pyplot")

        fig, ax = plt.subplots(figsize=(1 + 0.45 * self.profile.shape[1], 1 + 0.4 * len(self.classes)))
        im = ax.imshow(self.profile, cmap="viridis", aspect="auto")
        ax.set_xticks(range(self.profile.shape[1]))
        ax.set_yticks(range(len(self.classes)), labels=self.classes)
        ax.set_xlabel("token")
        ax.set_title(f"layer {self.layer}: which tokens each class uses (share of pixels owned)")
        fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        plt.close(fig)
        return fig


def soft_ownership(attention: Tensor) -> Tensor:
    """Soft share of each pixel owned by each token: attention normalised over tokens ``[B, L, h, w]``
    (:func:`vtviz.maps.diagnostics.argmax_ownership` counts the pixels each token wins instead)."""
    a = attention.float()
    return a / a.sum(1, keepdim=True).clamp_min(1e-12)


def class_token_profile(model: nn.Module, folder: str | Path, layer: int = 0, batch_size: int = 32,
                        max_per_class: int | None = None, progress: bool = True) -> ClassProfile:
    """For each class folder ``folder/<class>/*``: the mean share of pixels each token owns.

    Ownership is the projector assignment where the layer has a projector, else the tokenizer
    attention normalised over tokens.
    """
    root = Path(folder)
    meta = model_meta(model)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    names = {cid: name for cid, name in zip(meta.class_ids, meta.classes)}
    pre = preprocess_for(model)
    rows, counts = [], []
    for cdir in tqdm(class_dirs, desc="class profile", disable=not progress):
        files = iter_image_files([cdir])[:max_per_class]
        total: Tensor | None = None
        n = 0
        for batch in _iter_batches(files, batch_size):
            x, _ = prepare([im for _, im in batch], pre)
            la = token_maps(model, x).cpu().layers[layer]
            own = la.assignment if la.assignment is not None else soft_ownership(la.attention)
            share = own.mean(dim=(-2, -1)).sum(0)  # [L]
            total = share if total is None else total + share
            n += x.shape[0]
        if total is not None and n:
            rows.append((total / n).numpy())
            counts.append(n)
        else:
            rows.append(np.full(meta.config.num_tokens, np.nan))
            counts.append(0)
    return ClassProfile(layer, [names.get(d.name, d.name) for d in class_dirs], np.stack(rows), counts)


# --------------------------------------------------------------------------- Captum
def _one(model: nn.Module, image: ImageSource | Tensor) -> Tensor:
    if isinstance(image, Tensor):
        x = image if image.ndim == 4 else image[None]
    else:
        x, _ = prepare([load_image(image)], preprocess_for(model))
    return x.to(model_device(model))


def _target(model: nn.Module, x: Tensor, target: int | str | None) -> int:
    if isinstance(target, str):
        return list(model_meta(model).classes).index(target)
    if target is None:
        with torch.no_grad():
            return int(model(x).argmax(-1))
    return int(target)


@dataclass(frozen=True)
class TokenAttribution:
    """Integrated Gradients on one layer's tokens for one class logit.

    attributions ``[L]``: each token's share of ``logit - baseline_logit``, where
    ``baseline_logit`` is the logit with this layer's tokens replaced by the baseline image's
    (for the last layer, simply the baseline image's logit); delta: how far the attributions'
    sum is from that difference (Captum's convergence delta for the last layer).
    """

    target: int
    layer: int
    attributions: np.ndarray
    delta: float
    logit: float
    baseline_logit: float


def _replace_tokens(probe: nn.Module, tokens: Tensor):
    return probe.register_forward_hook(lambda module, inputs, output: tokens.to(output.dtype))


def token_attribution(model: VTModel, image: ImageSource | Tensor, target: int | str | None = None,
                      layer: int = -1, steps: int = 64, baseline: Tensor | None = None) -> TokenAttribution:
    """How much each token of ``layer`` contributes to the ``target`` logit: Captum's
    ``LayerIntegratedGradients`` on the layer's output tokens, from the tokens of a baseline
    image (default: all-zero normalised input, i.e. the mean colour) to the image's."""
    LayerIntegratedGradients = require("captum.attr").LayerIntegratedGradients

    model.eval()
    x = _one(model, image).float()
    tgt = _target(model, x, target)
    base = torch.zeros_like(x) if baseline is None else baseline.to(x)
    probe: nn.Module = model.vt_layers[layer].token_probe  # type: ignore[assignment]
    attr = LayerIntegratedGradients(model, probe).attribute(x, baselines=base, target=tgt, n_steps=steps)
    per_token = attr[0].sum(-1).detach()
    with torch.no_grad():
        logit = float(model(x)[0, tgt])
        base_tokens = model.explain(base).layers[layer].tokens
        handle = _replace_tokens(probe, base_tokens)
        try:
            base_logit = float(model(x)[0, tgt])
        finally:
            handle.remove()
    delta = float(per_token.sum()) - (logit - base_logit)
    return TokenAttribution(tgt, layer % len(model.vt_layers), per_token.cpu().numpy(), delta, logit, base_logit)


def pixel_attribution(model: VTModel, image: ImageSource | Tensor, target: int | str | None = None,
                      method: Literal["gradcam", "ig"] = "gradcam", steps: int = 32) -> np.ndarray:
    """A pixel-space attribution ``[H, W]`` (input resolution) to set beside token maps:
    Grad-CAM on the stem's feature map (vtviz's one Grad-CAM, :func:`vtviz.maps.faithful.class_maps`),
    or Captum's Integrated Gradients summed over colours."""
    model.eval()
    x = _one(model, image).float()
    tgt = _target(model, x, target)
    if method == "gradcam":
        cam = class_maps(model, x, tgt).gradcam[None]  # [1, h, w], positive part
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].numpy()
    if method == "ig":
        IntegratedGradients = require("captum.attr").IntegratedGradients
        attr = IntegratedGradients(model).attribute(x, torch.zeros_like(x), target=tgt, n_steps=steps)
        return attr[0].sum(0).detach().cpu().numpy()
    raise ValueError(f"unknown method {method!r} (gradcam, ig)")


def token_deletion(model: VTModel, image: ImageSource | Tensor, target: int | str | None = None,
                   layer: int = -1) -> np.ndarray:
    """Drop of the ``target`` logit when each token of ``layer`` is removed (set to zero): ``[L]``.

    Positive = the prediction needed that token. Compare with :func:`token_attribution`.
    """
    model.eval()
    x = _one(model, image).float()
    tgt = _target(model, x, target)
    probe: nn.Module = model.vt_layers[layer].token_probe  # type: ignore[assignment]
    with torch.no_grad():
        full = float(model(x)[0, tgt])
        n = model.config.num_tokens
        drops = np.zeros(n)
        for t in range(n):
            def remove(module: nn.Module, inputs, output: Tensor, t: int = t) -> Tensor:
                out = output.clone()
                out[:, t] = 0
                return out

            handle = probe.register_forward_hook(remove)
            try:
                drops[t] = full - float(model(x)[0, tgt])
            finally:
                handle.remove()
    return drops


def attribution_figure(model: VTModel, image: ImageSource, target: int | str | None = None,
                       layer: int = 0, colormap: Colormap | str = Colormap.TURBO):
    """Side by side: the image, Grad-CAM, and the maps of the 3 tokens that IG credits most."""
    plt = require("matplotlib.pyplot")

    result = explain_images(model, [image])
    x = _one(model, result.images[0])
    tgt = _target(model, x, target)
    ta = token_attribution(model, x, tgt, layer=layer)
    cam = pixel_attribution(model, x, tgt, "gradcam")
    top = np.argsort(-ta.attributions)[:3]
    geo = result.geometries[0]
    img = result.images[0]
    cam_full, mask = maps_to_original(torch.from_numpy(cam), geo)  # input-resolution map
    panels = [("image", img), ("Grad-CAM", heatmap.overlay(img, np.maximum(cam_full.numpy(), 0),
                                                          colormap, mask=mask.numpy()))]
    att = result.maps.layers[layer].attention[0]
    full, mask = maps_to_original(att[torch.as_tensor(top)], geo)
    for t, m in zip(top, full):
        panels.append((f"token {t}: IG {ta.attributions[t]:+.2f}",
                       heatmap.overlay(img, m.numpy(), colormap, mask=mask.numpy())))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, pic) in zip(axes, panels):
        ax.imshow(pic)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{model_meta(model).classes[tgt]}: layer {layer} tokens that Integrated Gradients credits most")
    fig.tight_layout()
    plt.close(fig)
    return fig


__all__ = [
    "ClassProfile", "Gallery", "GalleryBuilder", "GalleryItem", "TokenAttribution", "TokenStat",
    "attribution_figure", "class_token_profile", "map_correlation", "mass_regions", "soft_ownership",
    "pixel_attribution", "region_iou", "show_tokens", "spread", "stability_from_maps", "token_attribution",
    "token_deletion", "token_gallery", "token_stability", "token_stats",
]


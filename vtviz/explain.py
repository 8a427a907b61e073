"""Running a model: image batches in, :class:`~vtviz.maps.TokenMaps` and predictions out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from .checkpoint import model_meta
from .image import ImageSource, load_image, prepare
from .maps import ImageMaps, TokenMaps, from_output, top_k
from .meta import Fit, Preprocess
from .model import NO_ABLATION, Ablation, VTResNet
from .runtime import inference, to_model_input


def _require_vt(model: nn.Module) -> VTResNet:
    if not isinstance(model, VTResNet):
        raise TypeError(f"token maps need a VT model (VTResNet), got {type(model).__name__}")
    return model


def token_maps(model: nn.Module, batch: Tensor, *, amp: bool | None = None,
               ablation: Ablation = NO_ABLATION) -> TokenMaps:
    """Logits and every layer's maps for a preprocessed batch ``[B, 3, H, W]``, in one pass.

    Runs through :func:`vtviz.runtime.inference` on the model's device (mixed precision per
    ``amp``); maps come back float32 on that device. ``ablation`` switches parts off.
    """
    vt = _require_vt(model)
    x = to_model_input(vt, batch)
    with inference(vt, amp):
        out = vt.explain(x, ablation)
    return from_output(out, vt.tokenizer_kinds, (x.shape[-2], x.shape[-1]), vt.config.registers)


def preprocess_for(model: nn.Module, fit: Fit | str | None = None, size: int | None = None) -> Preprocess:
    """The model's preprocessing, optionally with another fit or input size."""
    pre = model_meta(model).preprocess
    changes: dict[str, Any] = {}
    if fit is not None:
        changes["fit"] = Fit(fit)
    if size is not None:
        changes["size"] = int(size)
    return Preprocess(**{**pre.__dict__, **changes}) if changes else pre


def explain_images(model: nn.Module, images: Sequence[ImageSource | np.ndarray], *,
                   fit: Fit | str | None = None, size: int | None = None,
                   amp: bool | None = None) -> ImageMaps:
    """Decode, preprocess (from the model's metadata) and explain a list of images.

    ``images`` are anything :func:`~vtviz.image.load_image` accepts; ``fit``/``size``
    override the checkpoint's preprocessing (e.g. ``"letterbox"`` to see whole photos).
    """
    pre = preprocess_for(model, fit, size)
    rgb = [load_image(im) for im in images]
    batch, geometries = prepare(rgb, pre)
    maps = token_maps(model, batch, amp=amp).cpu()
    return ImageMaps(rgb, geometries, maps, model_meta(model).classes)


def predict(model: nn.Module, images: Sequence[ImageSource], k: int = 5, *,
            batch_size: int = 32, amp: bool | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each image, in batches."""
    pre = preprocess_for(model)
    results: list[list[tuple[str, float]]] = []
    for chunk in _chunks(list(images), batch_size):
        batch, _ = prepare([load_image(im) for im in chunk], pre)
        results += top_k(logits_of(model, batch, amp=amp).cpu(), model_meta(model).classes, k)
    return results


def logits_of(model: nn.Module, batch: Tensor, *, amp: bool | None = None) -> Tensor:
    """Float32 logits ``[B, classes]`` of any model (VT or not) for a batch ``[B, 3, H, W]``."""
    x = to_model_input(model, batch)
    with inference(model, amp):
        return model(x).float()


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]

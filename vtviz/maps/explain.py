"""Running a model: image batches in, :class:`~vtviz.maps.tokens.TokenMaps` and predictions out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from vtviz.image import ImageSource, load_image, prepare
from vtviz.maps.tokens import ImageMaps, TokenMaps, from_output, top_k
from vtviz.models.checkpoint import model_meta
from vtviz.models.ood import ReferenceFlag, pooled_features
from vtviz.models.vt import NO_ABLATION, Ablation, VTModel
from vtviz.preprocess import Fit, Preprocess
from vtviz.runtime import inference, to_model_input


def _require_vt(model: nn.Module) -> VTModel:
    if not isinstance(model, VTModel):
        raise TypeError(f"token maps need a VT model (VTModel), got {type(model).__name__}")
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
    flag = ood_scores(model, maps, rgb)
    return ImageMaps(rgb, geometries, maps, model_meta(model).classes, flag.scores, flag.threshold,
                     flag.looks_like)


@dataclass(frozen=True)
class FlagScores:
    """The unfamiliar-photo flag of a batch: each image's score (above ``threshold``: flagged)
    and, for a reference flag, what the 1000-class reference sees (``looks_like``). All None
    for a model without a flag (see :mod:`vtviz.models.ood`)."""

    scores: tuple[float, ...] | None = None
    threshold: float | None = None
    looks_like: tuple[str, ...] | None = None


def ood_scores(model: nn.Module, maps: TokenMaps, images: Sequence[np.ndarray]) -> FlagScores:
    """The model's unfamiliar-photo flag on a batch: ``maps`` of the batch and its RGB photos
    (the reference flag looks at the photos with its own preprocessing)."""
    if not isinstance(model, VTModel) or model.ood is None:
        return FlagScores()
    if isinstance(model.ood, ReferenceFlag):
        scores, names = model.ood.judge(images)
        return FlagScores(tuple(float(s) for s in scores), model.ood.threshold, tuple(names))
    features = pooled_features(maps.layers[-1].tokens)
    return FlagScores(tuple(float(s) for s in model.ood.score(features)), model.ood.threshold)


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: top-k (class, probability), and the out-of-distribution score
    and flag (None for a model without one: see :mod:`vtviz.models.ood`)."""

    top: list[tuple[str, float]]
    ood_score: float | None = None
    unfamiliar: bool | None = None
    looks_like: str | None = None


def predictions(model: nn.Module, images: Sequence[ImageSource], k: int = 5, *,
                batch_size: int = 32, amp: bool | None = None) -> list[Prediction]:
    """Top-k classes and the unfamiliar-photo flag for each image, in batches."""
    pre = preprocess_for(model)
    classes = model_meta(model).classes
    out: list[Prediction] = []
    for chunk in _chunks(list(images), batch_size):
        rgb = [load_image(im) for im in chunk]
        batch, _ = prepare(rgb, pre)
        if isinstance(model, VTModel) and model.ood is not None:
            maps = token_maps(model, batch, amp=amp).cpu()
            flag = ood_scores(model, maps, rgb)
            assert flag.scores is not None and flag.threshold is not None
            looks = flag.looks_like or (None,) * len(rgb)
            out += [Prediction(t, s, s > flag.threshold, seen)
                    for t, s, seen in zip(top_k(maps.logits, classes, k), flag.scores, looks)]
        else:
            out += [Prediction(t) for t in top_k(logits_of(model, batch, amp=amp).cpu(), classes, k)]
    return out


def predict(model: nn.Module, images: Sequence[ImageSource], k: int = 5, *,
            batch_size: int = 32, amp: bool | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (class, probability) for each image, in batches (:func:`predictions` without flags)."""
    return [p.top for p in predictions(model, images, k, batch_size=batch_size, amp=amp)]


def logits_of(model: nn.Module, batch: Tensor, *, amp: bool | None = None) -> Tensor:
    """Float32 logits ``[B, classes]`` of any model (VT or not) for a batch ``[B, 3, H, W]``."""
    x = to_model_input(model, batch)
    with inference(model, amp):
        return model(x).float()


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]

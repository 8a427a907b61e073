"""Running a model: image batches in, :class:`~vtviz.maps.TokenMaps` and predictions out."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import model_meta
from .image import Geometry, ImageSource, load_image, prepare
from .maps import TokenMaps, from_output
from .meta import Fit, Preprocess
from .model import VTResNet


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bfloat16 matrix units (AMX or AVX512-BF16)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def autocast_for(device: torch.device, enabled: bool | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision for inference/training on ``device``.

    ``enabled=None`` picks it where it pays: CUDA (bfloat16 if supported, else float16)
    and CPUs with native bfloat16. Softmaxes and maps stay float32 inside the model.
    """
    if device.type == "cuda":
        on = True if enabled is None else enabled
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype, enabled=on)
    if device.type == "cpu":
        on = cpu_has_fast_bf16() if enabled is None else enabled
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)
    return contextlib.nullcontext()


def _require_vt(model: nn.Module) -> VTResNet:
    if not isinstance(model, VTResNet):
        raise TypeError(f"token maps need a VT model (VTResNet), got {type(model).__name__}")
    return model


def token_maps(model: nn.Module, batch: Tensor, *, amp: bool | None = None) -> TokenMaps:
    """Logits and every layer's maps for a preprocessed batch ``[B, 3, H, W]``, in one pass.

    Runs under ``inference_mode`` on the model's device (mixed precision per ``amp``,
    see :func:`autocast_for`); maps come back float32 on that device.
    """
    vt = _require_vt(model)
    device = model_device(vt)
    x = batch.to(device, non_blocking=True)
    if device.type in ("cpu", "cuda"):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(device, amp):
        out = vt.explain(x)
    return from_output(out, vt.tokenizer_kinds, (x.shape[-2], x.shape[-1]), vt.config.registers)


@dataclass(frozen=True)
class ImageMaps:
    """Maps of a batch of images, with what is needed to draw them over the originals.

    images: original RGB uint8 arrays ``[H_i, W_i, 3]``; geometries: where each sits in
    the input; maps: :class:`TokenMaps` for the batch (on the CPU); classes: label names.
    """

    images: list[np.ndarray]
    geometries: list[Geometry]
    maps: TokenMaps
    classes: tuple[str, ...]

    def top_k(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (class, probability) per image."""
        return top_k(self.maps.logits, self.classes, k)


def top_k(logits: Tensor, classes: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, softmax probability) for each row of ``[B, classes]`` logits."""
    probs = logits.float().softmax(-1)
    vals, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [[(classes[i] if i < len(classes) else str(i), float(v)) for v, i in zip(vr, ir)]
            for vr, ir in zip(vals.tolist(), idx.tolist())]


def preprocess_for(model: nn.Module, fit: Fit | str | None = None, size: int | None = None) -> Preprocess:
    """The model's preprocessing, optionally with another fit or input size."""
    pre = model_meta(model).preprocess
    changes = {}
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
    device = model_device(model)
    results: list[list[tuple[str, float]]] = []
    for chunk in _chunks(list(images), batch_size):
        batch, _ = prepare([load_image(im) for im in chunk], pre)
        with torch.inference_mode(), autocast_for(device, amp):
            logits = model(batch.to(device).contiguous(memory_format=torch.channels_last))
        results += top_k(logits.float().cpu(), model_meta(model).classes, k)
    return results


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]

"""Self-describing checkpoints: safetensors weights with vtviz metadata, loaded without code.

A checkpoint is one ``.safetensors`` file whose header metadata holds
``{"format": "vtviz/1", "vtviz": <ModelMeta as JSON>}``. PyTorch ``.pt``/``.pth`` state
dicts are accepted too, read with ``torch.load(weights_only=True)`` (never unpickling
code), with the metadata either inside (``{"state_dict": ..., "meta": ...}``) or given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from vtviz.errors import CheckpointError
from vtviz.models.meta import ModelMeta
from vtviz.models.ood import BANK_KEY, OODScorer, ReferenceFlag
from vtviz.models.registry import ARCHITECTURES, SUFFIX, build_model, bundled_path, list_pretrained
from vtviz.models.vt import Model, ResNet, VTModel
from vtviz.runtime import resolve_device

M = TypeVar("M", VTModel, ResNet)
FORMAT = "vtviz/1"
#: Most training features an OOD bank may hold.
MAX_BANK = 100_000


def save_model(
    model: nn.Module, path: str | Path, meta: ModelMeta, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model``'s weights and ``meta`` to one safetensors file, atomically.

    ``dtype`` (e.g. ``torch.float16``) casts floating-point tensors to save space;
    they load back into float32. A VT model's OOD scorer (``model.ood``) goes along: its bank
    as the tensor ``ood.bank`` (float16), its settings as ``meta.ood`` (None without a scorer).
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    tensors: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous().clone()
    scorer = model.ood if isinstance(model, VTModel) else None
    if isinstance(scorer, OODScorer):
        tensors[BANK_KEY] = scorer.bank.detach().cpu().to(torch.float16).contiguous()
    # the header describes the flag the model carries, never one left in ``meta`` without its bank
    meta = dataclasses.replace(meta, ood=None if scorer is None else scorer.meta())
    return _write(tensors, path, meta)


def _write(tensors: dict[str, Tensor], path: Path, meta: ModelMeta) -> Path:
    header = {"format": FORMAT, "vtviz": json.dumps(meta.to_dict())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def record_evaluation(name_or_path: str | Path, result: Mapping[str, Any]) -> Path:
    """Store an evaluation (``vtviz evaluate --record``) as ``training["val"]`` of a checkpoint.

    For models trained without a val split at hand (e.g. on a remote GPU): the weights are
    rewritten unchanged, atomically; only the safetensors metadata changes. A ``"data"`` path
    in ``result`` is stored by :func:`portable_data_path`.
    """
    tensors, meta, path = read_checkpoint(name_or_path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"{path}: only safetensors checkpoints can record an evaluation")
    val = dict(result)
    if "data" in val:
        val["data"] = portable_data_path(val["data"])
    meta = dataclasses.replace(meta, training={**meta.training, "val": val})
    return _write(tensors, path, meta)


def portable_data_path(path: str | Path) -> str:
    """How a dataset folder is recorded in a checkpoint: no machine-specific absolute path.

    A relative path is kept as given (the model cards' commands use ``../shared/...``); an
    absolute one is cut to its last two parts (``/home/me/imagenette/val`` -> ``imagenette/val``).
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    tail = p.parts[1:][-2:]  # the anchor ("/", "C:\\") is never kept
    return Path(*tail).as_posix() if tail else "."


def _find(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = bundled_path(str(name_or_path))
    if bundled.is_file():
        return bundled
    if os.path.lexists(path) and not path.exists():
        raise CheckpointError(f"{path}: a dangling or looping symbolic link")
    if path.exists():
        raise CheckpointError(f"{path}: is not a file")
    known = ", ".join(list_pretrained()) or "none"
    raise CheckpointError(f"{name_or_path}: no such file, nor a bundled model (bundled: {known})")


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a safetensors file, read from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}, dict(f.metadata() or {})
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to map the file") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from None


def _safetensors_tensors(path: Path) -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: cannot read its tensors ({type(exc).__name__}: {exc})") from None


#: Leading bytes of common files that are not checkpoints, to say what a file is instead.
_MAGIC = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
          b"RIFF": "a RIFF (e.g. WebP) file", b"%PDF": "a PDF document", b"\x1f\x8b": "a gzip archive",
          b"{": "a JSON or text file"}


def _what_is(head: bytes) -> str:
    return next((what for magic, what in _MAGIC.items() if head.startswith(magic)), "not a known file type")


def _read_torch(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        raise CheckpointError(f"{path}: not a checkpoint: neither a safetensors, zip (PyTorch) nor pickle "
                              f"file ({_what_is(head)})")
    try:  # memory-mapped (a zip checkpoint): tensors are not read before their shapes are checked
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=head.startswith(b"PK"))
    except pickle.UnpicklingError as exc:
        # torch's message may suggest turning weights_only off: vtviz never passes that on
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip() and "weights_only" not in ln
                 and "weights only" not in ln.lower()]
        reason = f" ({lines[0][:200]})" if lines else ""
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors, and loading "
            f"it could run code{reason}. Save a plain state dict or use safetensors."
        ) from None
    except Exception as exc:  # zip errors, truncated files, ...
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None
    state = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors, meta


def read_checkpoint(
    name_or_path: str | Path, meta: ModelMeta | None = None
) -> tuple[dict[str, Tensor], ModelMeta, Path]:
    """Tensors, metadata and resolved path of a checkpoint, without building a model.

    ``meta`` supplies the metadata for a bare ``.pt`` state dict that has none. Everything is
    checked from the file's header before any tensor is read: the metadata (architecture,
    classes, preprocessing), and every tensor's name and shape against the architecture built
    on PyTorch's "meta" device (no memory), so that a header that asks for a huge model is
    refused before it allocates anything.
    """
    path = _find(name_or_path)
    with open(path, "rb") as f:
        magic = f.read(8)
    pickled = magic[:1] == b"\x80" and magic[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if magic[:2] == b"PK" or path.suffix in (".pt", ".pth"):
        return _read_torch_checked(path, meta)
    try:
        shapes, header = _safetensors_header(path)
    except CheckpointError as exc:
        if pickled:  # a safetensors header can start with 0x80 too: only then try pickle
            return _read_torch_checked(path, meta)
        if _what_is(magic) != _what_is(b""):
            raise CheckpointError(f"{path}: not a checkpoint: neither a safetensors, zip (PyTorch) "
                                  f"nor pickle file ({_what_is(magic)})") from None
        raise exc
    meta = _checked_meta(path, _header_json(path, header), meta, shapes)
    return _safetensors_tensors(path), meta, path


def _read_torch_checked(path: Path, meta: ModelMeta | None) -> tuple[dict[str, Tensor], ModelMeta, Path]:
    """:func:`read_checkpoint` of a PyTorch (zip or pickle) file (zip: memory-mapped)."""
    tensors, raw = _read_torch(path)
    return tensors, _checked_meta(path, raw, meta, {k: tuple(v.shape) for k, v in tensors.items()}), path


def _checked_meta(path: Path, raw: Mapping[str, Any] | None, meta: ModelMeta | None,
                  shapes: Mapping[str, tuple[int, ...]]) -> ModelMeta:
    """The file's metadata (else the given ``meta``), checked against the file's tensor shapes."""
    if raw is not None:
        meta = meta_from_header(raw, str(path))
    if meta is None:
        raise CheckpointError(f"{path}: no vtviz metadata (architecture, classes): not a vtviz checkpoint")
    check_shapes(expected_shapes(meta, str(path)), shapes, str(path))
    return meta


def _header_json(path: Path, header: Mapping[str, str]) -> dict[str, Any] | None:
    if "vtviz" not in header:
        return None
    try:
        raw = json.loads(header["vtviz"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: metadata is nested too deeply to be vtviz metadata") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: metadata is a JSON {type(raw).__name__}, not an object")
    return raw


def meta_from_header(raw: Mapping[str, Any], source: str) -> ModelMeta:
    """:class:`ModelMeta` from a checkpoint's metadata, every field checked; CheckpointError names
    ``source`` and the field on anything a model could not be shown with (class names that are
    not strings, fewer or more names than classes, a bad preprocessing, ...)."""
    try:
        meta = ModelMeta.from_dict(dict(raw))
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise CheckpointError(f"{source}: bad vtviz metadata ({type(exc).__name__}: {exc})") from None
    if meta.config.arch not in ARCHITECTURES:
        raise CheckpointError(f"{source}: unknown architecture {meta.config.arch!r}; known: {sorted(ARCHITECTURES)}")
    n = meta.config.num_classes
    if not isinstance(raw.get("classes"), list) or not all(isinstance(c, str) and c for c in meta.classes):
        raise CheckpointError(f"{source}: bad vtviz metadata: 'classes' must be a list of non-empty names")
    if len(meta.classes) != n:
        raise CheckpointError(f"{source}: bad vtviz metadata: {len(meta.classes)} class names for a model "
                              f"of {n} classes")
    if meta.class_ids and (len(meta.class_ids) != n or not all(isinstance(c, str) for c in meta.class_ids)):
        raise CheckpointError(f"{source}: bad vtviz metadata: 'class_ids' must be {n} strings or absent")
    for name in ("name", "description"):
        if not isinstance(getattr(meta, name), str):
            raise CheckpointError(f"{source}: bad vtviz metadata: {name!r} must be a string")
    return meta


def expected_shapes(meta: ModelMeta, source: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of ``meta``'s architecture, built on the "meta" device (no memory)."""
    try:
        with torch.device("meta"):
            model = build_model(meta.config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_shapes(expected: Mapping[str, tuple[int, ...]], shapes: Mapping[str, tuple[int, ...]],
                 source: str) -> None:
    """Raise :class:`CheckpointError` naming the first missing, extra or mis-shaped tensor
    (the OOD bank, ``ood.bank``, is the one extra tensor allowed: ``[N, C]``)."""
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected) - {BANK_KEY})
    if missing:
        raise CheckpointError(f"{source}: missing tensor(s) {missing[:5]} ({len(missing)} in all)")
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor(s) {extra[:5]} ({len(extra)} in all)")
    for key, ref in expected.items():
        if tuple(shapes[key]) != tuple(ref):
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(shapes[key])}, "
                                  f"the architecture expects {list(ref)}")
    bank = shapes.get(BANK_KEY)
    if bank is not None and (len(bank) != 2 or not 1 <= bank[0] <= MAX_BANK):
        raise CheckpointError(f"{source}: the OOD bank has shape {list(bank)}: expected [N, C], N <= {MAX_BANK}")


def check_state_dict(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` naming the first missing, extra or mis-shaped tensor."""
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()},
                 {k: tuple(v.shape) for k, v in tensors.items()}, source)


def load_model(
    name_or_path: str | Path, device: str | torch.device = "auto", meta: ModelMeta | None = None
) -> Model:
    """Load a bundled model by name, or a checkpoint by path, in eval mode on ``device``.

    The returned model carries its :class:`~vtviz.models.meta.ModelMeta` in its ``meta`` field.
    Raises :class:`~vtviz.errors.CheckpointError` with the reason on any bad file.
    """
    tensors, meta, path = read_checkpoint(name_or_path, meta)
    bank = tensors.pop(BANK_KEY, None)
    if bank is not None and not (bank.is_floating_point() and torch.isfinite(bank).all()):
        raise CheckpointError(f"{path}: the OOD bank holds NaN, infinite or non-float values: the "
                              "unfamiliar-photo flag would silently never fire")
    try:
        model = build_model(meta.config)
        if isinstance(model, VTModel) and meta.ood is not None and meta.ood.get("method") == "reference":
            model.ood = ReferenceFlag.from_meta(_reference(meta.ood.get("reference"), path, device),
                                                meta.classes, meta.ood)
        elif isinstance(model, VTModel) and bank is not None and meta.ood is not None:
            model.ood = OODScorer.from_meta(bank, meta.ood)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    check_state_dict(model, tensors, str(path))
    reference = model.state_dict()
    for key, value in tensors.items():
        if reference[key].is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key!r} is {value.dtype}, the architecture expects floats")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: tensor(s) {bad[:3]} hold NaN or infinite values "
                              f"({len(bad)} in all): the model would print nan")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in tensors.items()})
    model.meta = meta
    return model.to(resolve_device(device)).eval()


def _reference(name: Any, source: Path, device: str | torch.device) -> Model:
    """The bundled 1000-class model a reference flag names (never one with a reference flag itself)."""
    if not isinstance(name, str) or name not in list_pretrained():
        raise CheckpointError(f"{source}: its unfamiliar-photo flag needs the bundled model {name!r}, "
                              "which is not installed")
    reference = load_model(name, device)
    if isinstance(reference, VTModel) and isinstance(reference.ood, ReferenceFlag):
        raise CheckpointError(f"{source}: its flag's reference {name!r} has a reference flag itself")
    return reference


def model_meta(model: nn.Module) -> ModelMeta:
    """The metadata of a model loaded by :func:`load_model` (or given by :func:`attach_meta`)."""
    meta = model.meta if isinstance(model, (VTModel, ResNet)) else None
    if meta is None:
        raise ValueError("model has no vtviz metadata: load it with vtviz.load_model or attach_meta")
    return meta


def attach_meta(model: M, meta: ModelMeta) -> M:
    """Give a model built in code its metadata (the ``meta`` field); returns the model."""
    model.meta = meta
    return model

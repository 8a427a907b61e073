"""What an interactive front end (the Streamlit app) needs besides views: a thread-safe model
store, uploaded checkpoints kept safely on disk, and per-image inference keyed by content."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vtviz.errors import CheckpointError, ImageError
from vtviz.image import MAX_PIXELS, load_image
from vtviz.maps.explain import explain_images
from vtviz.maps.tokens import ImageMaps
from vtviz.models.checkpoint import load_model
from vtviz.models.meta import ModelMeta
from vtviz.models.registry import list_pretrained
from vtviz.preprocess import Fit
from vtviz.viz.codecs import fit_size, resize_image

_UPLOAD_DIR: Path | None = None


def upload_dir() -> Path:
    """This process's private folder for uploaded checkpoints (mode 0700, made on first use and
    deleted with what it holds when the process exits: uploads are ~100 MB each)."""
    global _UPLOAD_DIR
    if _UPLOAD_DIR is None:
        _UPLOAD_DIR = Path(tempfile.mkdtemp(prefix="vtviz-uploads-"))
        atexit.register(shutil.rmtree, _UPLOAD_DIR, ignore_errors=True)
    return _UPLOAD_DIR


class ModelStore:
    """Loads each model once per process; safe to share between concurrent sessions."""

    def __init__(self, device: str = "auto", max_uploads: int = 3) -> None:
        self.device = device
        self.max_uploads = max_uploads
        self._models: dict[str, nn.Module] = {}
        self._uploads: list[str] = []  # keys of uploaded checkpoints, oldest first
        self._lock = threading.Lock()

    def get(self, key: str) -> nn.Module:
        """A bundled name or a checkpoint path -> the loaded model (cached)."""
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(key, device=self.device)
            return self._models[key]

    def _evict_uploads(self) -> None:
        """Keep the ``max_uploads`` newest uploaded checkpoints; forget and delete the rest."""
        with self._lock:
            while len(self._uploads) > self.max_uploads:
                old = self._uploads.pop(0)
                self._models.pop(old, None)
                Path(old).unlink(missing_ok=True)

    @staticmethod
    def bundled() -> list[str]:
        """Names of the bundled models."""
        return list_pretrained()

    def add_upload(self, data: bytes, filename: str) -> str:
        """Store uploaded checkpoint bytes under a hash name (never the user's file name),
        load it, and return its key. Raises :class:`~vtviz.errors.CheckpointError` if invalid."""
        if len(data) > MAX_UPLOAD_BYTES:
            raise CheckpointError(f"{filename}: {too_large(len(data))}")
        suffix = ".pt" if filename.lower().endswith((".pt", ".pth")) else ".safetensors"
        path = upload_dir() / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        if not path.exists() or path.read_bytes() != data:  # private folder; the content is checked anyway
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        try:
            self.get(str(path))
            with self._lock:
                if str(path) in self._uploads:
                    self._uploads.remove(str(path))
                self._uploads.append(str(path))
            self._evict_uploads()
        except CheckpointError as exc:
            path.unlink(missing_ok=True)
            raise CheckpointError(str(exc).replace(str(path), filename)) from None  # the user's name
        except Exception:
            path.unlink(missing_ok=True)
            raise
        return str(path)


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of some bytes (cache key of an uploaded image)."""
    return hashlib.sha256(data).hexdigest()


def comparable_first(current: ModelMeta, others: dict[str, ModelMeta]) -> list[str]:
    """Labels of ``others`` with the most comparable model to ``current`` first: the same classes
    and architecture (e.g. the other tokenizer arm of one recipe), then the same classes, then the
    rest, each group in the given order."""
    def rank(label: str) -> int:
        meta = others[label]
        same_classes = meta.classes == current.classes
        return 0 if same_classes and meta.config.arch == current.config.arch else 1 if same_classes else 2
    return sorted(others, key=rank)


@dataclass(frozen=True)
class Upload:
    """An uploaded image: its (untrusted) file name and bytes."""

    name: str
    data: bytes


#: Largest upload the app takes (an image or a checkpoint), enforced here whatever folder
#: Streamlit was started from (``.streamlit/config.toml``'s ``maxUploadSize`` applies only when
#: it is started from the repository root).
MAX_UPLOAD_BYTES = 50 * 2**20


def too_large(nbytes: int) -> str:
    """The message for an upload over :data:`MAX_UPLOAD_BYTES`."""
    return f"upload too large: {nbytes / 2**20:.0f} MiB, the app takes at most {MAX_UPLOAD_BYTES >> 20} MiB"


#: The app keeps (and draws on) uploads at most this many pixels on their longer side, so that
#: its cache holds a bounded amount per photo (an 8000 x 8000 upload would hold 192 MB).
DISPLAY_SIDE = 1600


def explain_upload(model: nn.Module, upload: Upload, fit: Fit | str | None = None,
                   max_pixels: int = MAX_PIXELS, max_side: int = DISPLAY_SIDE) -> ImageMaps:
    """Decode one uploaded image (errors name the file), bring it to at most ``max_side`` px on
    its longer side, and explain it (maps and geometry refer to that copy)."""
    if len(upload.data) > MAX_UPLOAD_BYTES:
        raise ImageError(upload.name, too_large(len(upload.data)))
    image = load_image(upload.data, name=upload.name, max_pixels=max_pixels)
    if max(image.shape[:2]) > max_side:
        image = resize_image(image, fit_size(image.shape[:2], max_side))
    return explain_images(model, [image], fit=fit)


#: Where the app looks for in-distribution sample photos: an ImageFolder split whose class
#: folders match the model's classes (Imagenette's val beside the repository by default;
#: ``VTVIZ_SAMPLE_DATA`` names another, or "" for none). The photos are read, never copied.
_SAMPLE_ENV = os.environ.get("VTVIZ_SAMPLE_DATA")
SAMPLE_DATA: Path | None = (Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenette" / "val"
                            if _SAMPLE_ENV is None else Path(_SAMPLE_ENV) if _SAMPLE_ENV else None)


def sample_uploads(bundled: Path, data: Path | None | str = "default", classes: int = 5,
                   foreign: str = "chelsea.jpg") -> tuple[list[Upload], bool]:
    """The app's sample photos and whether they include in-distribution ones.

    With ``data`` present: the first photo (by name) of each of its first ``classes`` class
    folders, then the bundled ``foreign`` photo (a class the model does not know, to show the
    out-of-distribution flag). Without it: every bundled photo (``bundled/*.jpg``).
    """
    data = SAMPLE_DATA if data == "default" else (Path(data) if data else None)
    folders = sorted(p for p in data.iterdir() if p.is_dir()) if data and data.is_dir() else []
    picked = []
    for folder in folders[:classes]:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            picked.append(Upload(f"{folder.name}/{files[0].name}", files[0].read_bytes()))
    if picked:
        extra = bundled / foreign
        return picked + ([Upload(extra.name, extra.read_bytes())] if extra.is_file() else []), True
    return [Upload(p.name, p.read_bytes()) for p in sorted(bundled.glob("*.jpg"))], False


_MARKDOWN = set("\\`*_{}[]()#+-.!|<>~$:")


def plain(text: object) -> str:
    """``text`` made inert for Markdown (Streamlit renders messages as Markdown): every Markdown
    character backslash-escaped, so an uploaded name like ``![x](http://...)`` stays text."""
    return "".join("\\" + c if c in _MARKDOWN else c for c in str(text)).replace("\n", " ")

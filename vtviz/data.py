"""Image-folder datasets decoded once into uint8 arrays, and batch augmentation as tensor ops.

On a 2-core CPU, decoding JPEGs every epoch starves the model; so a split is decoded once
(in worker processes), fitted to a fixed size, cached as ``.npy`` and augmented on whole
batches (random-resized crop by ``roi_align``, flips).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align
from tqdm import tqdm

from vtviz.errors import ImageError
from vtviz.image import IMAGE_SUFFIXES, fit_image, load_image
from vtviz.preprocess import Preprocess


@dataclass(frozen=True)
class ImageFolderData:
    """A decoded split: images ``[N, S, S, 3]`` uint8, labels ``[N]`` int64, class ids and names."""

    images: np.ndarray
    labels: np.ndarray
    class_ids: tuple[str, ...]
    classes: tuple[str, ...]
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


def class_folders(root: Path) -> tuple[list[str], list[str]]:
    """Class ids (sub-folder names, sorted) and display names (``classes.json`` next to or above)."""
    ids = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not ids:
        raise FileNotFoundError(f"{root}: no class sub-folders (expected ROOT/<class>/<image>)")
    names = ids
    for candidate in (root / "classes.json", root.parent / "classes.json"):
        if candidate.is_file():
            mapping = json.loads(candidate.read_text())
            names = [mapping.get(i, i) for i in ids]
            break
    return ids, names


def _decode(args: tuple[str, Preprocess]) -> np.ndarray | str:
    path, pre = args
    try:
        return fit_image(load_image(path), pre)[0]
    except ImageError as exc:
        return str(exc)


def list_image_folder(root: str | Path, class_ids: Sequence[str] | None = None
                      ) -> tuple[list[str], list[int], list[str], list[str]]:
    """Image files of ``root/<class>/*`` (sorted per class), their labels, the class ids and names.

    ``class_ids`` fixes the label order (e.g. a checkpoint's; a folder that is not among them is
    an error); by default sorted folder names.
    """
    root = Path(root)
    ids, names = class_folders(root)
    if class_ids is not None:
        unknown = sorted(set(ids) - set(class_ids))
        if unknown:
            raise ValueError(f"{root}: folders {unknown[:5]} are not classes of the model")
        lookup = dict(zip(ids, names))
        ids, names = list(class_ids), [lookup.get(i, i) for i in class_ids]
    files: list[str] = []
    labels: list[int] = []
    for label, cid in enumerate(ids):
        folder = root / cid
        if folder.is_dir():
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += [str(p) for p in found]
            labels += [label] * len(found)
    return files, labels, ids, names


def read_image_folder(root: str | Path, pre: Preprocess, *, class_ids: Sequence[str] | None = None,
                      cache_dir: str | Path | None = None, workers: int | None = None,
                      progress: bool = True) -> ImageFolderData:
    """Decode ``root/<class>/*`` into fitted uint8 images (cached in ``cache_dir`` if given).

    ``class_ids`` fixes the label order (e.g. a checkpoint's); by default sorted folder names.
    Unreadable images are skipped with a warning on stderr.
    """
    root = Path(root)
    files, labels, ids, names = list_image_folder(root, class_ids)
    key = hashlib.sha1(json.dumps([str(root.resolve()), pre.size, pre.fit.value, pre.crop_pct,
                                   _listing(files)]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{root.name}-{pre.size}-{key}" if cache_dir else None
    if cache is not None and (cache / "images.npy").exists():
        images = np.load(cache / "images.npy", mmap_mode="r")
        kept = np.load(cache / "kept.npy")
    else:
        images, kept = _decode_all(files, pre, workers, progress, root.name)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            tmp = cache / f"images.{os.getpid()}.tmp.npy"
            np.save(tmp, images)
            np.save(cache / "kept.npy", kept)
            os.replace(tmp, cache / "images.npy")
    return ImageFolderData(np.asarray(images), np.asarray(labels, np.int64)[kept], tuple(ids),
                           tuple(names), tuple(np.asarray(files, dtype=object)[kept]))


def _listing(files: Sequence[str]) -> list[tuple[str, int, int]]:
    """Every file's name, size and modification time: a cache key that changes with the data."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append((f, st.st_size, st.st_mtime_ns))
    return out


def _decode_all(files: list[str], pre: Preprocess, workers: int | None, progress: bool,
                label: str) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty((len(files), pre.size, pre.size, 3), np.uint8)
    kept = np.zeros(len(files), bool)
    workers = workers or min(16, os.cpu_count() or 1)
    jobs = [(f, pre) for f in files]
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_decode, jobs, chunksize=64)
        for i, res in enumerate(tqdm(results, total=len(files), desc=f"decode {label}",
                                     disable=not progress, unit="img")):
            if isinstance(res, str):
                print(f"warning: skipped {res}", file=sys.stderr)
            else:
                out[i] = res
                kept[i] = True
    return out[kept], kept


def normalize_batch(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``[B, 3, H, W]`` float in 0..255 -> normalised by ``mean``/``std`` (given for 0..1)."""
    m = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255
    return (batch - m) / s


def random_resized_crop(images: Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> Tensor:
    """Random-resized crop (and horizontal flip) of a whole batch in one ``roi_align`` call.

    ``images``: ``[B, H, W, 3]`` uint8 -> ``[B, 3, size, size]`` float in 0..255.
    """
    b, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float()
    area = h * w * torch.empty(b).uniform_(*scale, generator=generator)
    log_r = torch.empty(b).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=generator)
    r = log_r.exp()
    cw = (area * r).sqrt().clamp(8, w)
    ch = (area / r).sqrt().clamp(8, h)
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(x, boxes.to(x.device), output_size=size, spatial_scale=1.0,
                    sampling_ratio=2, aligned=True)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(out.device)
        out[mask] = out[mask].flip(-1)
    return out


def resize_batch(images: Tensor, size: int) -> Tensor:
    """``[B, H, W, 3]`` uint8 -> ``[B, 3, size, size]`` float 0..255 (antialiased bilinear)."""
    x = images.permute(0, 3, 1, 2).float()
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           antialias=True, align_corners=False)

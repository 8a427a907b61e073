"""What a student learns from: the teacher's logits (cached per photo, or on each crop) and mixup.

Function matching (Beyer et al. 2022): the teacher labels the very crop the student sees,
mixed-up crops included, so that the student matches the teacher's function, not its labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from vtviz.data import ImageFolderData, normalize_batch
from vtviz.preprocess import Preprocess
from vtviz.runtime import autocast_for


def teacher_cache_path(data: ImageFolderData, indices: Sequence[int], cache_dir: str | Path) -> Path:
    """Where the teacher's logits for ``data`` are cached (keyed by file list and classes).

    File names count without their suffix and folders, so logits computed on the JPEGs
    also serve a re-encoded copy of the same split elsewhere (e.g. on a GPU machine).
    """
    names = [Path(f).parent.name + "/" + Path(f).stem for f in data.files]
    key = hashlib.sha1(json.dumps([names, list(indices)]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"teacher-effnet-lite0-{key}.npy"


def teacher_logits(data: ImageFolderData, cache_dir: Path | None, progress: bool,
                   batch_size: int = 64) -> Tensor:
    """EfficientNet-Lite0 logits over ``data``'s classes for every image ``[N, classes]`` (cached)."""
    from vtviz.models.teacher import MEAN, STD, imagenet_indices, load_efficientnet_lite0

    indices = imagenet_indices(data.classes)
    cache = teacher_cache_path(data, indices, cache_dir) if cache_dir is not None else None
    if cache is not None and cache.exists():
        return torch.from_numpy(np.load(cache))
    teacher = load_efficientnet_lite0().to(memory_format=torch.channels_last)
    out = []
    for start in tqdm(range(0, len(data), batch_size), desc="teacher logits", disable=not progress):
        imgs = torch.from_numpy(np.array(data.images[start:start + batch_size]))
        x = normalize_batch(imgs.permute(0, 3, 1, 2).float(), MEAN, STD)
        with torch.inference_mode(), autocast_for(torch.device("cpu")):
            out.append(teacher(x.contiguous(memory_format=torch.channels_last))[:, indices].float())
    logits = torch.cat(out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, logits.numpy())
    return logits


class CropTeacher:
    """EfficientNet-Lite0 run on the very crops the student sees ("consistent" distillation,
    Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and consistent"):
    logits cached per photo describe the whole photo, not the random crop being trained on."""

    def __init__(self, classes: Sequence[str], student: Preprocess, device: torch.device) -> None:
        from vtviz.models.teacher import MEAN, STD, imagenet_indices, load_efficientnet_lite0

        self.model = load_efficientnet_lite0().to(device).to(memory_format=torch.channels_last).eval()
        self.indices = torch.tensor(imagenet_indices(classes), device=device)
        # student-normalised x -> the teacher's normalisation, one affine map per channel
        mean_s, std_s = torch.tensor(student.mean), torch.tensor(student.std)
        self.gain = (std_s / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
        self.bias = ((mean_s - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1).to(device)
        self.device = device

    def __call__(self, x: Tensor) -> Tensor:
        """Teacher logits ``[B, classes]`` (float32) of a student batch ``[B, 3, S, S]``."""
        with torch.inference_mode(), autocast_for(self.device):
            z = self.model((x * self.gain + self.bias).contiguous(memory_format=torch.channels_last))
        return z[:, self.indices].float().clone()


def mixup_batch(x: Tensor, y: Tensor, alpha: float, gen: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha,
    alpha)`` drawn from ``gen``. ``x`` ``[B, 3, S, S]``, ``y`` ``[B]``; returns the mixed batch, the
    partner labels ``y[perm]`` ``[B]`` and ``lam``."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(y), generator=gen).to(y.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam

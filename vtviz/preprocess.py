"""How a model wants its input: fit an image to the network's square side, then normalise.

A :class:`Preprocess` travels in every checkpoint's metadata; :mod:`vtviz.image` applies it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Largest network input side (px) a checkpoint may ask for: 1024 px costs a VT-R18 about
#: 0.2 GB per image; 4096 px cost 1.4 GB and 48 s per image in a fault run.
MAX_INPUT_SIZE = 1024


class Fit(str, enum.Enum):
    """How an image of any shape is brought to the square network input.

    CROP: resize the shorter side, cut out the centre (the model's usual view).
    LETTERBOX: resize the longer side, pad the rest (the whole image is seen).
    STRETCH: resize both sides, ignoring the aspect ratio (Imagenette's own format).
    """

    CROP = "crop"
    LETTERBOX = "letterbox"
    STRETCH = "stretch"


@dataclass(frozen=True)
class Preprocess:
    """Turning an RGB image into the network input: fit to ``size`` px, then normalise."""

    size: int = 224
    fit: Fit = Fit.STRETCH
    crop_pct: float = 1.0  # CROP only: the crop covers this share of the resized shorter side
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= MAX_INPUT_SIZE:
            raise ValueError(f"preprocess size {self.size!r}: expected an integer in 16..{MAX_INPUT_SIZE} "
                             f"(larger inputs cost more memory than a batch of photos can afford)")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"preprocess crop_pct {self.crop_pct!r}: expected a share in (0, 1]")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"preprocess {name} {list(values)}: expected 3 finite numbers (R, G, B)")
        if min(self.std) <= 0:
            raise ValueError(f"preprocess std {list(self.std)}: must be positive")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["fit"] = self.fit.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`."""
        return cls(size=int(d["size"]), fit=Fit(d.get("fit", "stretch")),
                   crop_pct=float(d.get("crop_pct", 1.0)),
                   mean=tuple(d.get("mean", IMAGENET_MEAN)),
                   std=tuple(d.get("std", IMAGENET_STD)))

"""Model metadata stored in every checkpoint: architecture, classes, preprocessing, training."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .model import ModelConfig

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


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to use a set of weights, stored next to them.

    config: the architecture; classes: display names by label index; class_ids:
    dataset ids (e.g. ImageNet wnids) by label index; preprocess: input recipe;
    training: free-form summary (data, recipe, epochs, wall time, hardware, accuracy);
    ood: settings of the out-of-distribution flag (:mod:`vtviz.ood`), None without one.
    """

    config: ModelConfig
    classes: tuple[str, ...]
    preprocess: Preprocess = Preprocess()
    class_ids: tuple[str, ...] = ()
    name: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] | None = None  # out-of-distribution flag settings (vtviz.ood)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            **({"ood": self.ood} if self.ood is not None else {}),
            "config": self.config.to_dict(),
            "classes": list(self.classes),
            "class_ids": list(self.class_ids),
            "preprocess": self.preprocess.to_dict(),
            "name": self.name,
            "description": self.description,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        """Inverse of :meth:`to_dict`; raises KeyError/ValueError on missing or bad fields."""
        return cls(
            config=ModelConfig.from_dict(d["config"]),
            classes=tuple(d["classes"]),
            class_ids=tuple(d.get("class_ids", ())),
            preprocess=Preprocess.from_dict(d.get("preprocess", {"size": 224})),
            name=d.get("name", ""),
            description=d.get("description", ""),
            training=dict(d.get("training", {})),
            ood=dict(d["ood"]) if d.get("ood") is not None else None,
        )

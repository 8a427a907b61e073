"""Model metadata stored in every checkpoint: architecture, classes, preprocessing, training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vtviz.models.vt import ModelConfig
from vtviz.preprocess import Preprocess


@dataclass(frozen=True)
class ModelMeta:
    """Everything needed to use a set of weights, stored next to them.

    config: the architecture; classes: display names by label index; class_ids:
    dataset ids (e.g. ImageNet wnids) by label index; preprocess: input recipe;
    training: free-form summary (data, recipe, epochs, wall time, hardware, accuracy);
    ood: settings of the out-of-distribution flag (:mod:`vtviz.models.ood`), None without one.
    """

    config: ModelConfig
    classes: tuple[str, ...]
    preprocess: Preprocess = Preprocess()
    class_ids: tuple[str, ...] = ()
    name: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] | None = None  # out-of-distribution flag settings (vtviz.models.ood)

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

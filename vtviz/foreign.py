"""Real photos of things outside Imagenette's classes, from packages installed with vtviz's
test tools (scikit-image, matplotlib): no download, no dataset.

Two fixed, disjoint sets: ``"calibration"`` (used to check a flag's threshold while it is
chosen) and ``"report"`` (kept unseen until the final numbers of the model cards).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

#: scikit-image photo loaders (``skimage.data.<name>``) and matplotlib sample photos per set.
SETS: dict[str, tuple[str, ...]] = {
    "calibration": ("immunohistochemistry", "retina", "grass", "gravel", "brick", "cell", "clock", "page",
                    "text", "motorcycle_right", "mpl:Minduka_Present_Blue_Pack.png"),
    "report": ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera", "moon", "coins",
               "motorcycle_left", "mpl:grace_hopper.jpg"),
}


def _load(name: str) -> np.ndarray:
    if name.startswith("mpl:"):
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data(name[4:], asfileobj=False)) as img:
            return np.asarray(img.convert("RGB"))
    import skimage.data as d

    if name.startswith("motorcycle_"):
        return np.asarray(d.stereo_motorcycle()[0 if name.endswith("left") else 1])
    return np.asarray(getattr(d, name)())


def foreign_photos(which: Literal["calibration", "report"]) -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 ``[H, W, 3]``) for each photo of a set (greyscale made RGB)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in SETS[which]:
            im = _load(name)
            im = np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im[..., :3]
            out.append((name.removeprefix("mpl:"), np.ascontiguousarray(im.astype(np.uint8))))
    return out

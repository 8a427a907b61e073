"""Measure a model's out-of-distribution flag for its model card (run once, after training).

    python tools/ood_eval.py MODEL VAL_FOLDER

False alarms: the share of VAL_FOLDER's photos (in-distribution) that are flagged. Detection:
the share of real photos of other things that are flagged: the photos scikit-image ships
(people, a cat, coffee, a rocket, a motorcycle, microscopy, a galaxy field, a retina, a
camera-man, the moon, coins, textures, a clock, scanned text) and matplotlib's Grace Hopper.
AUROC of the score between the two sets. Prints JSON.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

import vtviz
from vtviz.data import read_image_folder
from vtviz.jobs.evaluate import ood_report

FOREIGN = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
           "camera", "moon", "coins", "grass", "gravel", "brick", "cell", "clock", "page", "text"]


def foreign_photos() -> list[np.ndarray]:
    """Real photos of things outside Imagenette's classes, RGB uint8, from installed packages."""
    import skimage.data as d

    photos = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in FOREIGN:
            im = np.asarray(getattr(d, name)())
            photos.append(np.repeat(im[..., None], 3, -1) if im.ndim == 2 else im[..., :3])
        photos += [np.asarray(im) for im in d.stereo_motorcycle()[:2]]
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            photos.append(np.asarray(Image.open(f).convert("RGB")))
    except (OSError, ValueError):
        pass
    return [p.astype(np.uint8) for p in photos]


def main() -> None:
    model = vtviz.load_model(sys.argv[1], device="cpu")
    meta = vtviz.model_meta(model)
    val = read_image_folder(sys.argv[2], meta.preprocess, class_ids=meta.class_ids, progress=False)
    report = ood_report(model, np.asarray(val.images), foreign_photos())  # type: ignore[arg-type]
    print(json.dumps(report))


if __name__ == "__main__":
    main()

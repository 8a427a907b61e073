"""The bundled models: they load by name, ship in the wheel, and are measured here, on photos
(not read back from their checkpoint headers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vtviz
from vtviz.maps import StatsAccumulator

BUNDLED = {"vt-r18-imagenette": ["filter", "recurrent"], "vt-r18-filter-imagenette": ["filter", "filter"]}
VAL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "imagenette" / "val"


def _photos() -> list[np.ndarray]:
    """Colour photos that scikit-image ships (none of them of the models' 10 classes)."""
    import skimage.data as d

    return [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.stereo_motorcycle()[0],
            d.immunohistochemistry()]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_loads_by_name(name):
    assert name in vtviz.list_pretrained()
    path = vtviz.checkpoint.PRETRAINED_DIR / f"{name}.safetensors"
    assert path.stat().st_size <= 25 * 2**20  # float16, at most 25 MB
    model = vtviz.load_model(name, device="cpu")
    meta = vtviz.model_meta(model)
    assert len(meta.classes) == 10 and meta.classes[0] == "tench" and meta.class_ids[0] == "n01440764"
    assert model.tokenizer_kinds == BUNDLED[name]
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_token_statistics_within_bounds_on_photos(name):
    """Focused, diverse, spread-out tokens on ordinary photos, measured now."""
    model = vtviz.load_model(name, device="cpu")
    res = vtviz.explain_images(model, _photos())
    acc = StatsAccumulator()
    acc.update(res.maps)
    for stats in acc.result():
        assert stats.within_bounds(), stats


@pytest.mark.skipif(not VAL.is_dir(), reason="Imagenette val not beside the repository")
def test_accuracy_on_a_val_sample():
    """20 val photos per class (the first by name): a quick check of the card's accuracy."""
    from vtviz.data import read_image_folder
    from vtviz.evaluate import evaluate_arrays

    model = vtviz.load_model("vt-r18-imagenette", device="cpu")
    pre = vtviz.model_meta(model).preprocess
    data = read_image_folder(VAL, pre, class_ids=vtviz.model_meta(model).class_ids, workers=2, progress=False)
    keep = np.concatenate([np.flatnonzero(data.labels == c)[:20] for c in range(10)])
    sample = type(data)(np.asarray(data.images)[keep], data.labels[keep], data.class_ids, data.classes,
                        tuple(np.asarray(data.files, dtype=object)[keep]))
    result = evaluate_arrays(model, sample, pre, progress=False)
    assert result["top1"] >= 0.8, result["top1"]  # the card: 0.88 on all 3,925


def test_bundled_models_ship_in_the_wheel(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    import zipfile

    (wheel,) = tmp_path.glob("vtviz-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in BUNDLED:
        assert f"vtviz/pretrained/{name}.safetensors" in names

"""The maintainers' scripts in tools/ that make shipped models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vtviz
from vtviz.models.meta import ModelMeta
from vtviz.models.ood import fit_ood
from vtviz.preprocess import Preprocess

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_soup_averages_every_weight_and_writes_its_own_summary(tmp_path):
    """tools/soup.py: the uniform mean of each float tensor; the average gets its own name and
    training summary, and neither the first ingredient's val result nor its OOD flag."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = vtviz.vt_resnet18(num_classes=5).eval()
        meta = ModelMeta(config=model.config, classes=tuple("abcde"), preprocess=Preprocess(size=64),
                         name=f"ingredient{seed}", description="VT-ResNet-18, tiny",
                         training={"data": {"root": "toy"}, "init": {"checkpoint": "parent"}, "epochs": 3,
                                   "val": {"images": 10, "top1": 0.5 + seed / 10, "data": "/home/someone/toy/val"}})
        if seed == 0:
            model.ood = fit_ood(torch.randn(20, 1024), torch.randn(8, 1024), k=3)
        paths.append(vtviz.save_model(model, tmp_path / f"ingredient{seed}", meta))
    out = tmp_path / "avg.safetensors"
    printed = subprocess.run([sys.executable, str(ROOT / "tools" / "soup.py"), str(out), *map(str, paths),
                              "--name", "avg"], check=True, capture_output=True, text=True).stdout
    assert json.loads(printed)["ingredients"] == ["ingredient0.safetensors", "ingredient1.safetensors"]

    a, b = (vtviz.load_model(p, device="cpu").state_dict() for p in paths)
    avg_model = vtviz.load_model(out, device="cpu")
    avg = avg_model.state_dict()
    assert not torch.equal(a["fc.weight"], b["fc.weight"])  # two different ingredients
    for key, value in avg.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key] + b[key]) / 2)
        else:
            assert torch.equal(value, a[key])

    meta = vtviz.model_meta(avg_model)
    assert meta.name == "avg" and "uniform weight average of ingredient0.safetensors" in meta.description
    assert meta.training["val"] is None and meta.training["epochs"] == 0
    assert meta.training["init"] == {"checkpoint": "parent"}
    assert [i["val"]["top1"] for i in meta.training["soup"]["ingredients"]] == [0.5, 0.6]
    assert "/home/someone" not in json.dumps(meta.training)
    assert avg_model.ood is None and meta.ood is None

"""Distillation of VT-Lite0 (``vtviz distill``): a tiny run on photos made in code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz.train.distill import DistillConfig, kl_to_teacher, map_penalties


def _folder(root, classes=2, per_class=10):
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / "train" / f"n0000000{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
            img[40 + 10 * c:120, 60:160] = (200 * c, 100, 50)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_tiny_distillation_writes_a_1000_class_checkpoint(tmp_path):
    data = _folder(tmp_path / "data")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"data": str(data), "out": str(tmp_path / "out"), "name": "tiny",
                                  "epochs": 1, "batch_size": 4, "threads": 1, "dev_fraction": 0.2}))
    from vtviz.cli import main

    assert main(["distill", str(recipe), "--lr", "0.001"]) == 0
    model = vtviz.load_model(tmp_path / "out" / "tiny.safetensors", device="cpu")
    meta = vtviz.model_meta(model)
    assert len(meta.classes) == 1000 and len(meta.class_ids) == 1000 and meta.class_ids[0] == "n01440764"
    (epoch,) = meta.training["history"]
    assert 0 <= epoch["agreement"] <= 1 and epoch["pieces0"] >= 1
    assert meta.training["recipe"]["lr"] == 0.001 and meta.training["recipe"]["out"] is None
    assert meta.training["recipe"]["init"] == ""
    assert "Apache-2.0" in meta.training["teacher_licence"]
    # a second phase starts from the first one's weights and keeps its summary under "init"
    first = vtviz.load_model(tmp_path / "out" / "tiny.safetensors", device="cpu")
    assert main(["distill", str(recipe), "--init", str(tmp_path / "out" / "tiny.safetensors"),
                 "--name", "tiny2", "--lr", "0"]) == 0
    second = vtviz.load_model(tmp_path / "out" / "tiny2.safetensors", device="cpu")
    assert vtviz.model_meta(second).training["init"]["checkpoint"] == "tiny.safetensors"
    moved = [k for k, v in second.state_dict().items()
             if v.is_floating_point() and not torch.equal(v, first.state_dict()[k]) and "running" not in k
             and "num_batches" not in k]
    assert not moved, moved[:3]  # lr 0: the weights are the first phase's (BatchNorm statistics aside)


def test_recipe_keys_are_checked(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"data": "d", "out": "o", "epoch": 3}))
    with pytest.raises(ValueError, match="unknown recipe keys \\['epoch'\\]"):
        DistillConfig.from_recipe(recipe)


def test_losses():
    logits = torch.randn(3, 1000)
    assert float(kl_to_teacher(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_teacher(logits, logits.flip(-1))) > 0
    uniform = torch.full((2, 16, 196), 1 / 196)
    ent, div = map_penalties([uniform], cap=0.7)
    assert float(ent) == pytest.approx(0.3, abs=1e-4) and float(div) == pytest.approx(1.0, abs=1e-4)
    peaked = torch.eye(196)[:16].expand(2, 16, 196)
    ent, div = map_penalties([peaked], cap=0.7)
    assert float(ent) == 0.0 and float(div) == pytest.approx(0.0, abs=1e-4)

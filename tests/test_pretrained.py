"""The bundled models load by name and describe themselves."""

from __future__ import annotations

import pytest
import torch

import vtviz

BUNDLED = {"vt-r18-imagenette": ["filter", "recurrent"], "vt-r18-filter-imagenette": ["filter", "filter"]}


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
    val = meta.training["val"]  # recorded by `vtviz evaluate --record` on this very file
    assert val["images"] == 3925 and 0 < val["top1"] <= 1
    assert val["input_size"] == meta.preprocess.size
    if name == "vt-r18-imagenette":  # the accuracy target of the model card
        assert val["top1"] >= 0.88
    for stats in val["token_stats"]:  # the bounds the model card reports
        assert stats["entropy"] <= 0.85 and stats["cosine"] <= 0.5 and stats["distinct_peaks"] >= 8

"""CUDA: token maps, export and the app's inference on a GPU agree with the CPU (skipped without CUDA).

Run on a machine with a GPU: ``python -m pytest -q tests/test_gpu.py`` (``VTVIZ_TEST_MODEL=PATH``:
another checkpoint than the bundled model, e.g. one just trained where the bundled files did not travel).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz.app.session import ModelStore, Upload, explain_upload
from vtviz.jobs.export import ExportOptions, export, load_manifest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# a bundled name or a checkpoint path (a lease's freshly trained model: tools/device_train.py)
MODEL = os.environ.get("VTVIZ_TEST_MODEL", "vt-r18-imagenette-v7")


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    import skimage.data as sk

    return [sk.astronaut(), sk.chelsea(), sk.coffee()]


def test_token_maps_match_cpu(photos):
    cpu = vtviz.load_model(MODEL, device="cpu")
    gpu = vtviz.load_model(MODEL, device="cuda")
    ref = vtviz.explain_images(cpu, photos)
    got = vtviz.explain_images(gpu, photos)
    assert next(gpu.parameters()).is_cuda
    for a, b in zip(ref.maps.layers, got.maps.layers):
        # both in bf16 autocast on their device: the maps agree to a few 1e-3 of their range
        np.testing.assert_allclose(b.attention.cpu().numpy(), a.attention.numpy(), atol=2e-2)
        assert (b.attention.flatten(2).argmax(-1).cpu() == a.attention.flatten(2).argmax(-1)).float().mean() > 0.9
    assert [t[0][0] for t in got.top_k(1)] == [t[0][0] for t in ref.top_k(1)]


def test_export_on_cuda(tmp_path, photos):
    src = []
    for i, img in enumerate(photos):
        src.append(tmp_path / f"p{i}.png")
        Image.fromarray(img).save(src[-1])
    model = vtviz.load_model(MODEL, device="cuda")
    summary = export(model, src, tmp_path / "out", ExportOptions(), workers=1, progress=False)
    assert summary.exported == 3 and summary.device.startswith("cuda")
    records, _ = load_manifest(tmp_path / "out")
    assert all((tmp_path / "out" / r["layers"][0]["grid"]).is_file() for r in records)


def test_app_inference_on_cuda(photos):
    store = ModelStore(device="cuda")
    model = store.get(MODEL)
    buf = io.BytesIO()
    Image.fromarray(photos[1]).save(buf, format="PNG")
    result = explain_upload(model, Upload("chelsea.png", buf.getvalue()))
    assert result.maps.layers[0].attention.shape[1] == 16
    np.testing.assert_allclose(result.maps.layers[0].attention.sum((-2, -1)).cpu().numpy(), 1, atol=1e-3)

"""VT-Lite0, the 1000-class default: it starts as its teacher, its maps are typed and float32,
and the shipped model is measured here against the teacher on photos that packages ship."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vtviz
from vtviz.foreign import foreign_photos
from vtviz.models.lite import vt_lite0
from vtviz.models.teacher import imagenet_categories, load_efficientnet_lite0

pytestmark = pytest.mark.slow  # real models, a real browser or a notebook kernel

NAME = "vt-lite0-imagenet"


@pytest.fixture(scope="module")
def teacher():
    return load_efficientnet_lite0()


@pytest.fixture(scope="module")
def shipped():
    return vtviz.load_model(NAME, device="cpu")


def test_untrained_student_is_its_teacher(teacher):
    torch.manual_seed(0)
    student = vt_lite0()
    student.load_teacher(teacher)
    student.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = student.explain(x)
        torch.testing.assert_close(out.logits, teacher(x), atol=1e-4, rtol=1e-4)
    assert out.map_size == (14, 14)  # the stride-16 grid: 14 x 14 cells at 224 px
    for layer in out.layers:
        assert layer.attention.dtype == torch.float32 and layer.attention.shape == (2, 16, 196)
        torch.testing.assert_close(layer.attention.sum(-1), torch.ones(2, 16))
    assert [layer.assignment is not None for layer in out.layers] == [True, False]
    frozen = [n for n, p in student.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("stem.", "fc.")) for n in frozen)


def test_shipped_model_describes_itself(shipped):
    meta = vtviz.model_meta(shipped)
    assert meta.classes == tuple(imagenet_categories()) and len(meta.classes) == 1000
    assert meta.preprocess.mean == (0.5, 0.5, 0.5) and meta.preprocess.std == (0.5, 0.5, 0.5)
    assert meta.preprocess.size == 224
    assert shipped.tokenizer_kinds == ["filter", "recurrent"]
    training = meta.training
    assert "EfficientNet-Lite0" in training["teacher"] and "Apache" in training["teacher_licence"]
    assert training["data"]["root"] == "imagenette" and training["recipe"]["epochs"] > 0


def test_shipped_model_agrees_with_its_teacher_on_package_photos(shipped, teacher):
    """Top-1 agreement with the teacher on every photo of vtviz.foreign, measured now."""
    photos = [p for which in ("calibration", "report") for _, p in foreign_photos(which)]
    pre = vtviz.model_meta(shipped).preprocess
    x, _ = vtviz.prepare(photos, pre)
    with torch.no_grad():
        s, t = shipped(x).argmax(-1), teacher(x).argmax(-1)
    agreement = float((s == t).float().mean())
    assert agreement >= 0.85, f"agreement {agreement:.2f} on {len(photos)} photos"


def test_chessboard_and_noise(shipped, teacher):
    """A chessboard and uniform noise: finite probabilities, and on noise no confident answer
    (neither model's top probability reaches 0.5)."""
    y, x = np.mgrid[0:224, 0:224]
    board = (((y // 28) + (x // 28)) % 2 * 255).astype(np.uint8)
    chess = np.repeat(board[..., None], 3, -1)
    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    res = vtviz.explain_images(shipped, [chess, noise])
    probs = res.maps.logits.softmax(-1)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert float(probs[1].max()) < 0.5
    for layer in res.maps.layers:  # maps of a flat pattern are still maps: finite, sum to 1
        torch.testing.assert_close(layer.attention.flatten(2).sum(-1), torch.ones(2, 16))

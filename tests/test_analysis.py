"""Notebook API: galleries, token statistics, stability, class profiles, Captum attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vtviz
from vtviz import analysis


def _square_images(n: int, size: int = 64, side: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        y, x = rng.integers(0, size - side, 2)
        img[y:y + side, x:x + side] = 255
        out.append((img, (y, x)))
    return out


def test_gallery_crops_contain_the_square():
    """Token 0's map follows the bright square (token 1's is noise): its top crops show the square."""
    data = _square_images(30)
    builder = analysis.GalleryBuilder(num_tokens=2, k=5, crop=32, crop_fraction=0.4)
    rng = np.random.default_rng(1)
    for i, (img, _) in enumerate(data):
        follow = torch.from_numpy(img.mean(-1).astype(np.float32))
        follow = follow / follow.sum()
        strength = 1.0 + 0.1 * i  # later images: sharper maps, higher scores
        maps = torch.stack([follow ** strength / (follow ** strength).sum(),
                            torch.from_numpy(rng.random((64, 64)).astype(np.float32)) / 4096])
        builder.add(img, f"img{i}", maps)
    gallery = builder.result(layer=0, kind="filter")
    top = gallery.items[0]
    assert len(top) == 5 and [it.score for it in top] == sorted([it.score for it in top], reverse=True)
    assert [it.source for it in top] == [f"img{i}" for i in range(29, 24, -1)]
    for it in top:
        assert (it.crop.max(-1) > 120).mean() > 0.05  # the square (tinted by the map) is in the crop; noise < 40
        white = (it.crop.min(-1) > 240)  # the white 50%-mass outline drawn around it
        assert white.any() and (it.crop.astype(int).std(-1) > 30).mean() > 0.05  # and the map, coloured
    pic = gallery.picture()
    assert pic.shape[0] > 2 * 32 and pic.dtype == np.uint8


def test_gallery_html_and_png(tmp_path, small_model, rgb):
    imgs = [rgb, np.ascontiguousarray(rgb[:, ::-1]), rgb[::-1].copy()]
    gallery = analysis.token_gallery(small_model, imgs, layer=1, k=2, progress=False)
    assert len(gallery.items) == 16 and all(len(r) == 2 for r in gallery.items)
    page = gallery.to_html(tmp_path / "g.html").read_text()
    assert page.count("<img") == 32 and "token 15" in page
    assert Image.open(gallery.save_png(tmp_path / "g.png")).size[0] > 2 * 96


def test_token_stats_known_maps():
    uniform = torch.full((1, 2, 4, 4), 1 / 16)
    point = torch.zeros(1, 2, 4, 4)
    point[0, :, 1, 2] = 1
    layer = vtviz.LayerMaps("filter", torch.cat([uniform[:, :1], point[:, :1]], 1), torch.eye(2)[None],
                            None, torch.zeros(1, 2, 8))
    stats = analysis.token_stats(vtviz.TokenMaps(torch.zeros(1, 3), (layer,), (64, 64)))
    assert [s.entropy for s in stats] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert stats[1].peak == (1, 2) and stats[1].spread == pytest.approx(0.0)
    assert stats[0].spread == pytest.approx(np.sqrt(2 * 1.25))  # uniform on 4x4: var 1.25 per axis
    assert stats[1].top10 == pytest.approx(1.0)
    same = torch.rand(1, 1, 6, 6).repeat(1, 3, 1, 1)
    np.testing.assert_allclose(analysis.region_iou(same).numpy(), np.ones((1, 3, 3)), atol=1e-6)
    disjoint = torch.zeros(1, 2, 4, 4)
    disjoint[0, 0, 0, 0] = disjoint[0, 1, 3, 3] = 1
    assert analysis.region_iou(disjoint)[0, 0, 1] == 0


def test_stability_of_flip_equivariant_map():
    img = torch.rand(3, 1, 8, 10)
    maps = img.softmax(-1)  # a map computed pixel by pixel commutes with flips
    flipped_maps = img.flip(-1).softmax(-1)
    stab = analysis.stability_from_maps(maps, flipped_maps, lambda m: m.flip(-1))
    np.testing.assert_allclose(stab.numpy(), 1.0, atol=1e-6)
    assert analysis.stability_from_maps(maps, flipped_maps, lambda m: m).mean() < 0.9


def test_token_stability_runs_on_model(small_model, rgb):
    out = analysis.token_stability(small_model, [rgb, rgb[::-1].copy()], layer=0)
    assert out["flip"].shape == (2, 16) and out["shift"].shape == (2, 16)
    assert np.isfinite(out["flip"]).all() and (np.abs(out["shift"]) <= 1 + 1e-5).all()


def test_class_token_profile(tmp_path, small_model):
    for c, colour in (("class0", (255, 0, 0)), ("class1", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (64, 64), colour).save(tmp_path / c / f"{i}.png")
    prof = analysis.class_token_profile(small_model, tmp_path, layer=0, progress=False)
    assert prof.profile.shape == (2, 16) and prof.counts == [3, 3]
    np.testing.assert_allclose(prof.profile.sum(1), 1.0, atol=1e-5)  # shares of pixels
    assert prof.classes == ["class0", "class1"]
    assert prof.figure().axes


def test_show_tokens_figure(small_model, rgb):
    fig = analysis.show_tokens(small_model, [rgb, rgb], layer=1, tokens=[0, 1, 2])
    (ax,) = fig.axes[:1]
    picture = ax.images[0].get_array()
    assert picture.shape[0] > 3 * 100 and picture.shape[2] == 3


def test_token_attribution_matches_the_closed_form_of_a_linear_head(small_model, rgb):
    """The logits are linear in the last layer's tokens (``fc(mean_L(T))``), so Integrated
    Gradients on them is known exactly: ``a_k = w_c . (T_k - T_k^base) / L``."""
    ta = analysis.token_attribution(small_model, rgb, target=2, layer=-1, steps=16)
    assert ta.attributions.shape == (16,) and ta.target == 2 and ta.layer == 1
    x = analysis._one(small_model, rgb).float()
    with torch.no_grad():
        tokens = small_model.explain(x).layers[-1].tokens[0]
        base = small_model.explain(torch.zeros_like(x)).layers[-1].tokens[0]
        w = small_model.fc.weight[2]
        expected = ((tokens - base) @ w / tokens.shape[0]).numpy()
    np.testing.assert_allclose(ta.attributions, expected, rtol=1e-4, atol=1e-5)
    assert ta.attributions.sum() == pytest.approx(ta.logit - ta.baseline_logit, abs=1e-4)
    assert abs(ta.delta) < 1e-4


def test_pixel_attribution_shapes(small_model, rgb):
    cam = analysis.pixel_attribution(small_model, rgb, target=0, method="gradcam")
    ig = analysis.pixel_attribution(small_model, rgb, target=0, method="ig", steps=8)
    assert cam.shape == (64, 64) and ig.shape == (64, 64) and (cam >= 0).all()
    with pytest.raises(ValueError):
        analysis.pixel_attribution(small_model, rgb, method="lime")  # type: ignore[arg-type]


@pytest.mark.slow
def test_deleting_credited_tokens_hurts_more(app_models):
    """On the bundled models and real photos: removing the token that IG credits most lowers the
    target logit more than removing the one it credits least (faithfulness)."""
    import skimage.data as sk

    photos = [sk.chelsea(), sk.coffee(), sk.rocket()]
    for name in ("vt-r18-imagenette-v7", "vt-r18-filter-imagenette-v7"):
        model = vtviz.load_model(name, device="cpu")
        for photo in photos:
            ta = analysis.token_attribution(model, photo, layer=-1, steps=16)
            drops = analysis.token_deletion(model, photo, ta.target, layer=-1)
            assert drops[ta.attributions.argmax()] > drops[ta.attributions.argmin()]
            assert abs(ta.delta) < 1e-2


def test_the_one_grad_cam_equals_captums(small_model, rgb):
    """vtviz's Grad-CAM (faithful.class_maps, drawn everywhere) is Captum's LayerGradCam on the
    stem's last stage, up to the bilinear upsampling to the input."""
    from captum.attr import LayerAttribution, LayerGradCam

    from vtviz.analysis import _one

    ours = analysis.pixel_attribution(small_model, rgb, target=2, method="gradcam")
    x = _one(small_model, rgb).float()
    ref = LayerGradCam(small_model, small_model.stem.layer3).attribute(x, target=2, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, x.shape[-2:], "bilinear")[0, 0].detach().numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max() + 1e-12))

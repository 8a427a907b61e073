"""Views (what users see): scales, round trips, downloads and fallbacks, on constructed maps."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np
import pytest
import torch

from vtviz.image import Geometry
from vtviz.maps.tokens import ImageMaps, LayerMaps, Scale, TokenMaps
from vtviz.viz import contours, layout, views
from vtviz.viz.colors import Colormap

H = W = 4
L = 3


def _result(n: int = 2, last_has_projector: bool = False) -> ImageMaps:
    """n grey 64x64 photos; token 0 peaks at cell (1, 1) with strength 1 in image 0, 2 in image 1."""
    att = torch.full((n, L, H, W), 0.01)
    for b in range(n):
        att[b, 0, 1, 1] = b + 1.0
    att = att / att.sum((-2, -1), keepdim=True) * (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1)
    mixing = torch.eye(L).expand(n, L, L)
    assignment = torch.softmax(torch.randn(n, L, H, W), 1)
    layers = (LayerMaps("filter", att, mixing, assignment, torch.randn(n, L, 8)),
              LayerMaps("recurrent", att.flip(-1), mixing, assignment if last_has_projector else None,
                        torch.randn(n, L, 8)))
    geo = Geometry((64, 64), (64, 64), (1.0, 1.0), (0.0, 0.0))
    images = [np.full((64, 64, 3), 128, np.uint8) for _ in range(n)]
    return ImageMaps(images, [geo] * n, TokenMaps(torch.randn(n, 5), layers, (64, 64)),
                     tuple(f"c{i}" for i in range(5)))


def _opts(scale: Scale) -> views.RenderOptions:
    # plain drawing (no dimming, ramp, contour or marker): what is tested here is the scale
    return views.RenderOptions(Colormap.HOT, alpha=1.0, scale=scale, cell=64, contour=None, dim=0.0,
                               gamma=1.0, marker=False)


def test_shared_scale_keeps_strengths_comparable_across_images():
    res = _result()
    shared, vmax = views.overlays(res, 0, [0], options=_opts(Scale.SHARED))
    per_map, none = views.overlays(res, 0, [0], options=_opts(Scale.PER_MAP))
    assert vmax == pytest.approx(float(res.maps.layers[0].attention[:, 0].max())) and none is None
    change = [np.abs(shared[i, 0].astype(int) - 128).sum() for i in range(2)]
    assert change[1] > 1.5 * change[0]  # the stronger map is drawn stronger
    same = [np.abs(per_map[i, 0].astype(int) - 128).sum() for i in range(2)]
    assert same[0] == pytest.approx(same[1], rel=0.02)  # each map on its own range: alike


def test_per_layer_scale_is_one_range_per_image():
    res = _result()
    unit, _ = views._scaled(res, 0, [0, 1, 2], "attention", Scale.PER_LAYER, [0, 1])
    assert float(unit[0].max()) == 1.0 and float(unit[1].max()) == 1.0
    assert float(unit[0, 1].max()) < 0.1  # a weak token stays weak beside a strong one


def test_select_concat_round_trip():
    res = _result(3)
    back = ImageMaps.concat([res.select([0]), res.select([1, 2])])
    for a, b in zip(back.maps.layers, res.maps.layers):
        torch.testing.assert_close(a.attention, b.attention)
        torch.testing.assert_close(a.token_mixing, b.token_mixing)
        assert (a.assignment is None) == (b.assignment is None)
    torch.testing.assert_close(back.maps.logits, res.maps.logits)
    assert [g for g in back.geometries] == res.geometries and len(back) == 3


def test_overlays_zip_entries_are_named_like_the_exporter():
    res = _result()
    data = views.overlays_zip(res, 1, [0, 2], _opts(Scale.PER_MAP), ["a/b/photo one.jpg", "x.png"])
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == ["00-photo_one/layer1-recurrent/token00.png", "00-photo_one/layer1-recurrent/token02.png",
                     "01-x/layer1-recurrent/token00.png", "01-x/layer1-recurrent/token02.png"]
    from PIL import Image

    img = Image.open(zipfile.ZipFile(io.BytesIO(data)).open(names[0]))
    assert img.size == (64, 64)  # the photo's own size, not a thumbnail


def test_every_drawing_path_outlines_the_token_region():
    """The outline is drawn whichever pictures are asked for: overlays alone (the ZIP), with the
    sheets, and at a mass other than the all-tokens view's."""
    res = _result()
    plain = dataclasses.replace(_opts(Scale.PER_MAP), contour=None)
    for sheets in (False, True):
        for mass in (0.5, 0.8):
            outlined = dataclasses.replace(plain, contour=mass)
            (with_line,) = views.image_pictures(res, 0, [0], [0, 1], outlined, sheets=sheets)
            (without,) = views.image_pictures(res, 0, [0], [0, 1], plain, sheets=sheets)
            drawn = (with_line.overlays != without.overlays).any(-1)  # the outline is the only difference
            assert 0 < drawn.mean() < 0.3, (sheets, mass)


def test_assignment_on_a_layer_without_projector_falls_back_to_attention():
    res = _result()
    with pytest.raises(ValueError, match="no projector"):
        views.select_maps(res.maps.layers[1], "assignment")
    grid = views.layer_grid(res, 0, [0], kind="assignment", options=_opts(Scale.PER_MAP))
    attention_only = views.layer_grid(res, 0, [0], kind="attention", options=_opts(Scale.PER_MAP))
    # the second column (last layer) is drawn from attention in both
    assert grid.shape == attention_only.shape
    right = slice(grid.shape[1] // 2 + 40, grid.shape[1])
    np.testing.assert_array_equal(grid[40:100, right], attention_only[40:100, right])


def test_safe_stem():
    assert views.safe_stem("../../etc/pass wd.png") == "pass_wd"
    assert views.safe_stem("C:\\\\Users\\\\me\\\\ünï.jpeg") == "ünï"
    assert views.safe_stem("...") == "image"


def test_default_grid_shows_every_token_on_real_photos(app_models):
    """The app's default token grid (200-px cells) on photos: no token cell looks like the bare
    photo (>= 3% of its pixels change by >= 30 levels), and the token itself is drawn, not only
    the dimming (>= 0.3% of pixels differ from the dimmed photo alone: marker, contour, halo)."""
    import dataclasses

    import skimage.data as sk

    import vtviz

    photos = [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.rocket(), sk.stereo_motorcycle()[0]]
    model = vtviz.load_model("vt-r18-imagenette-v7", device="cpu")
    res = vtviz.explain_images(model, photos)
    opts = views.RenderOptions(cell=200)  # what the app draws by default
    bare = dataclasses.replace(opts, alpha=0.0, contour=None, marker=False, dim=0.0)
    dimmed = dataclasses.replace(bare, dim=opts.dim)
    for layer in range(len(res.maps.layers)):
        shown, _ = views.overlays(res, layer, range(16), options=opts)
        for reference, least in ((bare, 0.03), (dimmed, 0.003)):
            ref, _ = views.overlays(res, layer, range(16), options=reference)
            changed = (np.abs(shown.astype(int) - ref.astype(int)) >= 30).any(-1).mean(axis=(-2, -1))
            assert changed.min() >= least, (layer, reference, changed.min())


def test_colour_bar_labels_are_never_cut():

    label = "attention: each map from its min to its max, a long label on a short bar"
    bar = layout.colorbar(Colormap.TURBO, 0, 1, 120, label=label, alpha=0.85, gamma=0.3)
    assert bar.shape[1] >= layout.text_width(label) > 120
    # drawn like the overlays: transparent (the grey backdrop) at 0, coloured at 1
    assert np.ptp(bar[2, 0].astype(int)) < 30 and np.ptp(bar[2, 119].astype(int)) > 60


def test_token_palette_is_well_separated():
    import itertools

    from skimage.color import deltaE_ciede2000, rgb2lab

    from vtviz.viz.colors import TOKEN_COLORS

    lab = rgb2lab(TOKEN_COLORS[None].astype(float) / 255)[0]
    distances = [deltaE_ciede2000(lab[i], lab[j]) for i, j in itertools.combinations(range(16), 2)]
    assert len(TOKEN_COLORS) == 16 and min(distances) >= 20


def test_constellation_draws_every_token_in_its_colour():
    from vtviz.viz.colors import TOKEN_COLORS

    res = _result(1)
    att = torch.full((1, L, H, W), 1e-3)
    for k, (y, x) in enumerate([(1, 1), (3, 3), (0, 3)]):  # each token on its own cell
        att[0, k, y, x] = 1.0
    layer = dataclasses.replace(res.maps.layers[0], attention=att / att.sum((-2, -1), keepdim=True))
    res = dataclasses.replace(res, maps=dataclasses.replace(res.maps, layers=(layer, res.maps.layers[1])))
    opts = views.RenderOptions(dim=0.0)
    pic = views.constellation_view(res, 0, 0, size=64, options=opts)
    title = 18
    body = pic[title:title + 64]
    # token 0 peaks at cell (1, 1), i.e. pixels 16..31: its region is tinted with its colour
    def filled(picture: np.ndarray, token: int) -> np.ndarray:
        fill = 128 * 0.7 + TOKEN_COLORS[token].astype(float) * 0.3  # grey photo, 30% of its colour
        return (np.abs(picture[:, :64].astype(float) - fill) <= 2).all(-1)

    ys, xs = np.nonzero(filled(body, 0))
    assert len(ys) >= 10 and 12 <= ys.mean() <= 36 and 12 <= xs.mean() <= 36  # around cell (1, 1)
    assert filled(body, 1).sum() >= 10 and filled(body, 1)[48:, 48:].sum() == filled(body, 1).sum()
    isolated = views.constellation_view(res, 0, 0, size=64, isolate=1, options=opts)[title:title + 64]
    assert filled(isolated, 0).sum() <= 0.2 * filled(body, 0).sum()  # token 0: an outline only
    assert filled(isolated, 1).sum() >= 10


def test_matching_recovers_a_permutation_of_tokens(small_model, rgb):
    """Two copies of one model whose tokens are permuted: matching finds the permutation, sim 1."""
    import copy

    import vtviz
    from vtviz.maps.tokens import match_tokens

    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    other = copy.deepcopy(small_model)
    with torch.no_grad():  # token k of the copy is token perm[k] of the original, in every layer
        other.vt_layers[0].tokenizer.filters.weight.copy_(small_model.vt_layers[0].tokenizer.filters.weight[perm])
        other.vt_layers[1].tokenizer.filters.weight.copy_(small_model.vt_layers[1].tokenizer.filters.weight[perm])
    photos = [rgb, rgb[::-1].copy(), np.roll(rgb, 20, axis=1)]
    a, b = vtviz.explain_images(small_model, photos), vtviz.explain_images(other, photos)
    torch.testing.assert_close(b.maps.layers[1].attention, a.maps.layers[1].attention[:, perm])
    for layer in range(2):
        m = match_tokens(a.maps.layers[layer].attention, b.maps.layers[layer].attention)
        expected = {int(p): k for k, p in enumerate(perm)}  # original token i -> copy's token
        assert dict(m.pairs) == expected
        assert min(m.similarity) == pytest.approx(1.0, abs=1e-5)
    grid = views.model_grid([a, b], ["original", "permuted"], 0, [0, 1], options=views.RenderOptions(cell=96))
    assert grid.shape[1] > 2 * 96  # titles fit: cells widen to them


def test_npz_download_stands_on_its_own():
    from vtviz.maps.tokens import read_maps_npz

    res = _result(2)
    data = views.maps_npz(res, ["a.jpg", "b.png"], "my-model")
    saved = read_maps_npz(data)
    assert saved.names == ["a.jpg", "b.png"] and saved.model == "my-model" and saved.kinds == ["filter", "recurrent"]
    assert saved.classes == res.classes and saved.geometries == res.geometries
    for a, b in zip(saved.maps.layers, res.maps.layers):
        torch.testing.assert_close(a.attention, b.attention)
        assert (a.assignment is None) == (b.assignment is None)
    with pytest.raises(ValueError, match="not a vtviz maps file"):
        read_maps_npz(views.npz_bytes({"x": np.zeros(2)}))


def test_constellation_says_when_token_regions_are_fragmented():
    """Maps spread over many separate cells get a note under the title; one-cell maps do not."""
    res = _result(1)
    att = torch.full((1, L, 8, 8), 1e-3)
    att[0, :, ::2, ::2] = 1.0  # 16 separate cells per token
    layer = dataclasses.replace(res.maps.layers[0], attention=att / att.sum((-2, -1), keepdim=True))
    spread = dataclasses.replace(res, maps=dataclasses.replace(res.maps, layers=(layer, res.maps.layers[1])))
    assert contours.region_pieces(att[0].numpy()).mean() >= 8
    plain = views.constellation_view(res, 0, 0, size=64)
    noted = views.constellation_view(spread, 0, 0, size=64)
    assert noted.shape[0] == plain.shape[0] + 18  # one more text line
    assert (noted[18:36] < 100).any() and (plain[18:36] != noted[18:36]).any()  # written, under the title

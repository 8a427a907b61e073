"""Pixels: overlays, colour order, partitions, grids, encoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vtviz.maps.tokens import mass_threshold, mass_thresholds
from vtviz.viz import codecs, colors, contours, heatmap, layout
from vtviz.viz.colors import Colormap


def test_overlay_hot_left_image_right():
    image = np.full((40, 60, 3), (40, 160, 90), np.uint8)
    m = np.zeros((4, 6), np.float32)
    m[:, :3] = 1.0
    out = heatmap.overlay(image, m, Colormap.JET, alpha=0.7)
    left, right = out[:, :25].reshape(-1, 3).mean(0), out[:, 35:].reshape(-1, 3).mean(0)
    hot = colors.colormap_lut("jet")[255]  # dark red
    assert hot[0] > 100 and hot[1] < 30 and hot[2] < 30  # JET's top is dark red, in RGB order
    expected_left = 0.3 * np.array([40, 160, 90]) + 0.7 * hot
    np.testing.assert_allclose(left, expected_left, atol=3)
    np.testing.assert_allclose(right, (40, 160, 90), atol=1)  # the image's own pixels
    uniform = heatmap.overlay(image, m, Colormap.JET, alpha=0.7, weighted=False)
    cold = colors.colormap_lut("jet")[0]
    np.testing.assert_allclose(uniform[:, 35:].reshape(-1, 3).mean(0),
                               0.3 * np.array([40, 160, 90]) + 0.7 * cold, atol=3)


def test_rgb_order_with_pure_red():
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    out = heatmap.overlay(red, np.zeros((2, 2)), alpha=0.5)
    assert (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()
    decoded = cv2.imdecode(np.frombuffer(codecs.encode(red, "png"), np.uint8), cv2.IMREAD_COLOR)
    assert tuple(decoded[0, 0]) == (0, 0, 255)  # stored as true red (OpenCV reads BGR)
    lut = colors.colormap_lut("turbo")
    assert lut[255][0] > lut[255][2] and lut[0][2] > lut[0][0]  # turbo: blue low, red high


def test_overlay_many_maps_and_mask():
    image = np.zeros((20, 20, 3), np.uint8)
    maps = np.random.default_rng(0).random((3, 5, 5)).astype(np.float32)
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    out = heatmap.overlay(image, maps, mask=mask)
    assert out.shape == (3, 20, 20, 3)
    assert (out[:, :, 10:] == 0).all() and out[:, :, :10].any()
    uniform = heatmap.overlay(image, maps, mask=mask, weighted=False)  # the mask holds for both blends
    assert (uniform[:, :, 10:] == 0).all() and (uniform[:, :, :10] > 0).any(-1).all()
    with pytest.raises(ValueError, match="RGB uint8"):
        heatmap.overlay(image.astype(np.float32), maps[0])


def test_mass_contour_region():
    m = np.zeros((10, 10))
    m[2, 2], m[5, 5], m[7, 7] = 6, 3, 1
    assert contours.mass_region(m, 0.5).sum() == 1
    assert contours.mass_region(m, 0.9).sum() == 2
    img = heatmap.overlay(np.zeros((50, 50, 3), np.uint8), m, contour=0.5, alpha=0.0)
    assert (img == 255).all(-1).any()  # the white outline was drawn


def test_partition_colours_follow_argmax():
    w = np.zeros((3, 2, 2), np.float32)
    w[0, 0, 0] = w[1, 0, 1] = w[2, 1, 0] = w[2, 1, 1] = 1
    image = np.zeros((40, 40, 3), np.uint8)
    out = contours.partition(image, w, alpha=1.0, labels=False)
    owners = colors.resize_map(w, (40, 40)).argmax(0)
    for (y, x) in [(5, 5), (5, 35), (35, 5), (35, 35)]:
        np.testing.assert_array_equal(out[y, x], colors.TOKEN_COLORS[owners[y, x]])
    assert owners[5, 5] == 0 and owners[5, 35] == 1 and owners[35, 20] == 2
    assert len({tuple(c) for c in colors.TOKEN_COLORS}) == len(colors.TOKEN_COLORS) == 16
    labelled = contours.partition(image, w, alpha=1.0)  # each owner's number written in its territory
    assert (labelled != out).any(-1).sum() > 20
    half = contours.partition(np.full((40, 40, 3), 200, np.uint8), w)  # the photo shows through
    assert 0 < np.abs(half.astype(int) - colors.TOKEN_COLORS[owners][..., :3]).mean()


def test_grid_shape_and_labels():
    cells = [[np.full((30, 40, 3), 50 * (r + c), np.uint8) for c in range(3)] for r in range(2)]
    out = layout.grid(cells, row_labels=["a", "b"], col_labels=["x", "y", "z"], gap=2, label_width=50)
    assert out.shape == (18 + 2 * 32 + 2, 50 + 3 * 42 + 2, 3)
    np.testing.assert_array_equal(out[18 + 2 + 32, 50 + 2 + 42], cells[1][1][0, 0])
    assert (out[:18, 52:92] < 128).any()  # a column label was written
    bar = layout.colorbar("viridis", 0.0, 0.25, 200)
    assert bar.shape[1] == 200
    np.testing.assert_array_equal(bar[0, 0], colors.colormap_lut("viridis")[0])
    tiled = layout.tile([cells[0][0]] * 5, columns=4)
    assert tiled.shape[:2] == (2 * 32 + 2, 4 * 42 + 2)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encode_formats(fmt):
    img = np.zeros((16, 16, 3), np.uint8)
    img[..., 1] = 200
    back = cv2.cvtColor(cv2.imdecode(np.frombuffer(codecs.encode(img, fmt), np.uint8), 1),
                        cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(back, img, atol=6)


def test_labels_with_newlines_and_control_characters_draw():
    from vtviz.viz import layout

    strip = layout.text_strip("photo\nwith a\tnewline\x00.png", 200)
    assert strip.shape == (18, 200, 3) and (strip < 128).any()  # text drawn, no exception
    assert layout.text_width("a\nb") == layout.text_width("a b")


def test_traced_outline_follows_the_full_resolution_region():
    """Outlines traced on a sub-grid and smoothed stay within a few pixels of the region's
    full-resolution boundary, and a region smaller than the sub-grid is still outlined."""
    import cv2

    rng = np.random.default_rng(0)
    maps = colors.resize_map(rng.random((4, 14, 14)).astype(np.float32) ** 3, (420, 560))
    for m in maps:
        regions = contours.trace_regions(m[None], 0.5)
        level = regions.levels[0]
        assert level == mass_threshold(m, 0.5)
        drawn = np.zeros(m.shape, np.uint8)
        cv2.polylines(drawn, regions.outlines(m.shape)[0], True, 255, 1, cv2.LINE_8, contours.OUTLINE_SHIFT)
        region = (m >= level).astype(np.uint8)
        edge = region - cv2.erode(region, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                  borderValue=0)  # a region cut by the picture's side ends there
        # every drawn pixel near the true edge, and every true edge pixel near a drawn one
        near_edge = cv2.dilate(edge, np.ones((11, 11), np.uint8)).astype(bool)
        near_drawn = cv2.dilate(drawn, np.ones((11, 11), np.uint8)).astype(bool)
        assert drawn.any() and not (drawn.astype(bool) & ~near_edge).any()
        assert near_drawn[edge.astype(bool)].mean() > 0.99
    spot = np.zeros((600, 600), np.float32)
    spot[205, 205] = 1.0  # one pixel: on the mass threshold's sampling (every 5th), off the tracing's (6th)
    assert contours.trace_regions(spot[None], 0.5).outlines(spot.shape)[0]


def test_owners_equal_argmax_with_ties_first():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 4, (16, 37, 53)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(contours.owners(w), w.argmax(0))


def test_mass_thresholds_hold_the_mass_on_smooth_and_peaked_maps():
    """The fast histogram threshold: the region above it holds the asked share within 1.5%,
    for smooth upsampled token maps, a near-one-hot map and an all-zero one (inf)."""
    rng = np.random.default_rng(2)
    maps = colors.resize_map(rng.random((6, 14, 14)).astype(np.float32) ** 4, (300, 420))
    peaked = np.zeros((1, 300, 420), np.float32)
    peaked[0, 100:104, 200:204] = 1.0
    peaked[0] += 1e-4
    stack = np.concatenate([maps, peaked, np.zeros((1, 300, 420), np.float32)])
    for mass in (0.3, 0.5, 0.8):
        levels = mass_thresholds(stack, mass)
        for m, t in zip(maps, levels):
            assert abs(m[m >= t].sum() / m.sum() - mass) < 0.015
        spike = peaked[0] >= levels[-2]  # the 4x4 spike holds 56%: the smallest region holding 30-50%
        assert spike.sum() == (16 if mass <= 0.5 else spike.size)
        assert np.isinf(levels[-1])


def test_mass_threshold_of_flat_topped_maps_keeps_the_top():
    """A map whose maximum holds the mass: the threshold is that maximum, not a hair above it."""
    a = np.full((3, 8, 8), 1e-3, np.float32)
    a[:, ::2, ::2] = 1.0
    a /= a.sum((1, 2), keepdims=True)
    levels = mass_thresholds(a, 0.5)
    assert all((m >= t).sum() == 16 for m, t in zip(a, levels))
    np.testing.assert_array_equal(contours.region_pieces(a), [16, 16, 16])


def test_region_pieces_count_each_maps_own_pieces():
    """Regions labelled in one pass side by side count as labelling each map alone: pieces that
    touch the maps' right and left edges are not joined across maps (8-connected)."""
    import cv2

    rng = np.random.default_rng(3)
    maps = rng.random((12, 9, 7)).astype(np.float32) ** 8  # speckled: many small pieces
    maps[3] = 0.0  # all zero: no region
    maps[4] = 0.0
    maps[4][:, -1] = 1.0  # one piece along the right edge ...
    maps[5] = 0.0
    maps[5][:, 0] = 1.0  # ... next to one along the left edge of the next map
    levels = mass_thresholds(maps, 0.5)
    alone = [0 if not np.isfinite(t) else cv2.connectedComponents((m >= t).astype(np.uint8), connectivity=8)[0] - 1
             for m, t in zip(maps, levels)]
    got = contours.region_pieces(maps)
    np.testing.assert_array_equal(got, alone)
    assert got[3] == 0 and got[4] == 1 and got[5] == 1 and got.max() >= 3
    assert contours.region_pieces(np.zeros((0, 4, 4), np.float32)).shape == (0,)


def test_regions_traced_once_outline_the_region_at_every_size():
    """Regions traced on a coarse resampling of smooth maps, drawn on pictures of other sizes,
    follow each size's own full-resolution region boundary (what lets the exporter trace each
    token once for its overlay and the all-tokens view)."""
    import cv2

    rng = np.random.default_rng(3)
    grid = rng.random((3, 14, 14)).astype(np.float32) ** 3
    regions = contours.trace_regions(colors.resize_map(grid, (72, 96)), 0.5, smooth=True)
    assert regions.shape == (72, 96) and regions.levels.shape == (3,)
    for size in ((150, 200), (450, 600)):
        maps = colors.resize_map(grid, size)
        tol = 2 * max(size) // 96 + 3  # a coarse sample and a bit
        for m, level, polys in zip(maps, regions.levels, regions.outlines(size)):
            drawn = np.zeros(size, np.uint8)
            cv2.polylines(drawn, polys, True, 255, 1, cv2.LINE_8, contours.OUTLINE_SHIFT)
            region = (m >= level).astype(np.uint8)
            edge = region - cv2.erode(region, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                      borderValue=0)
            kernel = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
            near_edge = cv2.dilate(edge, kernel).astype(bool)
            near_drawn = cv2.dilate(drawn, kernel).astype(bool)
            assert drawn.any() and not (drawn.astype(bool) & ~near_edge).any()
            assert near_drawn[edge.astype(bool)].mean() > 0.95  # slivers under one coarse sample may go
            # the level found on the coarse maps holds half of this size's mass too
            assert abs(m[m >= level].sum() / m.sum() - 0.5) < 0.03


def test_constellation_fills_each_region_and_labels_its_peak_at_any_size():
    """The all-tokens picture drawn from regions traced once on a coarse grid: at a picture 8x
    larger each token's tint covers its full-resolution region (within the outline's width) and
    its label sits at its peak, without resampling any map to the picture."""
    grid = np.full((2, 14, 14), 1e-3, np.float32)
    grid[0, 3:5, 2:5], grid[1, 9:12, 9:11] = 1.0, 1.0  # two separate blobs
    coarse = colors.resize_map(grid, (70, 70))
    regions = contours.trace_regions(coarse, 0.5, smooth=True)
    size = (560, 560)
    base = np.full((*size, 3), 128, np.uint8)
    pic = contours.constellation(base, regions, ["0", "1"], fill=0.3, palette=colors.TOKEN_COLORS)
    full = colors.resize_map(grid, size)
    for k in range(2):
        tint = np.rint(128 * 0.7 + colors.TOKEN_COLORS[k].astype(float) * 0.3)
        tinted = (np.abs(pic.astype(float) - tint) <= 1).all(-1)
        region = full[k] >= mass_threshold(full[k], 0.5)
        inner = cv2.erode(region.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)
        assert tinted[inner].mean() > 0.9  # inside: tinted (bar the label and outline)
        assert not (tinted & ~cv2.dilate(region.astype(np.uint8), np.ones((21, 21), np.uint8)).astype(bool)).any()
    (x0, y0), (x1, y1) = regions.points(size)
    assert 80 <= x0 <= 200 and 120 <= y0 <= 200 and 360 <= x1 <= 440 and 360 <= y1 <= 480
    assert regions.points((70, 70)) == [tuple(int(v) for v in p) for p in regions.peaks]


def test_dim_image_is_the_documented_mix():
    """Dimming (one colour transform) = (img * (1 - a) + grey * a) * (1 - 0.55 a), within 1 level."""
    img = np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for a in (0.0, 0.3, 1.0):
        f = img.astype(np.float64)
        grey = f @ np.array([0.299, 0.587, 0.114])
        want = np.clip(np.rint((f * (1 - a) + grey[..., None] * a) * (1 - 0.55 * a)), 0, 255)
        assert np.abs(colors.dim_image(img, a).astype(float) - want).max() <= 1


def test_a_long_label_is_cut_to_the_longest_prefix_that_fits():
    """A label wider than its strip keeps the longest prefix that fits with "…"; one that fits
    is drawn whole (so the strip differs from the cut one's)."""
    from PIL import Image, ImageDraw

    font = layout._font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    text = "IMG_20240101_123456789_a_rather_long_photo_name.jpg"
    for width in (40, 90, 150):
        fits = [k for k in range(len(text)) if measure(text[:k] + "…", font=font) <= width - 4]
        want = layout.text_strip(text[:max(fits)] + "…", width)
        np.testing.assert_array_equal(layout.text_strip(text, width), want)
    whole = layout.text_width(text)
    assert not np.array_equal(layout.text_strip(text, whole), layout.text_strip(text[:-1] + "…", whole))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_blend_is_the_documented_mix_at_every_level(gamma):
    """Every colour level over a varied photo: ``colour(l) * a(l) + photo * (1 - a(l))`` with
    ``a(l) = alpha * (l / 255) ** gamma``, within 1.5 levels (two tables, each rounded)."""
    rng = np.random.default_rng(1)
    levels = np.tile(np.arange(256, dtype=np.uint8), (3, 4, 1))  # [3, 4, 256]: each level 12 times
    photo = rng.integers(0, 256, (4, 256, 3), dtype=np.uint8)
    out = heatmap._blend(levels, photo, Colormap.TURBO, 0.6, gamma)
    a = (0.6 * (np.arange(256) / 255) ** gamma)[None, None, :, None]
    want = colors.colormap_lut("turbo")[levels].astype(float) * a + photo[None].astype(float) * (1 - a)
    assert out.shape == (3, 4, 256, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(float) - want).max() <= 1.5


def test_a_title_pasted_from_its_parts_reads_as_the_title_drawn_whole():
    """Titles joined by " · " are pasted from cached parts: the same text in the same place as
    drawing the whole title (a glyph's edge may differ by the rounding of a part's width)."""
    title = "IMG_0042.jpg · layer 1 · recurrent · tench 87%"
    width = layout.text_width(title) + 40
    pasted = layout.text_strip(title, width).astype(int)
    whole = layout._text_strip(title, width, 18, 12, (255, 255, 255), "left").astype(int)
    ink_p, ink_w = pasted.min(-1) < 128, whole.min(-1) < 128
    assert ink_w.sum() > 100 and abs(int(ink_p.sum()) - int(ink_w.sum())) <= 0.05 * ink_w.sum()
    cols_p, cols_w = np.flatnonzero(ink_p.any(0)), np.flatnonzero(ink_w.any(0))
    assert abs(cols_p[0] - cols_w[0]) <= 1 and abs(cols_p[-1] - cols_w[-1]) <= 2  # same extent
    assert np.abs(pasted - whole).mean() < 2.0
    assert layout.text_strip(title, 60).shape == (18, 60, 3)  # too long for its parts: cut as before

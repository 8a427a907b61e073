"""The typed result of token_maps, normalising, resizing and token statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import vtviz
from vtviz.maps.tokens import (
    Scale,
    border_mass,
    distinct_peaks,
    mean_offdiagonal_cosine,
    normalize,
    normalized_entropy,
    peak_positions,
    top_share,
    upsample,
)


def test_token_maps_typed_result(small_model):
    x = torch.randn(2, 3, 96, 64)
    maps = vtviz.token_maps(small_model, x)
    assert maps.logits.shape == (2, 5)
    assert maps.kinds == ["filter", "recurrent"]
    assert maps.input_size == (96, 64)
    first, last = maps.layers
    assert first.attention.shape == (2, 16, 6, 4)
    torch.testing.assert_close(first.attention.sum((-2, -1)), torch.ones(2, 16))
    assert first.token_mixing.shape == (2, 16, 16)
    assert first.assignment.shape == (2, 16, 6, 4)
    torch.testing.assert_close(first.assignment.sum(1), torch.ones(2, 6, 4))
    assert first.tokens.shape == (2, 16, 1024)
    assert last.assignment is None
    mixed = first.mixed_attention
    torch.testing.assert_close(mixed.sum((-2, -1)), torch.ones(2, 16))
    # token_maps agrees with the plain forward
    with torch.no_grad():
        torch.testing.assert_close(maps.logits, small_model(x), atol=0.05, rtol=0.05)


def test_token_maps_select_and_cpu(small_model):
    maps = vtviz.token_maps(small_model, torch.randn(3, 3, 64, 64))
    one = maps.select(1)
    assert one.batch_size == 1
    torch.testing.assert_close(one.layers[0].attention[0], maps.layers[0].attention[1])
    assert one.cpu().layers[1].assignment is None
    # a copy, not a view: it pickles at its own size (the exporter sends one image's maps to a worker)
    import pickle

    assert len(pickle.dumps(one)) < 0.5 * len(pickle.dumps(maps))


def test_token_maps_rejects_plain_resnet():
    with pytest.raises(TypeError, match="VT model"):
        vtviz.token_maps(vtviz.resnet18(num_classes=3), torch.randn(1, 3, 64, 64))


def test_upsample_keeps_constant_and_shape():
    maps = torch.full((2, 3, 4, 5), 0.25)
    up = upsample(maps, (40, 50))
    assert up.shape == (2, 3, 40, 50)
    torch.testing.assert_close(up, torch.full_like(up, 0.25))


def test_normalize_scales():
    a = torch.zeros(2, 2, 3, 3)
    a[0, 0, 0, 0] = 4.0
    a[0, 1, 1, 1] = 2.0
    a[1, 0, 2, 2] = 1.0
    per_map = normalize(a, Scale.PER_MAP)
    assert per_map[0, 1].max() == 1 and per_map[1, 0].max() == 1
    shared = normalize(a, "shared")
    assert shared[0, 0, 0, 0] == 1 and shared[0, 1, 1, 1] == 0.5 and shared[1, 0, 2, 2] == 0.25
    per_layer = normalize(a, Scale.PER_LAYER)
    assert per_layer[0, 1, 1, 1] == 0.5 and per_layer[1, 0, 2, 2] == 1
    assert per_layer[0, 1, 0, 0] == 0  # zero stays zero (0..max), unlike per map
    torch.testing.assert_close(normalize(a, Scale.ABSOLUTE), shared)
    offset = normalize(a + 1, "shared")  # 0..max, not min..max: a constant floor is not hidden
    assert offset.min() == pytest.approx(0.2)
    assert normalize(torch.ones(3, 3)).max() == 0  # flat map: no division by zero


def test_statistics_of_known_maps():
    uniform = torch.full((1, 2, 4, 4), 1 / 16)
    one = torch.zeros(1, 2, 4, 4)
    one[0, 0, 1, 2] = 1
    one[0, 1, 3, 3] = 1
    torch.testing.assert_close(normalized_entropy(uniform), torch.ones(1, 2))
    torch.testing.assert_close(normalized_entropy(one), torch.zeros(1, 2))
    assert peak_positions(one)[0].tolist() == [[1, 2], [3, 3]]
    assert distinct_peaks(one).tolist() == [2]
    assert mean_offdiagonal_cosine(one).item() == pytest.approx(0.0)
    assert mean_offdiagonal_cosine(uniform).item() == pytest.approx(1.0)
    assert border_mass(one)[0].tolist() == pytest.approx([0.0, 1.0])
    assert border_mass(uniform)[0, 0].item() == pytest.approx(12 / 16)
    assert top_share(uniform, 0.25)[0, 0].item() == pytest.approx(0.25)
    assert top_share(one)[0, 0].item() == pytest.approx(1.0)


def test_layer_stats_on_model(small_model):
    maps = vtviz.token_maps(small_model, torch.randn(2, 3, 64, 64))
    stats = vtviz.layer_stats(maps)
    assert [s.kind for s in stats] == ["filter", "recurrent"]
    for s in stats:
        assert 0 <= s.entropy <= 1 and 0 <= s.cosine <= 1 + 1e-6
        assert 1 <= s.distinct_peaks <= 16 and s.images == 2
        assert math.isfinite(s.top10_share)


def test_mass_regions_are_the_fewest_pixels_holding_the_mass():
    """Against a brute force over random maps ``[B, L, h, w]``: the highest pixels, taken until
    the ones before them hold ``mass``; the table's overlap is built on these regions."""
    from vtviz.maps.tokens import mass_regions

    maps = torch.rand(3, 4, 5, 6) ** 4
    got = mass_regions(maps, 0.5)
    assert got.shape == maps.shape and got.dtype == torch.bool
    for b in range(3):
        for t in range(4):
            v = maps[b, t].flatten()
            order = v.argsort(descending=True)
            before = torch.cumsum(v[order], 0) - v[order]
            want = torch.zeros(30, dtype=torch.bool)
            want[order[before < 0.5 * v.sum()]] = True
            assert torch.equal(got[b, t].flatten(), want)
            assert v[got[b, t].flatten()].sum() >= 0.5 * v.sum() - 1e-6
    one = torch.tensor([[0.4, 0.1], [0.2, 0.3]])  # 0.4 + 0.3 hold half
    assert mass_regions(one[None, None], 0.5)[0, 0].tolist() == [[True, False], [False, True]]


def test_one_mass_region_exact_on_token_grids():
    """The 50%-mass region of a token grid is the smallest set of cells holding half the map:
    one definition for the manifest's overlap, the pieces count and the outlines."""
    from vtviz.maps.tokens import mass_regions, mass_thresholds
    from vtviz.viz.contours import region_pieces

    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((4, 14, 14)).astype(np.float32) ** 4)
    regions = mass_regions(maps, 0.5)
    for m, r in zip(maps.numpy(), regions.numpy()):
        inside = np.sort(m[r])
        assert m[r].sum() >= 0.5 * m.sum()  # holds half...
        assert m[r].sum() - inside[0] < 0.5 * m.sum()  # ...and no cell fewer does
    levels = mass_thresholds(maps.numpy(), 0.5)
    assert (regions.numpy() == (maps.numpy() >= levels[:, None, None])).all()
    assert (region_pieces(maps.numpy()) >= 1).all()

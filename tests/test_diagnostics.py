"""Diagnostics on constructed maps, and the ablation switches of the model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vtviz
from vtviz.maps.diagnostics import argmax_ownership, diagnose, distinct_targets, received_attention
from vtviz.maps.tokens import LayerMaps, TokenMaps
from vtviz.models.vt import Ablation
from vtviz.viz.views import MapKind, view_warnings

B, L, H, W = 10, 16, 8, 8


def _layer(mixing: torch.Tensor, attention: torch.Tensor | None = None,
           assignment: torch.Tensor | None = None) -> TokenMaps:
    if attention is None:  # token k peaks at a different (content-like) place in each image
        attention = torch.full((B, L, H, W), 1e-4)
        g = torch.Generator().manual_seed(0)
        pos = torch.randint(1, H - 1, (B, L, 2), generator=g)
        for b in range(B):
            for k in range(L):
                attention[b, k, pos[b, k, 0], pos[b, k, 1]] = 1
        attention = attention / attention.sum((-2, -1), keepdim=True)
    layer = LayerMaps("filter", attention, mixing, assignment, torch.randn(B, L, 32))
    return TokenMaps(torch.zeros(B, 3), (layer,), (H * 16, W * 16))


def test_one_hot_column_is_one_sink_with_all_the_mass():
    mixing = torch.zeros(B, L, L)
    mixing[:, :, 5] = 1
    d = diagnose(_layer(mixing))[0]
    assert d.mixing_targets == 1 and d.sink_tokens == 1
    assert d.max_received == pytest.approx(1.0) and d.received[5] == pytest.approx(1.0)
    assert not d.within_targets() and "read token 5" in d.warnings()[0]


def test_identity_mixing_has_sixteen_targets_and_no_sink():
    d = diagnose(_layer(torch.eye(L).expand(B, L, L)))[0]
    assert d.mixing_targets == L and d.sink_tokens == 0
    assert d.max_received == pytest.approx(1 / L)
    torch.testing.assert_close(received_attention(torch.eye(L)[None]), torch.full((1, L), 1 / L))


def test_identity_mixing_is_flagged_as_tokens_reading_themselves():
    """Sixteen distinct targets do not mean the tokens relate: the identity reads no other token."""
    d = diagnose(_layer(torch.eye(L).expand(B, L, L)))[0]
    assert d.self_read == pytest.approx(1.0)
    assert not d.within_targets() and "to themselves" in d.warnings()[0]
    assert any("mostly the token's own map" in w for w in view_warnings(d, MapKind.MIXED))
    shift = torch.roll(torch.eye(L), 1, dims=1).expand(B, L, L)  # token i reads token i+1
    d = diagnose(_layer(shift))[0]
    assert d.self_read == pytest.approx(0.0) and d.mixing_targets == L and not d.warnings()


def test_uniform_assignment_has_every_token_an_owner():
    # pixel p is assigned (sharply) to token p mod L: each token owns 1/L of the pixels
    owner = torch.arange(H * W) % L
    assignment = torch.nn.functional.one_hot(owner, L).T.float().view(1, L, H, W).expand(B, -1, -1, -1)
    torch.testing.assert_close(argmax_ownership(assignment), torch.full((B, L), 1 / L))
    d = diagnose(_layer(torch.eye(L).expand(B, L, L), assignment=assignment))[0]
    assert d.owners == L and d.top_owner == pytest.approx(1 / L)


def test_one_owner_is_flagged():
    assignment = torch.zeros(B, L, H, W)
    assignment[:, 3] = 1
    d = diagnose(_layer(torch.eye(L).expand(B, L, L), assignment=assignment))[0]
    assert d.owners == 1 and d.top_owner == 1.0 and any("owns 100%" in w for w in d.warnings())


def test_token_fixed_at_a_corner_is_positional_and_a_border_sink():
    maps = _layer(torch.eye(L).expand(B, L, L))
    attention = maps.layers[0].attention.clone()
    attention[:, 7] = 0
    attention[:, 7, -1, 0] = 1  # bottom-left corner on every image
    d = diagnose(_layer(torch.eye(L).expand(B, L, L), attention=attention))[0]
    assert d.positional == [7]
    assert d.border_sinks == pytest.approx(1.0)


def test_distinct_targets_counts_argmax_columns():
    mixing = torch.zeros(1, 4, 4)
    mixing[0, [0, 1, 2, 3], [1, 1, 2, 0]] = 1
    assert distinct_targets(mixing).tolist() == [3]


@pytest.fixture(scope="module")
def grown_model() -> vtviz.VTResNet:
    torch.manual_seed(0)
    model = vtviz.vt_resnet18(num_classes=5, registers=2, projector_null=True).eval()
    torch.nn.init.ones_(model.vt_layers[0].projector.out_norm.weight)  # zero at init: no update
    with torch.no_grad():  # a token-dependent term as large as a trained one
        model.vt_layers[1].tokenizer.token_to_filter.weight.mul_(100)
    return model


@pytest.mark.parametrize("ablation", [Ablation(mixing="identity"), Ablation(mixing="uniform"),
                                      Ablation(mixing="skip"), Ablation(projector=False),
                                      Ablation(recurrent_dynamic=False)])
def test_ablation_changes_the_output_for_one_pass_only(grown_model, ablation):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = grown_model.explain(x)
        ablated = grown_model.explain(x, ablation)
        after = grown_model.explain(x)
    differs = [not torch.allclose(a, b, atol=1e-5) for a, b in
               [(before.logits, ablated.logits), (before.layers[1].attention, ablated.layers[1].attention)]]
    assert differs[0] or (not ablation.recurrent_dynamic and differs[1])
    torch.testing.assert_close(before.logits, after.logits, rtol=0, atol=0)
    if ablation.mixing == "identity":
        torch.testing.assert_close(ablated.layers[0].mixing, torch.eye(L).expand(2, L, L))
    if not ablation.recurrent_dynamic:  # W_0 alone: the recurrent maps no longer see tokens
        assert not torch.allclose(before.layers[1].attention, ablated.layers[1].attention)


def test_registers_and_null_slot_take_part_in_the_softmaxes(grown_model):
    with torch.no_grad():
        out = grown_model.explain(torch.randn(2, 3, 64, 64))
    layer = out.layers[0]
    total = layer.mixing.sum(-1) + layer.to_registers
    torch.testing.assert_close(total, torch.ones(2, L))
    assert (layer.to_registers > 0).all()
    assert layer.assignment is not None and (layer.assignment.sum(-1) < 1).all()


def test_recurrent_tokenizer_without_static_filter_depends_only_on_tokens():
    torch.manual_seed(0)
    model = vtviz.vt_resnet18(num_classes=5, static_filter=False).eval()
    assert model.vt_layers[1].tokenizer.filters is None
    with torch.no_grad():
        out = model.explain(torch.randn(2, 3, 64, 64), Ablation(recurrent_dynamic=False))
    torch.testing.assert_close(out.layers[1].attention, torch.full_like(out.layers[1].attention, 1 / 16))


def test_attention_given_to_registers_is_reported():
    mixing = torch.eye(L).expand(B, L, L) * 0.05  # 95% of each row goes to the registers
    maps = _layer(mixing)
    layer = dataclasses.replace(maps.layers[0], to_registers=torch.full((B, L), 0.95))
    d = diagnose(dataclasses.replace(maps, layers=(layer,)))[0]
    assert d.to_registers == pytest.approx(0.95) and not d.within_targets()
    assert "register tokens" in d.warnings()[0]


def test_table_for_people(small_model):
    from vtviz.maps.diagnostics import table
    from vtviz.viz import views

    maps = vtviz.token_maps(small_model, torch.randn(2, 3, 64, 64))
    rows = table(diagnose(maps))
    assert [r["layer"] for r in rows] == ["0 · filter", "1 · recurrent"]
    assert rows[0]["owners >= 5%"] is not None and rows[1]["owners >= 5%"] is None  # the last: no projector
    assert views.model_kinds(small_model, 0)[-1] is views.MapKind.ASSIGNMENT
    assert views.MapKind.ASSIGNMENT not in views.model_kinds(small_model, 1)

"""The VT modules' equations, shapes, gradients and the size targets of the paper."""

from __future__ import annotations

import pytest
import torch

from vtviz.models.registry import build_model
from vtviz.models.vt import (
    FilterTokenizer,
    ModelConfig,
    Projector,
    RecurrentTokenizer,
    TokenTransformer,
    count_parameters,
    multiply_adds,
    resnet18,
    vt_resnet18,
    vt_resnet34,
)

B, HW, C, CT, L = 3, 49, 32, 64, 8


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(B, HW, C)


def test_filter_tokenizer_is_attention_pooling(x):
    tok = FilterTokenizer(C, CT, L)
    out = tok(x)
    assert out.attention.shape == (B, L, HW)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(B, L))
    # Eq. 1: A = softmax_HW(X W_A), T = A^T X (then lifted to C_T by W_V)
    a = torch.softmax(x @ tok.filters.weight.T, dim=1).transpose(1, 2)
    torch.testing.assert_close(out.attention, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.tokens, tok.value(a @ x), atol=1e-5, rtol=1e-5)


def test_recurrent_tokenizer_follows_input_tokens(x):
    tok = RecurrentTokenizer(C, CT, L)
    t_in = torch.randn(B, L, CT)
    out = tok(x, t_in)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(B, L))
    z = tok.norm(t_in)
    dynamic = tok.token_to_filter(z - z.mean(1, keepdim=True)) * C**-0.5  # Eq. 2: T_in W_T->R
    assert torch.allclose((dynamic @ x.transpose(1, 2)).sum(1), torch.zeros(B, HW), atol=1e-4)
    w_r = tok.filters.weight + dynamic
    a = torch.softmax(w_r @ x.transpose(1, 2), dim=-1)
    torch.testing.assert_close(out.attention, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.tokens, tok.value(a @ x), atol=1e-5, rtol=1e-5)
    other = tok(x, torch.randn(B, L, CT))
    assert (other.attention - out.attention).abs().max() > 1e-3
    with pytest.raises(ValueError, match="previous module's tokens"):
        tok(x)


def test_transformer_mixing_rows_sum_to_one():
    tr = TokenTransformer(CT)
    out = tr(torch.randn(B, L, CT))
    assert out.tokens.shape == (B, L, CT) and out.mixing.shape == (B, L, L)
    torch.testing.assert_close(out.mixing.sum(-1), torch.ones(B, L))


def test_projector_assignment_sums_to_one_over_tokens(x):
    proj = Projector(C, CT)
    out = proj(x, torch.randn(B, L, CT))
    assert out.features.shape == x.shape and out.assignment.shape == (B, HW, L)
    torch.testing.assert_close(out.assignment.sum(-1), torch.ones(B, HW))


@pytest.mark.parametrize("size", [64, 100, 224, 448])
def test_vt_resnet_any_size(size):
    torch.manual_seed(0)
    model = vt_resnet18(num_classes=7).eval()
    with torch.no_grad():
        out = model.explain(torch.randn(1, 3, size, size))
    h = w = -(-size // 16)
    assert out.logits.shape == (1, 7)
    assert out.map_size == (h, w)
    assert [o.attention.shape for o in out.layers] == [(1, 16, h * w)] * 2
    assert out.layers[0].assignment.shape == (1, h * w, 16)
    assert out.layers[1].assignment is None  # last module: no projector


def test_batch_independence():
    torch.manual_seed(0)
    model = vt_resnet18(num_classes=4).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full = model.explain(x)
        alone = model.explain(x[2:3])
    torch.testing.assert_close(full.logits[2:3], alone.logits, atol=1e-5, rtol=1e-4)
    for a, b in zip(full.layers, alone.layers):
        torch.testing.assert_close(a.attention[2:3], b.attention, atol=1e-6, rtol=1e-4)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = vt_resnet18(num_classes=4).train()
    with torch.no_grad():  # undo the zero-init of residual branches, which blocks gradients at step 0
        for p in model.parameters():
            if p.ndim == 1 and not p.any():
                p.fill_(0.5)
    out = model.explain(torch.randn(2, 3, 64, 64))
    (out.logits.sum() + sum(o.attention.std() for o in out.layers)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_tokenizer_kinds_are_one_argument():
    assert vt_resnet18().tokenizer_kinds == ["filter", "recurrent"]
    assert vt_resnet18(tokenizers=("filter", "filter")).tokenizer_kinds == ["filter", "filter"]
    assert vt_resnet34().tokenizer_kinds == ["filter", "recurrent", "recurrent"]
    with pytest.raises(ValueError, match="first VT module"):
        vt_resnet18(tokenizers=("recurrent", "filter"))
    with pytest.raises(ValueError, match="each must be one of"):
        vt_resnet18(tokenizers=("filter", "pixel"))


def test_config_is_checked_before_anything_is_allocated():
    with pytest.raises(ValueError, match="num_tokens"):
        ModelConfig(num_tokens=2_000_000)
    with pytest.raises(ValueError, match="padding_mode"):
        ModelConfig(padding_mode="circular")  # type: ignore[arg-type]


def test_build_model_uses_every_config_field():
    config = ModelConfig(arch="vt_resnet18", num_classes=3, blocks=(1, 1, 1), registers=2)
    model = build_model(config)
    assert model.config == config
    assert len(model.stem.layer1) == 1 and len(model.stem.layer3) == 1
    assert model.vt_layers[0].transformer.registers.shape[0] == 2


def test_autocast_bfloat16_keeps_maps_float32():
    torch.manual_seed(0)
    model = vt_resnet18(num_classes=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.explain(torch.randn(2, 3, 64, 64))
    assert out.layers[0].attention.dtype == torch.float32
    torch.testing.assert_close(out.layers[0].attention.sum(-1), torch.ones(2, 16))


def test_paper_size_targets():
    """VT-R18: 11.7 M parameters (+-3%), 1.57 G multiply-adds at 224 px (+-7%) < ResNet-18."""
    model = vt_resnet18(num_classes=1000)
    params = count_parameters(model)
    assert abs(params / 11.7e6 - 1) <= 0.03, params
    macs = multiply_adds(model, 224)
    assert abs(macs / 1.57e9 - 1) <= 0.07, macs
    assert macs < multiply_adds(resnet18(num_classes=1000), 224)

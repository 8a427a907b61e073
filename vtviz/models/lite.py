"""VT-Lite0: VT modules on the pretrained EfficientNet-Lite0, with ImageNet's 1000 classes.

The paper's module (Wu et al. 2020): a filter tokenizer, then a recurrent one, each followed
by a token transformer, and a projector between them, put on a frozen ImageNet backbone
and distilled from that backbone's own 1000-class predictions ("function matching").

The model **starts as an exact copy of the teacher's function**, so that its answers on
photos of classes that the training photos never show are inherited, not relearnt:

* tokens live in the backbone's 1280-d feature space: a token is an attention-weighted
  mean of the final features, upsampled 2x (nearest) to the stride-16 grid (14 x 14 cells
  for a 224 px input), so that a uniform map pools exactly the global average;
* every tokenizer's filters start small (``init_std``), so every map starts nearly uniform
  and every token nearly the global average pool (zero filters, an exact copy, would be a
  stationary point that the map penalties cannot leave);
* the transformers' and the projector's residual branches end in zero-initialised layers;
* the head is the teacher's own classifier on the mean of the last module's tokens.

Training (``vtviz train-lite``) then makes the maps selective while distillation keeps the
predictions. The attention is computed on "key" features: the stride-16 stage (112
channels) with the upsampled final features, through a small convolutional key network per
module. Returns the same typed :class:`~vtviz.models.vt.VTOutput` as VT-ResNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtviz.models.teacher import EfficientNetLite0
from vtviz.models.vt import (
    NO_ABLATION,
    Ablation,
    ModelConfig,
    ProjectorOutput,
    TokenizerOutput,
    TransformerOutput,
    VTLayerOutput,
    VTModel,
    VTOutput,
    _softmax32,
)

#: Channels of the backbone's stride-16 stage and of its final features.
MID_CHANNELS = 112
FEATURE_CHANNELS = 1280
#: EfficientNet-Lite0 blocks up to and including the stride-16, 112-channel stage.
MID_BLOCKS = 11


class LiteBackbone(nn.Module):
    """EfficientNet-Lite0 trunk: ``[B, 3, H, W]`` -> ``[B, 112 + 1280, H/16, W/16]``.

    The stride-16 features (112 channels) concatenated with the final 1280-d features
    (stride 32, after the head convolution) upsampled to the stride-16 grid by nearest
    neighbours. Frozen: it always runs in eval mode and its parameters take no gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = EfficientNetLite0()

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = F.relu6(n._bn0(n._conv_stem(x)))
        for block in n._blocks[:MID_BLOCKS]:
            x = block(x)
        mid = x
        for block in n._blocks[MID_BLOCKS:]:
            x = block(x)
        final = F.relu6(n._bn1(n._conv_head(x)))
        final = F.interpolate(final, size=mid.shape[-2:], mode="nearest")
        return torch.cat([mid, final], 1)

    def train(self, mode: bool = True) -> LiteBackbone:
        """Always eval: the frozen backbone's BatchNorm statistics never change."""
        return super().train(False)


class KeyNet(nn.Module):
    """Where-features for one module's attention: ``[B, Cin, h, w]`` -> ``[B, hw, D]``.

    1x1 conv, a depthwise 3x3 (neighbouring cells share evidence: coherent maps), 1x1 conv.
    """

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1, padding_mode="reflect", groups=dim, bias=False),
            nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(2).transpose(1, 2)


def smooth_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Blur attention logits ``[B, L, h*w]`` over the map with a fixed 5x5 binomial kernel
    (sigma = 1 cell, reflected at the border). Our choice: without it the 50%-mass regions of
    the maps fell into 4-5 pieces in a pilot; a token is meant to be one spotlight."""
    b, n, _ = logits.shape
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=logits.device, dtype=logits.dtype) / 16
    kernel = (k1[:, None] * k1[None, :]).view(1, 1, 5, 5)
    grid = logits.reshape(b * n, 1, *size)
    pad = min(2, size[0] - 1, size[1] - 1)
    if pad < 2:
        return logits
    grid = F.conv2d(F.pad(grid, (2, 2, 2, 2), mode="reflect"), kernel)
    return grid.reshape(b, n, -1)


class LiteTokenizer(nn.Module):
    """Filter (Eq. 1) or recurrent (Eq. 2) tokenizer whose maps come from key features.

    Filter: ``A = softmax_HW(K W_A)``; recurrent: ``A = softmax_HW(K W_R^T)`` with
    ``W_R = centre(LN(T_in)) W_T->R / sqrt(D)``, the filters from the previous tokens alone.
    Both pool the value features: ``T = A^T X`` (no value projection: tokens stay in the
    backbone's feature space). Filters start small and random: nearly uniform maps, every
    token nearly the global mean. (Exactly zero filters would be a stationary point: a uniform
    map is where both the entropy and the diversity penalty have zero gradient.)
    Keys ``[B, HW, D]``, values ``[B, HW, C]`` -> attention ``[B, L, HW]``, tokens ``[B, L, C]``.
    """

    def __init__(self, kind: str, dim: int, channels: int, num_tokens: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.kind = kind
        self.num_tokens = num_tokens
        if kind == "filter":
            self.filters: nn.Linear | None = nn.Linear(dim, num_tokens, bias=False)
            nn.init.normal_(self.filters.weight, std=init_std)
        else:
            self.filters = None
            self.norm = nn.LayerNorm(channels)
            self.token_to_filter = nn.Linear(channels, dim, bias=False)
            nn.init.normal_(self.token_to_filter.weight, std=init_std)
            self.scale = dim**-0.5

    def forward(self, keys: Tensor, values: Tensor, tokens_in: Tensor | None, size: tuple[int, int],
                ablation: Ablation = NO_ABLATION) -> TokenizerOutput:
        if self.filters is not None:
            logits = self.filters(keys).transpose(1, 2)  # [B, L, HW]
        else:
            if tokens_in is None:
                raise ValueError("a recurrent tokenizer needs the previous module's tokens")
            z = self.norm(tokens_in)
            z = z - z.mean(dim=1, keepdim=True)
            filters = self.token_to_filter(z) * self.scale  # [B, L, D]
            if not ablation.recurrent_dynamic:
                filters = torch.zeros_like(filters)
            logits = torch.bmm(filters, keys.transpose(1, 2))
        attention = _softmax32(smooth_logits(logits, size), dim=-1)
        tokens = torch.bmm(attention.to(values.dtype), values)
        return TokenizerOutput(attention, tokens)


class LiteTransformer(nn.Module):
    """Pre-LN token transformer with zero-initialised output layers (starts as the identity).

    ``T' = T + softmax_L(Q K^T / sqrt(d)) V O`` and ``T_out = T' + ReLU(LN(T') F1) F2``;
    ``O`` and ``F2`` start at zero. ``[B, L, C]`` in and out.
    """

    def __init__(self, channels: int, key_dim: int = 128, value_dim: int = 256, hidden: int = 512) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, key_dim, bias=False)
        self.key = nn.Linear(channels, key_dim, bias=False)
        self.value = nn.Linear(channels, value_dim, bias=False)
        self.out = nn.Linear(value_dim, channels)
        self.norm2 = nn.LayerNorm(channels)
        self.f1 = nn.Linear(channels, hidden)
        self.f2 = nn.Linear(hidden, channels)
        self.scale = key_dim**-0.5
        for layer in (self.out, self.f2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor, ablation: Ablation = NO_ABLATION) -> TransformerOutput:
        b, n, _ = tokens.shape
        if ablation.mixing == "skip":
            eye = torch.eye(n, device=tokens.device).expand(b, n, n)
            return TransformerOutput(tokens, eye, tokens.new_zeros(b, n, dtype=torch.float32))
        t = self.norm1(tokens)
        mixing = _softmax32(torch.bmm(self.query(t), self.key(t).transpose(1, 2)) * self.scale, -1)
        if ablation.mixing == "identity":
            mixing = torch.eye(n, device=tokens.device).expand(b, n, n)
        elif ablation.mixing == "uniform":
            mixing = torch.full_like(mixing, 1 / n)
        tokens = tokens + self.out(torch.bmm(mixing.to(t.dtype), self.value(t)))
        tokens = tokens + self.f2(F.relu(self.f1(self.norm2(tokens))))
        return TransformerOutput(tokens, mixing, tokens.new_zeros(b, n, dtype=torch.float32))


class LiteProjector(nn.Module):
    """Projector (Eq. 5) onto the value features: ``X' = X + BN(softmax_L(Q K^T / sqrt(D)) V)``.

    Pixel queries come from the module's key features ``[B, HW, D]``, token keys and values
    from the tokens ``[B, L, C]``; the BatchNorm's scale starts at zero (no update).
    Returns features ``[B, HW, C]`` and the assignment ``[B, HW, L]`` (sums to 1 over L).
    """

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(channels, dim, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.out_norm = nn.BatchNorm1d(channels)
        nn.init.zeros_(self.out_norm.weight)
        self.scale = dim**-0.5

    def forward(self, keys: Tensor, values: Tensor, tokens: Tensor) -> ProjectorOutput:
        t = self.norm(tokens)
        assignment = _softmax32(torch.bmm(self.query(keys), self.key(t).transpose(1, 2)) * self.scale, -1)
        update = torch.bmm(assignment.to(values.dtype), self.value(t))  # [B, HW, C]
        update = self.out_norm(update.transpose(1, 2)).transpose(1, 2)
        return ProjectorOutput(values + update, assignment)


class LiteVTModule(nn.Module):
    """One VT module on the backbone: key network, tokenizer, transformer, optional projector."""

    def __init__(self, kind: str, dim: int, num_tokens: int, project: bool) -> None:
        super().__init__()
        self.kind = kind
        self.keys = KeyNet(MID_CHANNELS + FEATURE_CHANNELS, dim)
        self.tokenizer = LiteTokenizer(kind, dim, FEATURE_CHANNELS, num_tokens)
        self.transformer = LiteTransformer(FEATURE_CHANNELS)
        self.projector = LiteProjector(dim, FEATURE_CHANNELS) if project else None
        self.token_probe = nn.Identity()  # a named place for attribution methods; computes nothing

    def forward(self, mid: Tensor, values: Tensor, size: tuple[int, int], tokens_in: Tensor | None,
                ablation: Ablation = NO_ABLATION) -> VTLayerOutput:
        """mid ``[B, 112, h, w]``, values ``[B, hw, 1280]``, previous tokens ``[B, L, 1280]``."""
        grid = values.transpose(1, 2).reshape(len(values), FEATURE_CHANNELS, *size)
        keys = self.keys(torch.cat([mid, grid], 1))
        tok = self.tokenizer(keys, values, tokens_in, size, ablation)
        mixed = self.transformer(tok.tokens, ablation)
        tokens = self.token_probe(mixed.tokens)
        if self.projector is None:
            return VTLayerOutput(tok.attention, mixed.mixing, mixed.to_registers, None, tokens, None)
        proj = self.projector(keys, values, tokens)
        features = proj.features if ablation.projector else values
        return VTLayerOutput(tok.attention, mixed.mixing, mixed.to_registers, proj.assignment, tokens, features)


class VTLite(VTModel):
    """VT modules on a frozen EfficientNet-Lite0, head = the teacher's 1000-class classifier.

    ``stem(x)`` is the frozen backbone (``[B, 1392, H/16, W/16]``); ``explain(x)`` returns a
    :class:`~vtviz.models.vt.VTOutput` with every map from one pass.
    """

    feature_channels = MID_CHANNELS + FEATURE_CHANNELS
    stem: LiteBackbone

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.tokenizers[0] != "filter":
            raise ValueError("the first VT module must use a filter tokenizer (it has no tokens in)")
        dim = config.token_channels  # the key features' width (tokens are always 1280-d)
        self.stem = LiteBackbone()
        n = len(config.tokenizers)
        self.vt_layers = nn.ModuleList(
            LiteVTModule(kind, dim, config.num_tokens, project=i < n - 1) for i, kind in enumerate(config.tokenizers))
        self.fc = nn.Linear(FEATURE_CHANNELS, config.num_classes)
        for p in list(self.stem.parameters()) + list(self.fc.parameters()):
            p.requires_grad_(False)

    def explain_features(self, fmap: Tensor, ablation: Ablation = NO_ABLATION) -> VTOutput:
        """:meth:`explain` from the backbone's output ``[B, 1392, h, w]`` on."""
        b, _, h, w = fmap.shape
        mid, final = fmap[:, :MID_CHANNELS], fmap[:, MID_CHANNELS:]
        values = final.flatten(2).transpose(1, 2)  # [B, hw, 1280]
        tokens: Tensor | None = None
        outputs = []
        for layer in self.vt_layers:
            out = layer(mid, values, (h, w), tokens, ablation)
            outputs.append(out)
            tokens = out.tokens
            if out.features is not None:
                values = out.features
        assert tokens is not None
        return VTOutput(self.fc(tokens.mean(dim=1)), tuple(outputs), (h, w))

    def last_stage(self) -> nn.Module:
        """The backbone's last stage (stride 32 and the head convolution)."""
        n = self.stem.net
        return nn.ModuleList([*n._blocks[MID_BLOCKS:], n._conv_head, n._bn1])

    def load_teacher(self, teacher: EfficientNetLite0) -> None:
        """Copy the teacher's backbone and classifier (the model then equals the teacher)."""
        self.stem.net.load_state_dict(teacher.state_dict())
        self.fc.load_state_dict(teacher._fc.state_dict())


def vt_lite0(**kwargs: object) -> VTLite:
    """VT-Lite0: a filter and a recurrent VT module on EfficientNet-Lite0 (1000 classes).

    ``token_channels`` is the width of the key features that the maps are computed from
    (default 192); the tokens themselves are 1280-d, the backbone's feature space.
    """
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("blocks", (1,))
    kwargs.setdefault("token_channels", 192)
    kwargs.setdefault("padding_mode", "zeros")
    return VTLite(ModelConfig(arch="vt_lite0", **kwargs))  # type: ignore[arg-type]

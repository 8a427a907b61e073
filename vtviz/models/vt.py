"""The Visual Transformer (VT) model family, neural-network code only.

Wu et al., "Visual Transformers: Token-based Image Representation and Processing
for Computer Vision", arXiv 2006.03677. Equation numbers below refer to that paper.

Notation: X is a feature map flattened to ``[B, HW, C]``, T are visual tokens
``[B, L, C_T]``. Every module returns the attention it computed, so that
:func:`vtviz.token_maps` can hand it to the user without hooks.

Choices the paper leaves open (each is also noted at the code that makes it):

* **Logit scaling.** The filter tokenizer's logits ``X W_A`` are *not* scaled: a 1/sqrt(C)
  factor made its maps uniform in our trials (plain average pooling). The token transformer
  and the projector scale their dot products by 1/sqrt(d), as in every transformer;
  unscaled they diverged.
* **Recurrent tokenizer.** ``W_R = W_0 + centre(LN(T_in)) W_T->R / sqrt(C)``: the paper's
  token-dependent filters plus a learned per-token filter ``W_0``. In four trainings without
  ``W_0`` (scaled or not, centred or not, two diversity penalties) the 16 recurrent maps
  collapsed onto 3-5 peaks or went uniform; the filter tokenizer never did.
* **Normalisation.** Pre-LayerNorm on tokens before each token-space matmul
  (recurrent tokenizer input, transformer attention and feed-forward, projector
  keys). The literal equations (no normalisation) diverged to NaN.
* **Softmax axes.** Tokenizer: over the HW pixels (each token's map sums to 1 over
  pixels, Eq. 1-2). Transformer: over the key tokens (each row of the L x L
  matrix sums to 1, Eq. 3). Projector: over the L tokens (each pixel's weights sum
  to 1, Eq. 5).
* **Channel change.** Tokens are pooled in C (=256) and lifted to C_T (=1024) by a
  linear map after pooling, ``T = (A^T X) W_V``; this is equal to ``A^T (X W_V)``
  but 12x cheaper. The projector maps tokens back to C with ``W_V'``.
* **Registers and a null slot** (optional, ``ModelConfig.registers`` / ``projector_null``).
  In the first trained models every token's transformer attention went to one "sink" token
  and the projector wrote one token onto every pixel. Following Darcet et al. (2023,
  "Vision Transformers Need Registers"), the token transformer can take ``R`` learned
  register tokens that join its attention (a place for global summaries) and are dropped at
  its output; the projector can take a learned *null* key whose value is zero (a pixel may
  choose "no update" instead of the nearest token).
* **Recurrent tokenizer without the per-token filter** (``static_filter=False``): the
  paper's ``W_R = T_in W_T->R`` alone (normalised, centred, scaled), see the class.
* **Last module.** For classification the last module's projector would feed
  nothing (the head pools tokens), so it is omitted, as in the paper's classifier.
* **Padding.** The ResNet convolutions use reflection padding by default: with
  zero padding the border pixels stand out and tokens park on the border
  ("attention sinks"); reflection removed most of them at equal accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from vtviz.models.meta import ModelMeta
    from vtviz.models.ood import Flag

TokenizerKind = Literal["filter", "recurrent"]
TOKENIZER_KINDS: tuple[TokenizerKind, ...] = ("filter", "recurrent")
PaddingMode = Literal["zeros", "reflect"]
PADDING_MODES: tuple[PaddingMode, ...] = ("zeros", "reflect")


# --------------------------------------------------------------------------- outputs
class TokenizerOutput(NamedTuple):
    """What a tokenizer computes.

    attention: ``[B, L, HW]`` spatial attention, float32, sums to 1 over HW.
    tokens: ``[B, L, C_T]`` visual tokens.
    """

    attention: Tensor
    tokens: Tensor


class TransformerOutput(NamedTuple):
    """tokens ``[B, L, C_T]``; mixing ``[B, L, L]`` (image token -> image token);
    to_registers ``[B, L]``: attention each image token gives the registers. Each row of
    ``mixing`` plus ``to_registers`` sums to 1 (without registers ``to_registers`` is 0)."""

    tokens: Tensor
    mixing: Tensor
    to_registers: Tensor


class ProjectorOutput(NamedTuple):
    """features ``[B, HW, C]``; assignment ``[B, HW, L]`` over the L tokens, which sums to 1
    over L, or to 1 minus the null slot's share when the projector has one."""

    features: Tensor
    assignment: Tensor


class VTLayerOutput(NamedTuple):
    """All tensors of one VT module. ``assignment``/``features`` are None without projector.

    attention ``[B, L, HW]``, mixing ``[B, L, L]``, to_registers ``[B, L]``, assignment
    ``[B, HW, L]`` or None, tokens ``[B, L, C_T]``, features ``[B, HW, C]`` or None.
    """

    attention: Tensor
    mixing: Tensor
    to_registers: Tensor
    assignment: Tensor | None
    tokens: Tensor
    features: Tensor | None


class VTOutput(NamedTuple):
    """logits ``[B, classes]``, one :class:`VTLayerOutput` per VT module, map size (h, w)."""

    logits: Tensor
    layers: tuple[VTLayerOutput, ...]
    map_size: tuple[int, int]


MixingAblation = Literal["identity", "uniform", "skip"]


@dataclass(frozen=True)
class Ablation:
    """Parts of a VT model switched off for one forward pass (nothing is stored on modules).

    mixing: the token transformer's attention replaced by ``"identity"`` (each token reads
    itself; feed-forward kept) or ``"uniform"`` (each token reads the mean), or the whole
    transformer skipped (``"skip"``); projector: False passes the features through unchanged;
    recurrent_dynamic: False zeroes the recurrent tokenizer's token-dependent filter term, so
    that only the per-token filter ``W_0`` is left (uniform maps when there is no ``W_0``).
    """

    mixing: MixingAblation | None = None
    projector: bool = True
    recurrent_dynamic: bool = True

    @property
    def active(self) -> bool:
        """True when anything is switched off."""
        return self != NO_ABLATION


NO_ABLATION = Ablation()


def _softmax32(logits: Tensor, dim: int) -> Tensor:
    """Softmax in float32 whatever the autocast dtype: maps are what users look at."""
    return torch.softmax(logits.float(), dim=dim)


# --------------------------------------------------------------------------- VT parts
class FilterTokenizer(nn.Module):
    """Filter-based tokenizer (Eq. 1): ``A = softmax_HW(X W_A)``, ``T = (A^T X) W_V``.

    Input X ``[B, HW, C]``; output attention ``[B, L, HW]`` and tokens ``[B, L, C_T]``.
    """

    def __init__(self, channels: int, token_channels: int, num_tokens: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.filters = nn.Linear(channels, num_tokens, bias=False)  # W_A, C x L
        self.value = nn.Linear(channels, token_channels, bias=False)  # W_V, C x C_T

    def forward(self, x: Tensor, tokens_in: Tensor | None = None,
                ablation: Ablation = NO_ABLATION) -> TokenizerOutput:
        # Unscaled logits on purpose: 1/sqrt(C) left the maps uniform in training.
        attention = _softmax32(self.filters(x).transpose(1, 2), dim=-1)  # [B, L, HW]
        pooled = torch.bmm(attention.to(x.dtype), x)  # A^T X, [B, L, C]
        return TokenizerOutput(attention, self.value(pooled))


class RecurrentTokenizer(nn.Module):
    """Recurrent tokenizer (Eq. 2): ``W_R = T_in W_T->R``, ``A = softmax_HW(X W_R^T)``.

    Input X ``[B, HW, C]`` and the previous module's tokens ``[B, L, C_T]``;
    output attention ``[B, L, HW]`` and tokens ``T = (A^T X) W_V``, ``[B, L, C_T]``.

    Our choices (see the module docstring): T_in is layer-normalised and centred over the L
    tokens and its product with ``W_T->R`` is scaled by 1/sqrt(C). With ``static_filter`` a
    learned per-token filter ``W_0`` is added, ``W_R = W_0 + centre(LN(T_in)) W_T->R /
    sqrt(C)``; the first bundled models had it and their maps turned out not to depend on the
    tokens at all (zeroing the dynamic term left them 0.997-correlated), so later models drop
    it: the filters then come from the previous tokens alone, as in the paper.
    """

    def __init__(self, channels: int, token_channels: int, num_tokens: int,
                 static_filter: bool = True) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.norm = nn.LayerNorm(token_channels)  # keeps W_R's scale steady across training
        self.token_to_filter = nn.Linear(token_channels, channels, bias=False)  # W_T->R
        self.filters = nn.Linear(channels, num_tokens, bias=False) if static_filter else None  # W_0
        self.value = nn.Linear(channels, token_channels, bias=False)  # W_V
        self.scale = channels**-0.5

    def forward(self, x: Tensor, tokens_in: Tensor | None = None,
                ablation: Ablation = NO_ABLATION) -> TokenizerOutput:
        if tokens_in is None:
            raise ValueError("RecurrentTokenizer needs the previous module's tokens")
        z = self.norm(tokens_in)
        # Centre over tokens: what all input tokens share would add the same filter to every
        # token and pull all maps onto one spot. Centred, the dynamic logits sum to 0 over tokens.
        z = z - z.mean(dim=1, keepdim=True)
        filters = self.token_to_filter(z) * self.scale  # [B, L, C], from the input tokens
        if not ablation.recurrent_dynamic:
            filters = torch.zeros_like(filters)
        if self.filters is not None:
            filters = filters + self.filters.weight  # W_R
        logits = torch.bmm(filters, x.transpose(1, 2))  # [B, L, HW]
        attention = _softmax32(logits, dim=-1)
        pooled = torch.bmm(attention.to(x.dtype), x)
        return TokenizerOutput(attention, self.value(pooled))


class TokenTransformer(nn.Module):
    """Transformer in token space (Eqs. 3-4), pre-LayerNorm, with optional register tokens.

    ``T' = T + softmax_L((T K)(T Q)^T / sqrt(d)) T`` and ``T_out = T' + ReLU(T' F1) F2``
    with T normalised before each product. Input/output ``[B, L, C_T]``. With ``registers``
    R > 0, R learned tokens are appended before the attention and dropped after the
    feed-forward (Darcet et al. 2023): they give the attention a place for global summaries.
    """

    def __init__(self, token_channels: int, key_channels: int | None = None,
                 registers: int = 0) -> None:
        super().__init__()
        key_channels = key_channels or token_channels // 2  # paper: K, Q are C_T x C_T/2
        self.registers = nn.Parameter(torch.randn(registers, token_channels)) if registers else None
        self.norm1 = nn.LayerNorm(token_channels)
        self.key = nn.Linear(token_channels, key_channels, bias=False)
        self.query = nn.Linear(token_channels, key_channels, bias=False)
        self.norm2 = nn.LayerNorm(token_channels)
        self.f1 = nn.Linear(token_channels, token_channels)
        self.f2 = nn.Linear(token_channels, token_channels)
        self.scale = key_channels**-0.5

    def forward(self, tokens: Tensor, ablation: Ablation = NO_ABLATION) -> TransformerOutput:
        b, n, _ = tokens.shape
        if ablation.mixing == "skip":
            eye = torch.eye(n, device=tokens.device).expand(b, n, n)
            return TransformerOutput(tokens, eye, tokens.new_zeros(b, n, dtype=torch.float32))
        if self.registers is not None:
            tokens = torch.cat([tokens, self.registers.to(tokens.dtype).expand(b, -1, -1)], 1)
        t = self.norm1(tokens)
        logits = torch.bmm(self.key(t), self.query(t).transpose(1, 2)) * self.scale
        mixing = _softmax32(logits, dim=-1)  # [B, L+R, L+R], row i: how token i reads others
        if ablation.mixing == "identity":
            mixing = torch.eye(mixing.shape[-1], device=mixing.device).expand_as(mixing)
        elif ablation.mixing == "uniform":
            mixing = torch.full_like(mixing, 1 / mixing.shape[-1])
        tokens = tokens + torch.bmm(mixing.to(t.dtype), t)
        tokens = tokens + self.f2(F.relu(self.f1(self.norm2(tokens))))
        return TransformerOutput(tokens[:, :n], mixing[:, :n, :n], mixing[:, :n, n:].sum(-1))


class Projector(nn.Module):
    """Projector (Eq. 5): ``X_out = X + softmax_L((X W_Q)(T W_K)^T / sqrt(C)) (T W_V)``.

    Input X ``[B, HW, C]`` and tokens ``[B, L, C_T]``; output features ``[B, HW, C]``
    and the assignment ``[B, HW, L]`` of each pixel over tokens. With ``null`` a learned
    key with a zero value joins the softmax: a pixel can take no update.
    """

    def __init__(self, channels: int, token_channels: int, null: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(token_channels)
        self.query = nn.Linear(channels, channels, bias=False)  # W_Q, C x C
        self.key = nn.Linear(token_channels, channels, bias=False)  # W_K, C_T x C
        self.value = nn.Linear(token_channels, channels, bias=False)  # C_T x C
        self.null_key = nn.Parameter(torch.zeros(channels)) if null else None
        self.out_norm = nn.BatchNorm1d(channels)
        self.scale = channels**-0.5

    def forward(self, x: Tensor, tokens: Tensor) -> ProjectorOutput:
        t = self.norm(tokens)
        keys = self.key(t)  # [B, L, C]
        values = self.value(t)
        n = keys.shape[1]
        if self.null_key is not None:
            keys = torch.cat([keys, self.null_key.to(keys.dtype).expand(len(keys), 1, -1)], 1)
            values = torch.cat([values, values.new_zeros(len(values), 1, values.shape[-1])], 1)
        logits = torch.bmm(self.query(x), keys.transpose(1, 2)) * self.scale
        assignment = _softmax32(logits, dim=-1)  # [B, HW, L(+1)]
        update = torch.bmm(assignment.to(x.dtype), values)  # [B, HW, C]
        update = self.out_norm(update.transpose(1, 2)).transpose(1, 2)
        return ProjectorOutput(x + update, assignment[..., :n])


class VTModule(nn.Module):
    """One VT module: tokenizer, token transformer and (optionally) projector.

    Input X ``[B, HW, C]`` and, for a recurrent tokenizer, the previous tokens.
    """

    def __init__(
        self,
        kind: TokenizerKind,
        channels: int,
        token_channels: int,
        num_tokens: int,
        project: bool = True,
        *,
        registers: int = 0,
        projector_null: bool = False,
        static_filter: bool = True,
    ) -> None:
        super().__init__()
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
        self.kind: TokenizerKind = kind
        self.tokenizer: FilterTokenizer | RecurrentTokenizer = (
            FilterTokenizer(channels, token_channels, num_tokens) if kind == "filter"
            else RecurrentTokenizer(channels, token_channels, num_tokens, static_filter))
        self.transformer = TokenTransformer(token_channels, registers=registers)
        self.projector = Projector(channels, token_channels, projector_null) if project else None
        # The module's output tokens pass through here: a named place for attribution methods
        # (Captum's layer methods) and token deletion to reach them. It computes nothing.
        self.token_probe = nn.Identity()

    def forward(self, x: Tensor, tokens_in: Tensor | None = None,
                ablation: Ablation = NO_ABLATION) -> VTLayerOutput:
        tok = self.tokenizer(x, tokens_in, ablation)
        mixed = self.transformer(tok.tokens, ablation)
        tokens = self.token_probe(mixed.tokens)
        if self.projector is None:
            return VTLayerOutput(tok.attention, mixed.mixing, mixed.to_registers, None, tokens, None)
        proj = self.projector(x, tokens)
        features = proj.features if ablation.projector else x
        return VTLayerOutput(tok.attention, mixed.mixing, mixed.to_registers, proj.assignment,
                             tokens, features)


# --------------------------------------------------------------------------- ResNet parts


def _conv3x3(cin: int, cout: int, stride: int, padding_mode: PaddingMode) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False, padding_mode=padding_mode)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with a choice of padding. ``[B, C, H, W]`` in and out."""

    def __init__(self, cin: int, cout: int, stride: int, padding_mode: PaddingMode) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, padding_mode)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(cout, cout, 1, padding_mode)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _stage(cin: int, cout: int, blocks: int, stride: int, pad: PaddingMode) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride, pad)]
    layers += [BasicBlock(cout, cout, 1, pad) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # Zero-init the last BN of each residual branch (Goyal et al.): blocks start as identity.
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        if isinstance(m, Projector):
            nn.init.zeros_(m.out_norm.weight)


class ResNetStem(nn.Module):
    """ResNet stem and stages 1-3 (stride 16). ``[B, 3, H, W]`` -> ``[B, 256, H/16, W/16]``."""

    def __init__(self, blocks: Sequence[int], padding_mode: PaddingMode) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False, padding_mode=padding_mode)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, blocks[0], 1, padding_mode)
        self.layer2 = _stage(64, 128, blocks[1], 2, padding_mode)
        self.layer3 = _stage(128, 256, blocks[2], 2, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an architecture (stored in every checkpoint).

    Values are checked on construction (:meth:`validate`), before any weight is allocated.
    """

    arch: str = "vt_resnet18"
    num_classes: int = 1000
    blocks: tuple[int, ...] = (2, 2, 2)
    tokenizers: tuple[TokenizerKind, ...] = ("filter", "recurrent")
    num_tokens: int = 16
    token_channels: int = 1024
    padding_mode: PaddingMode = "reflect"
    registers: int = 0  # learned register tokens in each token transformer
    projector_null: bool = False  # a null slot in each projector's softmax
    static_filter: bool = True  # the recurrent tokenizer's per-token filter W_0
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for values no model can be built from (or only at absurd cost)."""
        if any(k not in TOKENIZER_KINDS for k in self.tokenizers):
            raise ValueError(f"tokenizers {list(self.tokenizers)}: each must be one of {TOKENIZER_KINDS}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode {self.padding_mode!r}: expected one of {PADDING_MODES}")
        limits = {"num_classes": (1, 100_000), "num_tokens": (1, 1024), "token_channels": (8, 8192),
                  "registers": (0, 64)}
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} = {value!r}: expected an integer in {lo}..{hi}")
        if not self.blocks or any(not isinstance(b, int) or not 1 <= b <= 64 for b in self.blocks):
            raise ValueError(f"blocks {list(self.blocks)}: expected 1..64 blocks per stage")
        if len(self.tokenizers) > 16:
            raise ValueError(f"{len(self.tokenizers)} VT modules: at most 16")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        data = dict(data)
        for key in ("blocks", "tokenizers"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class VTModel(nn.Module):
    """Base of the VT models: a ``stem`` to a feature map, VT modules, a linear head.

    Subclasses set ``stem`` (``[B, 3, H, W]`` -> ``[B, C, h, w]``), ``vt_layers`` and ``fc``
    and implement :meth:`explain_features`; ``explain(x)`` returns a :class:`VTOutput` with
    every attention map from the same single pass.
    """

    stem: nn.Module
    vt_layers: nn.ModuleList
    fc: nn.Linear

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.tokenizers:
            raise ValueError("a VT model needs at least one VT module")
        self.config = config
        self.meta: ModelMeta | None = None  # set by vtviz.load_model / attach_meta
        self.ood: Flag | None = None  # the unfamiliar-photo flag, when calibrated

    @property
    def tokenizer_kinds(self) -> list[TokenizerKind]:
        """Tokenizer kind per VT module, e.g. ``["filter", "recurrent"]``."""
        return list(self.config.tokenizers)

    def explain(self, x: Tensor, ablation: Ablation = NO_ABLATION) -> VTOutput:
        """Logits and every VT module's attention from one pass; ``x`` is ``[B, 3, H, W]``.

        ``ablation`` switches parts off for this pass only (see :class:`Ablation`).
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got {list(x.shape)}")
        if x.shape[-1] < 32 or x.shape[-2] < 32:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is too small (min 32 px)")
        return self.explain_features(self.stem(x), ablation)

    def explain_features(self, fmap: Tensor, ablation: Ablation = NO_ABLATION) -> VTOutput:
        """:meth:`explain` from the stem's feature map ``[B, C, h, w]`` on (e.g. to take
        gradients with respect to it, as Grad-CAM does)."""
        raise NotImplementedError

    def last_stage(self) -> nn.Module:
        """The stem's last stage (randomised last in the cascading randomisation test)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, classes]`` for images ``[B, 3, H, W]``."""
        return self.explain(x).logits


class VTResNet(VTModel):
    """VT-ResNet: ResNet stages 1-3, then VT modules on the stride-16 map, token pooling head.

    ``forward(x)`` maps ``[B, 3, H, W]`` to logits ``[B, classes]``; ``explain(x)`` returns
    a :class:`VTOutput` with every attention map from the same single pass.
    """

    feature_channels = 256
    stem: ResNetStem

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.tokenizers[0] != "filter":
            raise ValueError("the first VT module must use a filter tokenizer (it has no tokens in)")
        if len(config.blocks) != 3:
            raise ValueError(f"a VT-ResNet has 3 ResNet stages, config.blocks is {list(config.blocks)}")
        self.stem = ResNetStem(config.blocks, config.padding_mode)
        n = len(config.tokenizers)
        self.vt_layers = nn.ModuleList(
            VTModule(kind, self.feature_channels, config.token_channels, config.num_tokens,
                     project=i < n - 1, registers=config.registers,
                     projector_null=config.projector_null, static_filter=config.static_filter)
            for i, kind in enumerate(config.tokenizers)
        )
        self.fc = nn.Linear(config.token_channels, config.num_classes)
        _init_weights(self)

    def last_stage(self) -> nn.Module:
        """The last ResNet stage before the VT modules (``stem.layer3``)."""
        return self.stem.layer3

    def explain_features(self, fmap: Tensor, ablation: Ablation = NO_ABLATION) -> VTOutput:
        """:meth:`explain` from the last ResNet stage's feature map ``[B, C, h, w]`` on (e.g. to
        take gradients with respect to it, as Grad-CAM does)."""
        b, c, h, w = fmap.shape
        feats = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
        tokens: Tensor | None = None
        outputs = []
        for layer in self.vt_layers:
            out = layer(feats, tokens, ablation)
            outputs.append(out)
            tokens = out.tokens
            if out.features is not None:
                feats = out.features
        assert tokens is not None
        logits = self.fc(tokens.mean(dim=1))
        return VTOutput(logits, tuple(outputs), (h, w))

class ResNet(nn.Module):
    """Plain ResNet (same stem and padding as VT-ResNet, plus stage 4): the baseline."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if len(config.blocks) != 4:
            raise ValueError(f"a ResNet has 4 stages, config.blocks is {list(config.blocks)}")
        self.config = config
        self.meta: ModelMeta | None = None  # set by vtviz.load_model / attach_meta
        pad = config.padding_mode
        self.stem = ResNetStem(config.blocks[:3], pad)
        self.layer4 = _stage(256, 512, config.blocks[3], 2, pad)
        self.fc = nn.Linear(512, config.num_classes)
        _init_weights(self)

    @property
    def tokenizer_kinds(self) -> list[TokenizerKind]:
        """A plain ResNet has no tokenizers."""
        return []

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, classes]`` for images ``[B, 3, H, W]``."""
        return self.fc(self.layer4(self.stem(x)).mean(dim=(2, 3)))


Model = VTModel | ResNet


def vt_resnet18(**kwargs: Any) -> VTResNet:
    """VT-ResNet-18: ResNet-18 stages 1-3 and two VT modules (filter, recurrent).

    Keyword arguments override :class:`ModelConfig` fields (``num_classes``,
    ``tokenizers``, ``num_tokens``, ``token_channels``, ``padding_mode``, ``registers``, ...).
    """
    kwargs.setdefault("blocks", (2, 2, 2))
    return VTResNet(ModelConfig(arch="vt_resnet18", **kwargs))


def vt_resnet34(**kwargs: Any) -> VTResNet:
    """VT-ResNet-34: ResNet-34 stages 1-3 and three VT modules (filter, recurrent, recurrent)."""
    kwargs.setdefault("tokenizers", ("filter", "recurrent", "recurrent"))
    kwargs.setdefault("blocks", (3, 4, 6))
    return VTResNet(ModelConfig(arch="vt_resnet34", **kwargs))


def resnet18(**kwargs: Any) -> ResNet:
    """Plain ResNet-18 baseline with the same padding choice as the VT models."""
    kwargs.setdefault("tokenizers", ())
    kwargs.setdefault("blocks", (2, 2, 2, 2))
    return ResNet(ModelConfig(arch="resnet18", **kwargs))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def multiply_adds(model: nn.Module, size: int = 224) -> int:
    """Multiply-adds of one forward pass at ``size`` x ``size`` (FLOPs / 2), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


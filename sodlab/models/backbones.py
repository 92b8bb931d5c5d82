"""Backbones that return a feature map per stride: a small CNN made for CPU training, resnet18, mobilenet_v3.

The default ``tiny`` backbone is made to train from scratch on a laptop CPU in minutes:
a stride-2 stem, then one stage per stride (4 … 64), each a strided 3x3 conv and a
depthwise-separable residual block. ``resnet18`` and ``mobilenet_v3`` are torchvision's, built
with ``weights=None`` (nothing is downloaded). Taught in notebooks 03 and 04.

Shapes: ``x [B, 3, H, W]`` -> ``{stride: [B, C_s, H / stride, W / stride]}``.
Dimension legend: B batch, C_s channels at stride s.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn


def conv_bn(cin: int, cout: int, *, k: int = 3, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SeparableBlock(nn.Module):
    """Residual depthwise-separable block: 3x3 depthwise, 1x1 pointwise, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = conv_bn(channels, channels, groups=channels)
        self.pw = conv_bn(channels, channels, k=1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.pw(self.dw(x)))


def separable_down(cin: int, cout: int) -> nn.Sequential:
    """A strided 3x3 depthwise conv then a 1x1 pointwise conv: ~1/8 of a full 3x3's multiply-adds."""
    return nn.Sequential(conv_bn(cin, cin, stride=2, groups=cin), conv_bn(cin, cout, k=1))


class TinyBackbone(nn.Module):
    """Stem at stride 2, then stages at strides 4, 8, 16, 32, 64.

    ``separable``: each stage starts with ``separable_down`` instead of a full strided 3x3
    conv (the ``tiny_dw`` backbone of the ``fast`` preset; at VGA the two strided convs of
    strides 4 and 8 are a quarter of ``fpn``'s multiply-adds).
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128, 128), *,
                 separable: bool = False) -> None:
        super().__init__()
        self.stem = conv_bn(3, widths[0], stride=2)  # [B, w0, H/2, W/2]
        self.stages = nn.ModuleList()
        down = separable_down if separable else (lambda a, b: conv_bn(a, b, stride=2))
        for cin, cout in zip(widths[:-1], widths[1:]):
            self.stages.append(nn.Sequential(down(cin, cout), SeparableBlock(cout)))
        self.channels = {2 ** (i + 2): w for i, w in enumerate(widths[1:])}

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[2 ** (i + 2)] = x
        return out


class TorchvisionBackbone(nn.Module):
    """A torchvision trunk; the last output at each stride is a level (stride 64 by an extra conv)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name == "resnet18":
            m = torchvision.models.resnet18(weights=None)
            self.body = nn.Sequential(nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool),
                                      m.layer1, m.layer2, m.layer3, m.layer4)
        elif name == "mobilenet_v3":
            m = torchvision.models.mobilenet_v3_large(weights=None)
            self.body = m.features
        else:
            raise ValueError(f"unknown backbone {name!r}")
        self.taps: dict[int, int] = {}
        with torch.no_grad():
            x = torch.zeros(1, 3, 64, 64)
            for i, layer in enumerate(self.body):
                x = layer(x)
                self.taps[64 // x.shape[-1]] = i  # last layer at each stride
        self.channels = {}
        with torch.no_grad():
            x = torch.zeros(1, 3, 64, 64)
            for i, layer in enumerate(self.body):
                x = layer(x)
                if self.taps.get(64 // x.shape[-1]) == i:
                    self.channels[64 // x.shape[-1]] = x.shape[1]
        top = max(self.channels)
        self.extra = conv_bn(self.channels[top], self.channels[top], stride=2)
        self.channels[top * 2] = self.channels[top]

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        size = x.shape[-1]
        for i, layer in enumerate(self.body):
            x = layer(x)
            stride = size // x.shape[-1]
            if self.taps.get(stride) == i:
                out[stride] = x
        top = max(out)
        out[top * 2] = self.extra(out[top])
        return out


def build_backbone(name: str, *, max_stride: int = 64) -> nn.Module:
    """``tiny`` (default), ``tiny_dw``, ``faceboxes``, ``resnet18`` or ``mobilenet_v3``; ``.channels`` maps
    stride -> C. ``tiny`` grows a stage per stride up to ``max_stride`` (at least 64)."""
    if name in ("tiny", "tiny_dw"):
        widths = [16, 32, 64, 96, 128, 128]
        stride = 64
        while stride < max_stride:
            widths.append(128)
            stride *= 2
        return TinyBackbone(tuple(widths), separable=name == "tiny_dw")
    if name == "faceboxes":
        from sodlab.models.faceboxes import FaceBoxesBackbone

        return FaceBoxesBackbone()
    return TorchvisionBackbone(name)

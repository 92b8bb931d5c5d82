"""FaceBoxes' CPU backbone: rapidly digested convolution layers, then multiple-scale inception layers.

Zhang et al. 2017 (FaceBoxes: a CPU real-time face detector). Taught in notebook 06.

- Rapidly Digested Convolutional Layers (RDCL): the input shrinks by 32 in four layers —
  a 7x7 conv at stride 4 and a 5x5 conv at stride 2, each followed by a 3x3 max-pool at
  stride 2 — with C.ReLU (concatenate x and -x before the ReLU: half the filters give
  twice the channels, as the paper observed the first layers learn negated pairs).
- Multiple Scale Convolutional Layers (MSCL): three inception modules at stride 32 (four
  branches of 32 channels: 1x1; 3x3 pool + 1x1; 1x1 + 3x3; 1x1 + 3x3 + 3x3), whose
  receptive fields span the anchor sizes of that level, then 1x1 + 3x3/2 convs to strides
  64 and 128.

The RDCL's stride-16 map (before its last max-pool) is returned too, at no extra cost: the
``faceboxes`` preset ignores it; ``faceboxes_s16`` predicts the smallest anchors from it
(after an FPN top-down merge), because our objects are four times smaller than the paper's
faces while its strides are not.

Shapes: ``x [B, 3, H, W]`` -> ``{16: [B, 128, H/16, W/16], 32: [B, 128, H/32, W/32],
64: [B, 256, H/64, W/64], 128: [B, 256, H/128, W/128]}`` (sizes rounded up).
Dimension legend: B batch.
"""

from __future__ import annotations

import torch
from torch import nn

from sodlab.models.backbones import conv_bn


class CReLU(nn.Module):
    """Conv + BN, then ReLU of the concatenation of the result and its negation (2x channels)."""

    def __init__(self, cin: int, cout: int, *, k: int, stride: int) -> None:
        super().__init__()
        self.conv = conv_bn(cin, cout, k=k, stride=stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(torch.cat([y, -y], 1))


class Inception(nn.Module):
    """Four branches of 32 channels with growing receptive fields, concatenated to 128."""

    def __init__(self, cin: int = 128, branch: int = 32) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, branch, k=1)
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, branch, k=1))
        self.b3 = nn.Sequential(conv_bn(cin, 24, k=1), conv_bn(24, branch))
        self.b5 = nn.Sequential(conv_bn(cin, 24, k=1), conv_bn(24, branch), conv_bn(branch, branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.pool(x), self.b3(x), self.b5(x)], 1)


class FaceBoxesBackbone(nn.Module):
    """RDCL (stride 32 in four layers) and MSCL (three inceptions, then strides 64 and 128)."""

    def __init__(self) -> None:
        super().__init__()
        self.rdcl = nn.Sequential(
            CReLU(3, 24, k=7, stride=4),            # [B, 48, H/4, W/4]
            nn.MaxPool2d(3, 2, 1),                  # [B, 48, H/8, W/8]
            CReLU(48, 64, k=5, stride=2),           # [B, 128, H/16, W/16]
            nn.MaxPool2d(3, 2, 1))                  # [B, 128, H/32, W/32]
        self.inception = nn.Sequential(Inception(), Inception(), Inception())
        self.conv3 = nn.Sequential(conv_bn(128, 128, k=1), conv_bn(128, 256, stride=2))
        self.conv4 = nn.Sequential(conv_bn(256, 128, k=1), conv_bn(128, 256, stride=2))
        self.channels = {16: 128, 32: 128, 64: 256, 128: 256}

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        c16 = self.rdcl[:3](x)  # [B, 128, H/16, W/16]
        c32 = self.inception(self.rdcl[3](c16))
        c64 = self.conv3(c32)
        return {16: c16, 32: c32, 64: c64, 128: self.conv4(c64)}

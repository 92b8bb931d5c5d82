"""PyramidBox's context-sensitive prediction module (CPM): SSH's context module of residual blocks.

Tang et al. 2018 (*PyramidBox: A Context-assisted Single Shot Face Detector*, ECCV) put one
CPM on every prediction level, between the neck and the head. It keeps the layout of SSH's
detection module (Najibi et al. 2017; ``sodlab.models.necks.DetectionModule``): a branch
that sees the level's own neighbourhood beside a context module whose 5x5- and
7x7-equivalent branches share their first stage. Each stage that SSH builds from one 3x3
conv is here a DSSD-style residual prediction block (Fu et al. 2017): a 1x1 -> 3x3 -> 1x1
bottleneck added to a 1x1 projection of its input. A block holds one 3x3 conv, so the
branches keep SSH's receptive fields (3x3, 5x5, 7x7 around each cell) and only gain
depth. The three branches are concatenated (C/2 + C/4 + C/4 = C channels); each block ends
in a ReLU, so the concatenation needs none.

The module's output is ``x + g * branches(x)`` with a learned gate ``g`` per channel that
starts at zero, so an untrained CPM is the identity and the head first sees the neck's
features unchanged. This is our choice, not the paper's (its CPM replaces the features; it
trains from an ImageNet-initialised VGG-16). Trained from scratch on our budget, the
replacing CPM lost the faces: the detector learned head- and body-sized boxes instead
(quick AP_small 0.000 against 0.123 for the row without it); gated, the same row reached 0.145
(one quick seed, against 0.069 without it in that run). The gate is the ReZero idea (Bachlechner
et al. 2020) applied to one module.
Taught in notebook 08.

Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``; ``LevelCPM``: ``{stride: [B, C, H_s, W_s]}`` ->
the same shapes.
Dimension legend: B batch, C the neck's width (a multiple of 4), H x W feature cells.
"""

from __future__ import annotations

import torch
from torch import nn

from sodlab.models.backbones import conv_bn


class ResidualBlock(nn.Module):
    """DSSD's residual prediction block: ReLU(1x1 projection + 1x1 -> 3x3 -> 1x1 bottleneck)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = max(1, cout // 2)
        self.skip = conv_bn(cin, cout, k=1, act=False)
        self.body = nn.Sequential(conv_bn(cin, mid, k=1), conv_bn(mid, mid),
                                  conv_bn(mid, cout, k=1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.body(x))  # [B, cout, H, W]


class CPM(nn.Module):
    """SSH's detection-module layout with every 3x3 stage a residual block, gated onto its input.

    ``forward(x) = x + gate * cat(local, b5, b7)``; ``gate`` ([1, C, 1, 1]) starts at zero.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        if width % 4:
            raise ValueError(f"CPM splits its width into halves and quarters; got {width}")
        half, quarter = width // 2, width // 4
        self.local = ResidualBlock(width, half)  # 3x3 neighbourhood
        self.shared = ResidualBlock(width, quarter)  # first stage of both context branches
        self.b5 = ResidualBlock(quarter, quarter)  # 5x5 equivalent
        self.b7 = nn.Sequential(ResidualBlock(quarter, quarter),
                                ResidualBlock(quarter, quarter))  # 7x7 equivalent
        self.gate = nn.Parameter(torch.zeros(1, width, 1, 1))  # identity at initialisation

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The three context branches, concatenated: ``[B, C, H, W]``."""
        s = self.shared(x)  # [B, C/4, H, W]
        return torch.cat([self.local(x), self.b5(s), self.b7(s)], 1)  # [B, C, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gate * self.branches(x)  # [B, C, H, W]


class LevelCPM(nn.Module):
    """One CPM per stride (weights not shared between levels, as in PyramidBox)."""

    def __init__(self, width: int, strides: list[int]) -> None:
        super().__init__()
        self.cpm = nn.ModuleDict({str(s): CPM(width) for s in strides})

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {s: self.cpm[str(s)](f) for s, f in feats.items()}

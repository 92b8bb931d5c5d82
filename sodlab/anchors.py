"""Anchors: boxes tiled over each feature level from sizes, aspect ratios, stride and centre offset.

Used by every anchor-based preset (FPN, SSH, dense anchors); taught in notebooks 03, 04 and 06.
An anchor of size s and ratio r = h / w has ``w = s / sqrt(r)``, ``h = s * sqrt(r)`` (area s²).
Cell (i, j) of a level with stride t has its anchor centre at ``((j + offset) * t,
(i + offset) * t)``: offset 0.5 puts it at the cell centre (pixel-exact in our continuous
convention), 0.0 at the cell corner, as torchvision's ``AnchorGenerator`` does.

Shapes: a level's anchors are ``[H * W * A, 4]`` xyxy, ordered (row, column, anchor), the
layout the detector's head flattens its outputs to.
Dimension legend: H x W feature cells, A anchors per cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LevelSpec:
    """Anchor design of one feature level."""

    stride: int
    sizes: tuple[float, ...]
    ratios: tuple[float, ...] = (1.0,)
    offset: float = 0.5

    @property
    def num_anchors(self) -> int:
        return len(self.sizes) * len(self.ratios)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """Anchors of one cell centred at (0, 0), sizes outer and ratios inner. ``[A, 4]``."""
    out = []
    for s in sizes:
        for r in ratios:
            w, h = s / math.sqrt(r), s * math.sqrt(r)
            out.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(out, dtype=torch.float32)


def anchors_for_level(height: int, width: int, spec: LevelSpec) -> torch.Tensor:
    """All anchors of a ``height x width`` feature level. ``[H * W * A, 4]``."""
    base = cell_anchors(spec.sizes, spec.ratios)  # [A, 4]
    ys = (torch.arange(height, dtype=torch.float32) + spec.offset) * spec.stride  # [H]
    xs = (torch.arange(width, dtype=torch.float32) + spec.offset) * spec.stride  # [W]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (centres + base[None]).reshape(-1, 4)  # [H*W*A, 4]


def tiling_density(spec: LevelSpec) -> list[float]:
    """Anchors per anchor-size interval along one axis: size / stride (FaceBoxes' density)."""
    return [s / spec.stride for s in spec.sizes]

"""Anchors: boxes tiled over each feature level from sizes, aspect ratios, stride and centre offset.

Used by every anchor-based preset (FPN, SSH, FaceBoxes, S3FD); taught in notebooks 03, 04 and 06.
An anchor of size s and ratio r = h / w has ``w = s / sqrt(r)``, ``h = s * sqrt(r)`` (area s²).
Cell (i, j) of a level with stride t has its anchor centre at ``((j + offset) * t,
(i + offset) * t)``: offset 0.5 puts it at the cell centre (pixel-exact in our continuous
convention), 0.0 at the cell corner, as torchvision's ``AnchorGenerator`` does (it has no
choice of offset).

Two dense-anchor designs (Zhang et al. 2017, both):

- FaceBoxes densification: the tiling density of an anchor type is ``size / stride`` (how
  many anchors of that size overlap one anchor-length of the image, along one axis). Small
  anchors on a coarse level are sparse (32 px at stride 32: density 1 against 4 for 128 px),
  so an anchor of size s is tiled ``n x n`` times per cell, its copies shifted to ``n``
  evenly spaced centres per axis inside the cell: ``(k + 0.5) / n - 0.5`` strides off the
  cell's centre, k = 0 … n-1. Density becomes ``n * size / stride``.
- S3FD's equal-proportion interval: one square anchor per level with size = 4 x stride
  on strides 4 … 128, so every anchor type has the same density (4).

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
    densify: tuple[int, ...] | None = None  # n per size (FaceBoxes); None: 1 for every size

    def __post_init__(self) -> None:
        if self.stride <= 0 or not self.sizes or min(self.sizes) <= 0 or not self.ratios \
                or min(self.ratios) <= 0:
            raise ValueError(f"a level needs stride > 0 and positive sizes and ratios: {self}")
        if self.densify is not None and (len(self.densify) != len(self.sizes)
                                         or min(self.densify) < 1):
            raise ValueError(f"densify needs one factor >= 1 per size: {self}")

    @property
    def factors(self) -> tuple[int, ...]:
        return tuple(self.densify) if self.densify is not None else (1,) * len(self.sizes)

    @property
    def num_anchors(self) -> int:
        """Anchors per cell: each size tiled n² times, for each ratio."""
        return sum(n * n for n in self.factors) * len(self.ratios)


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float],
                 densify: Sequence[int] | None = None, stride: float = 0.0) -> torch.Tensor:
    """Anchors of one cell centred at (0, 0), sizes outer, then densified copies (row-major),
    ratios inner. ``[A, 4]``. A size densified ``n`` times needs the level's ``stride``."""
    densify = list(densify) if densify is not None else [1] * len(sizes)
    out = []
    for s, n in zip(sizes, densify):
        if n > 1 and stride <= 0:
            raise ValueError("densified anchors need the level's stride")
        shifts = [((k + 0.5) / n - 0.5) * stride for k in range(n)]
        for dy in shifts:
            for dx in shifts:
                for r in ratios:
                    w, h = s / math.sqrt(r), s * math.sqrt(r)
                    out.append([dx - w / 2, dy - h / 2, dx + w / 2, dy + h / 2])
    return torch.tensor(out, dtype=torch.float32)


def anchors_for_level(height: int, width: int, spec: LevelSpec) -> torch.Tensor:
    """All anchors of a ``height x width`` feature level. ``[H * W * A, 4]``."""
    base = cell_anchors(spec.sizes, spec.ratios, spec.densify, spec.stride)  # [A, 4]
    ys = (torch.arange(height, dtype=torch.float32) + spec.offset) * spec.stride  # [H]
    xs = (torch.arange(width, dtype=torch.float32) + spec.offset) * spec.stride  # [W]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
    return (centres + base[None]).reshape(-1, 4)  # [H*W*A, 4]


def tiling_density(spec: LevelSpec) -> list[float]:
    """FaceBoxes' tiling density of each size: ``n * size / stride`` anchors of that size per
    anchor-length along one axis (n the densification factor)."""
    return [n * s / spec.stride for s, n in zip(spec.sizes, spec.factors)]


def s3fd_levels(strides: Sequence[int] = (4, 8, 16, 32, 64, 128), *, per_stride: float = 4.0,
                offset: float = 0.5) -> list[LevelSpec]:
    """S3FD's equal-proportion interval: one square anchor of ``per_stride x stride`` per level."""
    return [LevelSpec(int(t), (per_stride * t,), (1.0,), offset) for t in strides]


def level_shape(spec: LevelSpec, image_hw: tuple[int, int]) -> tuple[int, int]:
    """Feature cells of a level over an ``image_hw`` input: ``ceil(hw / stride)`` (the size a
    stride-2 conv stack with padding gives)."""
    return math.ceil(image_hw[0] / spec.stride), math.ceil(image_hw[1] / spec.stride)


def all_anchors(levels: Sequence[LevelSpec], image_hw: tuple[int, int]) -> torch.Tensor:
    """Every anchor of an ``image_hw`` input, level after level (``level_shape`` cells). ``[A, 4]``."""
    return torch.cat([anchors_for_level(*level_shape(lv, image_hw), lv) for lv in levels])

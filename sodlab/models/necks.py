"""Necks between backbone and head: one level, a Feature Pyramid Network, or SSH detection modules.

- ``none``: the backbone's map at one stride, projected to the head's width.
- ``plain``: several strides, each projected to the head's width by a 1x1 conv, with no
  pathway between them (SSD, S3FD and FaceBoxes predict from the trunk's own maps).
- ``fpn`` (Lin et al. 2017, notebook 03): lateral 1x1 convs, a top-down pathway of nearest
  up-sampling and addition, a 3x3 smoothing conv per level.
- ``fpn_dw``: ``fpn`` with depthwise-separable smoothing convs (the ``fast`` preset).
- ``ssh`` (Najibi et al. 2017, notebook 04): M1 at stride 8 on the stride-8 map plus the
  up-sampled stride-16 map (after 1x1 reductions), M2 at stride 16, M3 at stride 32 on a
  max-pooled stride-16 map; each module a 3x3 branch concatenated with a context module
  whose 5x5- and 7x7-equivalent branches are stacked 3x3 convs sharing the first.
- ``lfpn`` (PyramidBox's low-level FPN, Tang et al. 2018, notebook 06): a top-down pathway
  that starts at a middle level (``start``, by default the middle stride: S3FD's fc7 at
  stride 32 of 4 … 128) instead of the top, since the top levels' receptive fields are
  mostly background around a small face. Each finer level is the product of its own 1x1
  reduction and the 1x1-reduced, bilinearly up-sampled level above it (both after ReLU);
  the start level and those above it are projected only, as in ``plain``. ``fusion="sum"``
  adds the two maps instead (FPN's merge on LFPN's pathway), for the comparison of
  notebook 08's exercise 7; the presets use the paper's product.

Shapes: ``{stride: [B, C_s, H_s, W_s]}`` -> ``{stride: [B, C, H_s, W_s]}`` for the strides asked.
Dimension legend: B batch, C the neck's width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sodlab.models.backbones import conv_bn


class SingleLevel(nn.Module):
    def __init__(self, channels: dict[int, int], stride: int, width: int) -> None:
        super().__init__()
        self.stride = stride
        self.proj = conv_bn(channels[stride], width, k=1)

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {self.stride: self.proj(feats[self.stride])}


class Plain(nn.Module):
    """A 1x1 projection per stride, no top-down pathway."""

    def __init__(self, channels: dict[int, int], strides: list[int], width: int) -> None:
        super().__init__()
        self.proj = nn.ModuleDict({str(s): conv_bn(channels[s], width, k=1) for s in strides})

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {int(s): p(feats[int(s)]) for s, p in self.proj.items()}


def separable_conv(width: int) -> nn.Sequential:
    """3x3 depthwise + 1x1 pointwise (each with BN; ReLU after both): a cheap 3x3 smoothing conv."""
    return nn.Sequential(conv_bn(width, width, groups=width), conv_bn(width, width, k=1))


class FPN(nn.Module):
    """Top-down pathway with lateral connections over the given strides.

    ``separable``: depthwise-separable smoothing convs (the ``fpn_dw`` neck of the ``fast``
    preset: the stride-4 smoothing conv alone is a quarter of ``fpn``'s multiply-adds at VGA).
    """

    def __init__(self, channels: dict[int, int], strides: list[int], width: int, *,
                 separable: bool = False) -> None:
        super().__init__()
        self.strides = sorted(strides)
        self.lateral = nn.ModuleDict({str(s): nn.Conv2d(channels[s], width, 1)
                                      for s in self.strides})
        smooth = separable_conv if separable else (lambda w: conv_bn(w, w))
        self.smooth = nn.ModuleDict({str(s): smooth(width) for s in self.strides})

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        top = None
        for s in reversed(self.strides):  # coarse to fine
            lat = self.lateral[str(s)](feats[s])  # [B, C, H_s, W_s]
            if top is not None:
                lat = lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
            top = lat
            out[s] = self.smooth[str(s)](lat)
        return out


class LFPN(nn.Module):
    """Low-level FPN: top-down fusion by element-wise product (or ``fusion="sum"``) from ``start`` down.

    A product of two ReLU maps is zero wherever either map is, so a fine level keeps only the
    cells where the level above also fires; a sum keeps both.
    """

    FUSIONS = ("product", "sum")

    def __init__(self, channels: dict[int, int], strides: list[int], width: int, *,
                 start: int | None = None, fusion: str = "product") -> None:
        super().__init__()
        if fusion not in self.FUSIONS:
            raise ValueError(f"lfpn fusion {fusion!r} is not one of {self.FUSIONS}")
        self.fusion = fusion
        self.strides = sorted(strides)
        self.start = middle_stride(self.strides) if start is None else int(start)
        if self.start not in self.strides:
            raise ValueError(f"lfpn start {self.start} is not one of the strides {strides}")
        self.fused = [s for s in self.strides if s < self.start]  # fine to coarse
        self.proj = nn.ModuleDict({str(s): conv_bn(channels[s], width, k=1)
                                   for s in self.strides if s >= self.start})
        self.lateral = nn.ModuleDict({str(s): conv_bn(channels[s], width, k=1)
                                      for s in self.fused})
        above = [self.start, *reversed(self.fused)][:len(self.fused)]  # the map fused into each
        self.top = nn.ModuleDict({str(s): conv_bn(channels[a] if a == self.start else width,
                                                  width, k=1)
                                  for s, a in zip(reversed(self.fused), above)})

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        out = {s: self.proj[str(s)](feats[s]) for s in self.strides if s >= self.start}
        top = feats[self.start]  # the top-down path starts from the raw start-level map
        for s in reversed(self.fused):  # coarse to fine
            lat = self.lateral[str(s)](feats[s])  # [B, C, H_s, W_s]
            up = F.interpolate(self.top[str(s)](top), size=lat.shape[-2:], mode="bilinear",
                               align_corners=False)  # [B, C, H_s, W_s]
            top = out[s] = up * lat if self.fusion == "product" else up + lat
        return {s: out[s] for s in self.strides}


def middle_stride(strides: list[int]) -> int:
    """LFPN's default start: the stride at index ``len // 2`` (32 of S3FD's 4 … 128)."""
    return sorted(strides)[len(strides) // 2]


class ContextModule(nn.Module):
    """SSH context: 5x5- and 7x7-equivalent branches of stacked 3x3 convs sharing the first."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.shared = conv_bn(width, half)  # first 3x3 of both branches
        self.b5 = conv_bn(half, half, act=False)  # 3x3 + 3x3 = 5x5 receptive field
        self.b7 = nn.Sequential(conv_bn(half, half), conv_bn(half, half, act=False))  # 7x7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shared(x)
        return torch.cat([self.b5(s), self.b7(s)], 1)  # [B, C, H, W]


class DetectionModule(nn.Module):
    """SSH detection module: a 3x3 branch beside the context module, concatenated.

    ``context=False`` is SSH's own ablation (Najibi et al. 2017, the module without its
    context): the context module becomes one plain 3x3 conv of the same output width, so the
    module keeps its width and loses the larger receptive field (notebook 04).
    """

    def __init__(self, width: int, *, context: bool = True) -> None:
        super().__init__()
        self.conv3 = conv_bn(width, width // 2, act=False)
        self.context = ContextModule(width) if context else \
            conv_bn(width, 2 * (width // 2), act=False)
        self.fuse = conv_bn(width // 2 + width, width, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.relu(torch.cat([self.conv3(x), self.context(x)], 1)))


class SSH(nn.Module):
    """Detection modules M1 (stride 8), M2 (stride 16), M3 (stride 32, max-pooled)."""

    def __init__(self, channels: dict[int, int], width: int, *, context: bool = True) -> None:
        super().__init__()
        self.red8 = conv_bn(channels[8], width, k=1)
        self.red16 = conv_bn(channels[16], width, k=1)
        self.merge8 = conv_bn(width, width)
        self.proj16 = conv_bn(channels[16], width, k=1)
        self.m1, self.m2, self.m3 = (DetectionModule(width, context=context) for _ in range(3))

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        c8, c16 = feats[8], feats[16]
        up = F.interpolate(self.red16(c16), size=c8.shape[-2:], mode="nearest")
        x8 = self.merge8(self.red8(c8) + up)  # [B, C, H/8, W/8]
        x16 = self.proj16(c16)  # [B, C, H/16, W/16]
        x32 = F.max_pool2d(x16, 2, 2, ceil_mode=True)  # [B, C, H/32, W/32]
        return {8: self.m1(x8), 16: self.m2(x16), 32: self.m3(x32)}


def build_neck(name: str, channels: dict[int, int], strides: list[int], width: int, *,
               lfpn_start: int | None = None, ssh_context: bool = True,
               lfpn_fusion: str = "product") -> nn.Module:
    if name == "none":
        if len(strides) != 1:
            raise ValueError(f"neck 'none' takes one stride, got {strides}")
        return SingleLevel(channels, strides[0], width)
    if name in ("fpn", "fpn_dw"):
        return FPN(channels, strides, width, separable=name == "fpn_dw")
    if name == "plain":
        missing = [s for s in strides if s not in channels]
        if missing:
            raise ValueError(f"the backbone has no map at strides {missing}")
        return Plain(channels, strides, width)
    if name == "ssh":
        if sorted(strides) != [8, 16, 32]:
            raise ValueError(f"neck 'ssh' has modules at strides 8, 16, 32, got {strides}")
        return SSH(channels, width, context=ssh_context)
    if name == "lfpn":
        missing = [s for s in strides if s not in channels]
        if missing:
            raise ValueError(f"the backbone has no map at strides {missing}")
        return LFPN(channels, strides, width, start=lfpn_start, fusion=lfpn_fusion)
    raise ValueError(f"unknown neck {name!r}; choose none, plain, fpn, fpn_dw, ssh or lfpn")

"""Geometric and photometric transforms that keep an image and its target consistent.

Layer L1. Each transform is a callable ``t(image, target, g) -> (image, target)`` with
``image`` float32 ``[3, H, W]`` in [0, 1], ``target`` per the data contract (DESIGN.md) and
``g`` a ``torch.Generator``, the only source of randomness. Geometric transforms move
every ``[N, 4]`` xyxy entry whose key ends in ``"boxes"`` (``boxes``, ``head_boxes``, ...),
the ``masks [N, H, W]`` and the ``area``. Boxes are continuous pixels (x1 <= x < x2), so a
horizontal flip maps ``x1' = W - x2, x2' = W - x1``. Used by the dataset
(``DetectionDataset(transforms=...)``) and taught in notebook 02_augmentation.

Dimension legend: N objects, H x W image height and width (H' x W' after resizing).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _box_keys(target: dict) -> list[str]:
    return [k for k, v in target.items()
            if k.endswith("boxes") and isinstance(v, torch.Tensor) and v.shape[-1:] == (4,)]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class Compose:
    """Apply transforms in order, passing the same generator along."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        for t in self.transforms:
            image, target = t(image, target, g)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ResizeLongest:
    """Resize so the longer side is ``max_size`` pixels, keeping the aspect ratio.

    Boxes scale by ``W'/W`` and ``H'/H`` (the exact ratios after rounding the new size),
    ``area`` by their product, masks by nearest-neighbour sampling (pixel centres). With
    ``upscale=False`` an image already smaller than ``max_size`` is left alone.
    """

    def __init__(self, max_size: int, *, upscale: bool = True) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self.upscale = upscale

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator | None = None):
        _, h, w = image.shape
        s = self.max_size / max(h, w)
        if s == 1.0 or (s > 1.0 and not self.upscale):
            return image, target
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        out = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                            antialias=s < 1.0)[0].clamp_(0.0, 1.0)  # [3, H', W']
        sx, sy = nw / w, nh / h
        target = dict(target)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        for k in _box_keys(target):
            target[k] = target[k] * scale.to(target[k])  # [N, 4]
        if "area" in target:
            target["area"] = target["area"] * (sx * sy)
        if "masks" in target:
            m = target["masks"]  # [N, H, W]
            if m.shape[0] == 0:
                target["masks"] = m.new_zeros((0, nh, nw))
            else:
                target["masks"] = F.interpolate(m[None].float(), size=(nh, nw),
                                                mode="nearest-exact")[0] > 0.5  # [N, H', W']
        return out, target

    def __repr__(self) -> str:
        return f"ResizeLongest({self.max_size}, upscale={self.upscale})"


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror left-right: ``x1' = W - x2``, ``x2' = W - x1``; masks flipped; area unchanged."""
    w = image.shape[-1]
    target = dict(target)
    for k in _box_keys(target):
        b = target[k]  # [N, 4]
        target[k] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=-1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class RandomHFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        if float(torch.rand((), generator=g)) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHFlip(p={self.p})"


def _gray(image: torch.Tensor) -> torch.Tensor:
    r, gr, b = image[0], image[1], image[2]
    return (0.299 * r + 0.587 * gr + 0.114 * b)[None]  # [1, H, W]


class ColorJitter:
    """Random brightness, contrast and saturation factors drawn uniformly in ``[1-v, 1+v]``.

    Brightness scales the pixels, contrast blends with the mean grey level, saturation
    with the grey image (as torchvision's ColorJitter, in a fixed order). Targets unchanged.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast),
                        ("saturation", saturation)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        fb = _uniform(g, 1 - self.brightness, 1 + self.brightness)
        fc = _uniform(g, 1 - self.contrast, 1 + self.contrast)
        fs = _uniform(g, 1 - self.saturation, 1 + self.saturation)
        out = (image * fb).clamp(0.0, 1.0)  # [3, H, W]
        mean = _gray(out).mean()
        out = (fc * out + (1 - fc) * mean).clamp(0.0, 1.0)
        out = (fs * out + (1 - fs) * _gray(out)).clamp(0.0, 1.0)
        return out, target

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation})")

"""Box formats, areas and size buckets: the one place where box formats are converted.

Layer L0 of sodlab (imports nothing from the package). Taught in notebook 00.

Convention (``docs/design.md``, data contract): a box ``[x1, y1, x2, y2]`` is in continuous
pixels and covers ``x1 <= x < x2``; its width is ``x2 - x1``. COCO's ``[x, y, w, h]``
maps to ``x2 = x + w``; VOC's 1-based inclusive corners map to ``x1 = xmin - 1,
x2 = xmax``.

Every function takes a torch tensor or a numpy array of shape ``[..., 4]`` and returns
the same kind.

Dimension legend: N boxes, M boxes, ``...`` any leading dims.
"""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

Array = Union[torch.Tensor, np.ndarray]

# COCO's area ranges, exactly as pycocotools writes them (inclusive at both ends),
# plus our "tiny" bucket, a subset of small. Areas in square pixels.
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e10),
    "tiny": (0.0, 16.0**2),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
BUCKETS: tuple[str, ...] = ("tiny", "small", "medium", "large")


def _stack(parts: list, like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return torch.stack(parts, dim=-1)
    return np.stack(parts, axis=-1)


def _check(boxes: Array) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")


def xywh_to_xyxy(boxes: Array) -> Array:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]``."""
    _check(boxes)
    x, y, w, h = (boxes[..., i] for i in range(4))
    return _stack([x, y, x + w, y + h], boxes)


def xyxy_to_xywh(boxes: Array) -> Array:
    """``[x1, y1, x2, y2]`` -> COCO ``[x, y, w, h]``."""
    _check(boxes)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1, y1, x2 - x1, y2 - y1], boxes)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """``[x1, y1, x2, y2]`` -> ``[cx, cy, w, h]`` (centre of the covered pixel span)."""
    _check(boxes)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], boxes)


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """``[cx, cy, w, h]`` -> ``[x1, y1, x2, y2]``."""
    _check(boxes)
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return _stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], boxes)


def voc_to_xyxy(boxes: Array) -> Array:
    """VOC 1-based inclusive ``[xmin, ymin, xmax, ymax]`` -> ``[x1, y1, x2, y2]``."""
    _check(boxes)
    xmin, ymin, xmax, ymax = (boxes[..., i] for i in range(4))
    return _stack([xmin - 1, ymin - 1, xmax, ymax], boxes)


def xyxy_to_voc(boxes: Array) -> Array:
    """``[x1, y1, x2, y2]`` -> VOC 1-based inclusive corners (inverse of voc_to_xyxy)."""
    _check(boxes)
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1 + 1, y1 + 1, x2, y2], boxes)


def box_area(boxes: Array) -> Array:
    """Area ``(x2 - x1) * (y2 - y1)`` of each box, negative sizes counted as 0. ``[...]``."""
    _check(boxes)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    if isinstance(boxes, torch.Tensor):
        return w.clamp(min=0) * h.clamp(min=0)
    return np.clip(w, 0, None) * np.clip(h, 0, None)


def sqrt_wh(boxes: Array) -> Array:
    """``sqrt(w * h)`` of each box: the size SNIP/SNIPER valid ranges use. ``[...]``."""
    area = box_area(boxes)
    return area.sqrt() if isinstance(area, torch.Tensor) else np.sqrt(area)


def clip_boxes(boxes: Array, height: int, width: int) -> Array:
    """Clip boxes to the image ``[0, width] x [0, height]``."""
    _check(boxes)
    if isinstance(boxes, torch.Tensor):
        out = boxes.clone()
        out[..., 0::2] = out[..., 0::2].clamp(0, width)
        out[..., 1::2] = out[..., 1::2].clamp(0, height)
        return out
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0, width)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, height)
    return out


def valid_boxes(boxes: Array) -> Array:
    """Boolean mask of boxes with positive width and height. ``[...]``."""
    _check(boxes)
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def in_bucket(area: Array, bucket: str) -> Array:
    """Boolean mask of areas inside a bucket, with pycocotools' inclusive bounds."""
    if bucket not in AREA_RANGES:
        raise ValueError(f"unknown size bucket {bucket!r}; choose from {sorted(AREA_RANGES)}")
    lo, hi = AREA_RANGES[bucket]
    return (area >= lo) & (area <= hi)


def bucket_of(area: float) -> str:
    """The most specific bucket of one area: tiny, small, medium or large.

    Boundaries follow pycocotools' inclusive ranges; an area exactly 32² counts as
    small (it is also in medium's range; pycocotools counts it in both).
    """
    if area <= AREA_RANGES["tiny"][1]:
        return "tiny"
    if area <= AREA_RANGES["small"][1]:
        return "small"
    if area <= AREA_RANGES["medium"][1]:
        return "medium"
    return "large"


def box_slices(box, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns of the pixels one continuous xyxy box touches, clipped to the image.

    Pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so the box touches columns
    ``floor(x1) .. ceil(x2) - 1``; a box outside the image gives empty slices. Use as
    ``array[rows, cols]`` on an ``[H, W]`` (or ``[..., H, W]``) array.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    c0, r0 = max(math.floor(x1), 0), max(math.floor(y1), 0)
    c1, r1 = min(math.ceil(x2), int(width)), min(math.ceil(y2), int(height))
    return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))


def box_mask(box, height: int, width: int) -> torch.Tensor:
    """The pixels one continuous xyxy box touches, as a bool mask ``[H, W]``.

    The mask of an object that has no segmentation (``box_slices`` gives the rectangle).
    """
    m = torch.zeros(int(height), int(width), dtype=torch.bool)  # [H, W]
    m[box_slices(box, height, width)] = True
    return m


def scale_boxes(boxes: Array, sx: float, sy: float | None = None) -> Array:
    """Scale box coordinates by ``sx`` (x) and ``sy`` (y, default ``sx``) about the origin."""
    _check(boxes)
    sy = sx if sy is None else sy
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return _stack([x1 * sx, y1 * sy, x2 * sx, y2 * sy], boxes)


class BoxCoder:
    """Encode boxes as regression deltas to anchors and back (Faster R-CNN parametrisation).

    ``dx = (cx - acx) / aw / wx``, ``dw = log(w / aw) / ww``; ``weights = (wx, wy, ww, wh)``.
    Decoding clamps ``dw, dh`` at ``log(1000 / 16)`` as torchvision does.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 clamp: float = math.log(1000.0 / 16)) -> None:
        self.weights = weights
        self.clamp = clamp

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``boxes [N, 4]``, ``anchors [N, 4]`` (xyxy) -> deltas ``[N, 4]``."""
        b = xyxy_to_cxcywh(boxes)
        a = xyxy_to_cxcywh(anchors)
        wx, wy, ww, wh = self.weights
        aw = a[:, 2].clamp(min=1e-6)
        ah = a[:, 3].clamp(min=1e-6)
        dx = wx * (b[:, 0] - a[:, 0]) / aw
        dy = wy * (b[:, 1] - a[:, 1]) / ah
        dw = ww * torch.log(b[:, 2].clamp(min=1e-6) / aw)
        dh = wh * torch.log(b[:, 3].clamp(min=1e-6) / ah)
        return torch.stack([dx, dy, dw, dh], dim=1)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``deltas [..., 4]``, ``anchors [..., 4]`` (xyxy) -> boxes ``[..., 4]`` (xyxy)."""
        a = xyxy_to_cxcywh(anchors)
        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.clamp)
        cx = dx * a[..., 2] + a[..., 0]
        cy = dy * a[..., 3] + a[..., 1]
        w = torch.exp(dw) * a[..., 2]
        h = torch.exp(dh) * a[..., 3]
        return cxcywh_to_xyxy(torch.stack([cx, cy, w, h], dim=-1))

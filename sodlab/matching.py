"""IoU matching of anchors to ground truth: positives, negatives, ignored anchors, low-quality matches.

RetinaNet/SSD-style: an anchor whose best IoU with a ground-truth box is at least ``pos_iou``
is positive for it, below ``neg_iou`` negative, in between ignored. With
``allow_low_quality`` every object also takes the anchor(s) that overlap it best, so a face
smaller than every anchor still gets one. Ignored objects (``iscrowd``: WIDER ``invalid``,
VOC ``difficult``, faces mostly hidden) make the anchors that lie mostly on them (IoA >=
``ignore_ioa``) neither positive nor negative. Taught in notebooks 03 and 06.

Shapes: anchors ``[A, 4]``, boxes ``[N, 4]`` xyxy; the result ``[A]`` int64 holds the matched
box index, ``NEGATIVE`` (-1) or ``IGNORE`` (-2).
Dimension legend: A anchors, N objects.
"""

from __future__ import annotations

import torch
import torchvision

NEGATIVE = -1
IGNORE = -2


def ioa(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Intersection over the anchor's area. ``[A, N]``."""
    lt = torch.max(anchors[:, None, :2], boxes[None, :, :2])
    rb = torch.min(anchors[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)  # [A, N]
    return inter / torchvision.ops.box_area(anchors)[:, None].clamp(min=1e-9)


def match_anchors(anchors: torch.Tensor, boxes: torch.Tensor, ignore: torch.Tensor | None = None,
                  *, pos_iou: float = 0.5, neg_iou: float = 0.4, allow_low_quality: bool = True,
                  ignore_ioa: float = 0.5) -> torch.Tensor:
    """Index of each anchor's object, ``NEGATIVE`` or ``IGNORE``. ``[A]`` int64."""
    A = len(anchors)
    out = torch.full((A,), NEGATIVE, dtype=torch.int64, device=anchors.device)
    if len(boxes) == 0:
        return out
    ignore = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device) if ignore is None \
        else ignore.bool()
    keep = torch.nonzero(~ignore).flatten()  # [N'] objects that train
    if len(keep):
        iou = torchvision.ops.box_iou(anchors, boxes[keep])  # [A, N']
        best, arg = iou.max(1)  # [A]
        out[(best >= neg_iou) & (best < pos_iou)] = IGNORE
        pos = best >= pos_iou
        out[pos] = keep[arg[pos]]
        if allow_low_quality:
            top = iou.max(0).values  # [N'] best IoU of each object
            a_idx, o_idx = torch.nonzero((iou == top[None]) & (top[None] > 0), as_tuple=True)
            out[a_idx] = keep[o_idx]
    if ignore.any():
        on_crowd = ioa(anchors, boxes[ignore]).max(1).values >= ignore_ioa  # [A]
        out[on_crowd & (out < 0)] = IGNORE
    return out

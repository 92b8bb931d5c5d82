"""Duplicate removal by score: class-wise NMS and soft-NMS (Gaussian or linear decay).

NMS keeps the highest-scoring box of a class and deletes every other box of that class
that overlaps it by more than ``iou``, then repeats on what is left (torchvision's
``batched_nms``). Soft-NMS (Bodla et al., ICCV 2017, *Soft-NMS -- Improving Object Detection
With One Line of Code*) lowers the neighbours' scores instead of deleting them: by
``exp(-IoU^2 / sigma)`` (Gaussian) or by ``1 - IoU`` when IoU exceeds ``iou`` (linear); a
box whose score falls below ``score_thresh`` is dropped. Soft-NMS is taught in notebook 05
(SNIP's multi-scale test merges its scales with it); NMS is the last step of every
detector here.

Layer L1. Shapes: boxes ``[D, 4]`` xyxy, scores ``[D]``, labels ``[D]`` (any integers;
only equality matters). Both functions return indices into the inputs, highest score first.
Dimension legend: D detections, K kept detections, C classes present.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torchvision

from sodlab.errors import InputError


def nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float, *,
        max_dets: int | None = None) -> torch.Tensor:
    """Class-wise NMS: indices of the kept boxes, highest score first. ``[K]`` int64."""
    keep = torchvision.ops.batched_nms(boxes.float(), scores.float(), labels, iou)  # [K]
    return keep if max_dets is None else keep[:max_dets]


class SoftNMSResult(NamedTuple):
    """What soft-NMS keeps: ``keep [K]`` indices into the inputs and their decayed ``scores [K]``.

    Ordered by decayed score, highest first (ties by index), so ``boxes[keep]`` pairs with
    ``scores``. Unpacks as ``keep, scores = soft_nms(...)``.
    """

    keep: torch.Tensor  # [K] int64
    scores: torch.Tensor  # [K] float32


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (same formula as ``torchvision.ops.box_iou``). ``[D]``."""
    lt = torch.max(a[:, :2], b[:, :2])  # [D, 2]
    rb = torch.min(a[:, 2:], b[:, 2:])  # [D, 2]
    inter = (rb - lt).clamp(min=0).prod(1)  # [D]
    union = torchvision.ops.box_area(a) + torchvision.ops.box_area(b) - inter
    return inter / union


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
             method: str = "gaussian", sigma: float = 0.5, iou: float = 0.3,
             score_thresh: float = 1e-3, max_dets: int | None = None) -> SoftNMSResult:
    """Soft-NMS, class by class; every class runs at once (one pick per class per round).

    Within a class: pick the alive box with the highest current score (ties: lowest index),
    keep it with that score, multiply the score of every other alive box of the class by
    ``exp(-IoU^2 / sigma)`` (``method="gaussian"``) or by ``1 - IoU`` if ``IoU > iou``
    (``"linear"``; ``iou`` is unused by the Gaussian), drop the boxes now below
    ``score_thresh``; repeat until none is alive. Boxes that start below ``score_thresh``
    are dropped at once. ``max_dets`` keeps the best ones after the decay.
    """
    if method not in ("gaussian", "linear"):
        raise InputError(f"soft-NMS method must be 'gaussian' or 'linear', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise InputError(f"soft-NMS sigma must be > 0, got {sigma}")
    D = len(boxes)
    boxes = boxes.float()
    out = scores.detach().clone().float()  # [D] current scores
    kept = torch.zeros(D, dtype=torch.bool, device=boxes.device)
    if D:
        _, cls = torch.unique(labels, return_inverse=True)  # [D] class index 0..C-1
        C = int(cls.max()) + 1
        index = torch.arange(D, device=boxes.device)
        alive = out >= score_thresh  # [D]
        while alive.any():
            live = torch.where(alive, out, torch.full_like(out, -torch.inf))  # [D]
            top = torch.full((C,), -torch.inf, device=out.device).scatter_reduce(
                0, cls, live, "amax")  # [C] best alive score per class
            is_top = alive & (live == top[cls])  # [D]
            pick = torch.full((C,), D, device=out.device).scatter_reduce(
                0, cls[is_top], index[is_top], "amin")  # [C] picked box (D: none left)
            picked = pick[pick < D]
            kept[picked] = True
            alive[picked] = False
            mine = pick[cls]  # [D] the box picked in each box's class this round
            j = torch.nonzero(alive & (mine < D)).flatten()  # alive boxes whose class picked
            overlap = _pair_iou(boxes[j], boxes[mine[j]])  # [J]
            if method == "gaussian":
                decay = torch.exp(-(overlap * overlap) / sigma)
            else:
                decay = torch.where(overlap > iou, 1.0 - overlap, torch.ones_like(overlap))
            out[j] = out[j] * decay
            alive[j] = out[j] >= score_thresh
    keep = torch.nonzero(kept).flatten()  # [K] ascending index
    order = torch.sort(out[keep], descending=True, stable=True).indices
    keep = keep[order]
    if max_dets is not None:
        keep = keep[:max_dets]
    return SoftNMSResult(keep, out[keep])

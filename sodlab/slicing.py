"""Sliced inference: run a detector on overlapping tiles, map boxes back, merge across tiles.

The inference-time cousin of SNIPER that SAHI made popular: small objects become larger
relative to the network's input when the image is cut into tiles (optionally up-sampled),
and a full-image pass can be added for the large ones (Akyon et al. 2022, "Slicing aided
hyper inference and fine-tuning for small object detection"). Taught in notebook
05_snip_sniper. ``merge_boxes(method="merge")`` gates which claimed boxes may enlarge a kept
box (score and size consistency), so a face does not grow into a weak box around it.

``predict_fn(image [3, h, w]) -> {"boxes": [n, 4] xyxy in that image's pixels, "scores": [n],
"labels": [n]}`` is any detector; this module never imports one.

Dimension legend: T tiles, D detections, K kept detections, G boxes merged into one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

from sodlab.errors import InputError
from sodlab.tiling import flush_starts

Detections = dict[str, torch.Tensor]


def tile_grid(height: int, width: int, *, tile: int, overlap: float = 0.25) -> torch.Tensor:
    """Tiles of side ``tile`` overlapping by ``overlap`` (a share of the side) covering the image.

    The last row and column sit flush with the far edge; an image smaller than a tile is one
    tile the size of the image. Returns ``[T, 4]`` xyxy.
    """
    if tile <= 0:
        raise InputError(f"tile size must be > 0, got {tile}")
    if not 0 <= overlap < 1:
        raise InputError(f"tile overlap must be in [0, 1), got {overlap}")
    step = max(1, int(round(tile * (1 - overlap))))

    return torch.tensor([[x, y, min(x + tile, width), min(y + tile, height)]
                         for y in flush_starts(height, tile, step)
                         for x in flush_starts(width, tile, step)], dtype=torch.float32)


def _overlap(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """``[A, B]`` IoU, or intersection over the smaller box (IoS: a clipped part of an object
    at a tile border has IoS 1 with the whole object, but a low IoU)."""
    if metric == "iou":
        return torchvision.ops.box_iou(a, b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)  # [A, B]
    area_a = torchvision.ops.box_area(a)[:, None]
    area_b = torchvision.ops.box_area(b)[None]
    return inter / torch.min(area_a, area_b).clamp(min=1e-12)


def _may_grow(boxes: torch.Tensor, scores: torch.Tensor, score_ratio: float, min_score: float,
              area_ratio: float) -> torch.Tensor:
    """``[D, D]`` bool: may box j enlarge the kept box i (``merge_boxes``' gate; i, i: True)."""
    area = torchvision.ops.box_area(boxes)  # [D]
    big = torch.max(area[:, None], area[None])  # [D, D]
    small = torch.min(area[:, None], area[None])  # [D, D]
    floor = torch.clamp(score_ratio * scores, min=min_score)  # [D]
    grows = (scores[None] >= floor[:, None]) & (big <= area_ratio * small)  # [D, D]
    grows.fill_diagonal_(True)
    return grows


def merge_boxes(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, *,
                method: str = "nms", metric: str = "ios", thresh: float = 0.5,
                grow_score_ratio: float = 0.5, grow_min_score: float = 0.0,
                grow_area_ratio: float = 4.0) -> Detections:
    """Merge detections from several tiles/passes, class by class, greedily by score.

    Each detection, from the highest score down, claims the not-yet-claimed detections of its
    class that overlap it by ``thresh`` or more (``metric``: ``iou``, or ``ios`` as SAHI does).
    ``nms`` keeps the claiming box; ``merge`` replaces it by the enclosing box of itself and
    the claimed boxes that pass a gate (SAHI's greedy non-maximum merging), so a whole
    object beats its clipped parts.

    The gate (``merge`` only): a claimed box j may enlarge the kept box i when
    ``score_j >= max(grow_min_score, grow_score_ratio * score_i)`` and the two areas are
    within ``grow_area_ratio`` of each other (``max(a_i, a_j) <= grow_area_ratio *
    min(a_i, a_j)``). Claimed boxes that fail it are still suppressed; they only do not
    enlarge. Without the gate a confident small face claims every weak large box that
    contains it (IoS 1) and grows into it. Defaults: half the kept score, no absolute
    floor, areas within 4x (a tile's fragment holding a quarter of its object or more
    still merges with the whole; a face inside a box 5x its area does not grow into it).
    ``grow_score_ratio=0, grow_min_score=0, grow_area_ratio=inf`` is the ungated merge.

    ``boxes [D, 4]`` xyxy, ``scores [D]``, ``labels [D]``; returns the kept ``boxes [K, 4]``,
    ``scores [K]``, ``labels [K]`` in descending score order.
    """
    if method not in ("nms", "merge"):
        raise InputError(f"merge method must be 'nms' or 'merge', got {method!r}")
    if metric not in ("iou", "ios"):
        raise InputError(f"overlap metric must be 'iou' or 'ios', got {metric!r}")
    if grow_area_ratio < 1:
        raise InputError(f"grow_area_ratio must be >= 1, got {grow_area_ratio}")
    order = torch.argsort(scores, descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    ov = _overlap(boxes, boxes, metric) >= thresh  # [D, D]
    ov &= labels[:, None] == labels[None]
    # A box always claims itself, also when it has no area (a box clipped to a tile's edge):
    # its overlap with itself is then 0, and it would claim nothing, not even its own group.
    ov.fill_diagonal_(True)
    if method == "merge":
        grows = _may_grow(boxes, scores, grow_score_ratio, grow_min_score, grow_area_ratio)
    claimed = torch.zeros(len(boxes), dtype=torch.bool)
    keep, out_boxes = [], []
    for i in range(len(boxes)):
        if claimed[i]:
            continue
        group = ov[i] & ~claimed  # [D]
        claimed |= group
        keep.append(i)
        if method == "merge":
            g = boxes[group & grows[i]]  # [G, 4]
            out_boxes.append(torch.cat([g[:, :2].min(0).values, g[:, 2:].max(0).values]))
        else:
            out_boxes.append(boxes[i])
    idx = torch.tensor(keep, dtype=torch.long)
    merged = torch.stack(out_boxes) if out_boxes else torch.zeros(0, 4)
    return {"boxes": merged, "scores": scores[idx], "labels": labels[idx]}


def sliced_predict(predict_fn: Callable[[torch.Tensor], Detections], image: torch.Tensor, *,
                   tile: int, overlap: float = 0.25, upscale: float = 1.0,
                   full_image: bool = True, method: str = "merge", metric: str = "ios",
                   thresh: float = 0.5, grow_score_ratio: float = 0.5,
                   grow_min_score: float = 0.0, grow_area_ratio: float = 4.0) -> Detections:
    """Detect on overlapping tiles (each up-sampled by ``upscale``) and merge with the full pass.

    ``image [3, H, W]``; returned boxes are in its pixels. ``method``, ``metric``,
    ``thresh`` and the ``grow_*`` gate are ``merge_boxes``'.
    """
    _, H, W = image.shape
    all_b, all_s, all_l = [], [], []
    for x1, y1, x2, y2 in tile_grid(H, W, tile=tile, overlap=overlap).int().tolist():
        crop = image[:, y1:y2, x1:x2]  # [3, th, tw]
        if upscale != 1.0:
            crop = F.interpolate(crop[None], scale_factor=upscale, mode="bilinear",
                                 align_corners=False)[0]
        det = predict_fn(crop)
        b = det["boxes"] / upscale + torch.tensor([x1, y1, x1, y1], dtype=torch.float32)
        all_b.append(b)
        all_s.append(det["scores"])
        all_l.append(det["labels"])
    if full_image:
        det = predict_fn(image)
        all_b.append(det["boxes"])
        all_s.append(det["scores"])
        all_l.append(det["labels"])
    boxes = torch.cat(all_b) if all_b else torch.zeros(0, 4)
    scores = torch.cat(all_s) if all_s else torch.zeros(0)
    labels = torch.cat(all_l).long() if all_l else torch.zeros(0, dtype=torch.long)
    return merge_boxes(boxes, scores, labels, method=method, metric=metric, thresh=thresh,
                       grow_score_ratio=grow_score_ratio, grow_min_score=grow_min_score,
                       grow_area_ratio=grow_area_ratio)

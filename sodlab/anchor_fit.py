"""Anchors fitted to a data set's own objects, the best possible recall before and after, and
NWD / DotD thresholds calibrated to IoU's matching on the same anchors.

Layer L3 (reads ``sodlab.detector`` configs; below it only L0/L1). Used by ``sodlab anchors
fit``. Follows YOLOv2's dimension clusters (Redmon & Farhadi 2017, "YOLO9000": k-means on
box widths and heights with the distance 1 - IoU), MMDetection's ``optimize_anchors``
(``YOLOKMeansAnchorOptimizer``: the same clustering on boxes resized to the input shape)
and YOLOv5's autoanchor (Jocher et al., ``check_anchors``: *best possible recall*, the share
of training boxes the anchors can match at all). The code here is written from those
descriptions, not copied.

Best possible recall (BPR): a trained (non-crowd) box counts when the preset's own anchors
(``sodlab.anchors``, ``level_specs``) and matcher (``sodlab.matching.match_anchors`` with
the preset's ``pos_iou`` / ``neg_iou``) give it at least one positive anchor: an anchor with
IoU >= ``pos_iou`` in the threshold stage or, for presets with ``compensate`` (S3FD), one it
takes in the scale-compensation stage (IoU > 0.1, not held by another box). As in training,
an anchor above the threshold for two boxes goes to the one it overlaps more, so a box
whose anchors all go to a neighbour does not count. Low-quality matches (every box also
takes its best anchor, ``low_quality``) are left out: they rescue any box whatever the
anchors' fit, so with them every recall would be 100 %. YOLOv5 counts a box when some
anchor's width and height are within 4x of its own; the rule here is the one training
uses, for IoU matching only (``matcher`` other than ``"iou"`` is refused). Boxes are taken
as training sees them: each image resized so its longer side is ``input_size``
(``sodlab.data.transforms.ResizeLongest``, which upscales too; other recipes' rescaling is
not modelled) and anchors tiled over the image padded to a multiple of 32
(``sodlab.data.dataset.collate``). Recall is given per size bucket of ``sodlab.boxes``
(``in_bucket``: pycocotools' inclusive ranges, so ``small`` includes ``tiny``) on each
box's area in its own image (the annotation's ``area``, else w x h), as ``sodlab eval``
buckets the ground truth. ``fit_preset`` also gives the threshold stage alone for
compensating presets (where compensation takes nearly every box) and the anchors per image.

Speed (3,000 images in a few seconds): only the anchors within reach of a box go to the
matcher (``near_anchor_index``: cells whose anchors' extent can overlap the box, on the
levels where some anchor shape could reach the lowest IoU that counts even when aligned
with the box). An anchor left out could not be positive or compensating for any box, so
every box's outcome is the one the matcher gives with all anchors. The per-image tensors
are small, so the matcher runs on one thread.

Fitting: ``fit_anchors`` clusters the (w, h) of the trained boxes at the input size; boxes
and centres are aligned at one corner, so IoU = min(w) min(h) / union. Seeded k-means++
initialisation (Arthur & Vassilvitskii 2007) with the same distance, then Lloyd iterations
(each centre the mean of its boxes; an emptied cluster restarts at the box farthest from
its centre) until no box changes cluster. ``k`` defaults to the preset's anchor shapes per
position (``default_k``: sizes over all levels x ratios). ``anchor_overrides`` turns the k
centres into the config fields the detector reads, in their units: a centre (w, h) is an
anchor of size sqrt(w h) and ratio h / w (``sodlab.anchors``). Each centre goes to the level
whose preset anchors are nearest in log size (so it keeps the preset's size-to-stride
proportion); a level no centre lands on keeps its preset sizes, so the level count never
changes. ``anchor_sizes`` are in the preset's paper units (px / ``anchor_scale``, the
factor the detector multiplies by). ``anchor_ratios`` is shared by every level: the
preset's number R of ratios, the centres' ratios sorted and split into R groups of
near-equal size, each group's geometric mean; neighbouring ratios within 1.25x of each
other (two shapes of one area with IoU > 0.8) merge into one. Presets with densified
anchors (FaceBoxes) also get ``anchor_densify``: a fitted size s on stride t is tiled
n = round(d t / s) times (at least once), d the preset's lowest tiling density, as
FaceBoxes' rule does. k-means minimises the shape mismatch, not BPR on a grid of anchor
centres: with few sizes, small fitted anchors on a coarse stride can match fewer boxes
than the preset's, which is why the recall is measured after fitting rather than assumed.

Threshold calibration (``calibrate_thresholds``): NWD and DotD (``sodlab.matching.
similarity``) have thresholds of their own (``nwd_pos`` / ``nwd_neg`` / ``nwd_min``, the
same for ``dotd``); the config's defaults are the NWD paper's RPN thresholds on AI-TOD
(0.7 / 0.3), which on other anchors and data make many times more anchors positive than
IoU does, so a comparison of matchers at those values measures how many anchors each
makes positive more than which. The rule here maps the config's IoU thresholds onto each
measure's scale on the training boxes at the input size (resized and tiled as for the
recall above, every anchor of the padded image) and ``cfg``'s own matching rule: the
positive threshold is the one at which the positive anchors per trained object (the
threshold stage with the low-quality rescue where ``low_quality`` is on: each object's
best anchors, all of them on a tie) equal IoU's at ``pos_iou``; the negative threshold the
one at which the anchors left ignored (best similarity between the two thresholds, not
rescued) per object equal IoU's between ``neg_iou`` and ``pos_iou``; and, for presets that
compensate (S3FD), the ``min`` threshold the one at which the (object, anchor) pairs above
it per object, the compensation's candidates, equal IoU's above 0.1. Positives are counted
without the compensation stage, which tops every object up to the same N whatever the
measure. Each threshold is found by bisection on a grid of ``THRESHOLD_STEPS`` steps of [0,
1] (counts of every anchor's best similarity binned on the grid, so one pass per measure
serves every threshold), as the grid step whose count is nearest the target; a second pass
then counts exactly at the thresholds found. Where no threshold reaches the target (the
rescue alone gives more positives, as DotD's does: the anchors of every ratio at the
nearest centre tie), the positive threshold is 1. Counts are reported per size bucket on
sqrt(w h) at the input size (``CALIBRATION_EDGES``: AI-TOD's ranges, half-open).

Dimension legend: I images, N boxes of one image, M boxes of the split, k clusters,
A anchors of an image (A' those near its boxes), L levels (size buckets in the
calibration), S anchor shapes of a level, R the calibration's threshold steps.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sodlab.anchors import LevelSpec, all_anchors, cell_anchors, level_shape, tiling_density
from sodlab.boxes import AREA_RANGES, BUCKETS, in_bucket, xywh_to_xyxy
from sodlab.data.coco import annotations_by_image, images_dir, load_coco
from sodlab.data.dataset import PAD_MULTIPLE
from sodlab.detector import (
    DetectorConfig,
    level_specs,
    make_config,
    scaled_anchor_sizes,
)
from sodlab.errors import InputError
from sodlab.matching import match_anchors, threshold_stage_parts

RATIO_MERGE = 1.25  # ratios closer than this factor merge (one shape would do for both)
BPR_BUCKETS = (*BUCKETS, "all")
MIN_IOU = 0.1  # S3FD compensation takes anchors above this IoU (match_anchors' min_iou)


@dataclass
class TrainingBoxes:
    """The trained (non-crowd, positive-size) boxes of one split, image by image, in each
    image's own pixels: ``boxes`` I x ``[N, 4]`` xyxy, ``areas`` I x ``[N]`` (bucket areas),
    ``image_size`` I x ``(h, w)``; how many crowd and zero-size boxes were left out, and the
    split's number of categories."""

    boxes: list[np.ndarray]
    areas: list[np.ndarray]
    image_size: list[tuple[int, int]]
    crowd: int = 0
    degenerate: int = 0
    num_classes: int = 1

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def _image_hw(info: dict, folder) -> tuple[int, int]:
    """``(h, w)`` of an image record: its ``height``/``width``, else the file's header."""
    if "height" in info and "width" in info:
        return int(info["height"]), int(info["width"])
    from PIL import Image

    path = folder / str(info.get("file_name"))
    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except OSError as exc:
        raise InputError(f"{path}: no width/height in the annotations and the image cannot "
                         f"be read ({exc})") from None


def load_training_boxes(split_dir: str | os.PathLike) -> TrainingBoxes:
    """The trained boxes of a split folder (``annotations.json`` + ``images/``)."""
    coco = load_coco(split_dir)
    by_image = annotations_by_image(coco)
    folder = images_dir(split_dir)
    out = TrainingBoxes([], [], [], num_classes=max(1, len(coco["categories"])))
    for info in coco["images"]:
        anns = by_image.get(int(info["id"]), [])
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)  # [N]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)  # [N, 4]
        area = np.array([a["area"] if a.get("area") is not None else a["bbox"][2] * a["bbox"][3]
                         for a in anns], dtype=np.float64)  # [N]
        ok = ~crowd & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)  # [N]
        out.crowd += int(crowd.sum())
        out.degenerate += int((~crowd & ~ok).sum())
        out.boxes.append(xywh_to_xyxy(xywh[ok]))
        out.areas.append(area[ok])
        out.image_size.append(_image_hw(info, folder))
    return out


def resized_boxes(boxes: Sequence[np.ndarray], image_size: Sequence[tuple[int, int]],
                  input_size: int) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Boxes (I x ``[N, 4]``) and ``(h, w)`` sizes after ``ResizeLongest(input_size)``: the
    longer side becomes ``input_size``, each axis scales by its rounded new size's ratio (in
    float32, as the transform computes it)."""
    out_boxes, out_hw = [], []
    for b, (h, w) in zip(boxes, image_size):
        b = np.asarray(b, dtype=np.float32).reshape(-1, 4)  # [N, 4]
        s = input_size / max(h, w)
        if s != 1.0:
            nh, nw = max(1, round(h * s)), max(1, round(w * s))
            b = b * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)  # [N, 4]
            h, w = nh, nw
        out_boxes.append(b)
        out_hw.append((int(h), int(w)))
    return out_boxes, out_hw


@functools.lru_cache(maxsize=64)
def _reach(spec: LevelSpec) -> tuple[float, float, np.ndarray]:
    """How far a cell's anchors reach from its centre along x and y (px), and their distinct
    shapes (w, h) ``[S, 2]``."""
    base = cell_anchors(spec.sizes, spec.ratios, spec.densify, spec.stride)  # [A, 4]
    shapes = np.unique((base[:, 2:] - base[:, :2]).numpy().astype(np.float64), axis=0)  # [S, 2]
    return float(base[:, 0::2].abs().max()), float(base[:, 1::2].abs().max()), shapes


def _cell_range(lo: np.ndarray, hi: np.ndarray, reach: float, spec: LevelSpec,
                cells: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last cell (clipped to ``[0, cells]``) whose anchors can overlap
    the spans ``[lo, hi)``, one cell of margin either side. Both ``[N]``."""
    first = np.floor((lo - reach) / spec.stride - spec.offset) - 1  # [N]
    last = np.ceil((hi + reach) / spec.stride - spec.offset) + 1  # [N]
    return np.clip(first, 0, cells).astype(np.int64), np.clip(last + 1, 0, cells).astype(np.int64)


def near_anchor_index(levels: Sequence[LevelSpec], image_hw: tuple[int, int],
                      boxes: np.ndarray, *, min_iou: float = 0.0) -> np.ndarray:
    """Indices into ``all_anchors(levels, image_hw)`` of every anchor whose cell lies within
    reach of a box of ``boxes [N, 4]``: a superset of the anchors that overlap a box with
    IoU >= ``min_iou``. A box opens no cell on a level where no anchor shape could reach
    ``min_iou`` with it even when aligned with it (``_wh_iou``, an upper bound). ``[A']``.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).astype(np.float64)  # [N, 2]
    out, start = [], 0
    for spec in levels:
        H, W = level_shape(spec, image_hw)
        A, (rx, ry, shapes) = spec.num_anchors, _reach(spec)
        j0, j1 = _cell_range(boxes[:, 0], boxes[:, 2], rx, spec, W)  # [N] columns
        i0, i1 = _cell_range(boxes[:, 1], boxes[:, 3], ry, spec, H)  # [N] rows
        fits = _wh_iou(wh, shapes).max(1) >= min_iou - 1e-6 if min_iou > 0 else True  # [N]
        keep = (j0 < j1) & (i0 < i1) & fits  # [N] boxes with a cell in reach
        diff = np.zeros((H + 1, W + 1), dtype=np.int32)  # 2-D difference array
        for rows, cols, sign in ((i0, j0, 1), (i0, j1, -1), (i1, j0, -1), (i1, j1, 1)):
            np.add.at(diff, (rows[keep], cols[keep]), sign)
        cells = np.flatnonzero(diff.cumsum(0).cumsum(1)[:H, :W] > 0)  # [C] in row-major order
        out.append((cells[:, None] * A + np.arange(A)).ravel() + start)  # [C * A]
        start += H * W * A
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _check_iou_matcher(cfg: DetectorConfig) -> None:
    matcher = getattr(cfg, "matcher", "iou")
    if matcher != "iou":
        raise InputError(f"best possible recall is measured for IoU matching; this config "
                         f"has matcher={matcher!r}")


def _padded(side: int) -> int:
    """A side padded as ``collate`` pads a batch: up to a multiple of ``PAD_MULTIPLE``."""
    return math.ceil(side / PAD_MULTIPLE) * PAD_MULTIPLE


def _box_hits(cfg: DetectorConfig, boxes: list[np.ndarray],
              hws: list[tuple[int, int]]) -> np.ndarray:
    """Whether each box (all images, in order) gets a positive anchor. ``[M]`` bool.

    Runs on one thread: the per-image tensors are small, and intra-op threads cost far more
    than they save on them (tens of times more on a machine busy with other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _box_hits_serial(cfg, boxes, hws)
    finally:
        torch.set_num_threads(threads)


def _box_hits_serial(cfg: DetectorConfig, boxes: list[np.ndarray],
                     hws: list[tuple[int, int]]) -> np.ndarray:
    levels = level_specs(cfg)
    reach = min(cfg.pos_iou, MIN_IOU) if cfg.compensate else cfg.pos_iou  # lowest IoU that counts
    cache: dict[tuple[int, int], torch.Tensor] = {}
    hits = []
    for b, (h, w) in zip(boxes, hws):
        if len(b) == 0:
            continue
        padded = (_padded(h), _padded(w))
        if padded not in cache:
            cache[padded] = all_anchors(levels, padded)  # [A, 4]
        idx = torch.from_numpy(near_anchor_index(levels, padded, b, min_iou=reach))  # [A']
        m = match_anchors(cache[padded][idx], torch.as_tensor(b, dtype=torch.float32),
                          pos_iou=cfg.pos_iou, neg_iou=cfg.neg_iou, allow_low_quality=False,
                          compensate=cfg.compensate, min_iou=MIN_IOU)  # [A']
        hits.append(torch.bincount(m[m >= 0], minlength=len(b)).numpy() > 0)  # [N]
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def recall_table(hit: np.ndarray, area: np.ndarray) -> dict[str, dict]:
    """Per bucket (``BPR_BUCKETS``): boxes, boxes matched and their share (None if no box)."""
    out = {}
    for name in BPR_BUCKETS:
        sel = in_bucket(area, name) if name in AREA_RANGES else np.ones(len(area), dtype=bool)
        n, m = int(sel.sum()), int(hit[sel].sum())
        out[name] = {"boxes": n, "matched": m, "recall": m / n if n else None}
    return out


def best_possible_recall(cfg: DetectorConfig, boxes: Sequence[np.ndarray], *,
                         image_size: Sequence[tuple[int, int]],
                         areas: Sequence[np.ndarray] | None = None) -> dict[str, dict]:
    """Best possible recall of ``cfg``'s anchors per size bucket (module doc).

    ``boxes``: I x ``[N, 4]`` xyxy trained boxes in each image's own pixels; ``image_size``:
    I x ``(h, w)``; ``areas``: I x ``[N]`` bucket areas (default w x h). Returns
    ``recall_table``: ``{bucket: {"boxes", "matched", "recall"}}``.
    """
    _check_iou_matcher(cfg)
    if len(boxes) != len(image_size) or (areas is not None and len(areas) != len(boxes)):
        raise ValueError("boxes, image_size (and areas) need one entry per image")
    resized, hws = resized_boxes(boxes, image_size, cfg.input_size)
    hit = _box_hits(cfg, resized, hws)  # [M]
    if areas is None:
        areas = [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in
                 (np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes)]
    area = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in areas]) \
        if len(areas) else np.zeros(0)  # [M]
    return recall_table(hit, area)


def _wh_iou(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """IoU of boxes ``wh [M, 2]`` and centres ``[k, 2]`` aligned at one corner. ``[M, k]``."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * \
        np.minimum(wh[:, None, 1], centres[None, :, 1])  # [M, k]
    return inter / (wh.prod(1)[:, None] + centres.prod(1)[None] - inter)


def _kmeans_pp(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with the distance 1 - IoU: each next centre is a box drawn with
    probability proportional to its squared distance to the nearest centre so far. ``[k, 2]``."""
    centres = [wh[int(rng.integers(len(wh)))]]
    dist = 1.0 - _wh_iou(wh, centres[0][None])[:, 0]  # [M]
    for _ in range(1, k):
        p = dist ** 2  # [M]
        centres.append(wh[int(rng.choice(len(wh), p=p / p.sum()))])
        dist = np.minimum(dist, 1.0 - _wh_iou(wh, centres[-1][None])[:, 0])
    return np.stack(centres)


def fit_anchors(boxes_wh, k: int, *, iters: int = 300, seed: int = 0) -> np.ndarray:
    """k anchor shapes for boxes ``boxes_wh [M, 2]`` (w, h): k-means with 1 - IoU (module
    doc). Deterministic for a seed. Returns the centres ``[k, 2]`` sorted by area."""
    wh = np.asarray(boxes_wh, dtype=np.float64).reshape(-1, 2)  # [M, 2]
    if int(k) != k or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k}")
    if iters < 1:
        raise InputError(f"iters must be >= 1, got {iters}")
    if not (np.isfinite(wh).all() and (wh > 0).all()):
        raise InputError("box widths and heights must be finite and > 0")
    distinct = len(np.unique(wh, axis=0))
    if distinct < k:
        raise InputError(f"{distinct} distinct box shapes cannot make {k} clusters; use "
                         f"k <= {distinct}")
    k = int(k)
    centres = _kmeans_pp(wh, k, np.random.default_rng(seed))  # [k, 2]
    assign = None
    for _ in range(iters):
        new = _wh_iou(wh, centres).argmax(1)  # [M] cluster of each box
        if assign is not None and (new == assign).all():
            break
        assign = new
        count = np.bincount(assign, minlength=k)  # [k]
        for d in range(2):
            sums = np.bincount(assign, weights=wh[:, d], minlength=k)  # [k]
            centres[:, d] = np.where(count > 0, sums / np.maximum(count, 1), centres[:, d])
        for j in np.flatnonzero(count == 0):  # an emptied cluster restarts at the worst box
            worst = int((1.0 - _wh_iou(wh, centres).max(1)).argmax())
            centres[j] = wh[worst]
    return centres[np.argsort(centres.prod(1), kind="stable")]


def _fitted_ratios(centres: np.ndarray, count: int) -> list[float]:
    """``count`` ratios h / w for the centres: sorted, split in near-equal groups, each
    group's geometric mean; groups within ``RATIO_MERGE`` of each other merge."""
    logr = np.sort(np.log(centres[:, 1] / centres[:, 0]))  # [k]
    groups: list[np.ndarray] = []
    for g in np.array_split(logr, max(1, min(count, len(logr)))):
        if groups and g.mean() - groups[-1].mean() < math.log(RATIO_MERGE):
            groups[-1] = np.concatenate([groups[-1], g])
        else:
            groups.append(g)
    return [round(float(np.exp(g.mean())), 3) for g in groups]


def _densify(cfg: DetectorConfig, sizes_px: list[list[float]],
             fitted: list[bool]) -> list[list[int]] | None:
    """``anchor_densify`` for the new sizes: preset factors on kept levels, FaceBoxes' rule
    (density >= the preset's lowest) on fitted ones; None for presets without densify."""
    if cfg.anchor_densify is None:
        return None
    d = min(min(tiling_density(spec)) for spec in level_specs(cfg))
    return [[max(1, round(d * t / s)) for s in sizes] if new else list(old)
            for t, sizes, new, old in zip(cfg.strides, sizes_px, fitted, cfg.anchor_densify)]


def anchor_overrides(cfg: DetectorConfig, centres: np.ndarray) -> dict:
    """The config fields (``anchor_sizes`` in paper units, ``anchor_ratios``, and
    ``anchor_densify`` where the preset densifies) that put anchors at the fitted
    ``centres [k, 2]`` (w, h in input px) on ``cfg``'s levels (module doc)."""
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)  # [k, 2]
    size = np.sqrt(centres.prod(1))  # [k] px
    ref = np.array([math.exp(np.mean(np.log(s))) for s in scaled_anchor_sizes(cfg)])  # [L]
    level = np.abs(np.log(size)[:, None] - np.log(ref)[None]).argmin(1)  # [k]
    sizes_px, paper, fitted = [], [], []
    for i, old in enumerate(cfg.anchor_sizes):
        mine = sorted({round(float(s), 2) for s in size[level == i]})
        fitted.append(bool(mine))
        sizes_px.append(mine or [float(v) * cfg.anchor_scale for v in old])
        paper.append([round(s / cfg.anchor_scale, 2) for s in mine] if mine else
                     [float(v) for v in old])
    out = {"anchor_sizes": paper,
           "anchor_ratios": _fitted_ratios(centres, len(cfg.anchor_ratios))}
    dens = _densify(cfg, sizes_px, fitted)
    if dens is not None:
        out["anchor_densify"] = dens
    return out


def override_args(overrides: dict) -> list[str]:
    """``key=value`` strings (compact JSON values) that ``make_config`` and ``--set`` read."""
    return [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items()]


def default_k(cfg: DetectorConfig) -> int:
    """The preset's anchor shapes per position: its sizes over all levels x its ratios."""
    return sum(len(sizes) for sizes in cfg.anchor_sizes) * len(cfg.anchor_ratios)


def anchors_per_image(cfg: DetectorConfig) -> int:
    """Anchors of one square ``input_size`` image (padded as ``collate`` pads it): the
    matcher's and the head's workload."""
    side = _padded(cfg.input_size)
    return int(sum(spec.num_anchors * math.prod(level_shape(spec, (side, side)))
                   for spec in level_specs(cfg)))


def _recalls(before: DetectorConfig, after: DetectorConfig, data: TrainingBoxes) -> dict:
    """``before`` / ``after`` recall tables; for S3FD-compensating configs also
    ``before_threshold`` / ``after_threshold``, the threshold stage alone."""
    runs = [("before", before), ("after", after)]
    if before.compensate or after.compensate:
        runs += [(f"{name}_threshold", dataclasses.replace(c, compensate=False))
                 for name, c in runs]
    return {name: best_possible_recall(c, data.boxes, image_size=data.image_size,
                                       areas=data.areas) for name, c in runs}


def fit_preset(preset: str, data: TrainingBoxes, *, k: int | None = None, seed: int = 0,
               iters: int = 300, base_overrides: Sequence[str] = ()) -> dict:
    """Fit anchors for ``preset`` (with ``base_overrides``) to ``data``; best possible recall
    before and after. ``k`` defaults to ``default_k``.

    Returns ``preset``, ``k``, ``seed``, ``input_size``, ``images``, ``boxes``, ``crowd``,
    ``degenerate``, ``rule``, ``centres_wh`` (input px), ``overrides`` (the complete
    ``key=value`` list, the base ones first), ``anchors`` (``anchors_per_image`` before and
    after) and the ``recall_table``s of ``_recalls``.
    """
    base = list(base_overrides)
    cfg = make_config(preset, num_classes=data.num_classes, overrides=base)
    _check_iou_matcher(cfg)
    k = default_k(cfg) if k is None else k
    if int(k) != k or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k}")
    if data.num_boxes == 0:
        raise InputError("no trained boxes to fit anchors to (every box is crowd or empty)")
    resized, _ = resized_boxes(data.boxes, data.image_size, cfg.input_size)
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in resized])  # [M, 2]
    centres = fit_anchors(wh, k, iters=iters, seed=seed)  # [k, 2]
    fitted = anchor_overrides(cfg, centres)
    kept = [o for o in base if o.split("=", 1)[0].strip() not in fitted]
    overrides = kept + override_args(fitted)
    after = make_config(preset, num_classes=data.num_classes, overrides=overrides)
    rule = f"IoU >= {cfg.pos_iou:g}" + (f", then S3FD compensation (IoU > {MIN_IOU:g})"
                                        if cfg.compensate else "")
    return {"preset": preset, "k": int(k), "seed": int(seed), "input_size": cfg.input_size,
            "images": len(data.boxes), "boxes": data.num_boxes, "crowd": data.crowd,
            "degenerate": data.degenerate, "rule": rule,
            "centres_wh": [[round(float(w), 2), round(float(h), 2)] for w, h in centres],
            "overrides": overrides,
            "anchors": {"before": anchors_per_image(cfg), "after": anchors_per_image(after)},
            **_recalls(cfg, after, data)}


# --------------------------------------------------------------------------- threshold calibration
CALIBRATED = ("nwd", "dotd")  # the measures whose thresholds ``calibrate_thresholds`` maps
CALIBRATION_EDGES = (0.0, 8.0, 16.0, 32.0, math.inf)  # sqrt(w h) in input px: AI-TOD's
CALIBRATION_BUCKETS = ("verytiny", "tiny", "small", "medium")
THRESHOLD_STEPS = 10_000  # the calibration's threshold grid: multiples of 1 / THRESHOLD_STEPS


@dataclass
class _Image:
    """One image as the matcher sees it: its anchors ``[A, 4]`` (padded image), trained boxes
    ``[N, 4]`` at the input size and each box's size bucket ``[N]``."""

    anchors: torch.Tensor
    boxes: torch.Tensor
    bucket: np.ndarray


@dataclass
class _Scan:
    """What one pass of one measure over the images counted: anchors the low-quality rule
    takes (``rescued``), the other anchors by their best similarity on the threshold grid
    (``hist [R + 1]``, bin k = floor(best R)), the (object, anchor) pairs likewise
    (``pairs [R + 1]``, for S3FD's compensation, else None), the pairs above ``min_t``
    (``above_min``), and per ``(pos, neg)`` setting the positive and ignored anchors per
    bucket (``counts[(pos, neg)] = (positives [L], ignored [L])``)."""

    rescued: int
    hist: np.ndarray
    pairs: np.ndarray | None
    above_min: int
    counts: dict


def _calibration_images(cfg: DetectorConfig, boxes: Sequence[np.ndarray],
                        image_size: Sequence[tuple[int, int]], max_images: int | None,
                        edges: Sequence[float]) -> list[_Image]:
    """The images with a trained box, resized as training resizes them; ``max_images``
    evenly spaced ones when there are more (every one for None)."""
    if len(boxes) != len(image_size):
        raise InputError("boxes and image_size need one entry per image")
    if max_images is not None and max_images < 1:
        raise InputError(f"max_images must be >= 1 or None, got {max_images}")
    keep = [i for i, b in enumerate(boxes) if len(np.asarray(b).reshape(-1, 4))]
    if max_images is not None and len(keep) > max_images:
        keep = [keep[int(j)] for j in np.unique(np.linspace(0, len(keep) - 1, max_images).round())]
    resized, hws = resized_boxes([boxes[i] for i in keep], [image_size[i] for i in keep],
                                 cfg.input_size)
    levels, grids, out = level_specs(cfg), {}, []
    for b, (h, w) in zip(resized, hws):
        padded = (_padded(h), _padded(w))
        if padded not in grids:
            grids[padded] = all_anchors(levels, padded)  # [A, 4]
        size = np.sqrt(np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1))  # [N]
        bucket = np.searchsorted(np.asarray(edges[1:-1]), size, side="right")  # [N]
        out.append(_Image(grids[padded], torch.from_numpy(b), bucket))
    if not out:
        raise InputError("no trained boxes to calibrate on (every box is crowd or empty)")
    return out


def _grid_bins(values: torch.Tensor) -> torch.Tensor:
    """Counts of ``values`` in [0, 1] by threshold-grid bin floor(v R). ``[R + 1]`` int64."""
    k = (values.double() * THRESHOLD_STEPS).floor().long().clamp_(0, THRESHOLD_STEPS)
    return torch.bincount(k.flatten(), minlength=THRESHOLD_STEPS + 1)


def _scan(images: list[_Image], kind: str, constant: float | None, low_quality: bool,
          settings: Sequence[tuple[float, float]], *, grid: bool, pairs: bool,
          min_t: float, nb: int) -> _Scan:
    """One pass of measure ``kind`` over ``images`` (``_Scan``); ``grid`` / ``pairs`` turn
    the histograms on. Exact comparisons for ``settings`` and ``min_t``, as the matcher's."""
    scan = _Scan(0, np.zeros(THRESHOLD_STEPS + 1, np.int64),
                 np.zeros(THRESHOLD_STEPS + 1, np.int64) if pairs else None, 0,
                 {s: (np.zeros(nb), np.zeros(nb)) for s in settings})
    for im in images:
        sim, best, owner, rescued = threshold_stage_parts(
            im.anchors, im.boxes, kind=kind, constant=constant,
            allow_low_quality=low_quality)  # [N, A], [A] x3
        n = len(im.boxes)
        scan.rescued += int(rescued.sum())
        if grid:
            scan.hist += _grid_bins(best[~rescued]).numpy()
        if pairs:
            scan.pairs += _grid_bins(sim).numpy()
            scan.above_min += int((sim > min_t).sum())
        for (pos, neg), (p_sum, i_sum) in scan.counts.items():
            p = torch.bincount(owner[rescued | (best >= pos)], minlength=n).numpy()  # [N]
            i = torch.bincount(owner[~rescued & (best >= neg) & (best < pos)],
                               minlength=n).numpy()  # [N]
            p_sum += np.bincount(im.bucket, weights=p, minlength=nb)
            i_sum += np.bincount(im.bucket, weights=i, minlength=nb)
    return scan


def _bisect(counts: np.ndarray, target: float, hi: int = THRESHOLD_STEPS) -> int:
    """Grid step k in [0, ``hi``] whose count is nearest ``target`` on a non-increasing
    ``counts [R + 1]``: bisection for the first k with ``counts[k] <= target``, then that
    step or the one before, whichever is nearer (the first on a tie)."""
    lo, top = 0, hi
    if counts[lo] <= target:
        return lo
    if counts[top] > target:
        return top
    while top - lo > 1:  # counts[lo] > target >= counts[top]
        mid = (lo + top) // 2
        if counts[mid] <= target:
            top = mid
        else:
            lo = mid
    return lo if counts[lo] - target < target - counts[top] else top


def _suffix(hist: np.ndarray) -> np.ndarray:
    """How many values lie at or above each grid step: ``counts[k] = sum(hist[k:])``."""
    return np.cumsum(hist[::-1])[::-1]


def _measure_options(cfg: DetectorConfig, kind: str) -> tuple[float, float, float, float]:
    """``(pos, neg, min, constant)`` of measure ``kind`` in ``cfg`` (its own fields)."""
    if kind == "nwd":
        return cfg.nwd_pos, cfg.nwd_neg, cfg.nwd_min, cfg.nwd_constant
    if kind == "dotd":
        return cfg.dotd_pos, cfg.dotd_neg, cfg.dotd_min, cfg.dotd_size
    raise InputError(f"thresholds are calibrated for {', '.join(CALIBRATED)}, not {kind!r}")


def _map_thresholds(scan: _Scan, target: dict, compensate: bool) -> dict:
    """A measure's thresholds on the grid from its first pass: positives, ignored anchors
    and compensation candidates equal to IoU's ``target`` counts (module section)."""
    above = _suffix(scan.hist)  # [R + 1] non-rescued anchors at or above each step
    kp = _bisect(scan.rescued + above, target["positives"])
    kn = _bisect(above - above[kp], target["ignored"], hi=kp)
    km = _bisect(_suffix(scan.pairs), target["candidates"]) if compensate else None
    return {"pos": kp / THRESHOLD_STEPS, "neg": kn / THRESHOLD_STEPS,
            "min": None if km is None else km / THRESHOLD_STEPS}


def _calibration_row(measure: str, setting: str, pos: float, neg: float,
                     counts: tuple[np.ndarray, np.ndarray], objects: np.ndarray,
                     names: Sequence[str]) -> dict:
    """One row of the calibration table: positives and ignored anchors per object, by bucket
    and over all objects (None for an empty bucket)."""
    def per_object(total: np.ndarray) -> dict:
        out = {b: float(t / n) if n else None for b, t, n in zip(names, total, objects)}
        return {**out, "all": float(total.sum() / objects.sum())}

    return {"measure": measure, "setting": setting, "pos": pos, "neg": neg,
            "positives": per_object(counts[0]), "ignored": per_object(counts[1])}


def calibrate_thresholds(cfg: DetectorConfig, boxes: Sequence[np.ndarray],
                         image_size: Sequence[tuple[int, int]], *,
                         kinds: Sequence[str] = CALIBRATED, max_images: int | None = None,
                         edges: Sequence[float] = CALIBRATION_EDGES,
                         bucket_names: Sequence[str] = CALIBRATION_BUCKETS) -> dict:
    """NWD / DotD thresholds that make as many anchors positive and ignored per trained
    object as ``cfg``'s IoU thresholds do, on ``cfg``'s anchors (module section).

    ``boxes``: I x ``[N, 4]`` xyxy trained boxes in each image's own pixels; ``image_size``:
    I x ``(h, w)``; ``max_images``: calibrate on that many evenly spaced images; ``edges``:
    size buckets on sqrt(w h) in input px, named ``bucket_names``. Returns ``images``,
    ``objects`` (per bucket and ``all``), ``rule``, ``iou`` (the config's thresholds),
    ``per_object`` (IoU's positives, ignored anchors and, when ``cfg.compensate``,
    compensation candidates per object: the targets), ``thresholds`` ``{kind: {"pos",
    "neg", "min"}}`` (``min`` None without compensation) and ``table``: a row per measure
    and setting (IoU; each kind at ``cfg``'s thresholds and calibrated) with ``positives``
    and ``ignored`` per object by bucket.
    """
    if len(edges) != len(bucket_names) + 1:
        raise InputError("edges need one more entry than bucket_names")
    bad = [k for k in kinds if k not in CALIBRATED]
    if bad:
        raise InputError(f"thresholds are calibrated for {', '.join(CALIBRATED)}, not {bad}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-image tensors (see _box_hits)
    try:
        return _calibrate(cfg, _calibration_images(cfg, boxes, image_size, max_images, edges),
                          kinds, list(bucket_names))
    finally:
        torch.set_num_threads(threads)


def _calibrate(cfg: DetectorConfig, images: list[_Image], kinds: Sequence[str],
               names: list[str]) -> dict:
    """``calibrate_thresholds`` on prepared images: one IoU pass for the targets, then per
    measure one pass for its grid and one for the exact counts at its calibrated values."""
    nb, lq, comp = len(names), cfg.low_quality, cfg.compensate
    objects = np.bincount(np.concatenate([im.bucket for im in images]), minlength=nb)  # [L]
    iou_set = (cfg.pos_iou, cfg.neg_iou)
    iou = _scan(images, "iou", None, lq, [iou_set], grid=False, pairs=comp, min_t=MIN_IOU,
                nb=nb)
    target = {"positives": float(iou.counts[iou_set][0].sum()),
              "ignored": float(iou.counts[iou_set][1].sum()),
              "candidates": float(iou.above_min) if comp else None}
    table = [_calibration_row("IoU", "preset", *iou_set, iou.counts[iou_set], objects, names)]
    thresholds = {}
    for kind in kinds:
        pos, neg, min_t, c = _measure_options(cfg, kind)
        first = _scan(images, kind, c, lq, [(pos, neg)], grid=True, pairs=comp, min_t=min_t,
                      nb=nb)
        thresholds[kind] = t = _map_thresholds(first, target, comp)
        second = _scan(images, kind, c, lq, [(t["pos"], t["neg"])], grid=False, pairs=False,
                       min_t=0.0, nb=nb)
        table += [_calibration_row(kind.upper() if kind == "nwd" else "DotD", setting, p, n,
                                   counts, objects, names)
                  for setting, (p, n), counts in
                  (("config", (pos, neg), first.counts[(pos, neg)]),
                   ("calibrated", (t["pos"], t["neg"]), second.counts[(t["pos"], t["neg"])]))]
    total = float(objects.sum())
    rule = (f"per trained object, as many positive anchors as IoU >= {cfg.pos_iou:g} gives"
            f"{' (with the best-anchor rescue)' if lq else ''}, as many ignored as IoU in "
            f"[{cfg.neg_iou:g}, {cfg.pos_iou:g})" +
            (f", as many compensation candidates as IoU > {MIN_IOU:g}" if comp else ""))
    return {"preset": cfg.preset, "input_size": cfg.input_size, "images": len(images),
            "objects": {**{b: int(n) for b, n in zip(names, objects)}, "all": int(total)},
            "rule": rule, "iou": {"pos": cfg.pos_iou, "neg": cfg.neg_iou,
                                  "min": MIN_IOU if comp else None},
            "per_object": {k: None if v is None else v / total for k, v in target.items()},
            "thresholds": thresholds, "table": table}


def calibrated_overrides(calibration: dict, kind: str, *,
                         decimals: int = 2) -> tuple[tuple[str, object], ...]:
    """The ``Technique`` overrides that train with ``kind``'s calibrated thresholds, rounded
    to ``decimals``: ``(("matcher", kind), (kind + "_pos", ...), (kind + "_neg", ...))`` and
    ``kind + "_min"`` where the calibration mapped it (compensating presets)."""
    if kind not in calibration.get("thresholds", {}):
        raise InputError(f"no calibrated thresholds for {kind!r} in this calibration")
    t = calibration["thresholds"][kind]
    out = [("matcher", kind)] + [(f"{kind}_{name}", round(float(t[name]), decimals))
                                 for name in ("pos", "neg", "min") if t[name] is not None]
    return tuple(out)

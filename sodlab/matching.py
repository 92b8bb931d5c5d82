"""IoU matching of anchors to ground truth: positives, negatives, ignored anchors, low-quality matches.

RetinaNet/SSD-style: an anchor whose best IoU with a ground-truth box is at least ``pos_iou``
is positive for it, below ``neg_iou`` negative, in between ignored. With
``allow_low_quality`` every object also takes the anchor(s) that overlap it best, so a face
smaller than every anchor still gets one. Ignored objects (``iscrowd``: WIDER ``invalid``,
VOC ``difficult``, faces mostly hidden) make the anchors that lie mostly on them (IoA >=
``ignore_ioa``) neither positive nor negative. Taught in notebooks 03 and 06.

S3FD's scale compensation (Zhang et al. 2017) is a second stage after the threshold stage:
N is the average number of anchors matched per object in stage one (over the objects of
the image, or given); every object with fewer than N takes its best-IoU anchors with IoU
above ``min_iou`` (0.1) until it has N. Here a compensated object takes only anchors that
no other object holds, so stage two never steals a positive. ``match_counts`` and
``object_match_stats`` count matched anchors per object for any anchor design on any
dataset (the S3FD paper's figure 3).

PyramidBox's PyramidAnchors (Tang et al. 2018) make an anchor also learn the head and the
body of a face smaller than itself: label_k of an anchor is 1 when the IoU of the anchor's
image region shrunk by spa^k (spa = 2, the stride ratio of adjacent levels) with the face
exceeds 0.35 (k = 0 face, 1 head, 2 body), so the anchor of level i + k carries the context
of a face matched at level i; only the face labels are used at test time. The paper thus
derives the head and body from the face box; ``context_boxes`` does that as the paper's
public code does, growing the face box by spa^k about its own centre, which equals the
formula when anchor and face share a centre (IoU is unchanged when both boxes are scaled
about one point). Read as shrinking the anchor about *its* centre, the formula instead
doubles (k = 1) or quadruples (k = 2) the face's offset from it and, on S3FD's anchors
(density 4, so density 1 once shrunk 4 times), would leave body labels only to faces close
to a cell centre. Real head/body boxes (the embedded data set has them) can replace the
derived ones face by face. ``pyramid_anchor_labels`` then labels every anchor against one
set of context boxes: IoU strictly above ``threshold``, no low-quality matches.

``match_anchors_batch`` matches the B images of a batch at once and returns exactly what
stacking ``match_anchors`` image by image returns: each image's trained objects (and, apart,
its ignored ones) are padded to the batch's largest count, so that one IoU tensor
``[B, N, A]`` (anchors along memory, so that the best object of each anchor and the best
anchor of each object are both fast reductions) serves the threshold and low-quality stages
(padded objects hold IoU -1 and never match; so with the other similarities); only S3FD's
compensation, which takes anchors object by object, loops. For IoU (and the crowd rule's IoA)
that tensor is the reference, not the work: an anchor and a box whose intersection has no
positive width or height have IoU exactly 0, so only the pairs an overlap index finds
(``_overlap_pairs``: runs of consecutive anchors and their bounding boxes, a few percent of
``[B, N, A]``) are computed, with the same float operations, and the threshold stage reduces
over them; every output bit is the dense path's, which NWD and DotD (never 0) keep.

The similarity of an anchor and a box need not be IoU (``kind``, the detector's
``matcher``): ``"nwd"`` is the Normalized Gaussian Wasserstein Distance (Wang et al. 2021,
arXiv 2110.13389) and ``"dotd"`` the Dot Distance (Xu et al. 2021, "Dot Distance for Tiny
Object Detection in Aerial Images"); ``similarity`` holds their formulas. Both are > 0 for
boxes that do not overlap, so a face smaller than the anchor grid is still near some anchors.
The thresholds (``pos_iou``, ``neg_iou``, ``min_iou``) then mean "similarity >= threshold"
(``min_iou``: ">") on that measure's scale; the crowd rule stays IoA, and PyramidAnchors'
context labels stay IoU. The defaults ``NWD_CONSTANT`` and ``DOTD_SIZE`` follow each paper's
rule (the data set's mean object size) on the embedded data set as the detector sees it
(``input_size`` 384); ``mean_object_size`` measures them on other data.
``threshold_stage_parts`` gives what the threshold stage decides before any threshold is set
(each anchor's best similarity, its object, the low-quality rescue), so counts at many
thresholds need one similarity pass (``sodlab.anchor_fit.calibrate_thresholds`` maps IoU's
thresholds onto NWD's and DotD's with it).

Shapes: anchors ``[A, 4]``, boxes ``[N, 4]`` xyxy; the result ``[A]`` int64 holds the matched
box index, ``NEGATIVE`` (-1) or ``IGNORE`` (-2); ``match_anchors_batch`` takes a list of B
such boxes and returns ``[B, A]``.
Dimension legend: B images, A anchors, N objects (per image, or the batch's largest count
when padded), C ignored objects (padded likewise), k the pyramid-anchor order (0 face,
1 head, 2 body).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torchvision

from sodlab.anchors import all_anchors

NEGATIVE = -1
IGNORE = -2
SIMILARITIES = ("iou", "nwd", "dotd")  # the kinds ``similarity`` computes
OVERLAP_RUN = 16  # consecutive anchors per run of the overlap index (``_overlap_pairs``)
# Mean object size of the embedded data set's training faces (``full``, seed 0, non-crowd, 16,730
# faces) after ResizeLongest(384), the default input size, in px: NWD's C is the mean of
# sqrt(w h) (the NWD paper's "average absolute size"), DotD's S the square root of the mean
# area (the DotD paper's). Both grow with the input size: recompute with ``mean_object_size``.
NWD_CONSTANT = 26.6
DOTD_SIZE = 39.1


def similarity(anchors: torch.Tensor, boxes: torch.Tensor, kind: str = "iou", *,
               constant: float | None = None) -> torch.Tensor:
    """Similarity of every anchor with every box, in [0, 1]; boxes xyxy in pixels. ``[A, N]``.

    - ``"iou"``: ``torchvision.ops.box_iou``.
    - ``"nwd"`` (Wang et al. 2021, arXiv 2110.13389): a box is the 2-D Gaussian with mean
      (cx, cy) and covariance diag(w²/4, h²/4); their 2-Wasserstein distance has
      W2² = (cx1 - cx2)² + (cy1 - cy2)² + ((w1 - w2) / 2)² + ((h1 - h2) / 2)², and
      NWD = exp(-W2 / C), ``constant`` = C (default ``NWD_CONSTANT``).
    - ``"dotd"`` (Xu et al. 2021, Dot Distance): exp(-D / S), D the distance of the centres,
      ``constant`` = S (default ``DOTD_SIZE``); the sizes play no part.

    RFLA (Xu et al., ECCV 2022) is not offered: its receptive-field Gaussians need per-level
    receptive-field priors, and it assigns by a hierarchical top-k, not by thresholds, so it
    is not a drop-in measure for this matcher.
    """
    if kind == "iou":
        return torchvision.ops.box_iou(anchors, boxes)
    return _similarity_by_object(anchors, boxes[None], kind, constant)[0].t()


def mean_object_size(boxes: torch.Tensor, kind: str = "nwd") -> float:
    """The data set statistic each paper normalises by, for ``boxes [N, 4]`` (xyxy, every
    trained object of the training set, in the detector's input pixels): ``"nwd"`` the mean
    of sqrt(w h) (NWD's C), ``"dotd"`` the square root of the mean area w h (DotD's S).

    Set ``--set nwd_constant=...`` / ``dotd_size=...`` from it."""
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).double()  # [N, 2]
    area = wh.prod(1)  # [N]
    if len(area) == 0:
        raise ValueError("mean_object_size needs at least one box")
    if kind == "nwd":
        return float(area.sqrt().mean())
    if kind == "dotd":
        return float(area.mean().sqrt())
    raise ValueError(f"mean_object_size: kind must be nwd or dotd, got {kind!r}")


def ioa(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Intersection over the anchor's area. ``[A, N]``."""
    return _ioa_rows(anchors[:, None], boxes[None])  # [A, N]


def _ioa_rows(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``ioa`` of ``anchors [..., 4]`` and ``boxes [..., 4]`` broadcast against each other,
    row by row: one formula for the dense ``[A, N]`` and the overlap pairs ``[P]``."""
    lt = torch.max(anchors[..., :2], boxes[..., :2])  # [..., 2]
    rb = torch.min(anchors[..., 2:], boxes[..., 2:])  # [..., 2]
    inter = (rb - lt).clamp(min=0).prod(-1)  # [...]
    return inter / torchvision.ops.box_area(anchors).clamp(min=1e-9)


def match_anchors(anchors: torch.Tensor, boxes: torch.Tensor, ignore: torch.Tensor | None = None,
                  *, pos_iou: float = 0.5, neg_iou: float = 0.4, allow_low_quality: bool = True,
                  ignore_ioa: float = 0.5, compensate: bool = False,
                  compensate_n: int | None = None, min_iou: float = 0.1, kind: str = "iou",
                  constant: float | None = None) -> torch.Tensor:
    """Index of each anchor's object, ``NEGATIVE`` or ``IGNORE``. ``[A]`` int64.

    One image of ``match_anchors_batch``, which holds the rules (module doc)."""
    return match_anchors_batch(anchors, [boxes], [ignore], pos_iou=pos_iou, neg_iou=neg_iou,
                               allow_low_quality=allow_low_quality, ignore_ioa=ignore_ioa,
                               compensate=compensate, compensate_n=compensate_n,
                               min_iou=min_iou, kind=kind, constant=constant)[0]


def context_boxes(faces: torch.Tensor, k: int, *, spa: float = 2.0,
                  given: torch.Tensor | None = None) -> torch.Tensor:
    """The k-th PyramidAnchors target of each face: the face grown ``spa**k`` times about its
    centre, or the row of ``given`` (real head/body boxes) where that row is finite. ``[N, 4]``.
    """
    f = float(spa) ** int(k)
    centre = (faces[:, :2] + faces[:, 2:]) / 2  # [N, 2]
    half = (faces[:, 2:] - faces[:, :2]) / 2 * f  # [N, 2]
    out = torch.cat([centre - half, centre + half], 1)  # [N, 4]
    if given is not None and len(given):
        given = given.to(out)
        real = torch.isfinite(given).all(1)  # [N] rows that hold a real box
        out[real] = given[real]
    return out


def pyramid_anchor_labels(anchors: torch.Tensor, targets: torch.Tensor,
                          ignore: torch.Tensor | None = None, *,
                          threshold: float = 0.35) -> torch.Tensor:
    """PyramidAnchors' rule for one branch: each anchor's best target if their IoU is above
    ``threshold`` (strictly), else ``NEGATIVE``; anchors above it only with ignored targets
    are ``IGNORE``. ``targets`` are face boxes (k = 0) or ``context_boxes`` (k > 0). ``[A]``."""
    A = len(anchors)
    out = torch.full((A,), NEGATIVE, dtype=torch.int64, device=anchors.device)
    if len(targets) == 0:
        return out
    ignore = torch.zeros(len(targets), dtype=torch.bool, device=targets.device) \
        if ignore is None else ignore.bool()
    iou = torchvision.ops.box_iou(anchors, targets.to(anchors))  # [A, N]
    iou = torch.nan_to_num(iou, nan=0.0)
    hit = iou > threshold  # [A, N]
    crowd = (hit & ignore[None]).any(1)  # [A]
    iou = iou.masked_fill(ignore[None] | ~hit, -1.0)
    best, arg = iou.max(1)  # [A]
    out[crowd] = IGNORE
    out[best > threshold] = arg[best > threshold]
    return out


def _take_free(out: torch.Tensor, iou: torch.Tensor, counts: torch.Tensor, n: int,
               min_iou: float, ids) -> None:
    """Stage two of one image, in place on ``out [A]``: object j (column j of ``iou [A, N']``,
    ``counts[j]`` stage-one matches) under ``n`` takes its top-IoU free anchors, as ``ids[j]``.
    Objects go in column order, so an earlier one takes a contested anchor first."""
    for j in torch.nonzero(counts < n).flatten().tolist():
        free = (out < 0) & (iou[:, j] > min_iou)  # [A] anchors nobody holds, overlap > 0.1
        need = n - int(counts[j])
        cand = torch.nonzero(free).flatten()
        if len(cand) == 0:
            continue
        take = cand[iou[cand, j].topk(min(need, len(cand))).indices]
        out[take] = ids[j]


_DENSE_ONLY = [False]  # set by ``dense_reference``


@contextlib.contextmanager
def dense_reference():
    """Inside the block, ``match_anchors_batch`` takes the dense ``[B, N, A]`` path only: the
    reference the overlap path equals bit for bit, kept so a benchmark can time both ways in
    one process (``sodlab.bench.step_speed``)."""
    before = _DENSE_ONLY[0]
    _DENSE_ONLY[0] = True
    try:
        yield
    finally:
        _DENSE_ONLY[0] = before


def match_anchors_batch(anchors: torch.Tensor, boxes: list[torch.Tensor],
                        ignore: list[torch.Tensor | None] | None = None, *,
                        pos_iou: float = 0.5, neg_iou: float = 0.4,
                        allow_low_quality: bool = True, ignore_ioa: float = 0.5,
                        compensate: bool = False, compensate_n: int | None = None,
                        min_iou: float = 0.1, kind: str = "iou",
                        constant: float | None = None) -> torch.Tensor:
    """``match_anchors`` for B images at once: row b is exactly
    ``match_anchors(anchors, boxes[b], ignore[b], **same options)``. ``[B, A]`` int64.

    ``boxes``: B tensors ``[N_b, 4]``; ``ignore``: None, or B tensors ``[N_b]`` bool (or None).
    ``kind`` / ``constant``: the similarity every stage uses (``similarity``); the thresholds
    ``pos_iou``, ``neg_iou`` and ``min_iou`` are on its scale.

    How it stays exact: IoU and the crowd rule's IoA are computed only for the pairs of
    ``_overlap_pairs`` (a few percent of ``[B, N, A]``), with the dense path's float
    operations (``_iou_coords``, ``_ioa_rows``); every other pair's intersection has no
    positive width or height, so its IoU and IoA are exactly 0, and the threshold stage
    reduces over the pairs knowing that (``_threshold_stage_pairs``). The dense path
    (``_similarity_by_object``, ``_threshold_stage``) is the reference: the tests compare
    the match indices bit for bit and the similarity S3FD's compensation sorts by with
    ``torch.equal``. It runs NWD and DotD (never 0) and whatever breaks a condition of that
    proof (``_overlap_index``, ``_pairs_are_exact``): non-finite or inverted boxes, anchors
    of no area, ``ignore_ioa <= 0``.
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; valid: {', '.join(SIMILARITIES)}")
    B, A = len(boxes), len(anchors)
    out = torch.full((B, A), NEGATIVE, dtype=torch.int64, device=anchors.device)
    if B == 0 or A == 0:  # no image, or no anchor (a second stage's empty set of RoIs)
        return out
    boxes = [b.to(anchors.device).reshape(-1, 4) for b in boxes]
    flags = [torch.zeros(len(b), dtype=torch.bool, device=anchors.device)
             if ignore is None or ignore[i] is None else ignore[i].to(anchors.device).bool()
             for i, b in enumerate(boxes)]  # B x [N_b]
    kept, kept_idx, kept_ok = _pad_objects(boxes, [~f for f in flags])  # [B, N, 4], [B, N] x2
    crowd, _, crowd_ok = _pad_objects(boxes, flags)  # [B, C, 4], [B, C]
    use_pairs = (kind == "iou" or crowd.shape[1]) and not _DENSE_ONLY[0]
    index = _overlap_index(anchors) if use_pairs else None
    if kept.shape[1]:
        sim, col = _trained_similarity_and_stage(anchors, index, kept, kept_ok, kind, constant,
                                                 pos_iou, neg_iou, allow_low_quality,
                                                 compensate)
        empty = ~kept_ok.any(1)  # [B] images with no trained object
        if bool(empty.any()):
            col[empty] = NEGATIVE
        if compensate:
            _compensate_batch(col, sim, kept_ok, compensate_n, min_iou)
        out = _box_index(col, kept_idx)
    if crowd.shape[1]:
        flat = out.view(-1)  # [B*A]
        on = _crowd_positions(anchors, index, crowd, crowd_ok, ignore_ioa)  # [Q]
        flat[on[flat[on] < 0]] = IGNORE
    return out


class _OverlapIndex(NamedTuple):
    """Runs of ``OVERLAP_RUN`` consecutive anchors, coordinate first, ``coords [4, C, RUN]``
    (the last run filled up with copies of the last anchor), the bounding box of each run
    ``hull [4, C]`` and the number of anchors A."""

    coords: torch.Tensor
    hull: torch.Tensor
    count: int


class _Pairs(NamedTuple):
    """Overlap pairs by run: row r pairs object ``obj[r]`` of image ``img[r]`` (both ``[R]``)
    with the anchors of run ``run[r]``, ``anchor [R, RUN]`` (A - 1 repeated where the last
    run is short: a repeated pair has the same value, and every use is a max, a min or a
    write of that value)."""

    img: torch.Tensor
    obj: torch.Tensor
    run: torch.Tensor
    anchor: torch.Tensor


def _trained_similarity_and_stage(anchors: torch.Tensor, index: _OverlapIndex | None,
                                  kept: torch.Tensor, kept_ok: torch.Tensor, kind: str,
                                  constant: float | None, pos_iou: float, neg_iou: float,
                                  allow_low_quality: bool, need_sim: bool):
    """The similarity ``[B, N, A]`` of the trained objects ``kept [B, N, 4]`` (-1 where
    ``kept_ok [B, N]`` is False; None unless ``need_sim``) and the threshold stage's column
    indices ``[B, A]``: from the overlap pairs for IoU where that is exact, else dense."""
    if kind == "iou" and index is not None and _pairs_are_exact(kept, kept_ok, union=True):
        pairs = _overlap_pairs(index, kept, kept_ok)
        iou = _iou_coords(index.coords[:, pairs.run],
                          kept[pairs.img, pairs.obj].t()[..., None])  # [R, RUN]
        shape = (*kept_ok.shape, len(anchors))  # (B, N, A)
        col = _threshold_stage_pairs(pairs, iou, shape, pos_iou, neg_iou, allow_low_quality)
        return (_scatter_pairs(pairs, iou, kept_ok, len(anchors)) if need_sim else None), col
    sim = _similarity_by_object(anchors, kept, kind, constant)  # [B, N, A] IoU, NWD, DotD
    sim.masked_fill_(~kept_ok[:, :, None], -1.0)  # padded objects never match
    return sim, _threshold_stage(sim, pos_iou, neg_iou, allow_low_quality)


def _box_index(col: torch.Tensor, kept_idx: torch.Tensor) -> torch.Tensor:
    """Column indices ``col [B, A]`` as each image's box indices (``kept_idx [B, N]``),
    ``NEGATIVE`` and ``IGNORE`` kept: one gather from ``[IGNORE, NEGATIVE, kept_idx...]``,
    which ``col + 2`` indexes. ``[B, A]``."""
    head = torch.tensor([IGNORE, NEGATIVE], dtype=kept_idx.dtype, device=kept_idx.device)
    table = torch.cat([head.expand(len(kept_idx), 2), kept_idx], 1)  # [B, 2 + N]
    return table.gather(1, col + 2)


def _crowd_positions(anchors: torch.Tensor, index: _OverlapIndex | None, crowd: torch.Tensor,
                     crowd_ok: torch.Tensor, ignore_ioa: float) -> torch.Tensor:
    """Flat positions ``b * A + a`` (repeats allowed) of the anchors of each image that lie
    mostly on one of its ignored objects ``crowd [B, C, 4]`` (``crowd_ok [B, C]`` real):
    IoA >= ``ignore_ioa``. ``[Q]`` int64."""
    B, A = len(crowd), len(anchors)
    if index is not None and ignore_ioa > 0 and _pairs_are_exact(crowd, crowd_ok, union=False):
        pairs = _overlap_pairs(index, crowd, crowd_ok)
        cover = _ioa_rows(index.coords[:, pairs.run].permute(1, 2, 0),
                          crowd[pairs.img, pairs.obj][:, None])  # [R, RUN]
        return (pairs.anchor + (pairs.img * A)[:, None])[cover >= ignore_ioa]
    cover = ioa(anchors, crowd.flatten(0, 1)).view(A, B, -1).permute(1, 0, 2)  # [B, A, C]
    cover = cover.masked_fill(~crowd_ok[:, None, :], -math.inf).max(2).values  # [B, A]
    return torch.nonzero(((cover >= ignore_ioa) & crowd_ok.any(1)[:, None]).flatten()).flatten()


def _overlap_index(anchors: torch.Tensor) -> _OverlapIndex | None:
    """The overlap index of ``anchors [A, 4]``; None unless every anchor has a positive,
    finite area (then its coordinates are finite, and a pair with an empty intersection has
    IoU and IoA 0, never NaN)."""
    A = len(anchors)
    C = -(-A // OVERLAP_RUN)
    coords = anchors.new_empty(4, C * OVERLAP_RUN)  # [4, C * RUN]
    coords[:, :A] = anchors.t()
    coords[:, A:] = anchors[-1:].t()
    area = (coords[2] - coords[0]) * (coords[3] - coords[1])  # [C * RUN]
    if A == 0 or not bool(((area > 0) & (area < math.inf)).all()):
        return None
    coords = coords.view(4, C, OVERLAP_RUN)  # [4, C, RUN]
    hull = torch.cat([coords[:2].amin(2), coords[2:].amax(2)])  # [4, C]
    return _OverlapIndex(coords, hull, A)


def _pairs_are_exact(boxes: torch.Tensor, real: torch.Tensor, *, union: bool) -> bool:
    """Whether every pair outside ``_overlap_pairs`` of the real ``boxes [B, M, 4]`` has IoA
    (``union`` False) or IoU (``union`` True) exactly 0, given an ``_overlap_index``: the
    boxes finite and, for IoU, with x2 >= x1, y2 >= y1 and finite area (then such a pair's
    union is positive)."""
    b = boxes[real]  # [M', 4]
    if not bool(torch.isfinite(b).all()):
        return False
    wh = b[:, 2:] - b[:, :2]  # [M', 2]
    return not union or (bool((wh >= 0).all()) and bool(torch.isfinite(wh[:, 0] * wh[:, 1]).all()))


def _overlap_pairs(index: _OverlapIndex, boxes: torch.Tensor, real: torch.Tensor) -> _Pairs:
    """Every (image, object, anchor) of the real ``boxes [B, M, 4]`` (``real [B, M]``) whose
    intersection can have positive width and height, by runs, in (image, object, run) order.

    When a run's box and an object have min(x2) <= max(x1) (or so in y), every anchor of the
    run has too, as min and max are exact, and the float difference of u <= v is <= 0: the
    clamped width is 0, and so is the intersection of every anchor of the run with the
    object. The layout puts a run in a few neighbouring cells of one row, so few runs reach
    an object."""
    hull = index.hull  # [4, C]
    b = boxes[..., None]  # [B, M, 4, 1]
    hit = (torch.min(hull[2], b[:, :, 2]) > torch.max(hull[0], b[:, :, 0])) \
        & (torch.min(hull[3], b[:, :, 3]) > torch.max(hull[1], b[:, :, 1])) \
        & real[:, :, None]  # [B, M, C]
    img, obj, run = torch.nonzero(hit, as_tuple=True)  # [R]
    step = torch.arange(OVERLAP_RUN, device=run.device)  # [RUN]
    anchor = (run[:, None] * OVERLAP_RUN + step).clamp_(max=index.count - 1)  # [R, RUN]
    return _Pairs(img, obj, run, anchor)


def _scatter_pairs(pairs: _Pairs, values: torch.Tensor, real: torch.Tensor,
                   A: int) -> torch.Tensor:
    """The dense ``[B, N, A]`` of the pairs' ``values [R, RUN]``: 0 elsewhere, -1 on padded
    objects, as the dense path's masked similarity (whose empty intersections could give
    -0.0 where both boxes touch at a signed zero; no comparison tells the two apart)."""
    B, N = real.shape
    out = real.to(values.dtype).sub_(1)[:, :, None].expand(B, N, A).contiguous()  # [B, N, A]
    out.view(-1)[((pairs.img * N + pairs.obj) * A)[:, None] + pairs.anchor] = values
    return out


def _pad_objects(boxes: list[torch.Tensor], select: list[torch.Tensor]):
    """The selected boxes of each image, in image order, padded to the largest count N:
    boxes ``[B, N, 4]`` (zeros where padded), each one's index in its image ``[B, N]``,
    and which entries are real ``[B, N]`` bool."""
    B, device = len(boxes), boxes[0].device
    sizes = torch.tensor([len(b) for b in boxes], device=device)  # [B]
    img = torch.repeat_interleave(torch.arange(B, device=device), sizes)  # [T] image of a box
    local = torch.arange(len(img), device=device) - (sizes.cumsum(0) - sizes)[img]  # [T]
    sel = torch.cat(select)  # [T]
    img, local = img[sel], local[sel]  # [S]
    n_sel = torch.bincount(img, minlength=B)  # [B] selected per image
    slot = torch.arange(len(img), device=device) - (n_sel.cumsum(0) - n_sel)[img]  # [S]
    n = int(n_sel.max())
    flat = torch.cat(boxes)  # [T, 4]
    padded = flat.new_zeros((B, n, 4))
    padded[img, slot] = flat[sel]
    index = torch.zeros((B, n), dtype=torch.int64, device=device)
    index[img, slot] = local
    real = torch.zeros((B, n), dtype=torch.bool, device=device)
    real[img, slot] = True
    return padded, index, real


def _threshold_stage(iou: torch.Tensor, pos_iou: float, neg_iou: float,
                     allow_low_quality: bool) -> torch.Tensor:
    """Stage one of ``match_anchors`` on ``iou [B, N, A]``: each anchor's column index,
    ``NEGATIVE`` or ``IGNORE``. ``[B, A]`` int64."""
    B, _, A = iou.shape
    best, arg = iou.max(1)  # [B, A] best object of each anchor (the first on a tie)
    col = _threshold_rule(best, arg, pos_iou, neg_iou)  # [B, A]
    if allow_low_quality:
        top = iou.max(2, keepdim=True).values  # [B, N, 1] best IoU of each object
        b, j, a = torch.nonzero((iou == top) & (top > 0), as_tuple=True)  # every tied anchor
        # an anchor best for several objects keeps the last, as match_anchors' write does
        last = torch.full((B * A,), -1, dtype=torch.int64, device=iou.device)
        last = last.scatter_reduce(0, b * A + a, j, "amax").view(B, A)  # [B, A]
        col = torch.where(last >= 0, last, col)
    return col


def _threshold_rule(best: torch.Tensor, arg: torch.Tensor, pos_iou: float,
                    neg_iou: float) -> torch.Tensor:
    """The thresholds on each anchor's best similarity ``best`` and its object ``arg``
    (same shape): ``arg`` at >= ``pos_iou``, ``IGNORE`` in ``[neg_iou, pos_iou)``, else
    ``NEGATIVE``."""
    return torch.where(best >= pos_iou, arg,
                       torch.where((best >= neg_iou) & (best < pos_iou), IGNORE, NEGATIVE))


def _threshold_stage_pairs(pairs: _Pairs, iou: torch.Tensor, shape: tuple[int, int, int],
                           pos_iou: float, neg_iou: float,
                           allow_low_quality: bool) -> torch.Tensor:
    """``_threshold_stage`` from the overlap pairs and their ``iou [R, RUN]``, of a
    ``shape = (B, N, A)`` IoU that is 0 at every other entry of a real object (padded objects
    hold no pair). ``[B, A]`` int64, equal to the dense stage's.

    IoU >= 0, so an anchor's best is its largest pair value or 0 and its object the first
    one at that best (object 0, real wherever the row is used, when the best is 0): an
    anchor in no pair takes the rule's value at (0, 0). An object's best is its largest pair
    value or 0, and the low-quality rule needs it > 0, so the pairs hold every tie."""
    B, N, A = shape
    at = (pairs.anchor + (pairs.img * A)[:, None]).flatten()  # [P] flat (image, anchor)
    obj = pairs.obj[:, None].expand_as(pairs.anchor).flatten()  # [P]
    v = iou.flatten()  # [P]
    best = v.new_zeros(B * A).scatter_reduce_(0, at, v, "amax")[at]  # [P] the anchor's best
    first = (v == best) & (v > 0)  # [P] pairs at their anchor's best
    arg = torch.zeros(B * A, dtype=torch.int64, device=v.device)
    arg = arg.scatter_reduce_(0, at[first], obj[first], "amin", include_self=False)[at]  # [P]
    zero = _threshold_rule(v.new_zeros(()), arg.new_zeros(()), pos_iou, neg_iou)  # [] no pair
    col = zero.expand(B * A).clone()  # [B*A]
    col[at] = _threshold_rule(best, arg, pos_iou, neg_iou)
    if allow_low_quality:
        of = pairs.img * N + pairs.obj  # [R] flat (image, object)
        top = iou.new_zeros(B * N).scatter_reduce_(0, of, iou.amax(1), "amax")  # [B*N]
        tied = ((iou == top[of][:, None]) & (iou > 0)).flatten()  # [P] ties at the best
        at, obj = at[tied], obj[tied]  # [T]
        # an anchor best for several objects keeps the last, as match_anchors' write does
        last = torch.full((B * A,), -1, dtype=torch.int64, device=v.device)
        col[at] = last.scatter_reduce_(0, at, obj, "amax")[at]
    return col.view(B, A)


def _iou_by_object(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every padded object with every anchor, ``[B, N, A]`` (anchors contiguous, so
    both reductions run along memory). The same float operations, in the same order, as
    ``torchvision.ops.box_iou``: the values are bit-identical to its ``[A, N]`` transposed."""
    return _iou_coords(anchors.t(), boxes.permute(2, 0, 1)[..., None])  # [B, N, A]


def _iou_coords(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes given coordinate first, ``a [4, ...]`` and ``b [4, ...]`` broadcast
    against each other: one formula (``torchvision.ops.box_iou``'s operations in its order)
    for the dense ``[B, N, A]`` and the overlap pairs ``[P]``."""
    iw = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp_(min=0)  # [...]
    ih = (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp_(min=0)  # [...]
    inter = iw.mul_(ih)  # [...]
    area_a = (a[2] - a[0]) * (a[3] - a[1])  # [...]
    area_b = (b[2] - b[0]) * (b[3] - b[1])  # [...]
    return inter.div_(area_a + area_b - inter)


def _similarity_by_object(anchors: torch.Tensor, boxes: torch.Tensor, kind: str,
                          constant: float | None) -> torch.Tensor:
    """``similarity`` of every padded object ``boxes [B, N, 4]`` with every anchor, laid out as
    ``_iou_by_object``: ``[B, N, A]``. ``"iou"`` is ``_iou_by_object`` itself (bit-identical)."""
    if kind == "iou":
        return _iou_by_object(anchors, boxes)
    if kind not in ("nwd", "dotd"):
        raise ValueError(f"unknown similarity {kind!r}; valid: {', '.join(SIMILARITIES)}")
    c = float(constant if constant is not None else
              (NWD_CONSTANT if kind == "nwd" else DOTD_SIZE))
    if not c > 0:
        raise ValueError(f"the {kind} constant must be > 0, got {c}")
    a = anchors.t()  # [4, A]
    b = boxes[..., None]  # [B, N, 4, 1]
    dx = (a[0] + a[2]).sub(b[:, :, 0] + b[:, :, 2]).mul_(0.5)  # [B, N, A] centre offsets
    dy = (a[1] + a[3]).sub(b[:, :, 1] + b[:, :, 3]).mul_(0.5)  # [B, N, A]
    d2 = dx.mul_(dx).add_(dy.mul_(dy))  # [B, N, A] squared centre distance
    del dy
    if kind == "nwd":  # + the covariances' part: ((w1 - w2) / 2)² + ((h1 - h2) / 2)²
        dw = (a[2] - a[0]).sub(b[:, :, 2] - b[:, :, 0]).mul_(0.5)  # [B, N, A]
        d2.add_(dw.mul_(dw))
        dh = (a[3] - a[1]).sub(b[:, :, 3] - b[:, :, 1]).mul_(0.5)  # [B, N, A]
        d2.add_(dh.mul_(dh))
    return d2.sqrt_().div_(-c).exp_()  # [B, N, A]


def _compensate_batch(col: torch.Tensor, iou: torch.Tensor, real: torch.Tensor,
                      n: int | None, min_iou: float) -> None:
    """S3FD stage two of every image, in place on the column indices ``col [B, A]``:
    stage-one counts for the whole batch, then only the objects under N take anchors."""
    B, N, _ = iou.shape
    mine = col + torch.arange(B, device=col.device)[:, None] * N  # [B, A] flat object index
    counts = torch.bincount(mine[col >= 0], minlength=B * N).view(B, N)  # [B, N]
    for b, n_b in enumerate(real.sum(1).tolist()):  # trained objects come first in a row
        if n_b == 0:
            continue
        counts_b = counts[b, :n_b]  # [N_b]
        n_img = n if n is not None else max(1, round(float(counts_b.float().mean())))
        _take_free(col[b], iou[b, :n_b].t(), counts_b, n_img, min_iou, range(n_b))


def threshold_stage_parts(anchors: torch.Tensor, boxes: torch.Tensor, *, kind: str = "iou",
                          constant: float | None = None, allow_low_quality: bool = True):
    """What the threshold stage of ``match_anchors`` knows before any threshold is set, for
    one image's trained boxes ``[N, 4]`` (N >= 1): the similarity ``sim [N, A]``, each
    anchor's best similarity ``best [A]``, the object it would go to ``owner [A]`` and
    whether the low-quality rule takes it ``rescued [A]`` bool (then ``owner`` is the object
    that rule gives it, else its best object).

    At thresholds ``(pos, neg)`` the stage makes an anchor positive for ``owner`` when
    ``rescued | (best >= pos)``, ignored when ``~rescued & (neg <= best < pos)``, negative
    otherwise: ``match_anchors`` with no crowd boxes and no compensation, for any thresholds
    without matching again."""
    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; valid: {', '.join(SIMILARITIES)}")
    sim = _similarity_by_object(anchors, boxes.reshape(1, -1, 4).to(anchors), kind,
                                constant)  # [1, N, A]
    best, arg = sim[0].max(0)  # [A] best object of each anchor (the first on a tie)
    lq = _threshold_stage(sim, math.inf, math.inf, allow_low_quality)[0]  # [A] rescue only
    rescued = lq >= 0  # [A]
    return sim[0], best, torch.where(rescued, lq, arg), rescued


def match_counts(anchors: torch.Tensor, boxes: torch.Tensor, ignore: torch.Tensor | None = None,
                 **match_kw) -> torch.Tensor:
    """Positive anchors each object gets under ``match_anchors(**match_kw)``. ``[N]`` int64."""
    m = match_anchors(anchors, boxes, ignore, **match_kw)  # [A]
    return torch.bincount(m[m >= 0], minlength=len(boxes))


def object_match_stats(levels, samples, **match_kw) -> dict[str, torch.Tensor]:
    """Size and matched-anchor count of every trained object of a dataset.

    ``levels``: ``sodlab.anchors.LevelSpec`` list; ``samples``: iterable of
    ``(image_hw, boxes [N, 4] xyxy in input pixels, ignore [N] bool)`` (as the detector
    sees them, after resizing). Returns ``size`` (sqrt of box area, px) and ``matched`` for
    every object that is not ignored, both ``[M]``.
    """
    cache: dict[tuple[int, int], torch.Tensor] = {}
    sizes, counts = [], []
    for hw, boxes, ignore in samples:
        hw = (int(hw[0]), int(hw[1]))
        if hw not in cache:
            cache[hw] = all_anchors(levels, hw)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        ignore = torch.zeros(len(boxes), dtype=torch.bool) if ignore is None \
            else torch.as_tensor(ignore, dtype=torch.bool)
        c = match_counts(cache[hw], boxes, ignore, **match_kw)
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        sizes.append(wh.prod(1).sqrt()[~ignore])
        counts.append(c[~ignore])
    return {"size": torch.cat(sizes) if sizes else torch.zeros(0),
            "matched": torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64)}


def stats_by_size(stats: dict[str, torch.Tensor], edges) -> list[dict]:
    """Per size bin ``[edges[i], edges[i+1])``: objects, mean matched anchors, share unmatched."""
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (stats["size"] >= lo) & (stats["size"] < hi)
        m = stats["matched"][sel].float()
        rows.append({"size_from": float(lo), "size_to": float(hi), "objects": int(sel.sum()),
                     "mean_matched": float(m.mean()) if len(m) else float("nan"),
                     "share_unmatched": float((m == 0).float().mean()) if len(m) else
                     float("nan")})
    return rows

"""COCO box AP / AR of many image-weighted copies of one evaluation: match once, reweight.

Layer L1. Used by ``sodlab.engine.records.resampled_metrics`` for the 500 fixed bootstrap
resamples of a run record. COCO's matching of one image does not depend on the other images
of the set, so ``match_images`` runs pycocotools' greedy matching once per image and
category, for every IoU threshold and area range at 100 detections; ``weighted_summary``
then accumulates, for a weight vector over the images, exactly what ``COCOeval.accumulate``
would give on a set where image i appears ``w_i`` times (a bootstrap resample:
``w = np.bincount(draw, minlength=N)``), and returns the keys of
``sodlab.metrics.coco.evaluate`` (-1 for an empty bucket). One ``evaluate_clean`` of a
resample of 500 images takes ~0.15 s; one ``weighted_summary`` takes a few milliseconds.
Only the default evaluation is covered: COCO buckets, bbox IoU, 100 detections.

Why weights are exact: an image drawn w times puts w equal copies of each of its
detections next to each other in the score order. Counting the detection once, with weight
w, gives the same cumulative counts at the end of each such run and drops the points inside
it, which changes nothing: inside a run of FPs recall does not move, so the curve is read
at the point before the run; inside a run of TPs precision only grows, so once precision is
made non-increasing from the right every point of the run reads as its last one. A
detection of weight 0 repeats the point before it. Recall and the counts are plain sums.

Ties: the accumulation sorts the detections of a category by score with a stable sort, ties
kept in the order of ``gt["images"]``; COCOeval keeps them in image-id order, and a
renumbered resample (``metrics.bootstrap.resample``) numbers its images in draw order. So
with scores tied ACROSS images the order inside a tie may differ from that of the
renumbered copy (or of ``gt`` itself, when its images are not listed by id): the precision
at recall points inside the tie (AP keys) may then differ, by at most that tie's share of
the curve; recall keys (AR, R50) and the counts never differ. Ties within one image, and
between the copies of one image, order the same in both. Detector scores are floats and
rarely tie; the tests use distinct scores.

Dimension legend: N images, K categories (sorted by id), A area ranges (``RANGE_LABELS``:
all, tiny, small, medium, large), T IoU thresholds (0.50:0.05:0.95), R recall thresholds
(101), D detections (of one image and category, or of one category and range), G ground
truths (of one image and category), P distinct ignore patterns of G over the area ranges,
M true positives of a curve at one threshold (padded), J detections of a curve ignored at
some thresholds only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from sodlab.boxes import AREA_RANGES
from sodlab.errors import InputError
from sodlab.metrics.coco import MAX_DETS, RANGE_LABELS, summarize

IOU_THRS = np.linspace(0.5, 0.95, 10)  # as pycocotools builds them
REC_THRS = np.linspace(0.0, 1.0, 101)
RANGES = np.array([AREA_RANGES[r] for r in RANGE_LABELS], dtype=float)  # [A, 2]


class Curve(NamedTuple):
    """The detections of one category that one area range does not ignore at some threshold,
    sorted by score (stable; image order within ties), reduced to what the curve needs.

    Precision only rises at a true positive and recall only changes there, so the curve at
    threshold t is read at its TP columns ``pos[t]`` (padded with copies of the last one,
    ``valid`` 0, which change nothing). The false positives up to a column are the
    detections up to it, less those ignored at t (few: only the columns ``var``, ignored at
    some thresholds and not at others), less the TPs.
    """

    img: np.ndarray  # [D] image index of each detection
    pos: np.ndarray  # [T, M] TP columns of threshold t, padded
    valid: np.ndarray  # [T, M] int, 0 on the padding
    var: np.ndarray  # [J] columns ignored at some but not all thresholds
    ign: np.ndarray  # [T, J] int, 1 where column var[j] is ignored at threshold t
    n_var: np.ndarray  # [T, M] how many of the ``var`` columns are <= pos[t, m]


@dataclass(frozen=True)
class MatchTable:
    """The matched detections of one evaluation, ready to be accumulated under any weights.

    ``gt_counts[n, k, a]``: ground truths of image n and category k that range a does not
    ignore; ``det_counts[n]``: detections of image n (all of them, for ``n_dets``);
    ``curves[k][a]``: the ``Curve`` of category k in range a.
    """

    gt_counts: np.ndarray
    det_counts: np.ndarray
    curves: list


def _records(gt: dict, dets: list[dict]) -> tuple[dict, dict]:
    """Boxes, areas, image and category indices of the ground truth and detections."""
    img_index = {im["id"]: n for n, im in enumerate(gt["images"])}
    cat_index = {c: k for k, c in enumerate(sorted(c["id"] for c in gt["categories"]))}
    out = []
    for recs, is_gt in ((gt["annotations"], True), (dets, False)):
        box = np.array([r["bbox"] for r in recs], dtype=float).reshape(-1, 4)
        area = np.array([r["area"] if "area" in r else r["bbox"][2] * r["bbox"][3]
                         for r in recs], dtype=float)
        rec = {"img": np.array([img_index[r["image_id"]] for r in recs], dtype=np.int64),
               "cat": np.array([cat_index[r["category_id"]] for r in recs], dtype=np.int64),
               "box": box, "area": area}
        if is_gt:
            rec["crowd"] = np.array([bool(r.get("iscrowd", 0)) for r in recs], dtype=bool)
        else:
            rec["score"] = np.array([r["score"] for r in recs], dtype=float)
        out.append(rec)
    return out[0], out[1]


def _box_iou(db: np.ndarray, gb: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``[D, G]`` COCO bbox IoU of ``[x, y, w, h]`` boxes; a crowd gt divides by the det's area."""
    d, g = db[:, None, :], gb[None, :, :]
    iw = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    da, ga = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    union = np.where(crowd[None, :], da, da + ga - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _greedy(iou: np.ndarray, patterns: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``[P, T, D]`` index of the gt each detection matches (-1: none), pycocotools' greedy.

    Detections are in score order. Row r = (pattern p, threshold t) matches on its own: a
    detection takes the free gt of highest IoU >= t, non-ignored ones first (the last one
    in gt order among equal IoUs, as pycocotools' loop does); crowd gts stay free.
    """
    n_det, n_gt = iou.shape
    thr = np.tile(IOU_THRS, len(patterns))[:, None]  # [R, 1]
    ignored = np.repeat(patterns, len(IOU_THRS), axis=0)  # [R, G]
    taken = np.zeros(ignored.shape, dtype=bool)
    out = np.full((len(thr), n_det), -1, dtype=np.int64)
    rows = np.arange(len(thr))
    for d in np.flatnonzero(iou.max(axis=1) >= IOU_THRS[0]):
        ok = (iou[d] >= thr) & (~taken | crowd)
        pref = ok & ~ignored
        use = np.where(pref.any(axis=1, keepdims=True), pref, ok)
        score = np.where(use, iou[d], -1.0)
        j = n_gt - 1 - np.argmax(score[:, ::-1], axis=1)
        got = use.any(axis=1)
        out[got, d] = j[got]
        taken[rows[got], j[got]] = True
    return out.reshape(len(patterns), len(IOU_THRS), n_det)


def _match_group(g: dict, gi: np.ndarray, d: dict, di: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP and FP ``[A, T, D]`` of one image and category (``di`` in score order) and the
    non-ignored gt count ``[A]``."""
    lo, hi = RANGES[:, :1], RANGES[:, 1:]
    g_area, crowd = g["area"][gi], g["crowd"][gi]
    g_ig = crowd[None, :] | (g_area[None, :] < lo) | (g_area[None, :] > hi)  # [A, G]
    d_out = (d["area"][di][None, :] < lo) | (d["area"][di][None, :] > hi)  # [A, D]
    n_a, n_t = len(RANGES), len(IOU_THRS)
    if len(gi) and len(di):
        keys = [row.tobytes() for row in g_ig]
        uniq = list(dict.fromkeys(keys))
        m = _greedy(_box_iou(d["box"][di], g["box"][gi], crowd),
                    np.stack([g_ig[keys.index(k)] for k in uniq]), crowd)
        matched = m[[uniq.index(k) for k in keys]]  # [A, T, D]
    else:
        matched = np.full((n_a, n_t, len(di)), -1, dtype=np.int64)
    hit = matched >= 0
    if len(gi):
        flat = np.take_along_axis(g_ig, np.maximum(matched, 0).reshape(n_a, -1), axis=1)
        hit_ig = hit & flat.reshape(matched.shape)
    else:
        hit_ig = hit
    tp = hit & ~hit_ig
    fp = ~hit & ~d_out[:, None, :]
    return tp, fp, (~g_ig).sum(axis=1)


def _top_dets(d: dict) -> np.ndarray:
    """Detection indices by (image, category, score descending, input order), keeping the
    first ``MAX_DETS`` of each image and category."""
    order = np.lexsort((-d["score"], d["cat"], d["img"]))
    key = d["img"][order] * (int(d["cat"].max(initial=0)) + 1) + d["cat"][order]
    start = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    rank = np.arange(len(order)) - np.repeat(start, np.diff(np.r_[start, len(order)]))
    return order[rank < MAX_DETS] if len(order) else order


def _match_all(g: dict, d: dict, n_images: int, n_cats: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per kept detection (``_top_dets`` order) TP and FP ``[D, A, T]``; ``gt_counts``."""
    keep = _top_dets(d)
    d_key = d["img"][keep] * n_cats + d["cat"][keep]
    g_order = np.argsort(g["img"] * n_cats + g["cat"], kind="stable")
    g_key = (g["img"] * n_cats + g["cat"])[g_order]
    tp = np.zeros((len(keep), len(RANGES), len(IOU_THRS)), dtype=bool)
    fp = np.zeros_like(tp)
    counts = np.zeros((n_images, n_cats, len(RANGES)), dtype=np.int64)
    for key in np.union1d(d_key, g_key).tolist():
        ds = slice(*np.searchsorted(d_key, [key, key + 1]))
        gs = slice(*np.searchsorted(g_key, [key, key + 1]))
        t, f, c = _match_group(g, g_order[gs], d, keep[ds])
        tp[ds], fp[ds] = t.transpose(2, 0, 1), f.transpose(2, 0, 1)
        counts[key // n_cats, key % n_cats] = c
    return keep, tp, fp, counts


def _prepare_curve(img: np.ndarray, tp: np.ndarray, live: np.ndarray) -> Curve:
    """The ``Curve`` of detections in score order with TP and live flags ``[T, D]``."""
    cols = live.any(axis=0)
    img, tp, live = img[cols], tp[:, cols], live[:, cols]
    var = np.flatnonzero(~live.all(axis=0))
    hits = [np.flatnonzero(r) for r in tp]
    width = max(len(h) for h in hits)
    pos = np.zeros((len(hits), width), dtype=np.int64)
    valid = np.zeros((len(hits), width), dtype=np.int64)
    for t, h in enumerate(hits):
        pos[t, :len(h)], pos[t, len(h):] = h, (h[-1] if len(h) else 0)
        valid[t, :len(h)] = 1
    return Curve(img=img, pos=pos, valid=valid, var=var,
                 ign=(~live[:, var]).astype(np.int64),
                 n_var=np.searchsorted(var, pos, side="right"))


def match_images(gt: dict, dets: list[dict]) -> MatchTable:
    """Match every image of a clean ``gt`` / ``dets`` pair once (see ``MatchTable``).

    ``gt`` and ``dets`` are what ``load_gt`` / ``load_dets`` (bbox) return. Takes well
    under a second for 500 images of 60 detections.
    """
    g, d = _records(gt, dets)
    n_images, n_cats = len(gt["images"]), len(gt["categories"])
    keep, tp, fp, counts = _match_all(g, d, n_images, n_cats)
    img, cat, score = d["img"][keep], d["cat"][keep], d["score"][keep]
    curves = []
    for k in range(n_cats):
        sel = np.flatnonzero(cat == k)
        sel = sel[np.argsort(-score[sel], kind="stable")]
        curves.append([_prepare_curve(img[sel], tp[sel, a].T, (tp[sel, a] | fp[sel, a]).T)
                       for a in range(len(RANGES))])
    det_counts = np.bincount(d["img"], minlength=n_images)
    return MatchTable(gt_counts=counts, det_counts=det_counts, curves=curves)


def _curve(c: Curve, w: np.ndarray, n_pos: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision ``[T, R]`` at the recall thresholds and final recall ``[T]`` of one
    category and range, each detection counted ``w`` (int64) of its image times.

    Counts are summed in int64 (exact, and several times faster than a float cumsum)."""
    n_t = len(IOU_THRS)
    q = np.zeros((n_t, len(REC_THRS)))
    if not c.pos.shape[1]:
        return q, np.zeros(n_t)
    wd = w[c.img]
    seen = np.cumsum(wd)[c.pos]  # [T, M] detections up to each TP column
    skipped = np.zeros((n_t, len(c.var) + 1), dtype=np.int64)
    np.cumsum(wd[c.var] * c.ign, axis=1, out=skipped[:, 1:])
    seen -= np.take_along_axis(skipped, c.n_var, axis=1)  # ... not ignored at t
    tp_n = np.cumsum(wd[c.pos] * c.valid, axis=1)
    fp = (seen - tp_n).astype(float)
    tp = tp_n.astype(float)
    rc = tp / n_pos
    pr = tp / (fp + tp + np.spacing(1))
    env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
    for t in range(n_t):
        idx = np.searchsorted(rc[t], REC_THRS, side="left")
        inside = idx < rc.shape[1]
        q[t, inside] = env[t, idx[inside]]
    return q, rc[:, -1]


def weighted_summary(table: MatchTable, weights) -> dict:
    """The keys of ``evaluate`` on the set where image n appears ``weights[n]`` times.

    ``weights`` is a ``[N]`` vector of non-negative integers (``np.bincount(draw,
    minlength=N)`` for a bootstrap resample ``draw``). A bucket without ground truth gives -1.
    """
    n_images, n_cats, n_a = table.gt_counts.shape
    w = np.asarray(weights)
    if (w.shape != (n_images,) or not np.isfinite(w).all() or (w < 0).any()
            or (w != np.round(w)).any()):
        raise InputError(f"weighted_summary: need {n_images} non-negative whole weights, "
                         f"got shape {w.shape}")
    w = w.astype(np.int64)
    n_t, n_r = len(IOU_THRS), len(REC_THRS)
    precision = np.full((n_t, n_r, n_cats, n_a, 1), -1.0)
    recall = np.full((n_t, n_cats, n_a, 1), -1.0)
    n_pos = np.tensordot(w, table.gt_counts, axes=1)  # [K, A] int
    for k, per_range in enumerate(table.curves):
        for a, c in enumerate(per_range):
            if n_pos[k, a] > 0:
                precision[:, :, k, a, 0], recall[:, k, a, 0] = _curve(c, w, float(n_pos[k, a]))
    out = summarize(precision, recall, IOU_THRS)
    for a, label in enumerate(RANGE_LABELS):
        out[f"n_gt_{label}"] = int(n_pos[:, a].sum())
    out["n_dets"] = int(w @ table.det_counts)
    return out


__all__ = ["IOU_THRS", "REC_THRS", "RANGES", "Curve", "MatchTable", "match_images",
           "weighted_summary"]

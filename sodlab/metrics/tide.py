"""TIDE error breakdown per size bucket: why each detection is wrong and each object missed.

Layer L1. Paper: Bolya et al. 2020, "TIDE: A General Toolbox for Identifying Object
Detection Errors". Taught in notebook 10_benchmark_report and used by ``sodlab eval
--errors``. Definitions follow TIDE's reference implementation (``tidecv/quantify.py``):
per image, detections (top 100 by score) are matched greedily, in score order, to the
unused same-class ground truth of highest IoU when that IoU >= ``fg_iou``; unmatched
detections inside a same-class crowd region (IoF > ``fg_iou``) are ignored. Each other
unmatched detection gets the first error that applies:

- localisation: best same-class IoU in [bg_iou, fg_iou];
- classification: best other-class IoU >= fg_iou;
- duplicate: best IoU with an already matched same-class object >= fg_iou;
- background: best IoU with any object <= bg_iou (or no object in the image);
- both: anything else (wrong class and poorly localised).

A non-crowd object that is unmatched and not the target of a localisation or classification
error is missed. dAP (TIDE's "fix one error type, recompute AP at IoU fg_iou", each type fixed
on its own; a fixed localisation/classification error becomes a true positive only for the
highest-scoring such detection per object) is a fraction, like our other metrics. Per bucket,
AP and dAP use the objects in the bucket and the detections counted in it (true positives
by their object's area), under the same matching, so bucket AP can differ slightly from
COCO's, which re-matches per area range.

Buckets: errors tied to an object (localisation, classification, duplicate, both, missed)
count in the bucket(s) of that object's COCO ``area`` field (for "both": the object of
highest IoU); background errors count in the bucket(s) of the detection's own box area.
Ranges are inclusive (``sodlab.boxes.AREA_RANGES``), so an area can count in two buckets.

Dimension legend: D detections in one image, G non-crowd objects, C crowd regions.
"""

from __future__ import annotations

import numpy as np

from sodlab.boxes import AREA_RANGES, BUCKETS, xywh_to_xyxy
from sodlab.metrics.coco import DetsLike, GtLike, load_dets, load_gt, paused_gc

ERROR_TYPES: tuple[str, ...] = ("classification", "localisation", "both", "duplicate",
                                "background", "missed")
_CLS, _LOC, _BOTH, _DUPE, _BKG = range(5)  # codes for detection errors; -1 none
MAX_DETS = 100


def _iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection-over-``a``-area of xyxy boxes a [D,4], b [G,4] -> [D,G] each."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])  # [D, G, 2]
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # [D, G, 2]
    wh = (rb - lt).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]  # [D, G]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # [D]
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # [G]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    iof = np.where(area_a[:, None] > 0, inter / np.where(area_a > 0, area_a, 1)[:, None], 0.0)
    return iou, iof


def _match(d_box, d_cat, g_box, g_cat, fg: float):
    """Greedy matching in score order to the unused same-class object of highest IoU >= fg.

    Returns status [D] (1 matched, else 0), target [D] (the matched object, else -1),
    used [G] and the IoU [D, G], same-class [D, G] and same-class IoU [D, G] matrices.
    """
    D, G = len(d_box), len(g_box)
    status = np.zeros(D, dtype=np.int64)
    target = np.full(D, -1, dtype=np.int64)
    used = np.zeros(G, dtype=bool)
    if not G:
        iou = np.zeros((D, 0))
        return status, target, used, iou, np.zeros((D, 0), dtype=bool), iou
    iou, _ = _iou(d_box, g_box)  # [D, G]
    same = d_cat[:, None] == g_cat[None, :]  # [D, G]
    cls_iou = iou * same
    # Only dets that can match need the loop.
    for i in np.flatnonzero(cls_iou.max(1) >= fg):
        row = np.where(used, 0.0, cls_iou[i])
        j = int(row.argmax())
        if row[j] >= fg:
            used[j] = True
            status[i] = 1
            target[i] = j
    return status, target, used, iou, same, cls_iou


def _first_errors(fp, iou, same, cls_iou, used, target, fg: float, bg: float) -> np.ndarray:
    """Error code [D] of each false positive ``fp`` [D] (the first type that applies; -1 for
    the others); ``target`` [D] is set to the object each error refers to (in place)."""
    D = len(fp)
    error = np.full(D, -1, dtype=np.int64)
    rows = np.arange(D)
    j_cls = cls_iou.argmax(1)
    m_cls = cls_iou[rows, j_cls]
    non = iou * ~same
    j_non = non.argmax(1)
    m_non = non[rows, j_non]
    used_cls = cls_iou * used[None, :]
    j_used = used_cls.argmax(1)
    m_used = used_cls[rows, j_used]
    j_any = iou.argmax(1)
    m_any = iou[rows, j_any]
    todo = fp.copy()
    for code, cond, j in ((_LOC, (m_cls >= bg) & (m_cls <= fg), j_cls),
                          (_CLS, m_non >= fg, j_non),
                          (_DUPE, m_used >= fg, j_used),
                          (_BKG, m_any <= bg, None),
                          (_BOTH, np.ones(D, dtype=bool), j_any)):
        hit = todo & cond
        error[hit] = code
        if j is not None:
            target[hit] = j[hit]
        todo &= ~hit
    return error


def _image(d_box, d_cat, g_box, g_cat, c_box, c_cat, fg: float, bg: float):
    """One image (dets sorted by score). Returns det status, det error, det target, gt flags.

    status [D]: 1 true positive, 0 false positive, -1 ignored (crowd); error [D]: code or -1;
    target [D]: the object index an error or match refers to (-1 none); used [G], usable [G].
    """
    status, target, used, iou, same, cls_iou = _match(d_box, d_cat, g_box, g_cat, fg)
    usable = np.zeros(len(g_box), dtype=bool)
    if len(c_box):
        _, iof = _iou(d_box, c_box)  # [D, C]
        hit = ((iof > fg) & (d_cat[:, None] == c_cat[None, :])).any(1)
        status[(status == 0) & hit] = -1
    fp = status == 0
    if not len(g_box):
        error = np.full(len(d_box), -1, dtype=np.int64)
        error[fp] = _BKG
        return status, error, target, used, usable
    error = _first_errors(fp, iou, same, cls_iou, used, target, fg, bg)
    for code in (_LOC, _CLS):
        t = target[error == code]
        usable[t[~used[t]]] = True
    return status, error, target, used, usable


def _ap(score: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """TIDE's AP for one class: 101-point interpolated precision, 0 without objects."""
    if n_gt <= 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    t = tp[order].astype(float)
    ct = np.cumsum(t)
    prec = ct / np.arange(1, len(t) + 1)
    rec = ct / n_gt
    prec = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
    idx = np.searchsorted(rec, np.linspace(0, 1, 101), side="left")
    y = np.where(idx < len(prec), prec[np.minimum(idx, len(prec) - 1)] if len(prec) else 0, 0)
    return float(np.mean(y))


def _map(cls: np.ndarray, score: np.ndarray, tp: np.ndarray, n_gt: dict) -> float:
    keys = sorted(set(cls.tolist()) | {k for k, v in n_gt.items() if v > 0})
    if not keys:
        return 0.0
    return float(np.mean([_ap(score[cls == k], tp[cls == k], n_gt.get(k, 0)) for k in keys]))


def _in_buckets(area: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for b in (*BUCKETS, "all"):
        lo, hi = AREA_RANGES[b]
        out[b] = (area >= lo) & (area <= hi)
    return out


def _as_arrays(g: dict, d: list) -> dict[str, np.ndarray]:
    """The objects' (``g_*``) and detections' (``d_*``) fields as arrays, boxes as xyxy."""
    ga = g["annotations"]
    return {
        "g_img": np.array([a["image_id"] for a in ga], dtype=np.int64),
        "g_cat": np.array([a["category_id"] for a in ga], dtype=np.int64),
        "g_box": xywh_to_xyxy(np.array([a["bbox"] for a in ga], dtype=float).reshape(-1, 4)),
        "g_area": np.array([a["area"] for a in ga], dtype=float),
        "g_crowd": np.array([a["iscrowd"] for a in ga], dtype=bool),
        "d_img": np.array([x["image_id"] for x in d], dtype=np.int64),
        "d_cat": np.array([x["category_id"] for x in d], dtype=np.int64),
        "d_box": xywh_to_xyxy(np.array([x["bbox"] for x in d], dtype=float).reshape(-1, 4)),
        "d_score": np.array([x["score"] for x in d], dtype=float),
    }


def _all_images(a: dict[str, np.ndarray], image_ids, fg_iou: float, bg_iou: float,
                progress: bool):
    """``_image`` over every image (dets sorted by score within it, top ``MAX_DETS``).

    Returns kept (the detections looked at), their status, error and target (an index into
    all objects, -1 none), and used [G] and usable [G] over all objects.
    """
    from tqdm.auto import tqdm

    g_crowd, d_box, d_cat, g_box, g_cat = (a[k] for k in ("g_crowd", "d_box", "d_cat",
                                                         "g_box", "g_cat"))
    g_by = _group(a["g_img"])
    d_order = (np.lexsort((-a["d_score"], a["d_img"])) if len(a["d_img"])
               else np.zeros(0, dtype=np.int64))
    d_by = _group(a["d_img"][d_order], d_order)
    kept, status, error, target = [], [], [], []
    used = np.zeros(len(g_cat), dtype=bool)
    usable = np.zeros(len(g_cat), dtype=bool)
    for img in tqdm(image_ids, disable=not progress, desc="errors"):
        di = d_by.get(img, np.zeros(0, dtype=np.int64))[:MAX_DETS]
        gi = g_by.get(img, np.zeros(0, dtype=np.int64))
        gn, gc = gi[~g_crowd[gi]], gi[g_crowd[gi]]
        if not len(di):
            continue
        s, e, t, u, ub = _image(d_box[di], d_cat[di], g_box[gn], g_cat[gn], g_box[gc],
                                g_cat[gc], fg_iou, bg_iou)
        kept.append(di)
        status.append(s)
        error.append(e)
        tg = np.full_like(t, -1)
        tg[t >= 0] = gn[t[t >= 0]]
        target.append(tg)
        used[gn] = u
        usable[gn] = ub
    kept, status, error, target = (np.concatenate(x) if x else np.zeros(0, dtype=np.int64)
                                   for x in (kept, status, error, target))
    return kept, status, error, target, used, usable


_DET_ERRORS = (("classification", _CLS), ("localisation", _LOC), ("both", _BOTH),
               ("duplicate", _DUPE), ("background", _BKG))


def _bucket_counts(error, status, missed, g_crowd, err_b, gt_b, tp_b) -> dict:
    """``{bucket: {error type: n, "tp": n, "n_gt": n}}``."""
    counts = {}
    for b in (*BUCKETS, "all"):
        row = {name: int(((error == code) & err_b[b]).sum()) for name, code in _DET_ERRORS}
        row["missed"] = int((missed & gt_b[b]).sum())
        row["tp"] = int(((status == 1) & tp_b[b]).sum())
        row["n_gt"] = int((~g_crowd & gt_b[b]).sum())
        counts[b] = row
    return counts


def _best_fixes(error, target, t_used, k_score) -> np.ndarray:
    """[K] bool: per object, the top-scoring classification or localisation error on it
    (the one TIDE's fix turns into a true positive)."""
    fixable = ((error == _CLS) | (error == _LOC)) & (target >= 0) & ~t_used
    best = np.zeros(len(error), dtype=bool)
    if fixable.any():
        idx = np.flatnonzero(fixable)
        idx = idx[np.lexsort((-k_score[idx], target[idx]))]
        first = np.r_[True, target[idx][1:] != target[idx][:-1]]
        best[idx[first]] = True
    return best


def _fixed_gains(error, best, live, t_cat, k_cls, k_score, k_tp, n_gt, fixed_gt,
                 base: float) -> dict[str, float]:
    """AP gain of fixing each error type on its own (TIDE's fix rules), in ERROR_TYPES order."""
    gains = {}
    for name, code in _DET_ERRORS:
        hit = error == code
        keep = live & ~(hit & ~best)
        cls = np.where(hit & best, t_cat, k_cls)
        tp = k_tp | (hit & best)
        gains[name] = max(_map(cls[keep], k_score[keep], tp[keep], n_gt) - base, 0.0)
    gains["missed"] = max(_map(k_cls[live], k_score[live], k_tp[live], fixed_gt) - base, 0.0)
    return {t: gains[t] for t in ERROR_TYPES}


def error_breakdown(gt: GtLike, dets: DetsLike, *, fg_iou: float = 0.5, bg_iou: float = 0.1,
                    progress: bool = False) -> dict:
    """TIDE error counts per size bucket and dAP per error type (see the module docstring).

    Returns ``{"counts": {bucket: {error type: n, "tp": n, "n_gt": n}}, "dAP": {bucket:
    {error type: AP gain}}, "AP": {bucket: TIDE's AP at fg_iou}, "fg_iou", "bg_iou"}`` for
    buckets tiny/small/medium/large/all; AP and dAP are -1 for a bucket without objects.
    """
    with paused_gc():
        g = load_gt(gt)
        d = load_dets(dets, g)
    a = _as_arrays(g, d)
    g_cat, g_area, g_crowd, d_box = a["g_cat"], a["g_area"], a["g_crowd"], a["d_box"]
    kept, status, error, target, used, usable = _all_images(
        a, sorted({im["id"] for im in g["images"]}), fg_iou, bg_iou, progress)
    missed = ~g_crowd & ~used & ~usable
    # Per-object values looked up by target; target -1 (no object) picks the sentinel at the end.
    t_area, t_cat = np.append(g_area, 0.0)[target], np.append(g_cat, -1)[target]
    t_used = np.append(used, True)[target]
    d_area = (d_box[kept, 2] - d_box[kept, 0]) * (d_box[kept, 3] - d_box[kept, 1])
    area_of_err = np.where(error == _BKG, d_area, t_area)
    gt_b = _in_buckets(g_area)
    counts = _bucket_counts(error, status, missed, g_crowd, _in_buckets(area_of_err), gt_b,
                            _in_buckets(t_area))

    # dAP: fix one error type at a time and recompute AP at fg_iou (TIDE's fix rules), over
    # all objects and per bucket (a detection belongs to the bucket its count went to).
    k_cls, k_score, k_tp = a["d_cat"][kept], a["d_score"][kept], status == 1
    best = _best_fixes(error, target, t_used, k_score)
    det_b = _in_buckets(np.where(status == 1, t_area, area_of_err))
    ap, dap = {}, {}
    for b in (*BUCKETS, "all"):
        live = (status >= 0) & det_b[b]
        gts = ~g_crowd & gt_b[b]
        n_gt = {int(c): int((gts & (g_cat == c)).sum()) for c in np.unique(g_cat)}
        base = _map(k_cls[live], k_score[live], k_tp[live], n_gt)
        if not any(n_gt.values()):
            ap[b], dap[b] = -1.0, {t: -1.0 for t in ERROR_TYPES}
            continue
        fixed = {c: n - int((missed & gts & (g_cat == c)).sum()) for c, n in n_gt.items()}
        ap[b] = base
        dap[b] = _fixed_gains(error, best, live, t_cat, k_cls, k_score, k_tp, n_gt, fixed, base)
    return {"counts": counts, "dAP": dap, "AP": ap, "fg_iou": fg_iou, "bg_iou": bg_iou}


def _group(keys: np.ndarray, values: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """{key: values with that key, in their order} for sorted-or-not integer keys."""
    values = np.arange(len(keys)) if values is None else values
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    cuts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, dtype=int)
    ends = np.r_[cuts[1:], len(k)]
    return {int(k[s]): v[s:e] for s, e in zip(cuts, ends)}

"""COCO box AP / AR / recall@0.5 per size bucket (tiny, small, medium, large), on faster-coco-eval.

Layer L1. Taught in notebook 00 (size buckets) and used by every notebook that reports a
number. The engine is faster-coco-eval (a C++ port of pycocotools' ``COCOeval``); we set
its area ranges to pycocotools' own, inclusive at both ends, plus our ``tiny`` bucket
(``sodlab.boxes.AREA_RANGES``), and read AP/AR per range straight out of its
``eval["precision"]`` ``[T, R, K, A, M]`` and ``eval["recall"]`` ``[T, K, A, M]`` arrays.
``buckets=`` picks another named set of ranges (AI-TOD's, TinyPerson's, SODA's:
``sodlab.metrics.buckets``) and ``max_dets=`` the detections kept per image (default 100).

Dimension legend: T IoU thresholds (0.50:0.05:0.95), R recall thresholds (101), K categories,
A area ranges (all, then the set's buckets; COCO: all, tiny, small, medium, large), M
max-detection settings (1, 10, max_dets; fewer when max_dets <= 10).

Inputs: ground truth is a COCO dict, an ``annotations.json`` path or a split folder;
detections are a list of COCO result dicts (``image_id, category_id, bbox [x,y,w,h],
score``) or a path to such a JSON list. Buckets use the ground truth's ``area`` field.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from sodlab.boxes import BUCKETS
from sodlab.data.coco import load_coco
from sodlab.errors import InputError
from sodlab.metrics.buckets import DEFAULT_BUCKETS, BucketSet, bucket_set

# Area ranges in evaluation order; "all" first, as COCOeval expects (the default set's).
RANGE_LABELS: tuple[str, ...] = ("all", *BUCKETS)
MAX_DETS = 100

GtLike = dict | str | os.PathLike
DetsLike = list | str | os.PathLike


def _read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    if p.is_dir():
        p = p / "annotations.json"
    if not p.is_file():
        raise InputError(f"{p}: no such {what} file")
    try:
        with open(p) as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None


def load_gt(gt: GtLike) -> dict:
    """A clean copy of the ground truth: images, categories, annotations renumbered 1..N.

    Annotation ids are renumbered (COCOeval uses id 0 as 'unmatched'); a missing ``area``
    becomes ``w * h``; a missing ``iscrowd`` becomes 0.
    """
    src = gt if isinstance(gt, dict) else load_coco(gt)
    name = "ground truth" if isinstance(gt, dict) else str(gt)
    if not isinstance(src, dict) or not all(
        isinstance(src.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise InputError(f"{name}: not a COCO dict (needs lists 'images', 'annotations', "
                         "'categories')")
    images = []
    for i, img in enumerate(src["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise InputError(f"{name}: images[{i}] has no 'id'")
        images.append({"id": int(img["id"]), "height": img.get("height", 0),
                       "width": img.get("width", 0)})
    cats = []
    for i, c in enumerate(src["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise InputError(f"{name}: categories[{i}] has no 'id'")
        cats.append({"id": int(c["id"]), "name": str(c.get("name", c["id"]))})
    img_ids = {im["id"] for im in images}
    cat_ids = {c["id"] for c in cats}
    anns = []
    for i, a in enumerate(src["annotations"]):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            rec = {"id": i + 1, "image_id": int(a["image_id"]),
                   "category_id": int(a["category_id"]), "bbox": [x, y, w, h],
                   "area": float(a["area"]) if a.get("area") is not None else w * h,
                   "iscrowd": int(a.get("iscrowd", 0) or 0)}
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{name}: annotations[{i}] needs image_id, category_id, "
                             "bbox [x,y,w,h]") from None
        if rec["image_id"] not in img_ids:
            raise InputError(f"{name}: annotations[{i}] refers to unknown image "
                             f"{rec['image_id']}")
        if rec["category_id"] not in cat_ids:
            raise InputError(f"{name}: annotations[{i}] has unknown category "
                             f"{rec['category_id']}")
        if "segmentation" in a:
            rec["segmentation"] = a["segmentation"]
        anns.append(rec)
    return {"images": images, "annotations": anns, "categories": cats}


def load_dets(dets: DetsLike, gt: dict, *, iou_type: str = "bbox") -> list[dict]:
    """A clean copy of the detections, checked against the (clean) ground truth.

    For ``iou_type="segm"`` each detection needs a ``segmentation`` (RLE) and ``bbox`` is
    optional; the engine then fills in area and box as pycocotools' ``loadRes`` does.
    """
    src = dets if isinstance(dets, list) else _read_json(dets, "detections")
    name = "detections" if isinstance(dets, list) else str(dets)
    if not isinstance(src, list):
        raise InputError(f"{name}: detections must be a JSON list of result dicts")
    img_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    segm = iou_type == "segm"
    need = "segmentation" if segm else "bbox [x,y,w,h]"
    out = []
    try:
        if segm:
            for i, d in enumerate(src):
                rec = {"id": i + 1, "image_id": int(d["image_id"]),
                       "category_id": int(d["category_id"]), "score": float(d["score"]),
                       "segmentation": d["segmentation"]}
                if d.get("bbox") is not None:
                    rec["bbox"] = [float(v) for v in d["bbox"]]
                out.append(rec)
        else:  # the hot path: 500k detections should take well under a second
            for i, d in enumerate(src):
                x, y, w, h = d["bbox"]
                w, h = float(w), float(h)
                out.append({"id": i + 1, "image_id": int(d["image_id"]),
                            "category_id": int(d["category_id"]),
                            "bbox": [float(x), float(y), w, h], "score": float(d["score"]),
                            "area": w * h, "iscrowd": 0})
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{name}: detection {len(out)} needs image_id, category_id, {need}, "
                         "score") from None
    for key, known, what in (("image_id", img_ids, "image"),
                             ("category_id", cat_ids, "category")):
        vals = np.fromiter((r[key] for r in out), dtype=np.int64, count=len(out))
        bad = np.flatnonzero(~np.isin(vals, np.fromiter(known, dtype=np.int64)))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{name}: detection {i} has {what} {vals[i]}, which is not in "
                             "the ground truth")
    return out


@contextlib.contextmanager
def paused_gc():
    """Pause Python's cyclic garbage collector while building many small dicts.

    Evaluation creates about one dict per detection and frees none of them cyclically; with
    the collector running, its full passes over them cost more than the evaluation itself.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _quiet(*args, **kwargs) -> None:
    return None


def max_dets_list(max_dets: int) -> list[int]:
    """COCOeval's ``maxDets`` for a limit of ``max_dets`` per image: ``[1, 10, max_dets]``.

    Settings not below ``max_dets`` are dropped (COCOeval sorts the list and evaluates at
    its last entry), so 100 gives ``[1, 10, 100]`` and 5 gives ``[1, 5]``. A non-integer or
    a limit below 1 raises ``InputError``.
    """
    try:
        if isinstance(max_dets, bool):
            raise TypeError
        m = operator.index(max_dets)
    except TypeError:
        raise InputError(f"max_dets must be a whole number >= 1, got {max_dets!r}") from None
    if m < 1:
        raise InputError(f"max_dets must be >= 1 (detections kept per image), got {m}")
    return [k for k in (1, 10) if k < m] + [m]


class _NoSpanWarning(logging.Filter):
    """Drops faster-coco-eval's warning that a set's ranges do not cover 0 to 1e10."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Provided area ranges do not span")


def run_cocoeval(gt: dict, dets: list[dict], *, iou_type: str = "bbox",
                 buckets: str | BucketSet = DEFAULT_BUCKETS, max_dets: int = MAX_DETS):
    """Run faster-coco-eval on clean inputs with a bucket set's ranges; returns the COCOeval."""
    from faster_coco_eval import COCO, COCOeval_faster

    bset = buckets if isinstance(buckets, BucketSet) else bucket_set(buckets)
    max_dets_setting = max_dets_list(max_dets)
    ranges = {b: [lo, hi] for b, lo, hi in bset.ranges[1:]}
    sink = io.StringIO()
    log = logging.getLogger("faster_coco_eval.core.cocoeval")
    span_filter = _NoSpanWarning()
    log.addFilter(span_filter)
    try:
        with contextlib.redirect_stdout(sink):
            coco_gt = COCO(gt, print_function=_quiet)
            if iou_type == "bbox" or not dets:
                coco_dt = COCO(print_function=_quiet)
                coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"],
                                   "annotations": dets}
                coco_dt.createIndex()
            else:
                coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, ranges=ranges,
                                 print_function=_quiet)
            ev.params.areaRng = bset.area_rng
            ev.params.areaRngLbl = list(bset.labels)
            ev.params.maxDets = max_dets_setting
            ev.evaluate()
            ev.accumulate()
    finally:
        log.removeFilter(span_filter)
    return ev


def _mean_valid(a: np.ndarray) -> float:
    v = a[a > -1]
    return float(v.mean()) if v.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray, iou_thrs: np.ndarray,
              labels: tuple[str, ...] = RANGE_LABELS) -> dict:
    """Our metric keys from COCOeval's precision ``[T,R,K,A,M]`` and recall ``[T,K,A,M]``.

    ``labels`` names the A area ranges, ``all`` first; every other one gets ``AP_<label>``,
    ``AR_<label>`` and ``R50_<label>``. Everything is read at the last max-dets setting.
    """
    m = -1  # the last max-dets setting, max_dets (100 by default)
    t50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    out = {"AP": _mean_valid(precision[:, :, :, 0, m]),
           "AP50": _mean_valid(precision[t50, :, :, 0, m]),
           "AP75": _mean_valid(precision[t75, :, :, 0, m]),
           "AR": _mean_valid(recall[:, :, 0, m]),
           "R50": _mean_valid(recall[t50, :, 0, m])}
    for a, b in enumerate(labels[1:], start=1):
        out[f"AP_{b}"] = _mean_valid(precision[:, :, :, a, m])
        out[f"AR_{b}"] = _mean_valid(recall[:, :, a, m])
        out[f"R50_{b}"] = _mean_valid(recall[t50, :, a, m])
    return out


def pr_curves(gt, dets, *, iou: float = 0.5) -> dict:
    """Precision at COCO's 101 recall thresholds per size bucket at one IoU.

    ``{"iou", "recall": [R], "precision": {bucket: [R]}}``: the mean over categories that
    have objects of the bucket (-1 where none has).
    """
    g = load_gt(gt)
    ev = run_cocoeval(g, load_dets(dets, g))
    p = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    t = int(np.argmin(np.abs(np.asarray(ev.params.iouThrs) - iou)))
    out = {}
    for a, label in enumerate(RANGE_LABELS):
        pk = p[t, :, :, a, -1]  # [R, K]
        valid = pk > -1
        mean = np.where(valid.any(1), np.where(valid, pk, 0).sum(1) /
                        np.maximum(valid.sum(1), 1), -1.0)  # [R]
        out[label] = [float(x) for x in mean]
    return {"iou": iou, "recall": [float(r) for r in np.asarray(ev.params.recThrs)],
            "precision": out}


def gt_counts(gt: dict, buckets: str | BucketSet = DEFAULT_BUCKETS) -> dict:
    """Non-crowd ground-truth objects per bucket of a set (``n_gt_tiny`` ... ``n_gt_all``)."""
    bset = buckets if isinstance(buckets, BucketSet) else bucket_set(buckets)
    area = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]], dtype=float)
    rng = dict(zip(bset.labels, bset.area_rng))
    out = {}
    for b in (*bset.buckets, "all"):
        lo, hi = rng[b]
        out[f"n_gt_{b}"] = int(((area >= lo) & (area <= hi)).sum())
    return out


def evaluate(gt: GtLike, dets: DetsLike, *, iou_type: str = "bbox",
             progress: bool = False, buckets: str = DEFAULT_BUCKETS,
             max_dets: int = MAX_DETS) -> dict:
    """COCO AP/AR at ``max_dets`` detections overall and per size bucket, -1 for an empty bucket.

    Keys: ``AP, AP50, AP75, AR, R50``, and for each bucket b of the set ``buckets`` (default
    ``coco``: tiny/small/medium/large) ``AP_b, AR_b, R50_b`` (R50 = recall at IoU 0.5), plus
    ``n_gt_b`` and ``n_gt_all`` (non-crowd objects) and ``n_dets``. The sets (``coco``,
    ``aitod``, ``tinyperson``, ``soda``) are in ``sodlab.metrics.buckets``; ``max_dets``
    (default 100; AI-TOD's evaluator uses 1500) is the number of highest-scoring detections
    kept per image and category. An unknown set, ``max_dets < 1``, or a detection on an
    image or of a category that the ground truth does not have raises ``InputError``; an
    empty detection list gives zeros.
    ``progress`` is accepted for a uniform signature; one evaluation has no long loop.
    """
    if iou_type not in ("bbox", "segm"):
        raise InputError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    bucket_set(buckets)
    max_dets_list(max_dets)
    with paused_gc():
        g = load_gt(gt)
        d = load_dets(dets, g, iou_type=iou_type)
        return evaluate_clean(g, d, iou_type=iou_type, buckets=buckets, max_dets=max_dets)


def evaluate_clean(gt: dict, dets: list[dict], *, iou_type: str = "bbox",
                   buckets: str = DEFAULT_BUCKETS, max_dets: int = MAX_DETS) -> dict:
    """``evaluate`` on inputs already passed through ``load_gt`` / ``load_dets``."""
    bset = bucket_set(buckets)
    n_max = len(max_dets_list(max_dets))
    out: dict[str, Any] = {}
    if not gt["annotations"] and not dets:
        a = len(bset.labels)
        keys = summarize(np.full((10, 101, 1, a, n_max), -1.0),
                         np.full((10, 1, a, n_max), -1.0), np.linspace(0.5, 0.95, 10),
                         bset.labels)
        out.update(keys)
    else:
        ev = run_cocoeval(gt, dets, iou_type=iou_type, buckets=bset, max_dets=max_dets)
        out.update(summarize(np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]),
                             np.asarray(ev.params.iouThrs), bset.labels))
    out.update(gt_counts(gt, bset))
    out["n_dets"] = len(dets)
    return out

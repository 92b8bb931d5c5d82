"""Benchmark: our size-wise COCO evaluation against pycocotools on the same synthetic input.

Layer L4. A seeded synthetic COCO ground truth (several categories with non-contiguous ids,
objects of every size bucket, some crowd boxes) and jittered detections plus false
positives; ``sodlab.metrics.evaluate`` (faster-coco-eval underneath) is timed side by side
with pycocotools' ``COCOeval`` computing the same five area ranges (all, tiny, small,
medium, large), the numbers are compared, and ``error_breakdown`` is timed on its own.
Target: speedup >= 6. Notebook 10_benchmark_report shows the result.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time

import numpy as np

from sodlab.boxes import xywh_to_xyxy
from sodlab.data.coco import to_coco_results

CAT_IDS = (1, 3, 7, 12)


def make_synthetic(n_images: int, dets_per_image: int, *, seed: int = 0) -> tuple[dict, list]:
    """A COCO gt dict and a result list: ~dets_per_image/3 objects and dets_per_image dets."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    n_obj = max(1, dets_per_image // 3)
    for img_id in range(1, n_images + 1):
        W, H = 640, 480
        images.append({"id": img_id, "width": W, "height": H, "file_name": f"{img_id}.png"})
        k = int(rng.integers(1, 2 * n_obj))
        side = np.exp(rng.uniform(np.log(3), np.log(200), size=k))  # log-uniform sizes
        aspect = np.exp(rng.uniform(-0.5, 0.5, size=k))
        w, h = side * aspect, side / aspect
        x, y = rng.uniform(0, W - w.clip(max=W - 1)), rng.uniform(0, H - h.clip(max=H - 1))
        cats = rng.choice(CAT_IDS, size=k)
        crowd = rng.random(k) < 0.03
        gt_boxes = np.stack([x, y, w, h], 1)
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(cats[j]),
                         "bbox": [float(v) for v in gt_boxes[j]],
                         "area": float(w[j] * h[j]), "iscrowd": int(crowd[j])})
        # detections: jittered copies of most objects, some with a wrong class, the rest noise
        n_tp = min(k, dets_per_image)
        keep = rng.random(n_tp) < 0.85
        jit = rng.normal(0, 0.07, size=(n_tp, 4)) * np.stack([w, h, w, h], 1)[:n_tp]
        boxes = gt_boxes[:n_tp] + jit
        boxes[:, 2:] = boxes[:, 2:].clip(min=1.0)
        dcat = np.where(rng.random(n_tp) < 0.1, rng.choice(CAT_IDS, size=n_tp), cats[:n_tp])
        score = rng.uniform(0.3, 1.0, size=n_tp)
        n_fp = dets_per_image - int(keep.sum())
        fs = np.exp(rng.uniform(np.log(3), np.log(150), size=n_fp))
        fx, fy = rng.uniform(0, W - fs), rng.uniform(0, H - fs.clip(max=H - 1))
        fc = rng.choice(CAT_IDS, size=n_fp)
        fsc = rng.uniform(0.0, 0.8, size=n_fp)
        xywh = np.concatenate([boxes[keep], np.stack([fx, fy, fs, fs], 1)])  # [D, 4]
        dets += to_coco_results([img_id], [{
            "boxes": xywh_to_xyxy(xywh), "scores": np.concatenate([score[keep], fsc]),
            "category_ids": np.concatenate([dcat[keep], fc])}])
    cats = [{"id": c, "name": f"c{c}"} for c in CAT_IDS]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def pycocotools_eval(gt: dict, dets: list) -> dict:
    """The same metric keys computed by pycocotools (area ranges all/tiny/small/medium/large).

    pycocotools changes its inputs (``loadRes`` adds keys), so pass copies.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from sodlab.boxes import AREA_RANGES
    from sodlab.metrics.coco import RANGE_LABELS, summarize

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes(dets)
        ev = COCOeval(cg, cd, "bbox")
        ev.params.areaRng = [list(AREA_RANGES[k]) for k in RANGE_LABELS]
        ev.params.areaRngLbl = list(RANGE_LABELS)
        ev.evaluate()
        ev.accumulate()
    return summarize(ev.eval["precision"], ev.eval["recall"], ev.params.iouThrs)


def run(*, quick: bool = True, progress: bool = False) -> dict:
    """Seconds for sodlab vs pycocotools on the same input, their ratio and largest difference."""
    from sodlab.metrics import error_breakdown, evaluate

    n_images = 300 if quick else 5000
    gt, dets = make_synthetic(n_images, 100, seed=0)
    t0 = time.perf_counter()
    ours = evaluate(gt, dets, progress=progress)
    sodlab_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    error_breakdown(gt, dets)
    errors_s = time.perf_counter() - t0
    out = {"n_images": n_images, "n_dets": len(dets), "sodlab_s": sodlab_s,
           "errors_s": errors_s}
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        out.update(pycocotools_s=None, speedup=None, max_abs_diff=None,
                   note="pycocotools is not installed; no comparison")
        return out
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)  # untimed
    t0 = time.perf_counter()
    ref = pycocotools_eval(gt_copy, dets_copy)
    pycocotools_s = time.perf_counter() - t0
    diff = max(abs(ours[k] - ref[k]) for k in ref)
    out.update(pycocotools_s=pycocotools_s, speedup=pycocotools_s / max(sodlab_s, 1e-9),
               max_abs_diff=float(diff))
    return out

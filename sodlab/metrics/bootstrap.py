"""Bootstrap confidence intervals for any ``evaluate`` key, resampling images with replacement.

Layer L1. Efron's percentile bootstrap over images: each resample draws as many images as
the ground truth holds, with replacement; an image drawn twice appears twice, under two new
image ids, in both the ground truth and the detections, so its objects count twice. Full-mode
notebooks use it to say whether a difference between two techniques is larger than the noise
of the validation set (``docs/design.md``, the verdict rule). Taught in notebook
10_benchmark_report.
"""

from __future__ import annotations

import numpy as np

from sodlab.data.coco import annotations_by_image
from sodlab.errors import InputError
from sodlab.metrics.coco import DetsLike, GtLike, evaluate_clean, load_dets, load_gt, paused_gc


def resample(gt: dict, dets: list[dict], draw: np.ndarray,
             by_img: tuple[dict, dict] | None = None) -> tuple[dict, list[dict]]:
    """The ground truth and detections of the images ``gt["images"][draw]``, renumbered.

    Resampled image k gets id k + 1; annotation and detection ids are renumbered 1..N.
    """
    if by_img is None:
        by_img = _by_image(gt, dets)
    g_by, d_by = by_img
    images, anns, out_dets = [], [], []
    for k, i in enumerate(draw.tolist()):
        img = gt["images"][i]
        new = k + 1
        images.append({**img, "id": new})
        anns.extend({**a, "image_id": new} for a in g_by.get(img["id"], ()))
        out_dets.extend({**x, "image_id": new} for x in d_by.get(img["id"], ()))
    for n, a in enumerate(anns, start=1):
        a["id"] = n
    for n, x in enumerate(out_dets, start=1):
        x["id"] = n
    return {"images": images, "annotations": anns, "categories": gt["categories"]}, out_dets


def _by_image(gt: dict, dets: list[dict]) -> tuple[dict, dict]:
    return annotations_by_image(gt), annotations_by_image(dets)


def bootstrap_ci(gt: GtLike, dets: DetsLike, *, keys: tuple[str, ...] = ("AP", "AP_small"),
                 n: int = 200, seed: int = 0, alpha: float = 0.05,
                 progress: bool = False) -> dict[str, tuple[float, float]]:
    """Percentile interval ``(lo, hi)`` at level 1 - alpha for each key of ``evaluate``.

    Resamples where a key is -1 (its bucket drew no objects) are left out of that key's
    interval; a key that is -1 in every resample gets ``(-1.0, -1.0)``.
    """
    from tqdm.auto import tqdm

    g = load_gt(gt)
    d = load_dets(dets, g)
    known = evaluate_clean(g, d)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise InputError(f"bootstrap_ci: unknown metric keys {unknown}; known: {sorted(known)}")
    by_img = _by_image(g, d)
    rng = np.random.default_rng(seed)
    n_img = len(g["images"])
    values: dict[str, list[float]] = {k: [] for k in keys}
    for _ in tqdm(range(n), disable=not progress, desc="bootstrap"):
        draw = rng.integers(0, n_img, size=n_img)
        with paused_gc():
            rg, rd = resample(g, d, draw, by_img)
            m = evaluate_clean(rg, rd)
        for k in keys:
            values[k].append(m[k])
    out = {}
    for k, vs in values.items():
        v = np.asarray([x for x in vs if x > -1], dtype=float)
        if not v.size:
            out[k] = (-1.0, -1.0)
        else:
            lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
            out[k] = (float(lo), float(hi))
    return out

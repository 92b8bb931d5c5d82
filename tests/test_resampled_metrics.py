"""Resampled COCO metrics by image weights (metrics.resampled) against faster-coco-eval itself.

The oracle is the slow path ``resampled_metrics`` used to take: rebuild each resample's COCO
dicts (``metrics.bootstrap.resample``) and evaluate them with ``evaluate_clean``.
"""

import numpy as np
import pytest

from sodlab.engine.records import resampled_metrics
from sodlab.metrics.bootstrap import _by_image, resample
from sodlab.metrics.coco import evaluate_clean, load_dets, load_gt
from sodlab.metrics.resampled import match_images, weighted_summary

BOUNDARY_SIDES = (16.0, 32.0, 96.0)  # areas exactly on the bucket limits


def _objects(rng, n: int, boundary: bool) -> list[tuple[float, float, float, float]]:
    """``n`` boxes [x, y, w, h] of every size bucket in a 400 x 300 image."""
    sides = list(np.exp(rng.uniform(np.log(3), np.log(180), size=n)))
    sides += list(BOUNDARY_SIDES) if boundary else []
    out = []
    for s in sides:
        ar = 1.0 if s in BOUNDARY_SIDES else float(np.exp(rng.uniform(-0.4, 0.4)))
        w, h = s * ar, s / ar
        out.append((float(rng.uniform(0, 400 - min(w, 399))),
                    float(rng.uniform(0, 300 - min(h, 299))), w, h))
    return out


def _dets_of(rng, box, cat: int, cats: tuple) -> list[dict]:
    """0-2 jittered detections of one object, sometimes an exact hit or a wrong category."""
    x, y, w, h = box
    out = []
    for _ in range(int(rng.integers(0, 3))):
        j = rng.normal(0, 0.08, size=4) * [w, h, w, h]
        c = cat if rng.random() < 0.85 else int(rng.choice(cats))
        out.append({"category_id": c, "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0),
                                                 max(h + j[3], 1.0)]})
    if rng.random() < 0.2:
        out.append({"category_id": cat, "bbox": [x, y, w, h]})
    return out


def _case(seed: int, gt_cats: tuple, det_only_cats: tuple = (), n_images: int = 24,
          tied: bool = False) -> tuple[dict, list[dict]]:
    """A clean synthetic COCO pair: shuffled image ids, crowd boxes, all buckets, images
    without gt or without detections, one image with more than 100 detections of a category.

    Scores are distinct unless ``tied``; then they repeat across images (never inside one).
    """
    rng = np.random.default_rng(seed)
    cats = gt_cats + det_only_cats
    ids = [int(v) for v in rng.permutation(n_images) * 7 + 3]
    images, anns, dets = [], [], []
    for n, img in enumerate(ids):
        images.append({"id": img, "width": 400, "height": 300})
        kind = n % 6  # 0: no gt, 1: no detections, 2: neither, else both
        boxes = [] if kind in (0, 2) else _objects(rng, int(rng.integers(1, 10)), n % 4 == 3)
        img_dets = []
        for box in boxes:
            c = int(rng.choice(gt_cats))
            anns.append({"image_id": img, "category_id": c, "bbox": list(box),
                         "area": box[2] * box[3], "iscrowd": int(rng.random() < 0.1)})
            img_dets += _dets_of(rng, box, c, cats)
        n_bg = 120 if n == 5 else int(rng.integers(0, 6))
        img_dets += [{"category_id": int(rng.choice(cats)), "bbox": list(b)}
                     for b in _objects(rng, n_bg, False)]
        if kind in (1, 2):
            img_dets = []
        if tied:
            for v, d in zip(rng.permutation(len(img_dets)), img_dets):
                d["score"] = float(v + 1) / 200.0
        dets += [{"image_id": img, **d} for d in img_dets]
    if not tied:
        for v, d in zip(rng.permutation(len(dets)), dets):
            d["score"] = (float(v) + 1.0) / (len(dets) + 1.0)
    g = load_gt({"images": images, "annotations": anns,
                 "categories": [{"id": c, "name": f"c{c}"} for c in cats]})
    return g, load_dets(dets, g)


def _slow_resampled(gt: dict, dets: list[dict], draws: np.ndarray, keys) -> dict:
    """The old path: rebuild and evaluate each resample (NaN where a key is -1)."""
    by_img = _by_image(gt, dets)
    out = {k: np.full(len(draws), np.nan) for k in keys}
    for b, draw in enumerate(draws):
        m = evaluate_clean(*resample(gt, dets, draw, by_img))
        for k in keys:
            if m[k] > -1:
                out[k][b] = m[k]
    return out


CASES = [((5,), ()), ((3, 8), (11,))]


@pytest.mark.parametrize("cats", CASES, ids=["one-category", "two-categories+det-only"])
def test_unit_weights_equal_evaluate_clean(cats):
    g, d = _case(0, *cats)
    assert any(len(d) > 100 for d in _by_image(g, d)[1].values())
    want = evaluate_clean(g, d)
    got = weighted_summary(match_images(g, d), np.ones(len(g["images"])))
    assert set(got) == set(want)
    assert want["AP"] > 0.05 and want["AP_tiny"] > -1 and want["AP_large"] > -1
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("cats", CASES, ids=["one-category", "two-categories+det-only"])
def test_resamples_equal_the_slow_path(cats):
    g, d = _case(1, *cats)
    n = len(g["images"])
    rng = np.random.default_rng(2)
    draws = np.concatenate([rng.integers(0, n, size=(4, n)),
                            np.full((1, n), 3),  # one image n times
                            np.arange(n)[None, :]])  # the set itself
    _agrees_with_the_slow_path(g, d, draws, tuple(evaluate_clean(g, d)))


def test_ties_across_images_keep_recall_and_counts():
    g, d = _case(3, (3, 8), tied=True)
    n = len(g["images"])
    draws = np.random.default_rng(4).integers(0, n, size=(3, n))
    _agrees_with_the_slow_path(g, d, draws, [k for k in evaluate_clean(g, d)
                                             if k.startswith(("AR", "R50", "n_"))])


def _agrees_with_the_slow_path(g, d, draws, keys) -> None:
    want = _slow_resampled(g, d, draws, keys)
    got = resampled_metrics(g, d, draws, keys=keys)
    for k in keys:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-9, equal_nan=True,
                                   err_msg=k)


def test_an_empty_bucket_is_nan():
    gt = load_gt({"images": [{"id": 1}, {"id": 2}],
                  "annotations": [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
                                  {"image_id": 2, "category_id": 1,
                                   "bbox": [0, 0, 120, 110]}],
                  "categories": [{"id": 1, "name": "a"}]})
    dets = load_dets([{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.9},
                      {"image_id": 2, "category_id": 1, "bbox": [1, 1, 120, 110],
                       "score": 0.8}], gt)
    draws = np.array([[1, 1], [0, 1], [0, 0]])
    got = resampled_metrics(gt, dets, draws, keys=("AP", "AP_tiny", "AP_medium", "AP_large"))
    np.testing.assert_array_equal(np.isnan(got["AP_tiny"]), [True, False, False])
    np.testing.assert_array_equal(np.isnan(got["AP_large"]), [False, False, True])
    assert np.isnan(got["AP_medium"]).all()
    np.testing.assert_allclose(got["AP"], 1.0)


def test_equal_ious_go_to_the_later_gt_as_in_cocoeval():
    # the first detection overlaps both objects with IoU 0.818 exactly; COCOeval gives it the
    # later one, so the second (an exact hit on that one) must take the first at IoU 0.667
    gt = load_gt({"images": [{"id": 1}],
                  "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
                                  {"image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10]}],
                  "categories": [{"id": 1, "name": "a"}]})
    dets = load_dets([{"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.9},
                      {"image_id": 1, "category_id": 1, "bbox": [2, 0, 10, 10], "score": 0.8}],
                     gt)
    want = evaluate_clean(gt, dets)
    got = weighted_summary(match_images(gt, dets), [1])
    assert want["AP"] < 1.0
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k

"""NWD / DotD thresholds calibrated to IoU's matching (sodlab.anchor_fit.calibrate_thresholds):
a scene counted by hand, the counts against a slow loop and against the matcher itself, the
bisection's nearest grid step, the tiny_objects study's declared thresholds, and `sodlab
anchors fit --matcher`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.anchor_fit import (
    CALIBRATION_BUCKETS,
    CALIBRATION_EDGES,
    THRESHOLD_STEPS,
    calibrate_thresholds,
    calibrated_overrides,
    load_training_boxes,
)
from sodlab.anchors import all_anchors
from sodlab.bench.studies import study
from sodlab.cli import main
from sodlab.data.coco import save_coco
from sodlab.detector import DetectorConfig, level_specs, make_config
from sodlab.engine import standard_budget
from sodlab.errors import InputError
from sodlab.matching import IGNORE, match_anchors, similarity

STEP = 1 / THRESHOLD_STEPS


# --------------------------------------------------------------------------- by hand
def _four_anchors(**kw) -> DetectorConfig:
    """One 16 px square anchor per 16 px cell of a 32 x 32 input: four anchors, centred at
    (8, 8), (24, 8), (8, 24) and (24, 24)."""
    return dataclasses.replace(make_config("fpn", num_classes=1), input_size=32, strides=[16],
                               anchor_sizes=[[16.0]], anchor_ratios=[1.0], anchor_scale=1.0,
                               pos_iou=0.5, neg_iou=0.1, nwd_constant=10.0, dotd_size=10.0,
                               **kw)


# The face [4, 4, 20, 20] (16 x 16, centre (12, 12)) against the four anchors:
#   IoU:  144 / 368 = 0.391, 48 / 464 = 0.103 (twice), 16 / 496 = 0.032
#   centre distances: sqrt(32) = 5.66, sqrt(160) = 12.65 (twice), sqrt(288) = 16.97
# The face and the anchors have one size, so NWD's W2 is the centre distance and NWD with
# C = 10 equals DotD with S = 10: exp(-d / 10) = 0.568, 0.282 (twice), 0.183.
FACE = np.array([[4.0, 4.0, 20.0, 20.0]], dtype=np.float32)
NEAR, SIDE, CORNER = (math.exp(-math.sqrt(d2) / 10) for d2 in (32, 160, 288))


def _just_above(v: float) -> float:
    """The first grid threshold above ``v``: every value up to ``v`` falls below it."""
    return (math.floor(v * THRESHOLD_STEPS) + 1) / THRESHOLD_STEPS


def test_a_scene_counted_by_hand():
    # IoU at 0.5 / 0.1: no anchor reaches 0.5, the face takes its best anchor (0.391) by the
    # low-quality rule: 1 positive; the two at 0.103 are ignored: 2; the corner is negative.
    rep = calibrate_thresholds(_four_anchors(), [FACE], [(32, 32)])
    assert rep["per_object"] == {"positives": 1.0, "ignored": 2.0, "candidates": None}
    assert rep["objects"] == {"verytiny": 0, "tiny": 0, "small": 1, "medium": 0, "all": 1}
    for kind in ("nwd", "dotd"):
        # the nearest anchor is rescued; one positive means no other anchor may reach the
        # threshold: the grid step just above the side anchors' 0.282. Two ignored: the
        # side anchors, not the corner: the step just above 0.183.
        t = rep["thresholds"][kind]
        assert t["pos"] == pytest.approx(_just_above(SIDE))
        assert t["neg"] == pytest.approx(_just_above(CORNER))
        assert t["min"] is None  # fpn does not compensate
    rows = {(r["measure"], r["setting"]): r for r in rep["table"]}
    assert rows[("IoU", "preset")]["positives"]["small"] == 1.0
    assert rows[("IoU", "preset")]["ignored"]["small"] == 2.0
    assert rows[("IoU", "preset")]["positives"]["tiny"] is None  # no face there
    # at the config's 0.7 / 0.3 only the rescued anchor counts, and 0.282 < 0.3: negative
    assert rows[("DotD", "config")]["positives"]["all"] == 1.0
    assert rows[("DotD", "config")]["ignored"]["all"] == 0.0
    for measure in ("NWD", "DotD"):
        assert rows[(measure, "calibrated")]["positives"]["all"] == 1.0
        assert rows[(measure, "calibrated")]["ignored"]["all"] == 2.0


def test_compensating_configs_get_a_min_threshold_by_hand():
    # no low-quality rule and no anchor at IoU >= 0.5: no positive, so the measure's positive
    # threshold is the step just above the nearest anchor's 0.568. Compensation candidates:
    # IoU > 0.1 takes three anchors (0.391, 0.103, 0.103), so the min is just above 0.183.
    cfg = _four_anchors(low_quality=False, compensate=True)
    rep = calibrate_thresholds(cfg, [FACE], [(32, 32)], kinds=("dotd",))
    assert rep["per_object"] == {"positives": 0.0, "ignored": 3.0, "candidates": 3.0}
    t = rep["thresholds"]["dotd"]
    assert t["pos"] == pytest.approx(_just_above(NEAR))
    assert t["neg"] == pytest.approx(_just_above(CORNER))
    assert t["min"] == pytest.approx(_just_above(CORNER))
    over = calibrated_overrides(rep, "dotd")
    assert over == (("matcher", "dotd"), ("dotd_pos", round(t["pos"], 2)),
                    ("dotd_neg", round(t["neg"], 2)), ("dotd_min", round(t["min"], 2)))
    assert [k for k, _ in calibrated_overrides(calibrate_thresholds(
        _four_anchors(), [FACE], [(32, 32)], kinds=("nwd",)), "nwd")] == \
        ["matcher", "nwd_pos", "nwd_neg"]


def test_bad_input_is_refused():
    cfg = _four_anchors()
    with pytest.raises(InputError, match="calibrated for"):
        calibrate_thresholds(cfg, [FACE], [(32, 32)], kinds=("iou",))
    with pytest.raises(InputError, match="max_images"):
        calibrate_thresholds(cfg, [FACE], [(32, 32)], max_images=0)
    with pytest.raises(InputError, match="no trained boxes"):
        calibrate_thresholds(cfg, [np.zeros((0, 4), np.float32)], [(32, 32)])
    with pytest.raises(InputError, match="one entry per image"):
        calibrate_thresholds(cfg, [FACE], [])
    with pytest.raises(InputError, match="no calibrated"):
        calibrated_overrides({"thresholds": {}}, "nwd")


# --------------------------------------------------------------------------- slow reference
def _scene(seed: int, images: int = 5):
    """Random faces of 3 to 60 px on images a little larger than a 96 px input."""
    rng = np.random.default_rng(seed)
    boxes, sizes = [], []
    for _ in range(images):
        h, w = int(rng.integers(80, 130)), int(rng.integers(80, 130))
        n = int(rng.integers(1, 6))
        side = np.exp(rng.uniform(math.log(3), math.log(60), n))  # [n]
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([w, h]) - side[:, None])  # [n, 2]
        boxes.append(np.concatenate([xy, xy + side[:, None] * [1.0, 1.2]], 1).astype(np.float32))
        sizes.append((h, w))
    return boxes, sizes


def _slow_counts(anchors, boxes, kind, constant, pos, neg, low_quality):
    """Positives and ignored anchors of each box, one anchor at a time, from the similarity
    matrix: each anchor's best box (the first on a tie), the low-quality rescue (each box's
    best anchors, a later box winning an anchor two boxes share), then the thresholds."""
    sim = similarity(anchors, torch.from_numpy(boxes), kind, constant=constant).tolist()
    n = len(boxes)
    rescued_by = {}
    if low_quality:
        for j in range(n):
            top = max(row[j] for row in sim)
            for a, row in enumerate(sim):
                if top > 0 and row[j] == top:
                    rescued_by[a] = j
    positives, ignored = [0] * n, [0] * n
    for a, row in enumerate(sim):
        best = max(row)
        first = row.index(best)
        if a in rescued_by:
            positives[rescued_by[a]] += 1
        elif best >= pos:
            positives[first] += 1
        elif best >= neg:
            ignored[first] += 1
    return positives, ignored


def _bucket(box) -> str:
    size = math.sqrt(float(box[2] - box[0]) * float(box[3] - box[1]))
    for name, hi in zip(CALIBRATION_BUCKETS, CALIBRATION_EDGES[1:]):
        if size < hi:
            return name
    raise AssertionError(size)


def _slow_table(cfg, boxes, kind, constant, pos, neg):
    """Positives and ignored anchors per box, summed by bucket, with the slow loop."""
    totals = {b: [0, 0, 0] for b in (*CALIBRATION_BUCKETS, "all")}  # objects, pos, ignored
    for b in boxes:
        anchors = all_anchors(level_specs(cfg), (96, 96))
        p, i = _slow_counts(anchors, b, kind, constant, pos, neg, cfg.low_quality)
        for j, box in enumerate(b):
            for name in (_bucket(box), "all"):
                totals[name] = [totals[name][0] + 1, totals[name][1] + p[j],
                                totals[name][2] + i[j]]
    return totals


def test_counts_agree_with_a_slow_loop_and_with_the_matcher():
    cfg = dataclasses.replace(make_config("fpn", num_classes=1), input_size=96)
    boxes, _ = _scene(3)
    # square 96 px images: no resize, no padding, every anchor grid the same
    rep = calibrate_thresholds(cfg, boxes, [(96, 96)] * len(boxes))
    rows = {(r["measure"], r["setting"]): r for r in rep["table"]}
    for (measure, setting), row in rows.items():
        kind = {"IoU": "iou", "NWD": "nwd", "DotD": "dotd"}[measure]
        constant = {"iou": None, "nwd": cfg.nwd_constant, "dotd": cfg.dotd_size}[kind]
        slow = _slow_table(cfg, boxes, kind, constant, row["pos"], row["neg"])
        for name, (objects, p, i) in slow.items():
            assert rep["objects"][name] == objects, (measure, setting, name)
            if objects:
                assert row["positives"][name] == pytest.approx(p / objects), (measure, name)
                assert row["ignored"][name] == pytest.approx(i / objects), (measure, name)
        # the matcher itself, image by image, gives the same totals
        anchors = all_anchors(level_specs(cfg), (96, 96))
        m = [match_anchors(anchors, torch.from_numpy(b), pos_iou=row["pos"], neg_iou=row["neg"],
                           allow_low_quality=cfg.low_quality, kind=kind, constant=constant)
             for b in boxes]
        n = slow["all"][0]
        assert row["positives"]["all"] == pytest.approx(sum(int((x >= 0).sum()) for x in m) / n)
        assert row["ignored"]["all"] == pytest.approx(sum(int((x == IGNORE).sum()) for x in m) / n)


def test_the_calibrated_step_is_the_nearest_to_the_target():
    cfg = dataclasses.replace(make_config("fpn", num_classes=1), input_size=96)
    boxes, _ = _scene(5, images=8)
    rep = calibrate_thresholds(cfg, boxes, [(96, 96)] * len(boxes), kinds=("nwd",))
    n = rep["objects"]["all"]
    target_p, target_i = rep["per_object"]["positives"] * n, rep["per_object"]["ignored"] * n
    t = rep["thresholds"]["nwd"]

    def totals(pos, neg):
        slow = _slow_table(cfg, boxes, "nwd", cfg.nwd_constant, pos, neg)["all"]
        return slow[1], slow[2]

    p = totals(t["pos"], t["pos"])[0]
    for other in (t["pos"] - STEP, t["pos"] + STEP):
        if 0 <= other <= 1:
            assert abs(p - target_p) <= abs(totals(other, other)[0] - target_p)
    i = totals(t["pos"], t["neg"])[1]
    for other in (t["neg"] - STEP, t["neg"] + STEP):
        if 0 <= other <= t["pos"]:
            assert abs(i - target_i) <= abs(totals(t["pos"], other)[1] - target_i)


# --------------------------------------------------------------------------- the study
def test_the_study_declares_thresholds_calibrated_on_the_quick_data(quick_dataset):
    """The tiny_objects study's NWD and DotD overrides are the calibration's (to 0.02),
    recomputed here on the quick data set for fpn at the shared budget."""
    data = load_training_boxes(quick_dataset / "train")
    cfg = make_config("fpn", num_classes=data.num_classes,
                      overrides=standard_budget("fpn", quick=True)["overrides"])
    rep = calibrate_thresholds(cfg, data.boxes, data.image_size)
    s = study("tiny_objects")
    for name, kind in (("fpn + NWD", "nwd"), ("fpn + DotD", "dotd")):
        declared = dict(s.technique(name).overrides)
        assert declared["matcher"] == kind
        assert set(declared) == {k for k, _ in calibrated_overrides(rep, kind)}, name
        for key, value in rep["thresholds"][kind].items():
            if value is not None:
                assert declared[f"{kind}_{key}"] == pytest.approx(value, abs=0.02), (name, key)
    # the defaults keep the NWD paper's thresholds: cached runs keep their meaning
    d = DetectorConfig()
    assert (d.nwd_pos, d.nwd_neg, d.dotd_pos, d.dotd_neg) == (0.7, 0.3, 0.7, 0.3)


# --------------------------------------------------------------------------- command line
def test_cli_fit_prints_calibrated_thresholds_for_a_matcher(tmp_path, capsys):
    split = tmp_path / "root" / "train"
    (split / "images").mkdir(parents=True)
    Image.new("RGB", (96, 64), (90, 120, 60)).save(split / "images" / "a.png")
    boxes = [[4, 4, 10, 12], [40, 20, 24, 30], [10, 30, 5, 6], [60, 5, 16, 16]]
    save_coco(split, {
        "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 64}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for i, b in enumerate(boxes)],
        "categories": [{"id": 1, "name": "face"}]})
    out_json = tmp_path / "fit.json"
    rc = main(["anchors", "fit", "--data", str(split.parent), "--preset", "fpn", "--k", "2",
               "--matcher", "nwd", "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0 and "nwd thresholds calibrated on the fitted anchors" in text
    saved = json.loads(out_json.read_text())
    cfg = make_config("fpn", num_classes=1, overrides=saved["overrides"])
    t = saved["calibration"]["thresholds"]["nwd"]
    assert cfg.matcher == "nwd" and cfg.nwd_pos == round(t["pos"], 2)
    assert cfg.nwd_neg == round(t["neg"], 2)

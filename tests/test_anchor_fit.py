"""Anchors fitted to a data set (sodlab.anchor_fit, `sodlab anchors fit`): k-means with 1 - IoU,
best possible recall counted by hand, the overrides it prints, and the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.anchor_fit import (
    TrainingBoxes,
    anchor_overrides,
    best_possible_recall,
    fit_anchors,
    fit_preset,
    load_training_boxes,
    near_anchor_index,
    resized_boxes,
)
from sodlab.anchors import all_anchors
from sodlab.cli import main
from sodlab.data.coco import save_coco
from sodlab.data.transforms import ResizeLongest
from sodlab.detector import level_specs, make_config
from sodlab.errors import InputError
from sodlab.matching import match_anchors


# --------------------------------------------------------------------------- k-means
def _clusters(rng, centres, n=60, spread=0.05):
    """``n`` (w, h) around each centre, multiplicative noise of about ``spread``. [len*n, 2]"""
    return np.concatenate([np.asarray(c) * np.exp(rng.normal(0, spread, (n, 2)))
                           for c in centres])


def test_kmeans_finds_hand_made_clusters():
    rng = np.random.default_rng(1)
    truth = [(40.0, 20.0), (6.0, 6.0), (12.0, 24.0)]
    wh = _clusters(rng, truth)
    centres = fit_anchors(wh, 3, seed=0)
    assert centres.shape == (3, 2)
    expected = sorted(truth, key=lambda c: c[0] * c[1])  # sorted by area
    np.testing.assert_allclose(centres, expected, rtol=0.05)
    np.testing.assert_array_equal(centres, fit_anchors(wh, 3, seed=0))  # deterministic
    for seed in range(1, 4):  # any seed finds clusters this clear
        np.testing.assert_allclose(fit_anchors(wh, 3, seed=seed), expected, rtol=0.05)


def test_kmeans_rejects_bad_input():
    wh = np.array([[4.0, 4.0], [4.0, 4.0], [8.0, 8.0]])
    with pytest.raises(InputError, match="k must be"):
        fit_anchors(wh, 0)
    with pytest.raises(InputError, match="2 distinct box shapes"):
        fit_anchors(wh, 3)
    with pytest.raises(InputError, match="> 0"):
        fit_anchors(np.array([[0.0, 4.0], [8.0, 8.0]]), 1)
    np.testing.assert_allclose(fit_anchors(wh, 1), [[16 / 3, 16 / 3]])  # the mean


# --------------------------------------------------------------------------- recall by hand
def _one_level(**kw):
    """One 16 px square anchor per 16 px cell on a 64 x 64 input, as in ``fpn`` otherwise."""
    return dataclasses.replace(make_config("fpn", num_classes=1), input_size=64, strides=[16],
                               anchor_sizes=[[16.0]], anchor_ratios=[1.0], anchor_scale=1.0,
                               **kw)


# Anchors are [16 j, 16 i, 16 j + 16, 16 i + 16]. Against them:
HAND_BOXES = np.array([
    [0, 0, 16, 16],  # A: exactly an anchor, IoU 1
    [36, 4, 52, 20],  # B: 4 px off the anchor [32, 0, 48, 16]: IoU 144 / 368 = 0.39
    [4, 36, 12, 44],  # C: 8 px inside the anchor [0, 32, 16, 48]: IoU 64 / 256 = 0.25
    [20, 52, 22, 54],  # D: 2 px, IoU 4 / 256 = 0.016 with its anchor: below S3FD's 0.1
], dtype=np.float32)


@pytest.mark.parametrize("rule, matched", [
    ({"pos_iou": 0.5, "neg_iou": 0.4}, 1),  # A (D's low-quality match does not count)
    ({"pos_iou": 0.35, "neg_iou": 0.35}, 2),  # A, B
    ({"pos_iou": 0.35, "neg_iou": 0.35, "compensate": True, "low_quality": False}, 3),  # + C
])
def test_best_possible_recall_counted_by_hand(rule, matched):
    cfg = _one_level(**rule)
    table = best_possible_recall(cfg, [HAND_BOXES], image_size=[(64, 64)])
    assert table["all"] == {"boxes": 4, "matched": matched, "recall": matched / 4}
    assert table["tiny"]["boxes"] == 4  # every box is at most 16 x 16
    assert table["medium"] == {"boxes": 0, "matched": 0, "recall": None}
    # the same scene at twice the size is resized to the 64 px input first
    big = best_possible_recall(cfg, [HAND_BOXES * 2], image_size=[(128, 128)])
    assert big["all"]["matched"] == matched
    assert (big["tiny"]["boxes"], big["small"]["boxes"]) == (2, 4)  # areas: the image's own


def test_buckets_follow_the_given_areas():
    cfg = _one_level()
    table = best_possible_recall(cfg, [HAND_BOXES], image_size=[(64, 64)],
                                 areas=[np.array([2000.0, 2000.0, 50.0, 50.0])])
    assert table["medium"] == {"boxes": 2, "matched": 1, "recall": 0.5}
    assert table["tiny"] == {"boxes": 2, "matched": 0, "recall": 0.0}


def test_resize_follows_resize_longest():
    boxes, hw = resized_boxes([np.array([[10, 20, 30, 60]], np.float32)], [(300, 200)], 384)
    assert hw == [(384, 256)]
    np.testing.assert_allclose(boxes[0], [[12.8, 25.6, 38.4, 76.8]], rtol=1e-6)
    box = np.array([[1.3, 2.7, 50.1, 33.3]], np.float32)
    for h, w in ((97, 131), (300, 1000), (384, 200), (17, 19)):  # the transform, bit for bit
        image, target = ResizeLongest(384)(torch.zeros(3, h, w), {"boxes": torch.tensor(box)})
        mine, hw = resized_boxes([box], [(h, w)], 384)
        assert hw == [tuple(image.shape[1:])]
        np.testing.assert_array_equal(mine[0], target["boxes"].numpy())


@pytest.mark.parametrize("preset", ["fpn", "s3fd", "faceboxes"])
def test_near_anchors_give_the_same_matches_as_all_anchors(preset):
    """Only anchors near a box go to the matcher: every box's outcome stays the same."""
    cfg = make_config(preset, num_classes=1)
    levels, rng = level_specs(cfg), np.random.default_rng(0)
    for _ in range(6):
        hw = (int(rng.integers(4, 13)) * 32, 384)
        size = np.exp(rng.uniform(math.log(3), math.log(150), 12))  # [N]
        xy = rng.uniform(0, 1, (12, 2)) * (np.array([hw[1], hw[0]]) - size[:, None])
        boxes = np.concatenate([xy, xy + size[:, None] * [0.9, 1.1]], 1).astype(np.float32)
        full = all_anchors(levels, hw)
        kw = {"pos_iou": cfg.pos_iou, "neg_iou": cfg.neg_iou, "allow_low_quality": False,
              "compensate": cfg.compensate}
        ref = match_anchors(full, torch.from_numpy(boxes), **kw)
        idx = torch.from_numpy(near_anchor_index(levels, hw, boxes, min_iou=0.1))
        near = match_anchors(full[idx], torch.from_numpy(boxes), **kw)
        assert torch.equal(torch.bincount(ref[ref >= 0], minlength=12) > 0,
                           torch.bincount(near[near >= 0], minlength=12) > 0)
        assert len(idx) < len(full) / 2 or preset == "faceboxes"  # its coarse grid: all near


# --------------------------------------------------------------------------- overrides
def test_overrides_use_the_config_units_and_levels():
    fpn = make_config("fpn", num_classes=1)  # 8, 16, 32, 64, 128 px = paper 32 ... 512 x 1/4
    out = anchor_overrides(fpn, np.array([[10.0, 10.0], [20.0, 80.0]]))
    # 10 px is nearest 8 px (level 0), 40 px nearest 32 px (level 2); paper units = px x 4
    assert out == {"anchor_sizes": [[40.0], [64.0], [160.0], [256.0], [512.0]],
                   "anchor_ratios": [1.0, 4.0]}
    half = make_config("fpn", num_classes=1, overrides=["anchor_scale=0.5"])
    assert anchor_overrides(half, np.array([[10.0, 10.0]]))["anchor_sizes"][0] == [20.0]
    boxes = make_config("faceboxes", num_classes=1)  # densified: the rule keeps density 1
    out = anchor_overrides(boxes, np.array([[6.0, 6.0], [9.0, 9.0], [70.0, 70.0]]))
    assert out["anchor_sizes"] == [[24.0, 36.0], [280.0], [512.0]]
    assert out["anchor_densify"] == [[5, 4], [1], [1]]  # round(32 / 6), round(32 / 9)
    make_config("faceboxes", num_classes=1, overrides=out)


def _small_boxes(n_images=40, seed=0) -> TrainingBoxes:
    """Square-ish 9-14 px boxes, 6 per 384 x 384 image: between fpn's 8 and 16 px anchors."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n_images):
        wh = rng.uniform(9, 14, (6, 1)) * np.exp(rng.normal(0, 0.05, (6, 2)))  # [6, 2]
        xy = rng.uniform(0, 360, (6, 2))
        boxes.append(np.concatenate([xy, xy + wh], 1).astype(np.float32))
    return TrainingBoxes(boxes, [(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes],
                         [(384, 384)] * n_images)


@pytest.mark.parametrize("preset", ["fpn", "s3fd", "faceboxes"])
def test_fitted_overrides_parse_and_do_not_lose_recall(preset):
    data = _small_boxes()
    rep = fit_preset(preset, data, seed=0)
    cfg = make_config(preset, num_classes=1, overrides=rep["overrides"])  # what we print
    base = make_config(preset, num_classes=1)
    assert len(cfg.strides) == len(base.strides) and cfg.anchor_scale == base.anchor_scale
    again = best_possible_recall(cfg, data.boxes, image_size=data.image_size)
    assert again == rep["after"]
    stage = "_threshold" if base.compensate else ""  # S3FD: compensation reaches 100 % anyway
    assert rep["after" + stage]["all"]["recall"] >= rep["before" + stage]["all"]["recall"]
    assert rep["after" + stage]["small"]["recall"] > 0.5
    assert rep["k"] == sum(map(len, base.anchor_sizes)) * len(base.anchor_ratios)


def test_base_overrides_come_first_and_fitted_ones_replace_theirs():
    rep = fit_preset("fpn", _small_boxes(10), k=3,
                     base_overrides=["input_size=320", "anchor_ratios=[1.0]"])
    assert rep["overrides"][0] == "input_size=320" and rep["input_size"] == 320
    assert sum(o.startswith("anchor_ratios=") for o in rep["overrides"]) == 1
    assert make_config("fpn", num_classes=1, overrides=rep["overrides"]).input_size == 320


# --------------------------------------------------------------------------- command line
def _tiny_root(tmp_path):
    """A dataset root with a train split: two PNG images and a few boxes, one crowd."""
    split = tmp_path / "root" / "train"
    (split / "images").mkdir(parents=True)
    for name, (w, h) in (("a.png", (96, 64)), ("b.png", (64, 64))):
        Image.new("RGB", (w, h), (90, 120, 60)).save(split / "images" / name)
    boxes = [(1, [4, 4, 10, 12], 0), (1, [40, 20, 24, 30], 0), (1, [70, 40, 8, 8], 1),
             (2, [10, 30, 5, 6], 0), (2, [30, 5, 16, 16], 0)]
    save_coco(split, {
        "images": [{"id": 1, "file_name": "a.png", "width": 96, "height": 64},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 64}],
        "annotations": [{"id": i + 1, "image_id": im, "category_id": 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": c}
                        for i, (im, b, c) in enumerate(boxes)],
        "categories": [{"id": 1, "name": "face"}]})
    return split.parent


def test_cli_fit_prints_before_after_and_the_overrides(tmp_path, capsys):
    root = _tiny_root(tmp_path)
    data = load_training_boxes(root / "train")
    assert (data.num_boxes, data.crowd, data.image_size) == (4, 1, [(64, 96), (64, 64)])
    out_json = tmp_path / "fit.json"
    rc = main(["anchors", "fit", "--data", str(root), "--preset", "fpn", "--k", "2",
               "--json", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "before" in text and "after" in text and "best possible recall" in text
    line = text.strip().splitlines()[-2]  # the --set line, before "wrote ..."
    assert line.strip().startswith("--set ")
    saved = json.loads(out_json.read_text())
    assert saved["boxes"] == 4 and saved["k"] == 2 and set(saved["after"]) == set(
        saved["before"]) == {"tiny", "small", "medium", "large", "all"}
    make_config("fpn", num_classes=1, overrides=saved["overrides"])


def test_cli_help_explains_best_possible_recall(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["anchors", "fit", "--help"])
    assert exc.value.code == 0
    assert "best possible recall" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--data", "{tmp}/nothing_here", "--preset", "fpn"], "no such folder"),
    (["--data", "{root}", "--preset", "yolo"], "unknown preset"),
    (["--data", "{root}", "--preset", "fpn", "--k", "0"], "--k must be >= 1"),
    (["--data", "{root}", "--preset", "fpn"], "distinct box shapes"),  # k 15 > 4 boxes
    (["--data", "{root}", "--preset", "fpn", "--split", "val"], "no val/annotations.json"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    root = _tiny_root(tmp_path)
    rc = main(["anchors", "fit"] + [a.format(tmp=tmp_path, root=root) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("sodlab: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_the_fitted_overrides_train(quick_dataset, tmp_path, monkeypatch):
    """What `sodlab anchors fit` prints on the embedded data is a config that trains."""
    from sodlab.engine.cache import cached_train

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    rep = fit_preset("fpn", load_training_boxes(quick_dataset / "train"), seed=0,
                     base_overrides=["input_size=128"])
    assert any(o.startswith("anchor_sizes=") for o in rep["overrides"])
    ckpt, summary = cached_train("fpn", quick_dataset, overrides=rep["overrides"], max_steps=2,
                                 batch_size=2)
    assert ckpt.is_file() and math.isfinite(summary["final_loss"])
    assert summary["config"]["anchor_sizes"] == make_config(
        "fpn", num_classes=1, overrides=rep["overrides"]).anchor_sizes

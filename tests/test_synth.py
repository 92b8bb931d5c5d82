"""The embedded dataset: deterministic, offline, COCO-valid, with the promised size shares."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sodlab.data import render, synth
from sodlab.errors import InputError


def _no_network(*args, **kwargs):
    raise OSError("network unreachable (blocked by the test)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two tiny datasets of seed 0 and one of seed 1, made with the network blocked."""
    base = tmp_path_factory.mktemp("synth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        synth._MATERIAL = None  # load the bundled files again, offline
        roots = {name: synth.make_dataset(base / name, seed=seed, progress=False,
                                          num_train=6, num_val=3)
                 for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    return roots


def _load(root: Path, split: str) -> dict:
    return json.loads((root / split / "annotations.json").read_text())


def _pixels(split_dir: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((split_dir / "images").glob("*.png"))]


def test_layout_and_meta(tiny):
    root = tiny["a"]
    meta = json.loads((root / "meta.json").read_text())
    assert meta == {"generator_version": synth.GENERATOR_VERSION, "size": "quick", "seed": 0,
                    "counts": {"train": 6, "val": 3}}
    for split, n in (("train", 6), ("val", 3)):
        coco = _load(root, split)
        assert len(coco["images"]) == n == len(list((root / split / "images").glob("*.png")))
        assert coco["categories"] == [{"id": 1, "name": "face", "supercategory": "person"}]
    assert [p.name for p in root.parent.iterdir() if p.name.startswith(".")] == []


def test_same_seed_same_bytes_and_pixels_other_seed_differs(tiny):
    for split in ("train", "val"):
        a, b, c = (tiny[k] / split for k in "abc")
        assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
        assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))
        assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()
        assert not np.array_equal(_pixels(a)[0], _pixels(c)[0])


def test_workers_do_not_change_the_output(tiny, tmp_path):
    root = synth.make_dataset(tmp_path / "w2", seed=0, progress=False, num_train=6, num_val=3,
                              workers=2)
    for split in ("train", "val"):
        a = tiny["a"] / split
        assert (a / "annotations.json").read_bytes() == \
            (root / split / "annotations.json").read_bytes()
        assert all(np.array_equal(x, y) for x, y in
                   zip(_pixels(a), _pixels(root / split), strict=True))


def test_images_boxes_masks_and_areas(tiny):
    from faster_coco_eval.core import mask as mask_api

    for split in ("train", "val"):
        coco = _load(tiny["a"], split)
        images = {im["id"]: im for im in coco["images"]}
        for im in coco["images"]:
            arr = np.asarray(Image.open(tiny["a"] / split / "images" / im["file_name"]))
            assert arr.dtype == np.uint8 and arr.shape == (im["height"], im["width"], 3)
            assert 320 <= im["height"] <= 640 and 320 <= im["width"] <= 640
        assert coco["annotations"], "a tiny dataset still has faces"
        for a in coco["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and a["area"] > 0 and a["iscrowd"] in (0, 1)
            assert x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"]
            m = mask_api.decode(mask_api.frPyObjects(a["segmentation"], im["height"],
                                                     im["width"])).astype(bool)
            assert m.shape == (im["height"], im["width"])
            assert int(m.sum()) == a["area"]
            assert render.mask_bounds(m) == (x, y, x + w, y + h)
            hx, hy, hw, hh = a["head_bbox"]  # the face lies in its head, the head in the body
            assert hx - 1.5 <= x and x + w <= hx + hw + 1.5
            assert hy - 1.5 <= y and y + h <= hy + hh + 1.5
            bx, by, bw, bh = a["body_bbox"]
            assert bx <= hx and hx + hw <= bx + bw and by <= hy and hy + hh <= by + bh
            assert isinstance(a["identity"], int) and a["group"] in (None, *range(10))


def test_train_and_val_identities_are_disjoint(tiny):
    split = synth.identity_split()
    assert not set(split["train"].tolist()) & set(split["val"].tolist())
    train = {a["identity"] for a in _load(tiny["a"], "train")["annotations"]}
    val = {a["identity"] for a in _load(tiny["a"], "val")["annotations"]}
    assert train <= set(split["train"].tolist()) and val <= set(split["val"].tolist())


def test_coco_files_load_and_evaluate_in_faster_coco_eval(tiny):
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(str(tiny["a"] / "train" / "annotations.json"))
    anns = [a for a in gt.dataset["annotations"] if not a["iscrowd"]]
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0,
             "segmentation": a["segmentation"]} for a in anns]
    for iou_type in ("bbox", "segm"):
        ev = COCOeval_faster(gt, gt.loadRes(dets), iouType=iou_type, print_function=lambda *a: 0)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)


def test_size_shares_of_the_quick_dataset(quick_dataset):
    areas = np.array([a["area"] for split in ("train", "val")
                      for a in _load(quick_dataset, split)["annotations"] if not a["iscrowd"]])
    assert (areas <= 16 ** 2).mean() >= 0.25
    assert (areas <= 32 ** 2).mean() >= 0.60
    assert (areas >= 96 ** 2).mean() >= 0.03
    meta = json.loads((quick_dataset / "meta.json").read_text())
    assert meta["counts"] == {"train": 200, "val": 50}


def test_rle_encode_matches_a_loop():
    def loop_rle(m):
        counts, cur, run = [], 0, 0
        for v in m.T.reshape(-1):
            if v != cur:
                counts.append(run)
                cur, run = v, 0
            run += 1
        counts.append(run)
        return counts

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 4), bool), np.ones((5, 4), bool), rng.random((7, 6)) < 0.5]
    m = np.zeros((6, 5), bool)
    m[3:, 1] = m[:2, 2] = True  # a run that goes on into the next column
    m[5, 4] = True  # the last pixel
    masks.append(m)
    for m in masks:
        rle = render.rle_encode(m)
        assert rle["size"] == list(m.shape)
        assert rle["counts"] == loop_rle(m)


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_make_one", _interrupt_after(2, synth._make_one))
    with pytest.raises(KeyboardInterrupt):
        synth.make_dataset(tmp_path / "root", progress=False, num_train=4, num_val=1)
    assert list(tmp_path.iterdir()) == []


def _interrupt_after(n: int, fn):
    count = [0]

    def wrapped(job):
        count[0] += 1
        if count[0] > n:
            raise KeyboardInterrupt
        return fn(job)

    return wrapped


def test_default_dir_bad_size_and_quiet_progress(tmp_path, capsys):
    d = synth.default_dataset_dir("full", 3)
    assert d.parts[-3:] == ("data", "synth", "full-seed3")
    assert (d.parents[2] / "pyproject.toml").is_file() or d.parents[2] == Path.cwd()
    with pytest.raises(InputError):
        synth.make_dataset(tmp_path / "x", size="huge", progress=False)
    synth.make_dataset(tmp_path / "y", progress=False, num_train=1, num_val=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_rle_decodes_in_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for shape in ((9, 7), (20, 33)):
        m = rng.random(shape) < 0.3
        rle = mask_api.frPyObjects(render.rle_encode(m), *shape)
        assert np.array_equal(mask_api.decode(rle).astype(bool), m)
        assert int(mask_api.area(rle)) == int(m.sum())


def test_stale_unfinished_copies_are_removed(tmp_path):
    import os
    import time

    stale, fresh = tmp_path / ".root.1-ab.tmp", tmp_path / ".root.2-cd.tmp"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    synth.make_dataset(tmp_path / "root", progress=False, num_train=1, num_val=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "root"]

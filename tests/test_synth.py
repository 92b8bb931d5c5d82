"""The embedded dataset: deterministic, offline, size shares, disjoint identities, masks."""

import json
import socket

import numpy as np
import pytest
from PIL import Image

from sodlab.data.coco import decode_segmentation
from sodlab.data.synth import GENERATOR_VERSION, make_dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("a") / "root", seed=3, progress=False,
                        num_train=12, num_val=4)


def test_determinism_and_seed(small, tmp_path):
    again = make_dataset(tmp_path / "again", seed=3, progress=False, num_train=12, num_val=4)
    other = make_dataset(tmp_path / "other", seed=4, progress=False, num_train=12, num_val=4)
    for split in ("train", "val"):
        a = (small / split / "annotations.json").read_bytes()
        assert a == (again / split / "annotations.json").read_bytes()
        assert a != (other / split / "annotations.json").read_bytes()
        for f in sorted((small / split / "images").iterdir()):
            assert np.array_equal(np.asarray(Image.open(f)),
                                  np.asarray(Image.open(again / split / "images" / f.name)))
    meta = json.loads((small / "meta.json").read_text())
    assert meta["generator_version"] == GENERATOR_VERSION


def test_generation_needs_no_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    root = make_dataset(tmp_path / "offline", seed=0, progress=False, num_train=3, num_val=2)
    assert (root / "train" / "annotations.json").is_file()


def test_contract_on_the_quick_size():
    from sodlab.data import ensure_dataset

    root = ensure_dataset("quick", 0)
    areas, ids = [], {}
    for split in ("train", "val"):
        coco = json.loads((root / split / "annotations.json").read_text())
        ids[split] = {a["identity"] for a in coco["annotations"]}
        sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
        assert all(320 <= h <= 640 and 320 <= w <= 640 for h, w in sizes.values())
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            H, W = sizes[a["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            if not a["iscrowd"]:
                areas.append(a["area"])
    areas = np.array(areas)
    assert (areas <= 16**2).mean() >= 0.25
    assert (areas <= 32**2).mean() >= 0.60
    assert (areas >= 96**2).mean() >= 0.03
    assert not ids["train"] & ids["val"], "train and val must not share face identities"


def test_masks_bound_boxes_and_give_area(small):
    coco = json.loads((small / "train" / "annotations.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    assert coco["annotations"]
    for a in coco["annotations"]:
        m = decode_segmentation(a["segmentation"], *sizes[a["image_id"]])
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert [xs[0], ys[0], xs[-1] + 1 - xs[0], ys[-1] + 1 - ys[0]] == a["bbox"]
        assert int(m.sum()) == a["area"]


def test_loads_in_faster_coco_eval(small):
    from faster_coco_eval import COCO

    c = COCO(str(small / "val" / "annotations.json"))
    assert len(c.getImgIds()) == 4


def test_unknown_size_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset size"):
        make_dataset(tmp_path / "x", size="huge", progress=False)

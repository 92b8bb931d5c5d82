"""DetectionDataset, collate, transforms and mask decoding on tiny split folders made here."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.data import coco as coco_io
from sodlab.data.dataset import DetectionDataset, collate, item_generator, read_image
from sodlab.data.transforms import ColorJitter, Compose, RandomHFlip, ResizeLongest, hflip
from sodlab.errors import InputError

torch.set_num_threads(1)


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros (the COCO definition), by a loop."""
    counts, prev, run = [], 0, 0
    for v in mask.flatten(order="F"):
        if v != prev:
            counts.append(run)
            run, prev = 0, v
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def make_split(root, *, sizes=((40, 30), (50, 20), (33, 33)), with_segm=True):
    """Split folder: image 1 has two objects (cat 42 polygon, cat 7 RLE), image 2 a crowd
    box without segmentation, image 3 no object. Sizes are (width, height)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate(sizes, start=1):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"im{i}.png")
        images.append({"id": i * 10, "file_name": f"im{i}.png", "width": w, "height": h})
    m = np.zeros((30, 40), dtype=np.uint8)
    m[5:9, 20:31] = 1
    anns = [
        {"id": 1, "image_id": 10, "category_id": 42, "bbox": [2, 3, 10, 6], "area": 50.0,
         "iscrowd": 0, "segmentation": [[2, 3, 12, 3, 12, 9, 2, 9]]},
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [20, 5, 11, 4], "area": 44.0,
         "iscrowd": 0},
        {"id": 3, "image_id": 20, "category_id": 7, "bbox": [1.5, 2, 4, 5], "area": 20.0,
         "iscrowd": 1},
    ]
    if with_segm:
        anns[1]["segmentation"] = _rle_uncompressed(m)
    cats = [{"id": 42, "name": "b"}, {"id": 7, "name": "a"}]
    coco_io.save_coco(root, {"images": images, "annotations": anns, "categories": cats})
    return root


def test_item_shapes_dtypes_and_category_mapping(tmp_path):
    ds = DetectionDataset(make_split(tmp_path / "s"))
    assert len(ds) == 3 and ds.cat_ids == [7, 42] and ds.num_classes == 2
    assert [c["id"] for c in ds.categories] == [7, 42]
    img, t = ds[0]
    assert img.dtype == torch.float32 and img.shape == (3, 30, 40)
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape == (2, 4)
    assert t["boxes"][0].tolist() == [2, 3, 12, 9]
    assert t["labels"].dtype == torch.int64
    assert [ds.cat_ids[i] for i in t["labels"]] == [42, 7]
    assert t["iscrowd"].dtype == torch.bool and t["iscrowd"].tolist() == [False, False]
    assert t["area"].dtype == torch.float32 and t["area"].tolist() == [50.0, 44.0]
    assert t["image_id"] == 10 and "masks" not in t
    _, t2 = ds[1]
    assert t2["iscrowd"].tolist() == [True]
    _, t3 = ds[2]
    assert t3["boxes"].shape == (0, 4) and t3["labels"].shape == (0,)
    assert t3["iscrowd"].shape == (0,) and t3["area"].shape == (0,)
    assert ds.split_dir == tmp_path / "s" and ds.ann_path.name == "annotations.json"
    assert DetectionDataset(ds.ann_path).cat_ids == [7, 42]  # a file works too


def test_masks_polygon_and_rle_against_hand_and_pycocotools(tmp_path):
    pm = pytest.importorskip("pycocotools.mask")
    ds = DetectionDataset(make_split(tmp_path / "s"), with_masks=True)
    _, t = ds[0]
    masks = t["masks"]
    assert masks.dtype == torch.bool and masks.shape == (2, 30, 40)
    want_rle = np.zeros((30, 40), dtype=bool)
    want_rle[5:9, 20:31] = True
    assert torch.equal(masks[1], torch.from_numpy(want_rle))
    poly = ds.annotations(0)[0]["segmentation"]
    oracle = pm.decode(pm.merge(pm.frPyObjects(poly, 30, 40))).astype(bool)
    assert np.array_equal(masks[0].numpy(), oracle)
    # the rectangle polygon covers the box's pixels (pycocotools' rasterisation)
    assert masks[0].sum() > 0
    # compressed RLE, as bytes and as str
    enc = pm.encode(np.asfortranarray(want_rle.astype(np.uint8)))
    assert np.array_equal(coco_io.decode_segmentation(enc, 30, 40), want_rle)
    enc_s = {"size": enc["size"], "counts": enc["counts"].decode()}
    assert np.array_equal(coco_io.decode_segmentation(enc_s, 30, 40), want_rle)
    # annotation without segmentation -> the box's pixels
    _, t2 = ds[1]
    m2 = t2["masks"][0]
    assert m2[2:7, 1:6].all() and m2.sum() == 25


def test_image_modes_are_read_as_rgb(tmp_path):
    base = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cases = {
        "L": Image.fromarray(base, mode="L"),
        "RGBA": Image.fromarray(np.dstack([base] * 4), mode="RGBA"),
        "I16": Image.fromarray(base.astype(np.uint16) * 257),
        "P": Image.fromarray(base, mode="L").convert("P"),
    }
    for name, im in cases.items():
        im.save(tmp_path / f"{name}.png")
        x = read_image(tmp_path / f"{name}.png")
        assert x.shape == (3, 3, 4) and x.dtype == torch.float32, name
        assert torch.allclose(x[1] * 255, torch.from_numpy(base).float(), atol=1.01), name
    with pytest.raises(InputError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_size_mismatch_and_unknown_category_raise(tmp_path):
    root = make_split(tmp_path / "s")
    coco = coco_io.load_coco(root)
    coco["images"][0]["width"] = 41
    coco_io.save_coco(root, coco)
    with pytest.raises(InputError, match="im1.png"):
        DetectionDataset(root)[0]
    coco["annotations"][0]["category_id"] = 5
    coco_io.save_coco(root, coco)
    with pytest.raises(InputError, match="unknown category_id 5"):
        DetectionDataset(root)


def test_collate_pads_to_multiple_of_32(tmp_path):
    ds = DetectionDataset(make_split(tmp_path / "s"))
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 64, 64)  # max h 33, max w 50
    assert [t["size"] for t in targets] == [(30, 40), (20, 50), (33, 33)]
    assert torch.equal(images[1, :, :20, :50], ds[1][0])
    assert images[1, :, 20:].abs().sum() == 0 and images[1, :, :, 50:].abs().sum() == 0
    images, _ = collate([ds[0]])
    assert images.shape == (1, 3, 32, 64)


def _target(boxes, masks=None):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    t = {"boxes": b, "labels": torch.zeros(len(b), dtype=torch.int64),
         "iscrowd": torch.zeros(len(b), dtype=torch.bool),
         "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), "image_id": 1}
    if masks is not None:
        t["masks"] = masks
    return t


def test_hflip_hand_case_and_twice_is_identity():
    img = torch.rand(3, 6, 10)
    masks = torch.zeros(1, 6, 10, dtype=torch.bool)
    masks[0, 1:3, 0:2] = True  # pixels x in {0, 1}
    t = _target([[0.0, 1.0, 2.0, 3.0]], masks)
    t["head_boxes"] = torch.tensor([[-1.0, 0.0, 3.0, 4.0]])
    img2, t2 = hflip(img, t)
    assert t2["boxes"].tolist() == [[8.0, 1.0, 10.0, 3.0]]  # pixels x in {8, 9}
    assert t2["head_boxes"].tolist() == [[7.0, 0.0, 11.0, 4.0]]
    assert t2["masks"][0, 1:3, 8:10].all() and t2["masks"].sum() == 4
    assert torch.equal(img2[..., 0], img[..., -1])
    img3, t3 = hflip(img2, t2)
    assert torch.equal(img3, img) and torch.equal(t3["boxes"], t["boxes"])
    assert torch.equal(t3["masks"], masks) and t["boxes"].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    g = torch.Generator().manual_seed(0)
    img4, t4 = RandomHFlip(p=1.0)(img, t, g)
    assert torch.equal(t4["boxes"], t2["boxes"])
    img5, t5 = RandomHFlip(p=0.0)(img, t, g)
    assert img5 is img and t5 is t


def test_resize_scales_boxes_area_masks():
    img = torch.rand(3, 40, 80)
    masks = torch.zeros(1, 40, 80, dtype=torch.bool)
    masks[0, 8:16, 20:40] = True
    t = _target([[20.0, 8.0, 40.0, 16.0]], masks)
    img2, t2 = ResizeLongest(40)(img, t, None)
    assert img2.shape == (3, 20, 40)
    assert t2["boxes"].tolist() == [[10.0, 4.0, 20.0, 8.0]]
    assert torch.allclose(t2["area"], t["area"] * 0.25)
    assert t2["masks"].shape == (1, 20, 40) and t2["masks"].sum() == masks.sum() / 4
    assert t2["masks"][0, 4:8, 10:20].all()
    img3, t3 = ResizeLongest(160)(img, t, None)
    assert img3.shape == (3, 80, 160) and torch.allclose(t3["area"], t["area"] * 4)
    img4, t4 = ResizeLongest(160, upscale=False)(img, t, None)
    assert img4 is img
    e = _target([], torch.zeros(0, 40, 80, dtype=torch.bool))
    _, te = ResizeLongest(40)(img, e, None)
    assert te["boxes"].shape == (0, 4) and te["masks"].shape == (0, 20, 40)
    _, tf = hflip(img, e)
    assert tf["boxes"].shape == (0, 4) and tf["masks"].shape == (0, 40, 80)


def test_color_jitter_in_range_and_seeded():
    img = torch.rand(3, 8, 8)
    t = _target([[0.0, 0.0, 1.0, 1.0]])
    cj = ColorJitter(0.4, 0.4, 0.4)
    a, ta = cj(img, t, torch.Generator().manual_seed(3))
    b, _ = cj(img, t, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and ta is t and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, img)
    same, _ = ColorJitter(0, 0, 0)(img, t, torch.Generator().manual_seed(3))
    assert torch.allclose(same, img)


def test_set_epoch_drives_the_generator(tmp_path):
    tf = Compose([RandomHFlip(0.5), ColorJitter(0.3, 0.3, 0.3)])
    ds = DetectionDataset(make_split(tmp_path / "s"), transforms=tf, seed=5)
    a0 = ds[0][0]
    assert torch.equal(a0, ds[0][0])
    ds.set_epoch(1)
    a1 = ds[0][0]
    assert not torch.equal(a0, a1)
    ds.set_epoch(0)
    assert torch.equal(a0, ds[0][0])
    g1, g2 = item_generator(5, 0, 1), item_generator(5, 1, 0)
    assert torch.rand(4, generator=g1).tolist() != torch.rand(4, generator=g2).tolist()


def test_load_coco_errors_and_hash(tmp_path):
    with pytest.raises(InputError, match="no such annotations file"):
        coco_io.load_coco(tmp_path / "nope.json")
    with pytest.raises(InputError, match="not a split folder"):
        coco_io.load_coco(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  1,\n  }')
    with pytest.raises(InputError, match=r"bad.json: invalid JSON at line 3"):
        coco_io.load_coco(bad)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="annotations"):
        coco_io.load_coco(bad)
    root = tmp_path / "root"
    make_split(root / "train")
    make_split(root / "val")
    h_root = coco_io.dataset_hash(root)
    h_train = coco_io.dataset_hash(root / "train")
    assert h_root != h_train and len(h_root) == 64
    assert coco_io.dataset_hash(root / "train" / "annotations.json") == h_train
    with open(root / "val" / "images" / "im1.png", "ab") as fh:
        fh.write(b"\0")
    assert coco_io.dataset_hash(root) != h_root
    assert coco_io.dataset_hash(root / "train") == h_train
    with pytest.raises(InputError):
        coco_io.dataset_hash(tmp_path / "empty_missing")


def test_dataloader_with_collate(tmp_path):
    ds = DetectionDataset(make_split(tmp_path / "s"), transforms=ResizeLongest(32))
    dl = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batches = list(dl)
    assert [b[0].shape for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]


def test_ensure_dataset_uses_cache_and_version(tmp_path, monkeypatch):
    import shutil
    import sys
    import types

    import sodlab.data as data

    calls = []
    fake = types.ModuleType("sodlab.data.synth")
    fake.GENERATOR_VERSION = 3

    def make_dataset(out, *, size="quick", seed=0, progress=True):
        calls.append((out, size, seed, progress))
        shutil.rmtree(out, ignore_errors=True)
        for split in ("train", "val"):
            make_split(out / split)
        (out / "meta.json").write_text(json.dumps({"generator_version": fake.GENERATOR_VERSION}))
        return out

    fake.make_dataset = make_dataset
    fake.default_dataset_dir = lambda size, seed: tmp_path / f"{size}-seed{seed}"
    monkeypatch.setitem(sys.modules, "sodlab.data.synth", fake)
    monkeypatch.setattr(data, "synth", fake, raising=False)
    root = data.ensure_dataset("quick", 1)
    assert root == tmp_path / "quick-seed1" and len(calls) == 1 and calls[0][3] is False
    assert data.ensure_dataset("quick", 1) == root and len(calls) == 1  # cached
    fake.GENERATOR_VERSION = 4  # a new generator: the cache is stale
    assert not data.dataset_is_complete(root, 4)
    assert data.ensure_dataset("quick", 1) == root
    assert len(calls) == 2 and data.dataset_is_complete(root, 4)
    (root / "val" / "annotations.json").unlink()  # incomplete
    data.ensure_dataset("quick", 1)
    assert len(calls) == 3

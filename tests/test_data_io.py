"""Importers (WIDER FACE, VOC, COCO, YOLO), image conversion and check_split on tiny fixtures."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sodlab.data.check import KINDS, check_path, check_split
from sodlab.data.coco import load_coco, save_coco
from sodlab.data.dataset import DetectionDataset
from sodlab.data.formats import import_split
from sodlab.errors import InputError


def _img(path, w, h, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(w * 1000 + h)
    if mode == "RGB":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    elif mode == "RGBA":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
    elif mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    elif mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P")
    elif mode == "CMYK":
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("CMYK")
    else:
        raise ValueError(mode)
    im.save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


# --------------------------------------------------------------------------- WIDER
WIDER_TXT = """\
0--Parade/a.jpg
2
10 12 6 8 0 0 0 0 0 0
30 5 40 10 2 0 1 1 0 0
0--Parade/empty.jpg
0
0 0 0 0 0 0 0 0 0 0
1--Handshaking/b.jpg
1
-3 2 10 0 0 0 0 0 0 0
"""


def _wider(tmp_path, text=WIDER_TXT):
    imgs = tmp_path / "WIDER_val" / "images"
    _img(imgs / "0--Parade" / "a.jpg", 64, 48)
    _img(imgs / "0--Parade" / "empty.jpg", 32, 32)
    _img(imgs / "1--Handshaking" / "b.jpg", 20, 20)
    gt = tmp_path / "wider_face_val_bbx_gt.txt"
    gt.write_text(text)
    return gt, imgs


def test_wider_import_zero_face_invalid_and_clipping(tmp_path):
    gt, imgs = _wider(tmp_path)
    out = tmp_path / "out" / "val"
    rep = import_split("wider", gt, imgs, out)
    coco = load_coco(out)
    assert [im["file_name"] for im in coco["images"]] == [
        "0--Parade/a.jpg", "0--Parade/empty.jpg", "1--Handshaking/b.jpg"]
    assert coco["categories"] == [{"id": 1, "name": "face", "supercategory": "face"}]
    anns = coco["annotations"]
    assert len(anns) == 2 and rep.annotations == 2 and rep.images == 3
    assert anns[0]["bbox"] == [10, 12, 6, 8] and anns[0]["iscrowd"] == 0
    assert anns[0]["area"] == 48
    # second face: invalid -> crowd; x2 = 70 clipped to the 64 px width
    assert anns[1]["iscrowd"] == 1 and anns[1]["bbox"] == [30, 5, 34, 10]
    assert anns[1]["attributes"]["blur"] == 2 and anns[1]["attributes"]["invalid"] == 1
    assert rep.crowd == 1 and rep.clipped == 1 and rep.dropped == 1  # h = 0 face dropped
    assert any("wider_face_val_bbx_gt.txt:10" in m and "dropped" in m for m in rep.messages)
    assert (out / "images" / "0--Parade" / "a.jpg").read_bytes() == (
        imgs / "0--Parade" / "a.jpg").read_bytes()
    assert check_split(out) == []
    ds = DetectionDataset(out)
    assert ds[1][1]["boxes"].shape == (0, 4)
    assert ds[0][1]["boxes"][0].tolist() == [10, 12, 16, 20]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("bad,line", [
    (WIDER_TXT.replace("\n2\n", "\ntwo\n", 1), 2),
    (WIDER_TXT.replace("30 5 40 10 2 0 1 1 0 0", "30 5 oops"), 4),
    (WIDER_TXT.rsplit("\n", 2)[0] + "\n", 9),  # ends inside the faces of b.jpg
])
def test_wider_malformed_names_file_and_line(tmp_path, bad, line):
    gt, imgs = _wider(tmp_path, bad)
    with pytest.raises(InputError, match=rf"wider_face_val_bbx_gt.txt:{line}:"):
        import_split("wider", gt, imgs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_image_is_reported_and_skipped(tmp_path):
    gt, imgs = _wider(tmp_path)
    (imgs / "0--Parade" / "a.jpg").unlink()
    (imgs / "1--Handshaking" / "b.jpg").write_bytes(b"not an image")
    rep = import_split("wider", gt, imgs, tmp_path / "out")
    assert rep.skipped_images == 2 and rep.images == 1
    errs = [m for m in rep.messages if m.startswith("error:")]
    assert len(errs) == 2 and "missing" in errs[0] and "unreadable" in errs[1]


# --------------------------------------------------------------------------- VOC
VOC_XML = """<annotation>
  <folder>VOC</folder><filename>{name}</filename>
  <size><width>50</width><height>40</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>cat</name><difficult>1</difficult>
    <bndbox><xmin>5</xmin><ymin>6</ymin><xmax>55</xmax><ymax>30</ymax></bndbox></object>
</annotation>"""


def test_voc_import_one_based_difficult_and_classes(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "x1.xml").write_text(VOC_XML.format(name="x1.jpg"))
    (ann / "x2.xml").write_text(VOC_XML.format(name="x2.png").replace("dog", "bird"))
    _img(tmp_path / "JPEGImages" / "x1.jpg", 50, 40)
    _img(tmp_path / "JPEGImages" / "x2.png", 50, 40, mode="L")
    rep = import_split("voc", ann, tmp_path / "JPEGImages", tmp_path / "out")
    coco = load_coco(tmp_path / "out")
    assert coco["categories"] == [{"id": 1, "name": "bird"}, {"id": 2, "name": "cat"},
                                  {"id": 3, "name": "dog"}]
    a = coco["annotations"]
    assert a[0]["bbox"] == [0, 0, 10, 20] and a[0]["category_id"] == 3 and a[0]["iscrowd"] == 0
    assert a[1]["bbox"] == [4, 5, 46, 25] and a[1]["iscrowd"] == 1  # xmax 55 clipped to 50
    assert rep.clipped == 2 and rep.converted == 1 and rep.crowd == 2
    # the grey PNG became an 8-bit RGB copy
    with Image.open(tmp_path / "out" / "images" / "x2.png") as im:
        assert im.mode == "RGB"
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\ncat\n")
    rep = import_split("voc", ann, tmp_path / "JPEGImages", tmp_path / "out", classes=classes)
    coco = load_coco(tmp_path / "out")
    assert coco["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    assert rep.dropped == 1 and any("'bird'" in m for m in rep.messages)
    assert len(coco["annotations"]) == 3


def test_voc_malformed_xml(tmp_path):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "bad.xml").write_text("<annotation><filename>a.jpg</filename>")
    (tmp_path / "img").mkdir()
    with pytest.raises(InputError, match="bad.xml: malformed XML"):
        import_split("voc", ann, tmp_path / "img", tmp_path / "out")
    (ann / "bad.xml").write_text(VOC_XML.format(name="a.jpg").replace("<xmin>1</xmin>", ""))
    with pytest.raises(InputError, match=r"bad.xml: object 1: missing <xmin>"):
        import_split("voc", ann, tmp_path / "img", tmp_path / "out")


# --------------------------------------------------------------------------- COCO
def test_coco_import_keeps_noncontiguous_ids(tmp_path):
    _img(tmp_path / "src" / "p.png", 30, 20)
    _img(tmp_path / "src" / "q.png", 30, 20, mode="RGBA")
    coco = {
        "images": [{"id": 100, "file_name": "p.png", "width": 30, "height": 20},
                   {"id": 5, "file_name": "q.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 9, "image_id": 100, "category_id": 42, "bbox": [1, 2, 3, 4], "area": 10.0,
             "iscrowd": 0, "segmentation": [[1, 2, 4, 2, 4, 6]]},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25,
             "iscrowd": 1},
            {"id": 4, "image_id": 5, "category_id": 8, "bbox": [0, 0, 5, 5]},
            {"id": 6, "image_id": 77, "category_id": 7, "bbox": [0, 0, 5, 5]},
        ],
        "categories": [{"id": 42, "name": "b"}, {"id": 7, "name": "a"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    rep = import_split("coco", tmp_path / "ann.json", tmp_path / "src", tmp_path / "out")
    got = load_coco(tmp_path / "out")
    assert [im["id"] for im in got["images"]] == [100, 5]
    assert got["images"][1]["file_name"] == "q.png" and rep.converted == 1
    assert [a["id"] for a in got["annotations"]] == [9, 3]
    assert got["annotations"][0]["segmentation"] == [[1, 2, 4, 2, 4, 6]]
    assert got["annotations"][0]["area"] == 10.0
    assert rep.dropped == 2 and got["categories"] == coco["categories"]
    ds = DetectionDataset(tmp_path / "out", with_masks=True)
    assert ds.cat_ids == [7, 42]
    _, t0 = ds[0]
    _, t1 = ds[1]
    assert [ds.cat_ids[i] for i in t0["labels"]] == [42]
    assert [ds.cat_ids[i] for i in t1["labels"]] == [7] and t1["iscrowd"].tolist() == [True]
    assert t0["masks"].shape == (1, 20, 30)


# --------------------------------------------------------------------------- YOLO
def test_yolo_import_normalised_boxes_and_class_list(tmp_path):
    imgs, labels = tmp_path / "images", tmp_path / "labels"
    _img(imgs / "a.jpg", 100, 50)
    _img(imgs / "b.png", 40, 40, mode="I;16")
    _img(imgs / "c.png", 40, 40, mode="P")
    labels.mkdir()
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.05 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n")
    (labels / "b.txt").write_text("1 0.25 0.25 0.5 0.5\n")
    (labels / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    names = tmp_path / "names.txt"
    names.write_text("person\ncar\n")
    rep = import_split("yolo", labels, imgs, tmp_path / "out", classes=names)
    coco = load_coco(tmp_path / "out")
    assert coco["categories"] == [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.png", "c.png"]
    assert [im["width"] for im in coco["images"]] == [100, 40, 40]
    a = coco["annotations"]
    assert a[0]["bbox"] == pytest.approx([40, 15, 20, 20]) and a[0]["category_id"] == 1
    assert a[1]["bbox"] == pytest.approx([0, 20, 15, 10])  # x1 = -5 clipped
    assert a[2]["bbox"] == pytest.approx([0, 0, 20, 20]) and a[2]["category_id"] == 2
    assert rep.clipped == 1 and rep.dropped == 1 and rep.converted == 2
    assert rep.skipped_images == 1 and any("orphan.txt" in m for m in rep.messages)
    for name in ("b.png", "c.png"):
        with Image.open(tmp_path / "out" / "images" / name) as im:
            assert im.mode == "RGB"
    assert check_split(tmp_path / "out") == []
    (labels / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(InputError, match=r"a.txt:1:"):
        import_split("yolo", labels, imgs, tmp_path / "out2", classes=names)
    with pytest.raises(InputError, match="class list"):
        import_split("yolo", labels, imgs, tmp_path / "out2")


def _png_rgb16(path, a):
    """A 16-bit RGB PNG (PIL cannot write one), from a uint16 array [H, W, 3]."""
    h = a.shape[0]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", a.shape[1], h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_image_conversions_keep_values(tmp_path):
    src = tmp_path / "images"
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))  # [4, 25]
    Image.fromarray(grey, mode="L").save(src.mkdir() or src / "l.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(src / "i16.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 7)]), mode="RGBA").save(
        src / "rgba.png")
    Image.fromarray(grey, mode="L").convert("P").save(src / "p.png")
    Image.fromarray(np.dstack([grey] * 3)).convert("CMYK").save(src / "cmyk.jpg", quality=100)
    _png_rgb16(src / "rgb16.png", np.dstack([grey.astype(np.uint16) * 257] * 3))
    names = ["l.png", "i16.png", "rgba.png", "p.png", "rgb16.png", "cmyk.jpg"]
    coco = {"images": [{"id": i, "file_name": n, "width": 25, "height": 4}
                       for i, n in enumerate(names, 1)], "annotations": [], "categories": []}
    save_coco(tmp_path, coco)
    kinds = [p.kind for p in check_split(tmp_path)]
    assert kinds.count("needs_conversion") == 6
    rep = import_split("coco", tmp_path / "annotations.json", src, tmp_path / "out")
    assert rep.converted == 6 and rep.images == 6
    assert any("rgb16.png (16-bit RGB" in m for m in rep.messages)
    got = load_coco(tmp_path / "out")
    assert got["images"][-1]["file_name"] == "cmyk.png"
    for im in got["images"]:
        arr = np.asarray(Image.open(tmp_path / "out" / "images" / im["file_name"]))
        assert arr.dtype == np.uint8 and arr.shape == (4, 25, 3)
        tol = 3 if im["file_name"] == "cmyk.png" else 0
        assert np.abs(arr[..., 1].astype(int) - grey).max() <= tol, im["file_name"]
    assert check_split(tmp_path / "out") == []


def test_out_folder_safety_and_replacement(tmp_path):
    gt, imgs = _wider(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        import_split("wider", gt, imgs, other)
    out = tmp_path / "split"
    import_split("wider", gt, imgs, out)
    (imgs / "0--Parade" / "a.jpg").unlink()
    rep = import_split("wider", gt, imgs, out)  # an earlier import is replaced
    assert rep.images == 2 and len(load_coco(out)["images"]) == 2
    assert not (out / "images" / "0--Parade" / "a.jpg").exists()
    with pytest.raises(InputError, match="unknown format"):
        import_split("kitti", gt, imgs, out)


# --------------------------------------------------------------------------- check
def test_check_split_finds_each_kind(tmp_path):
    im = tmp_path / "images"
    _img(im / "ok.png", 20, 10)
    _img(im / "grey.png", 20, 10, mode="L")
    (im / "broken.png").write_bytes(b"\x89PNG garbage")
    coco = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 20, "height": 10},
            {"id": 1, "file_name": "ok.png", "width": 20, "height": 10},
            {"id": 2, "file_name": "grey.png", "width": 21, "height": 10},
            {"id": 3, "file_name": "gone.png", "width": 5, "height": 5},
            {"id": 4, "file_name": "broken.png", "width": 5, "height": 5},
            {"file_name": "noid.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [15, 2, 10, 3], "area": 30},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 3], "area": 0},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2], "area": 4},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1]},
        ],
        "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}],
    }
    save_coco(tmp_path, coco)
    problems = check_split(tmp_path)
    kinds = {p.kind for p in problems}
    assert kinds == set(KINDS), set(KINDS) - kinds
    by = {p.kind: p for p in problems}
    assert "gone.png" in by["missing_image"].record
    assert "broken.png" in by["unreadable_image"].message
    assert "21x10" in by["size_mismatch"].message and "20x10" in by["size_mismatch"].message
    assert by["box_outside_image"].record.startswith("annotation 1")
    assert sum(p.kind == "bad_area" for p in problems) == 2  # w = 0 and area = 0
    assert str(by["unknown_category_id"]).startswith("annotation 3 (image 1): unknown_category")
    assert list(check_path(tmp_path)) == [str(tmp_path)]


def test_check_root_and_bad_json(tmp_path):
    for split in ("train", "val"):
        _img(tmp_path / split / "images" / "a.png", 8, 8)
        save_coco(tmp_path / split, {"images": [{"id": 1, "file_name": "a.png", "width": 8,
                                                 "height": 8}], "annotations": [],
                                     "categories": []})
    res = check_path(tmp_path)
    assert [k.split("/")[-1] for k in res] == ["train", "val"] and not any(res.values())
    (tmp_path / "val" / "annotations.json").write_text("{oops")
    with pytest.raises(InputError, match="invalid JSON"):
        check_path(tmp_path)

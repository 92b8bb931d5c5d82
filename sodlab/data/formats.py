"""Importers: WIDER FACE, Pascal VOC, COCO and YOLO labels -> one sodlab split folder.

Layer L1. The only place that reads foreign label formats (``docs/design.md``, data contract);
everything else reads split folders. ``import_split(fmt, src, images_dir, out)`` parses
the labels into xyxy boxes in continuous pixels (x1 <= x < x2) and hands them to
``formats_common.write_split``, which converts images to 8-bit RGB where needed, clips
boxes to the image and drops empty ones, counting and reporting each change.

- ``wider``: ``wider_face_*_bbx_gt.txt``: a file-name line, a count line, then ``count``
  lines ``x y w h blur expression illumination invalid occlusion pose``; a count of 0 is
  followed by one line of zeros. ``invalid`` -> ``iscrowd: 1``. One category, face (id 1).
- ``voc``: a folder of Pascal VOC XML files; 1-based inclusive corners (``x1 = xmin - 1,
  x2 = xmax``); ``difficult`` -> ``iscrowd: 1``; class names -> ids 1..K (sorted by
  name, or in the order of ``classes``).
- ``coco``: a COCO annotations file; ids (image, annotation, category) kept as they are.
- ``yolo``: a folder of ``cls cx cy w h`` label files (normalised to [0, 1]) named after
  the images, plus a class list (one name per line); class k -> category id k + 1.

Taught in notebook 00_what_is_small (own data); used by ``sodlab data import``.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from sodlab.data.coco import load_coco
from sodlab.data.formats_common import (
    IMAGE_SUFFIXES,
    ImageRecord,
    ImportReport,
    Obj,
    write_split,
)
from sodlab.errors import InputError

FORMATS = ("wider", "voc", "coco", "yolo")
WIDER_ATTRS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: class list file not found")
    names = [ln.strip() for ln in p.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise InputError(f"{p}: class list is empty (expected one class name per line)")
    if len(set(names)) != len(names):
        raise InputError(f"{p}: class list repeats a name")
    return names


def _classes(classes: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    if classes is None or isinstance(classes, (list, tuple)):
        return None if classes is None else list(classes)
    return read_class_list(classes)


# --------------------------------------------------------------------------- WIDER FACE
def parse_wider(src: Path, report: ImportReport) -> tuple[list[ImageRecord], list[dict]]:
    """Parse a ``wider_face_*_bbx_gt.txt`` file (boxes ``x y w h``, x2 = x + w)."""
    if not src.is_file():
        raise InputError(f"{src}: WIDER FACE label file not found")
    lines = src.read_text().splitlines()
    records, i = [], 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        if _numbers(name) is not None:
            raise InputError(f"{src}:{i + 1}: expected an image file name, got {name!r}")
        if i + 1 >= len(lines):
            raise InputError(f"{src}:{i + 1}: file ends before the face count of {name}")
        try:
            count = int(lines[i + 1].strip())
        except ValueError:
            raise InputError(f"{src}:{i + 2}: expected the number of faces of {name}, got "
                             f"{lines[i + 1].strip()!r}") from None
        if count < 0:
            raise InputError(f"{src}:{i + 2}: negative face count {count}")
        i += 2
        rec = ImageRecord(file_name=name, where=f"{src.name}:{i - 1}")
        if count == 0:  # one placeholder line of zeros follows (if the file has it)
            if i < len(lines) and _numbers(lines[i]) is not None:
                i += 1
        for _ in range(count):
            if i >= len(lines):
                raise InputError(f"{src}:{i}: file ends after this line, inside the {count} "
                                 f"faces of {name}")
            vals = _numbers(lines[i])
            if vals is None or len(vals) < 4:
                raise InputError(f"{src}:{i + 1}: expected 'x y w h blur expression "
                                 f"illumination invalid occlusion pose', got {lines[i].strip()!r}")
            x, y, w, h = vals[:4]
            attrs = {k: int(v) for k, v in zip(WIDER_ATTRS, vals[4:10])}
            rec.objects.append(Obj(box=(x, y, x + w, y + h), category_id=1,
                                   iscrowd=attrs.get("invalid", 0),
                                   extra={"attributes": attrs} if attrs else {},
                                   where=f"{src.name}:{i + 1}"))
            i += 1
        records.append(rec)
    return records, [{"id": 1, "name": "face", "supercategory": "face"}]


def _numbers(line: str) -> list[float] | None:
    try:
        parts = line.split()
        return [float(p) for p in parts] if parts else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- VOC
def _text(node: ET.Element, tag: str, xml: Path, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise InputError(f"{xml}: {what}: missing <{tag}>")
    return child.text.strip()


def parse_voc(src: Path, report: ImportReport, classes: list[str] | None = None
              ) -> tuple[list[ImageRecord], list[dict]]:
    """Parse a folder of Pascal VOC XML files (or one file); 1-based inclusive corners."""
    if src.is_file():
        xmls = [src]
    elif src.is_dir():
        xmls = sorted(src.rglob("*.xml"))
    else:
        raise InputError(f"{src}: VOC annotation folder not found")
    if not xmls:
        raise InputError(f"{src}: no .xml files in this folder")
    parsed = []
    for xml in xmls:
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise InputError(f"{xml}: malformed XML ({exc})") from None
        fname = _text(root, "filename", xml, "annotation")
        size = None
        if root.find("size") is not None:
            try:
                size = (int(float(_text(root.find("size"), "width", xml, "size"))),
                        int(float(_text(root.find("size"), "height", xml, "size"))))
            except (InputError, ValueError):
                size = None
        objs = []
        for k, obj in enumerate(root.findall("object"), start=1):
            name = _text(obj, "name", xml, f"object {k}")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise InputError(f"{xml}: object {k} ({name}): missing <bndbox>")
            try:
                corners = [float(_text(bnd, t, xml, f"object {k}"))
                           for t in ("xmin", "ymin", "xmax", "ymax")]
            except InputError:
                raise
            except ValueError:
                raise InputError(f"{xml}: object {k} ({name}): a bndbox coordinate is not a "
                                 "number") from None
            diff = obj.find("difficult")
            difficult = int(float(diff.text)) if diff is not None and diff.text else 0
            objs.append((name, corners, difficult, f"{xml.name} object {k}"))
        parsed.append((xml, fname, size, objs))
    names = classes or sorted({o[0] for _, _, _, objs in parsed for o in objs})
    ids = {n: i for i, n in enumerate(names, start=1)}
    records = []
    for xml, fname, size, objs in parsed:
        rec = ImageRecord(file_name=fname, size=size, where=xml.name)
        for name, (xmin, ymin, xmax, ymax), difficult, where in objs:
            if name not in ids:
                report.dropped += 1
                report.messages.append(f"dropped: {where}: class {name!r} is not in the class "
                                       "list")
                continue
            rec.objects.append(Obj(box=(xmin - 1, ymin - 1, xmax, ymax),  # boxes.voc_to_xyxy
                                   category_id=ids[name], iscrowd=int(bool(difficult)),
                                   where=where))
        records.append(rec)
    return records, [{"id": i, "name": n} for n, i in ids.items()]


# --------------------------------------------------------------------------- COCO
def parse_coco(src: Path, report: ImportReport) -> tuple[list[ImageRecord], list[dict]]:
    """Read a COCO annotations file; ids are kept, records with unknown ids are dropped."""
    coco = load_coco(src)
    cats = coco["categories"]
    cat_ids = set()
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise InputError(f"{src}: category {c!r} has no integer 'id'")
        if c["id"] in cat_ids:
            raise InputError(f"{src}: category id {c['id']} appears twice")
        cat_ids.add(c["id"])
    records: dict = {}
    for im in coco["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise InputError(f"{src}: image record {im!r} needs 'id' and 'file_name'")
        if im["id"] in records:
            raise InputError(f"{src}: image id {im['id']} appears twice")
        size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        records[im["id"]] = ImageRecord(file_name=im["file_name"], image_id=im["id"], size=size,
                                        where=f"image {im['id']}")
    for ann in coco["annotations"]:
        where = f"annotation {ann.get('id')}"
        bbox = ann.get("bbox")
        if ann.get("image_id") not in records:
            report.dropped += 1
            report.messages.append(f"dropped: {where}: unknown image_id {ann.get('image_id')}")
        elif ann.get("category_id") not in cat_ids:
            report.dropped += 1
            report.messages.append(f"dropped: {where}: unknown category_id "
                                   f"{ann.get('category_id')}")
        elif not (isinstance(bbox, list) and len(bbox) == 4
                  and all(isinstance(v, (int, float)) for v in bbox)):
            report.dropped += 1
            report.messages.append(f"dropped: {where}: bbox {bbox!r} is not [x, y, w, h]")
        else:
            x, y, w, h = (float(v) for v in bbox)
            records[ann["image_id"]].objects.append(
                Obj(box=(x, y, x + w, y + h), category_id=ann["category_id"],
                    iscrowd=int(bool(ann.get("iscrowd", 0))), extra=dict(ann), where=where))
    return list(records.values()), cats


# --------------------------------------------------------------------------- YOLO
def parse_yolo(src: Path, images_dir: Path, report: ImportReport,
               classes: list[str] | None = None) -> tuple[list[ImageRecord], list[dict]]:
    """Read YOLO label files ``cls cx cy w h`` (normalised); sizes come from the images."""
    if not src.is_dir():
        raise InputError(f"{src}: YOLO label folder not found")
    if classes is None:
        if not (src / "classes.txt").is_file():
            raise InputError(f"{src}: YOLO labels need a class list: pass --classes FILE (one "
                             "name per line) or put classes.txt in the label folder")
        classes = read_class_list(src / "classes.txt")
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    images = sorted(p for p in images_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    labels = {p for p in src.rglob("*.txt") if p.name != "classes.txt"}
    used, records, unlabelled = set(), [], 0
    for img in images:
        rel = img.relative_to(images_dir)
        cand = [src / rel.with_suffix(".txt"), src / f"{img.stem}.txt"]
        lab = next((c for c in cand if c in labels), None)
        rec = ImageRecord(file_name=rel.as_posix(), where=rel.as_posix())
        if lab is None:
            unlabelled += 1
        else:
            used.add(lab)
            rec.where = lab.name
            rec.objects = _yolo_objects(lab, classes, report)
        records.append(rec)
    if unlabelled:
        report.messages.append(f"note: {unlabelled} images have no label file (no objects)")
    for lab in sorted(labels - used):
        report.skipped_images += 1
        report.messages.append(f"error: {lab}: label file has no image in {images_dir}; skipped")
    return records, [{"id": k + 1, "name": n} for k, n in enumerate(classes)]


def _yolo_objects(lab: Path, classes: list[str], report: ImportReport) -> list[Obj]:
    objs = []
    for ln, line in enumerate(lab.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        vals = _numbers(line)
        if vals is None or len(vals) < 5 or (len(vals) > 5 and len(vals) % 2 == 0):
            raise InputError(f"{lab}:{ln}: expected 'class cx cy w h' (normalised), got "
                             f"{line.strip()!r}")
        k = vals[0]
        if k != int(k) or not 0 <= k < len(classes):
            report.dropped += 1
            report.messages.append(f"dropped: {lab.name}:{ln}: class {vals[0]:g} is not in the "
                                   f"class list of {len(classes)} names")
            continue
        if len(vals) == 5:
            cx, cy, w, h = vals[1:]
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:  # segmentation format: class x1 y1 x2 y2 ... (normalised polygon)
            xs, ys = vals[1::2], vals[2::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        if not all(math.isfinite(v) for v in box):
            raise InputError(f"{lab}:{ln}: coordinates are not finite numbers")
        objs.append(Obj(box=box, category_id=int(k) + 1, where=f"{lab.name}:{ln}",
                        extra={"_normalised": True}))
    return objs


# --------------------------------------------------------------------------- entry point
def import_split(fmt: str, src: str | os.PathLike, images_dir: str | os.PathLike,
                 out_split_dir: str | os.PathLike, *,
                 classes: Sequence[str] | str | os.PathLike | None = None,
                 progress: bool = False) -> ImportReport:
    """Import labels in ``fmt`` (wider, voc, coco, yolo) into the split folder ``out``.

    ``classes`` (names, or a file with one per line) fixes VOC's id order and gives YOLO
    its class names. Returns the report of what was written, converted, clipped, dropped.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    src, images_dir, out = Path(src), Path(images_dir), Path(out_split_dir)
    if not src.exists():
        raise InputError(f"{src}: no such file or folder")
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    names = _classes(classes)
    report = ImportReport(fmt=fmt)
    if fmt == "wider":
        records, cats = parse_wider(src, report)
    elif fmt == "voc":
        records, cats = parse_voc(src, report, names)
    elif fmt == "coco":
        records, cats = parse_coco(src, report)
    else:
        records, cats = parse_yolo(src, images_dir, report, names)
    return write_split(records, cats, images_dir, out, report, progress=progress)

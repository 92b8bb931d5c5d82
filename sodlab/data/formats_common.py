"""Writing an imported split folder: image conversion to 8-bit RGB, box clipping, the report.

Layer L1. The importers in ``formats.py`` parse a foreign label format into
``ImageRecord``s (one per image, boxes already xyxy in continuous pixels) and hand them to
``write_split``, which copies or converts each image into ``images/``, clips boxes to the
image, drops boxes left with zero or negative area, and writes ``annotations.json``. Every
change is counted and described in the ``ImportReport``; nothing is dropped silently. The
split folder is built in a temporary folder beside the target and renamed into place at
the end, so an interrupted import leaves no half-written split.

Dimension legend: H x W image height and width in pixels.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sodlab.boxes import xyxy_to_xywh
from sodlab.data.coco import ANNOTATIONS, IMAGES, save_coco
from sodlab.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm")


# --------------------------------------------------------------------------- images
def needs_conversion(im: Image.Image) -> str | None:
    """Why an image is not 8-bit RGB (e.g. ``"mode I;16"``), or None if it is.

    Call it before ``im.load()``: PIL opens a 16-bit RGB file as mode RGB and only its
    undecoded tile (raw mode ``RGB;16B``) tells the file's bit depth.
    """
    if im.mode != "RGB":
        return f"mode {im.mode}"
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (
            args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else "")
        if ";16" in raw or ";48" in raw:
            return f"16-bit RGB ({raw})"
    return None


def to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: 16-/32-bit grey rescaled to 0..255, alpha dropped,
    palette and CMYK converted."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)  # [H, W]
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F" and arr.size and arr.max() <= 1.0:
            top = 1.0
        else:
            top = 65535.0 if arr.size and arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    return im.convert("RGB")


# --------------------------------------------------------------------------- records
@dataclass
class Obj:
    """One object of an image record: xyxy box in pixels, category id, crowd flag."""

    box: tuple[float, float, float, float]
    category_id: int
    iscrowd: int = 0
    extra: dict = field(default_factory=dict)  # kept as annotation keys (segmentation, ...)
    where: str = ""  # "file:line" of the source, for messages


@dataclass
class ImageRecord:
    """One image to import: its path relative to the images folder and its objects."""

    file_name: str
    objects: list[Obj] = field(default_factory=list)
    image_id: int | None = None  # kept when the source has ids (COCO)
    size: tuple[int, int] | None = None  # (width, height) the labels claim, if any
    where: str = ""


@dataclass
class ImportReport:
    """What an import wrote and changed. ``messages`` holds one line per event."""

    fmt: str
    out: Path | None = None
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    converted: int = 0
    clipped: int = 0
    dropped: int = 0
    skipped_images: int = 0
    messages: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        keys = ("images", "annotations", "crowd", "converted", "clipped", "dropped",
                "skipped_images")
        return {k: getattr(self, k) for k in keys}

    def summary(self) -> str:
        c = self.counts()
        return (f"{self.fmt}: {c['images']} images, {c['annotations']} annotations "
                f"({c['crowd']} iscrowd); converted {c['converted']} images to 8-bit RGB, "
                f"clipped {c['clipped']} boxes, dropped {c['dropped']} boxes, "
                f"skipped {c['skipped_images']} images")


# --------------------------------------------------------------------------- writing
def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder")
        entries = {p.name for p in out.iterdir()}
        if entries and not entries <= {ANNOTATIONS, IMAGES}:
            raise InputError(f"{out}: folder is not empty and not a split folder; choose a new "
                             "--out (an earlier import there would be replaced)")


def _commit_out(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "split")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _dest_name(file_name: str, converted: bool, used: set[str]) -> str:
    name = Path(file_name).with_suffix(".png").as_posix() if converted else file_name
    base, k = name, 1
    while name in used:
        stem = Path(base)
        name = stem.with_name(f"{stem.stem}_{k}{stem.suffix}").as_posix()
        k += 1
    used.add(name)
    return name


def write_split(records: list[ImageRecord], categories: list[dict], images_dir: Path,
                out: Path, report: ImportReport, *, progress: bool = False) -> ImportReport:
    """Copy/convert the images of ``records`` and write the split folder ``out`` atomically."""
    images_dir, out = Path(images_dir), Path(out)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: images folder not found")
    _prepare_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        coco = _write_images_and_anns(records, categories, images_dir, tmp, report, progress)
        save_coco(tmp, coco)
        _commit_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.out = out
    return report


def _write_images_and_anns(records, categories, images_dir, tmp, report, progress) -> dict:
    from tqdm.auto import tqdm

    (tmp / IMAGES).mkdir()
    images, anns, used_names = [], [], set()
    taken_ids = {r.image_id for r in records if r.image_id is not None}
    next_img, next_ann = 1, 1
    for rec in tqdm(records, desc="import", disable=not progress):
        src = images_dir / rec.file_name
        try:
            with Image.open(src) as im:
                why = needs_conversion(im)
                im.load()
                w, h = im.size
                dest = _dest_name(rec.file_name, why is not None, used_names)
                (tmp / IMAGES / dest).parent.mkdir(parents=True, exist_ok=True)
                if why is None:
                    shutil.copyfile(src, tmp / IMAGES / dest)
                else:
                    to_rgb8(im).save(tmp / IMAGES / dest, format="PNG")
        except (OSError, ValueError) as exc:
            report.skipped_images += 1
            kind = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            report.messages.append(f"error: {rec.where or rec.file_name}: image {src} is {kind}; "
                                   f"skipped with its {len(rec.objects)} objects")
            continue
        if why is not None:
            report.converted += 1
            report.messages.append(f"converted: {rec.file_name} ({why}) -> 8-bit RGB {dest}")
        if rec.size is not None and tuple(rec.size) != (w, h):
            report.messages.append(f"note: {rec.where or rec.file_name}: labels say "
                                   f"{rec.size[0]}x{rec.size[1]}, image is {w}x{h}; "
                                   "used the image's size")
        if rec.image_id is None:
            while next_img in taken_ids:
                next_img += 1
            image_id = next_img
            taken_ids.add(image_id)
        else:
            image_id = rec.image_id
        images.append({"id": image_id, "file_name": dest, "width": w, "height": h})
        report.images += 1
        for obj in rec.objects:
            ann = _clip_object(obj, w, h, rec, report)
            if ann is None:
                continue
            extra = {k: v for k, v in obj.extra.items()
                     if k not in ("bbox", "category_id", "iscrowd", "image_id", "area",
                                                   "_normalised")}
            ann_id = extra.pop("id", None)
            if ann_id is None:
                ann_id = next_ann
                next_ann += 1
            ann = {"id": ann_id, "image_id": image_id, **ann, **extra}
            anns.append(ann)
            report.annotations += 1
            report.crowd += int(ann["iscrowd"])
    _renumber_duplicate_ann_ids(anns, report)
    return {"images": images, "annotations": anns, "categories": categories}


def _clip_object(obj: Obj, w: int, h: int, rec: ImageRecord, report: ImportReport) -> dict | None:
    where = obj.where or rec.where or rec.file_name
    x1, y1, x2, y2 = (float(v) for v in obj.box)
    if obj.extra.get("_normalised"):  # YOLO: fractions of the image size
        x1, y1, x2, y2 = x1 * w, y1 * h, x2 * w, y2 * h
    if not all(np.isfinite([x1, y1, x2, y2])):
        report.dropped += 1
        report.messages.append(f"dropped: {where}: box {list(obj.box)} is not finite")
        return None
    c = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    if c[2] <= c[0] or c[3] <= c[1]:
        report.dropped += 1
        report.messages.append(f"dropped: {where}: box xyxy {_fmt((x1, y1, x2, y2))} has zero or "
                               f"negative area inside the {w}x{h} image")
        return None
    clipped = c != (x1, y1, x2, y2)
    if clipped:
        report.clipped += 1
        report.messages.append(f"clipped: {where}: box xyxy {_fmt((x1, y1, x2, y2))} -> {_fmt(c)} "
                               f"(image {w}x{h})")
    xywh = [float(v) for v in xyxy_to_xywh(np.array(c, dtype=np.float64))]
    area = obj.extra.get("area")
    if area is None or (clipped and not obj.extra.get("segmentation")):
        area = xywh[2] * xywh[3]
    return {"category_id": int(obj.category_id), "bbox": xywh, "area": float(area),
            "iscrowd": int(bool(obj.iscrowd))}


def _renumber_duplicate_ann_ids(anns: list[dict], report: ImportReport) -> None:
    seen = {a["id"] for a in anns}
    counts: dict = {}
    for a in anns:
        counts[a["id"]] = counts.get(a["id"], 0) + 1
    if all(v == 1 for v in counts.values()):
        return
    nxt = max((i for i in seen if isinstance(i, int)), default=0) + 1
    met = set()
    for a in anns:
        if a["id"] in met:
            report.messages.append(f"renumbered: duplicate annotation id {a['id']} -> {nxt}")
            a["id"] = nxt
            nxt += 1
        met.add(a["id"])


def _fmt(box) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"

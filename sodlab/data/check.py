"""Check a split folder against the data contract and list every problem found.

Layer L1. ``check_split(path)`` reads ``annotations.json`` and opens each image (header
and pixels), and returns one ``Problem`` per record at fault: missing or unreadable
images, images that need conversion to 8-bit RGB, ``width``/``height`` that disagree
with the file, duplicate ids, unknown category or image ids, boxes outside the image,
boxes with zero or negative area, malformed records. Used by ``sodlab data check``;
taught in notebook 00_what_is_small (own data).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sodlab.data.coco import annotations_path, load_coco, split_dirs
from sodlab.data.formats_common import needs_conversion

KINDS = (
    "missing_image", "unreadable_image", "needs_conversion", "size_mismatch",
    "duplicate_image_id", "duplicate_annotation_id", "duplicate_category_id",
    "unknown_image_id", "unknown_category_id", "bad_record", "box_outside_image",
    "bad_area",
)


@dataclass(frozen=True)
class Problem:
    """One problem: the file or record at fault, its kind (one of ``KINDS``), a message."""

    record: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.record}: {self.kind}: {self.message}"


def check_split(path: str | os.PathLike, *, decode: bool = True) -> list[Problem]:
    """Problems of one split folder (or annotations file). ``decode=False`` reads only
    image headers (faster, misses truncated files). Invalid JSON raises ``InputError``."""
    ann_path = annotations_path(path)
    coco = load_coco(ann_path)
    img_dir = ann_path.parent / "images"
    out: list[Problem] = []

    cat_ids = Counter(c.get("id") for c in coco["categories"] if isinstance(c, dict))
    for cid, n in cat_ids.items():
        if n > 1:
            out.append(Problem(f"category {cid}", "duplicate_category_id",
                               f"category id {cid} appears {n} times"))

    sizes: dict = {}
    id_counts = Counter(im.get("id") for im in coco["images"] if isinstance(im, dict))
    for k, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            out.append(Problem(f"images[{k}]", "bad_record", "image record needs 'id' and "
                               "'file_name'"))
            continue
        rec = f"image {im['id']} ({im['file_name']})"
        if id_counts[im["id"]] > 1 and im["id"] not in sizes:
            out.append(Problem(rec, "duplicate_image_id",
                               f"image id {im['id']} appears {id_counts[im['id']]} times"))
        sizes.setdefault(im["id"], (im.get("width"), im.get("height")))
        out += _check_image(img_dir / im["file_name"], im, rec, decode)

    ann_counts = Counter(a.get("id") for a in coco["annotations"] if isinstance(a, dict))
    reported = set()
    for k, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            out.append(Problem(f"annotations[{k}]", "bad_record", "not a JSON object"))
            continue
        rec = f"annotation {ann.get('id')} (image {ann.get('image_id')})"
        aid = ann.get("id")
        if aid is None:
            out.append(Problem(rec, "bad_record", "annotation has no 'id'"))
        elif ann_counts[aid] > 1 and aid not in reported:
            reported.add(aid)
            out.append(Problem(rec, "duplicate_annotation_id",
                               f"annotation id {aid} appears {ann_counts[aid]} times"))
        if ann.get("image_id") not in sizes:
            out.append(Problem(rec, "unknown_image_id",
                               f"image_id {ann.get('image_id')} is not in 'images'"))
        if ann.get("category_id") not in cat_ids:
            out.append(Problem(rec, "unknown_category_id",
                               f"category_id {ann.get('category_id')} is not in 'categories'"))
        out += _check_box(ann, sizes.get(ann.get("image_id"), (None, None)), rec)
    return out


def _check_image(path: Path, im: dict, rec: str, decode: bool) -> list[Problem]:
    if not path.is_file():
        return [Problem(rec, "missing_image", f"no file {path}")]
    try:
        with Image.open(path) as pil:
            why = needs_conversion(pil)
            if decode:
                pil.load()
            w, h = pil.size
    except (OSError, ValueError) as exc:
        return [Problem(rec, "unreadable_image", f"{path}: {exc}")]
    out = []
    if why:
        out.append(Problem(rec, "needs_conversion", f"{why}, not 8-bit RGB (re-import it with "
                           "'sodlab data import' to convert)"))
    if (im.get("width"), im.get("height")) != (w, h):
        out.append(Problem(rec, "size_mismatch", f"JSON says {im.get('width')}x"
                           f"{im.get('height')}, the file is {w}x{h}"))
    return out


def _check_box(ann: dict, size: tuple, rec: str) -> list[Problem]:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox)):
        return [Problem(rec, "bad_record", f"bbox {bbox!r} is not [x, y, w, h]")]
    x, y, w, h = bbox
    out = []
    if w <= 0 or h <= 0:
        out.append(Problem(rec, "bad_area", f"bbox {bbox} has zero or negative width/height"))
    area = ann.get("area")
    if area is not None and (not isinstance(area, (int, float)) or area <= 0):
        out.append(Problem(rec, "bad_area", f"area {area!r} is not positive"))
    iw, ih = size
    if isinstance(iw, (int, float)) and isinstance(ih, (int, float)) and (
            x < 0 or y < 0 or x + w > iw or y + h > ih):
        out.append(Problem(rec, "box_outside_image", f"bbox {bbox} (xyxy [{x:g}, {y:g}, "
                           f"{x + w:g}, {y + h:g}]) leaves the {iw}x{ih} image"))
    return out


def check_path(path: str | os.PathLike, *, decode: bool = True) -> dict[str, list[Problem]]:
    """Problems per split: ``path`` is a split folder, an annotations file or a dataset root."""
    p = Path(path)
    if p.is_file():
        return {str(p): check_split(p, decode=decode)}
    return {str(d): check_split(d, decode=decode) for d in split_dirs(p)}

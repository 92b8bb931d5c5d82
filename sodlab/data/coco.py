"""Split-folder I/O: read and write COCO ``annotations.json``, hash a dataset, decode masks.

Layer L1. The data contract (``docs/design.md``): a *split folder* holds ``annotations.json``
(COCO, ``file_name`` relative to ``images/``) and ``images/``; a *dataset root* holds the
split folders ``train/`` and ``val/``. Taught in notebook 00_what_is_small.

Masks are decoded one annotation at a time with faster-coco-eval's RLE code (the same
C code as pycocotools): a polygon list, an uncompressed RLE (``counts`` a list of run
lengths) or a compressed RLE (``counts`` a string) becomes a bool array ``[H, W]``.

Dimension legend: H x W image height and width in pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sodlab.errors import InputError
from sodlab.files import write_json

ANNOTATIONS = "annotations.json"
IMAGES = "images"


def annotations_path(path_or_split_dir: str | os.PathLike) -> Path:
    """``annotations.json`` of a split folder, or the file itself when given a file."""
    p = Path(path_or_split_dir)
    return p / ANNOTATIONS if p.is_dir() else p


def images_dir(path_or_split_dir: str | os.PathLike) -> Path:
    """The ``images/`` folder beside an annotations file (or inside a split folder)."""
    return annotations_path(path_or_split_dir).parent / IMAGES


def load_coco(path_or_split_dir: str | os.PathLike) -> dict:
    """Load a COCO annotations dict from a split folder or a JSON file.

    Raises ``InputError`` naming the file when it is missing, not valid JSON, or not a
    COCO detection file (a dict with lists ``images`` and ``annotations``). A missing
    ``categories`` list becomes ``[]``.
    """
    path = annotations_path(path_or_split_dir)
    if not path.is_file():
        where = Path(path_or_split_dir)
        if where.is_dir():
            raise InputError(f"{where}: no {ANNOTATIONS} in this folder (not a split folder)")
        raise InputError(f"{path}: no such annotations file")
    try:
        with open(path, "rb") as fh:
            coco = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if not isinstance(coco, dict):
        raise InputError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(coco.get(key), list):
            raise InputError(f"{path}: missing list '{key}' (not a COCO detection file)")
    cats = coco.setdefault("categories", [])
    if not isinstance(cats, list):
        raise InputError(f"{path}: 'categories' must be a list")
    return coco


def save_coco(split_dir: str | os.PathLike, coco: dict) -> Path:
    """Write ``coco`` to ``split_dir/annotations.json`` atomically; returns the path."""
    path = Path(split_dir) / ANNOTATIONS
    write_json(path, coco, indent=None)
    return path


def split_dirs(split_dir_or_root: str | os.PathLike) -> list[Path]:
    """The split folders at a path: itself if it is one, else its sub-folders that are.

    An annotations file counts as its split folder. Raises ``InputError`` when none is found.
    """
    p = Path(split_dir_or_root)
    if p.is_file():
        return [p.parent]
    if (p / ANNOTATIONS).is_file():
        return [p]
    if not p.is_dir():
        raise InputError(f"{p}: no such file or folder")
    subs = sorted(d for d in p.iterdir() if (d / ANNOTATIONS).is_file())
    if not subs:
        raise InputError(f"{p}: neither a split folder (annotations.json + images/) nor a "
                         "dataset root holding split folders")
    return subs


def dataset_hash(split_dir_or_root: str | os.PathLike) -> str:
    """Cheap content hash of a split folder or dataset root (hex SHA-256).

    Covers each split's name and ``annotations.json`` bytes and the names and byte sizes of
    the files under its ``images/`` (not their pixels, so hashing stays fast).
    """
    p = Path(split_dir_or_root)
    splits = split_dirs(p)
    h = hashlib.sha256()
    for d in splits:
        h.update(f"split:{d.name if len(splits) > 1 else ''}\n".encode())
        h.update((d / ANNOTATIONS).read_bytes())
        img_dir = d / IMAGES
        if img_dir.is_dir():
            files = sorted(f for f in img_dir.rglob("*") if f.is_file())
            for f in files:
                h.update(f"{f.relative_to(img_dir).as_posix()}:{f.stat().st_size}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- masks
def segmentation_to_rle(segm: Any, height: int, width: int) -> dict:
    """One COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    from faster_coco_eval.core import mask as mask_api

    if isinstance(segm, list):  # polygons: a list of [x0, y0, x1, y1, ...]
        polys = [list(map(float, p)) for p in segm if len(p) >= 6]
        if not polys:
            return mask_api.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_api.merge(mask_api.frPyObjects(polys, height, width))
    if isinstance(segm, dict) and "counts" in segm:
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_api.frPyObjects(segm, height, width)
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        return rle
    raise InputError(f"unknown segmentation format {type(segm).__name__}; expected a polygon "
                     "list or an RLE dict with 'counts' and 'size'")


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """One COCO segmentation -> bool mask ``[H, W]``."""
    from faster_coco_eval.core import mask as mask_api

    rle = segmentation_to_rle(segm, height, width)
    size = list(rle.get("size", [height, width]))
    if size != [height, width]:
        raise InputError(f"RLE size {size} does not match the image size {[height, width]}")
    return mask_api.decode(rle).astype(bool)  # [H, W]


def annotations_by_image(records: Any) -> dict[int, list[dict]]:
    """``{image_id: [record, ...]}`` of a COCO dict (its ``annotations``) or a list of records.

    Works for ground-truth annotations and for detection results alike; images without a
    record are absent (use ``.get(image_id, [])``). Order within an image is kept.
    """
    items = records.get("annotations", []) if isinstance(records, dict) else records
    out: dict[int, list[dict]] = {}
    for rec in items:
        out.setdefault(int(rec["image_id"]), []).append(rec)
    return out


def to_coco_results(image_ids: Any, outputs: Any, *, cat_ids: Any = None,
                    score_thresh: float = 0.0) -> list[dict]:
    """COCO results records (``image_id, category_id, bbox [x, y, w, h], score``) of detections.

    ``outputs[i]`` belongs to ``image_ids[i]`` and holds ``boxes [N, 4]`` xyxy in the image's
    own pixels, ``scores [N]`` and either ``category_ids [N]`` (the dataset's own ids) or
    ``labels [N]`` (contiguous indices, mapped through ``cat_ids``). Boxes are rounded to
    1e-3 px and scores to 1e-5, as ``sodlab detect`` writes them. The one place the package
    builds this dict.
    """
    from sodlab.boxes import xyxy_to_xywh

    dets: list[dict] = []
    for image_id, out in zip(image_ids, outputs):
        scores = _as_list(out["scores"])
        if "category_ids" in out:
            cats = [int(c) for c in _as_list(out["category_ids"])]
        else:
            if cat_ids is None:
                raise InputError("to_coco_results: outputs carry contiguous 'labels' but no "
                                 "cat_ids were given to map them to category ids")
            ids = [int(c) for c in cat_ids]
            cats = [ids[int(lab)] for lab in _as_list(out["labels"])]
        boxes = out["boxes"]
        if len(scores) == 0:
            continue
        xywh = _as_list(xyxy_to_xywh(boxes))  # [N, 4]
        for box, score, cat in zip(xywh, scores, cats):
            if score < score_thresh:
                continue
            dets.append({"image_id": int(image_id), "category_id": cat,
                         "bbox": [round(float(v), 3) for v in box],
                         "score": round(float(score), 5)})
    return dets


def _as_list(x: Any) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)

"""False positives on hard negatives: detections on the face-like crops that have no body.

Layer L1. Every image of the embedded dataset (``sodlab.data.synth``) holds 1-4 face-like
*non-face* crops, pasted and tinted like faces but with no head or body around them. They
are hard negatives on purpose and are **not annotated**: neither ``annotations.json`` nor
the image entries mark them. ``hard_negative_regions`` finds them again by redrawing each
image from its own generator (``synth.make_image(seed, split, index)``, with the split's
seed and name from the file's ``info``) while recording what the drawing pastes, so the
result is exact and nothing of the drawing is copied here. A person drawn later may hide
part of a crop; what stays visible is the set of its pixels that the finished (not yet
degraded) image still shows, and a region is its tight box, kept when at least
``min_visible`` of the crop is visible (40 % by default, the share below which a face
becomes ``iscrowd``). Another dataset can list its own distractors per image entry as
``"hard_negatives": [[x, y, w, h], ...]``; those are used as given.

``hard_negative_fp`` counts, per image, the detections scoring at least ``score_thresh``
that sit on a hard negative (IoU >= ``iou_thresh`` with a region, and more overlap with it
than with any annotated face, crowd faces included): ``fp_per_image`` is their mean over
images, ``hit_rate`` the share of regions with at least one such detection, and
``other_fp_per_image`` the detections that overlap neither a region nor a face (IoU below
``iou_thresh`` with both), for comparison. ``mean_interval`` is a percentile bootstrap of
a per-image mean over images.

Why it matters: PyramidBox (Tang et al. 2018, ECCV) argues that context (a head above
shoulders, a body below) is what tells a small face from a face-like pattern; a detector
that looks only at the face fires on these crops. Taught in notebook 08_pyramidbox.

Shapes: regions ``[M, 4]`` float32 xyxy in the image's own pixels; per image detections
``[D, 4]`` and faces ``[F, 4]``. Dimension legend: M hard-negative regions of an image,
D detections of an image above the score, F annotated faces of an image, B resamples.

``hard_negative_regions`` swaps two drawing functions of ``sodlab.data.render`` for the
time of each redraw; it is not meant to run in several threads at once.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from sodlab.boxes import xywh_to_xyxy
from sodlab.errors import InputError

DEFAULT_SCORE = 0.5
DEFAULT_IOU = 0.3


@contextlib.contextmanager
def _recording(pasted: list[dict]):
    """Inside: ``render.paste_crop`` records every non-face crop it draws (its mask, the
    colours it wrote, its nominal size) and ``render.degrade`` leaves the image alone."""
    from sodlab.data import render, synth

    nonfaces = synth._material()["nonfaces"]  # [100, 25, 25]
    paste, degrade = render.paste_crop, render.degrade

    def recording_paste(img, crop, cx, cy, w, h, tint, **kw):
        mask = paste(img, crop, cx, cy, w, h, tint, **kw)  # [H, W]
        if np.shares_memory(crop, nonfaces):
            pasted.append({"mask": mask, "colours": img[mask].copy(),  # [P, 3]
                           "full": math.pi / 4 * max(round(w), 2) * max(round(h), 2)})
        return mask

    render.paste_crop = recording_paste
    render.degrade = lambda img, rng: img
    try:
        yield
    finally:
        render.paste_crop, render.degrade = paste, degrade


def redraw_hard_negatives(seed: int, split: str, index: int) -> dict:
    """The hard negatives of image ``index`` of ``split`` drawn with ``seed``.

    Returns ``{"negatives": [...], "annotations": [...], "size": (H, W)}``: each negative
    is ``{"box": [x1, y1, x2, y2]`` (tight box of its visible pixels, None if none is
    visible), ``"visible"`` (share of the whole crop still visible), ``"pixels"`` (visible
    pixel count)``}``, in drawing order; ``annotations`` and ``size`` are ``make_image``'s
    own, to check that the redraw is the dataset's image.
    """
    from sodlab.data import render, synth

    pasted: list[dict] = []
    with _recording(pasted):
        img, anns = synth.make_image(int(seed), split, int(index))  # [H, W, 3], undegraded
    out = []
    for p in pasted:
        still = (img[p["mask"]] == p["colours"]).all(1)  # [P] pixels nobody drew over
        visible = np.zeros_like(p["mask"])
        visible[p["mask"]] = still
        b = render.mask_bounds(visible)
        out.append({"box": None if b is None else [float(v) for v in b],
                    "visible": min(1.0, float(still.sum()) / p["full"]),
                    "pixels": int(still.sum())})
    return {"negatives": out, "annotations": anns, "size": tuple(img.shape[:2])}


def _index_of(image: dict, where: str) -> int:
    stem = Path(str(image.get("file_name", ""))).stem
    if not stem.isdigit():
        raise InputError(f"{where}: image {image.get('id')} has file_name "
                         f"{image.get('file_name')!r}, not an embedded-dataset name like "
                         "00012.png")
    return int(stem)


def hard_negative_regions(split_dir: str | os.PathLike, *, min_visible: float = 0.4,
                          progress: bool = False) -> dict[int, torch.Tensor]:
    """``{image_id: regions [M, 4]}`` of a split folder (every image, M may be 0).

    Image entries with a ``hard_negatives`` list (xywh) give their regions as they are.
    Otherwise the split must be the embedded dataset of this sodlab's generator version
    (``info.generator_version``, ``info.seed``, ``info.split`` in ``annotations.json``):
    each image is redrawn (about 60 ms) and its negatives at least ``min_visible`` visible
    are kept. A mismatch (another generator version, another image size) raises
    ``InputError`` naming the file.
    """
    from sodlab.data.coco import annotations_path, load_coco
    from sodlab.data.synth import GENERATOR_VERSION

    where = str(annotations_path(split_dir))
    coco = load_coco(split_dir)
    images = coco["images"]
    out: dict[int, torch.Tensor] = {}
    todo = []
    for im in images:
        if "hard_negatives" in im:
            xywh = torch.tensor(im["hard_negatives"], dtype=torch.float32).reshape(-1, 4)
            out[int(im["id"])] = xywh_to_xyxy(xywh)  # [M, 4]
        else:
            todo.append(im)
    if not todo:
        return out
    info = coco.get("info") or {}
    if info.get("generator_version") is None or info.get("seed") is None or \
            info.get("split") is None:
        raise InputError(f"{where}: its images list no 'hard_negatives' and its info is not "
                         "the embedded dataset's (generator_version, seed, split), so the "
                         "hard negatives are unknown")
    if int(info["generator_version"]) != GENERATOR_VERSION:
        raise InputError(f"{where}: drawn by generator version {info['generator_version']}, "
                         f"this sodlab draws version {GENERATOR_VERSION}; make the dataset "
                         "again to redraw its hard negatives")
    for im in tqdm(todo, disable=not progress, desc="hard negatives", leave=False):
        index = _index_of(im, where)
        got = redraw_hard_negatives(int(info["seed"]), str(info["split"]), index)
        if "height" in im and "width" in im and \
                got["size"] != (int(im["height"]), int(im["width"])):
            raise InputError(f"{where}: image {im['id']} is {im['height']} x {im['width']} "
                             f"but redraws as {got['size'][0]} x {got['size'][1]}")
        rows = [n["box"] for n in got["negatives"]
                if n["box"] is not None and n["visible"] >= min_visible]
        out[int(im["id"])] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)  # [M, 4]
    return out


def _boxes(records: list[dict]) -> torch.Tensor:
    xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float32).reshape(-1, 4)
    return xywh_to_xyxy(xywh)  # [N, 4]


def hard_negative_fp(gt, dets: list[dict], regions: dict[int, torch.Tensor], *,
                     score_thresh: float = DEFAULT_SCORE,
                     iou_thresh: float = DEFAULT_IOU) -> dict:
    """Detections on hard negatives, per image and in all (module docstring).

    ``gt``: the ground truth (a COCO dict, ``annotations.json`` or split folder; its images
    define the set averaged over); ``dets``: COCO result dicts (``predict_split``);
    ``regions``: ``hard_negative_regions`` of the same split. Returns ``fp_per_image``,
    ``hit_rate`` (NaN without regions), ``other_fp_per_image``, ``n_images``,
    ``n_regions``, ``per_image`` and ``per_image_other`` (counts in the order of the
    ground truth's images), ``score_thresh`` and ``iou_thresh``.
    """
    from sodlab.data.coco import annotations_by_image
    from sodlab.metrics.coco import load_gt

    g = load_gt(gt)
    faces_by, dets_by = annotations_by_image(g), annotations_by_image(dets)
    per_image, per_other = [], []
    n_regions = n_hit = 0
    for im in g["images"]:
        iid = int(im["id"])
        reg = regions.get(iid, torch.zeros(0, 4)).reshape(-1, 4).float()  # [M, 4]
        det = _boxes([d for d in dets_by.get(iid, []) if float(d["score"]) >= score_thresh])
        faces = _boxes(faces_by.get(iid, []))  # [F, 4]
        n_regions += len(reg)
        best_r = torch.zeros(len(det))
        arg_r = torch.zeros(len(det), dtype=torch.long)
        if len(reg) and len(det):
            best_r, arg_r = torchvision.ops.box_iou(det, reg).max(1)  # [D]
        best_f = torchvision.ops.box_iou(det, faces).max(1).values if len(faces) and len(det) \
            else torch.zeros(len(det))  # [D]
        on = (best_r >= iou_thresh) & (best_r > best_f)  # [D]
        other = (best_r < iou_thresh) & (best_f < iou_thresh)  # [D] on neither
        per_image.append(int(on.sum()))
        per_other.append(int(other.sum()))
        n_hit += len(set(arg_r[on].tolist()))
    n = len(g["images"])
    return {"fp_per_image": sum(per_image) / n if n else math.nan,
            "hit_rate": n_hit / n_regions if n_regions else math.nan,
            "other_fp_per_image": sum(per_other) / n if n else math.nan,
            "n_images": n, "n_regions": n_regions, "per_image": per_image,
            "per_image_other": per_other, "score_thresh": float(score_thresh),
            "iou_thresh": float(iou_thresh)}


def mean_interval(values, *, n: int = 200, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image ``values`` (images resampled
    with replacement, ``n`` times, from ``numpy.random.default_rng(seed)``)."""
    x = np.asarray(values, dtype=np.float64)  # [N]
    if x.ndim != 1 or len(x) == 0:
        raise InputError(f"mean_interval: needs a non-empty list of numbers, got {len(x)}")
    if not 0 < level < 1:
        raise InputError(f"mean_interval: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(int(n), len(x)))].mean(1)  # [B]
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


__all__ = ["hard_negative_regions", "hard_negative_fp", "redraw_hard_negatives",
           "mean_interval", "DEFAULT_SCORE", "DEFAULT_IOU"]

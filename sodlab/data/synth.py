"""The embedded default dataset: faces of every size on drawn bodies, over bundled photos.

Procedural and deterministic (same seed -> identical ``annotations.json`` and pixels), made
only from files that ship inside scikit-image and scikit-learn: the 100 LFW face crops and
100 face-like non-face crops of ``skimage.data.lfw_subset()``, bundled photos and
scikit-learn's two sample images. Nothing is fetched. ``docs/design.md`` ("The embedded
dataset") gives the contract; ``data/README.md`` the origin, licences and measured figures.
Taught in notebook 00_what_is_small; the other notebooks train on it.

Each image: a background photo crop; face-like non-face crops without a body (hard
negatives, not annotated); people drawn far to near (torso and shoulders in a clothing
colour, a neck, a hair/head ellipse, then the face crop tinted to a skin tone inside its
elliptical mask). A person drawn later hides what it covers of earlier faces: their
visible masks shrink. A face less than 40 % visible (hidden, or cut by the image border)
or drawn heavily blurred is marked ``iscrowd: 1``; one less than 15 % visible is dropped.
Groups stand side by side at one size (``group``: an index within the image); the same
identity (LFW crop index) may appear twice. The whole composed image then goes through
one blur, noise and JPEG round trip (``render.degrade``).

Shapes: images ``[H, W, 3]`` uint8 with 320 <= H, W <= 640; masks ``[H, W]`` bool.
Annotations: ``bbox`` = tight box of the visible mask, ``area`` = its pixel count,
``segmentation`` = its uncompressed RLE; ``head_bbox``/``body_bbox`` (xywh, may leave
the image) give the drawn context.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sodlab.data import render
from sodlab.errors import InputError
from sodlab.files import repo_root, write_json

GENERATOR_VERSION = 3
SIZES = {"quick": (200, 50), "full": (3000, 500)}  # (train, val) images
SPLIT_IDS = {"train": 0, "val": 1}
# face width (px) bins: (share, low, high), log-uniform inside; area ~ 0.94 x width^2
WIDTH_BINS = ((0.42, 5.0, 15.5), (0.28, 17.0, 31.0), (0.22, 34.0, 92.0), (0.08, 106.0, 160.0))
CLOTHES = np.array([[40, 60, 120], [150, 30, 40], [30, 110, 60], [200, 180, 60], [50, 50, 50],
                    [220, 220, 220], [120, 70, 150], [200, 110, 40], [90, 60, 40]], np.float64)
SKIN = np.array([[255, 220, 190], [235, 190, 150], [200, 150, 110], [150, 100, 70],
                 [110, 75, 50]], dtype=np.float64) / 255.0
CROWD_VISIBLE, DROP_VISIBLE, BLURRY_P = 0.4, 0.15, 0.02



def default_dataset_dir(size: str = "quick", seed: int = 0) -> Path:
    """The cache folder ``data/synth/<size>-seed<k>`` under the repository root."""
    return repo_root() / "data" / "synth" / f"{size}-seed{int(seed)}"


def identity_split() -> dict[str, np.ndarray]:
    """Disjoint LFW crop indices per split (faces and non-faces alike): 80 train, 20 val."""
    ids = np.arange(100)
    return {"train": ids[:80], "val": ids[80:]}


_MATERIAL: dict | None = None


def _material() -> dict:
    global _MATERIAL
    if _MATERIAL is None:  # loaded once per process
        _MATERIAL = render.load_material()
    return _MATERIAL


def _sample_width(rng: np.random.Generator) -> float:
    r, acc = rng.random(), 0.0
    for share, lo, hi in WIDTH_BINS:
        acc += share
        if r <= acc:
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return WIDTH_BINS[-1][2]


def _people(rng: np.random.Generator, H: int, W: int, identities: np.ndarray) -> list[dict]:
    """Face sizes and positions, sorted far (small) to near (large), the drawing order."""
    people = []
    for g in range(int(rng.integers(0, 3))):  # groups side by side, at one size
        w = _sample_width(rng)
        x, y = rng.uniform(0, W), rng.uniform(0.1 * H, 0.9 * H)
        for j in range(int(rng.integers(2, 6))):
            people.append({"w": w * rng.uniform(0.92, 1.08),
                           "cx": x + j * w * rng.uniform(2.3, 3.0),
                           "cy": y + rng.normal(0, 0.15 * w), "group": g})
    for _ in range(int(rng.integers(2, 9))):
        w = _sample_width(rng)
        people.append({"w": w, "cx": rng.uniform(0.3 * w, max(W - 0.3 * w, 0.3 * w + 1)),
                       "cy": rng.uniform(0.05 * H, 0.95 * H), "group": None})
    ids = rng.choice(identities, size=len(people))
    if len(people) > 1 and rng.random() < 0.25:  # a near-duplicate: the same person twice
        ids[int(rng.integers(1, len(people)))] = ids[0]
    for p, i in zip(people, ids):
        p["identity"] = int(i)
        p["h"] = p["w"] * rng.uniform(1.1, 1.3)
    people.sort(key=lambda p: p["w"])
    return people


def _draw_person(img: np.ndarray, rng: np.random.Generator, p: dict, face_crop: np.ndarray,
                 earlier: list[dict]) -> dict:
    """Body, neck, head and face of one person; hides what they cover of earlier faces."""
    H, W = img.shape[:2]
    w, h, cx, cy = p["w"], p["h"], p["cx"], p["cy"]
    cloth = np.clip(CLOTHES[rng.integers(len(CLOTHES))] * rng.uniform(0.7, 1.1), 0, 255)
    skin = SKIN[rng.integers(len(SKIN))] * rng.uniform(0.85, 1.05)
    hair = np.clip(np.array([26.0, 18.0, 12.0]) * rng.uniform(0.5, 4.0), 0, 255)
    shapes = ((cy + 3.0 * h, cx, 1.9 * h, 1.45 * w, cloth),  # torso
              (cy + 1.35 * h, cx, 0.5 * h, 1.5 * w, cloth),  # shoulders
              (cy + 0.75 * h, cx, 0.4 * h, 0.28 * w, np.clip(skin * 215, 0, 255)),  # neck
              (cy - 0.08 * h, cx, 0.62 * h, 0.6 * w, hair))  # head (hair)
    for ey, ex, ry, rx, colour in shapes:
        sy, sx, m = render.ellipse_window(H, W, ey, ex, ry, rx)
        img[sy, sx][m] = colour.astype(np.uint8)
        for o in earlier:
            o["mask"][sy, sx] &= ~m
    blurry = bool(rng.random() < BLURRY_P)
    face = render.paste_crop(img, face_crop, cx, cy, w, h, skin,
                             blur=max(1.5, 0.25 * w) if blurry else 0.0)
    b = render.mask_bounds(face)
    if b is not None:
        x1, y1, x2, y2 = b
        for o in earlier:
            o["mask"][y1:y2, x1:x2] &= ~face[y1:y2, x1:x2]
    full = np.pi / 4 * max(round(w), 2) * max(round(h), 2)  # the ellipse, unclipped
    return {"mask": face, "full": full, "blurry": blurry,
            "group": p["group"], "identity": p["identity"],
            "head_bbox": [cx - 0.6 * w, cy - 0.7 * h, 1.2 * w, 1.24 * h],
            "body_bbox": [cx - 1.5 * w, cy - 0.7 * h, 3.0 * w, 5.6 * h]}


def make_image(seed: int, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of ``split``: ``[H, W, 3]`` uint8 and its annotations (without ids).

    Drawn from its own generator ``default_rng([seed, split id, index])``, so images can
    be made in any order and in any process."""
    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    mat, ids = _material(), identity_split()[split]
    H, W = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    img = render.background(rng, mat["photos"], H, W)  # [H, W, 3]
    for _ in range(int(rng.integers(1, 5))):  # hard negatives: face-like crops, no body
        w = _sample_width(rng)
        tint = SKIN[rng.integers(len(SKIN))] * rng.uniform(0.85, 1.05)
        render.paste_crop(img, mat["nonfaces"][rng.choice(ids)], rng.uniform(0, W),
                          rng.uniform(0, H), w, w * rng.uniform(1.1, 1.3), tint)
    objects: list[dict] = []
    for p in _people(rng, H, W, ids):
        objects.append(_draw_person(img, rng, p, mat["faces"][p["identity"]], objects))
    img = render.degrade(img, rng)
    anns = []
    for o in objects:
        m = o["mask"]
        area = int(m.sum())
        visible = area / o["full"]
        if area < 4 or visible < DROP_VISIBLE:
            continue
        x1, y1, x2, y2 = render.mask_bounds(m)
        anns.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "area": area,
                     "iscrowd": int(visible < CROWD_VISIBLE or o["blurry"]),
                     "segmentation": render.rle_encode(m),
                     "head_bbox": [round(float(v), 2) for v in o["head_bbox"]],
                     "body_bbox": [round(float(v), 2) for v in o["body_bbox"]],
                     "group": o["group"], "identity": o["identity"]})
    return img, anns


def _make_one(job: tuple) -> tuple[int, list[dict], int, int]:
    seed, split, index, folder = job
    img, anns = make_image(seed, split, index)
    Image.fromarray(img).save(Path(folder) / f"{index:05d}.png", compress_level=1)
    return index, anns, img.shape[0], img.shape[1]


def _split_coco(results: list, seed: int, split: str) -> dict:
    coco = {"info": {"description": "sodlab embedded faces (synthetic)",
                     "generator_version": GENERATOR_VERSION, "seed": seed, "split": split},
            "images": [], "annotations": [],
            "categories": [{"id": 1, "name": "face", "supercategory": "person"}]}
    for index, anns, h, w in sorted(results, key=lambda r: r[0]):
        coco["images"].append({"id": index + 1, "file_name": f"{index:05d}.png",
                               "width": int(w), "height": int(h)})
        for a in anns:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                        "image_id": index + 1, "category_id": 1, **a})
    return coco


def make_dataset(out: str | os.PathLike | None = None, *, size: str = "quick", seed: int = 0,
                 progress: bool = True, num_train: int | None = None,
                 num_val: int | None = None, workers: int | None = None) -> Path:
    """Write a dataset root ``out`` (``train/``, ``val/``, ``meta.json``); return its path.

    ``out`` defaults to ``default_dataset_dir(size, seed)``. The root is built in a hidden
    temporary folder beside ``out`` and renamed at the end, so an interrupted run never
    leaves a folder that looks complete. ``num_train``/``num_val`` override the size's
    image counts (tests); ``workers`` (processes) defaults to 2 for ``full``, else 1. The
    output does not depend on ``workers``.
    """
    if size not in SIZES:
        raise InputError(f"dataset size {size!r}: choose one of {', '.join(SIZES)}")
    out = Path(out) if out is not None else default_dataset_dir(size, seed)
    counts = {"train": int(num_train if num_train is not None else SIZES[size][0]),
              "val": int(num_val if num_val is not None else SIZES[size][1])}
    workers = int(workers if workers is not None else (2 if size == "full" else 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # hidden and unfinished until renamed to ``out``
    pool = None
    try:
        if workers > 1:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            pool = ProcessPoolExecutor(workers, mp_context=ctx)
        for split, n in counts.items():
            folder = tmp / split / "images"
            folder.mkdir(parents=True)
            jobs = [(seed, split, i, str(folder)) for i in range(n)]
            results = pool.map(_make_one, jobs, chunksize=8) if pool else map(_make_one, jobs)
            results = list(tqdm(results, total=n, disable=not progress, desc=f"synth {split}"))
            write_json(tmp / split / "annotations.json", _split_coco(results, seed, split),
                       indent=None)
        meta = {"generator_version": GENERATOR_VERSION, "size": size, "seed": int(seed),
                "counts": counts}
        write_json(tmp / "meta.json", meta)
        _publish(tmp, out)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _remove_stale(out: Path, max_age_s: float = 3600.0) -> None:
    """Remove unfinished or old copies of ``out`` that a killed run left beside it."""
    now = time.time()
    for p in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if p.suffix in (".tmp", ".old") and p.is_dir() and now - p.stat().st_mtime > max_age_s:
            shutil.rmtree(p, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, moving an older ``out`` aside first."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.old"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""The embedded default dataset: faces of every size on drawn bodies, over bundled photos.

Procedural and deterministic (same seed -> identical ``annotations.json`` and pixels), made
only from files that ship inside scikit-image and scikit-learn: the 100 LFW face crops and
100 face-like non-face crops of ``skimage.data.lfw_subset()``, scikit-image's bundled photos
and scikit-learn's two sample images. Nothing is fetched. DESIGN.md ("The embedded default
dataset") gives the contract; ``data/README.md`` the origin, licences and measured figures.
Taught in notebook 00_what_is_small; every other notebook trains on it.

Each image: a background photo crop; people drawn far-to-near (a torso in a clothing colour,
a head ellipse, the face crop tinted to a skin tone inside an elliptical face mask); a
person drawn later may hide part of an earlier face (its visible mask shrinks; a face less
than half visible becomes ``iscrowd: 1``); groups stand side by side at one size; the same
identity may appear twice (near-duplicates); non-face crops without a body as hard
negatives (not annotated). The whole composed image then goes through one blur, noise and
JPEG round trip, so sharpness does not give an object's size away.

Shapes: images ``[H, W, 3]`` uint8 with 320 <= H, W <= 640; masks ``[H, W]`` bool.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from sodlab.files import write_json

GENERATOR_VERSION = 1
SIZES = {"quick": (200, 50), "full": (3000, 500)}
_SPLIT_ID = {"train": 0, "val": 1}
# face widths in px by share: tiny, small, medium, large (sqrt(mask area) ~ 0.97 x width)
_WIDTH_BINS = ((0.42, 5, 15), (0.28, 17, 31), (0.24, 34, 92), (0.06, 102, 150))
_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "camera.png", "rocket.jpg",
           "grass.png", "gravel.png", "brick.png", "motorcycle_left.png", "motorcycle_right.png",
           "hubble_deep_field.jpg", "coins.png", "moon.png", "page.png", "text.png")
_CLOTHES = np.array([[40, 60, 120], [150, 30, 40], [30, 110, 60], [200, 180, 60], [50, 50, 50],
                     [220, 220, 220], [120, 70, 150], [200, 110, 40]], dtype=np.float32)
_SKIN = np.array([[255, 220, 190], [235, 190, 150], [200, 150, 110], [150, 100, 70],
                  [110, 75, 50]], dtype=np.float32) / 255.0


def repo_root() -> Path:
    """The folder with pyproject.toml above the cwd or the package, else the cwd."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for p in (start, *start.parents):
            if (p / "pyproject.toml").is_file():
                return p
    return Path.cwd()


def default_dataset_dir(size: str = "quick", seed: int = 0) -> Path:
    """``data/synth/<size>-seed<k>`` under the repository root."""
    return repo_root() / "data" / "synth" / f"{size}-seed{seed}"


def _material() -> dict:
    import skimage.data
    import sklearn.datasets

    lfw = skimage.data.lfw_subset()  # [200, 25, 25]: 100 faces, then 100 non-faces
    lfw = (lfw * 255).astype(np.uint8) if lfw.dtype != np.uint8 else lfw
    folder = Path(skimage.data.__file__).parent
    photos = []
    for name in _PHOTOS:
        if (folder / name).is_file():
            photos.append(np.asarray(Image.open(folder / name).convert("RGB")))
    photos += list(sklearn.datasets.load_sample_images().images)
    return {"faces": lfw[:100], "nonfaces": lfw[100:], "photos": photos}


_MAT: dict | None = None


def _mat() -> dict:
    global _MAT
    if _MAT is None:
        _MAT = _material()
    return _MAT


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy + 0.5 - cy) / max(ry, 0.5)) ** 2 + ((xx + 0.5 - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _ellipse_window(H: int, W: int, cy: float, cx: float, ry: float, rx: float):
    """The part of an ellipse inside the image: (row slice, column slice, local mask)."""
    y0, y1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)) + 1, H)
    x0, x1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)) + 1, W)
    if y0 >= y1 or x0 >= x1:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)
    m = _ellipse(y1 - y0, x1 - x0, cy - y0, cx - x0, ry, rx)
    return slice(y0, y1), slice(x0, x1), m


def _background(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    photo = _mat()["photos"][rng.integers(len(_mat()["photos"]))]
    ph, pw = photo.shape[:2]
    s = rng.uniform(0.5, 1.0)
    ch, cw = max(8, int(ph * s)), max(8, int(pw * s))
    y0, x0 = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((W, H), Image.BILINEAR)
    img = np.asarray(crop, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img * rng.uniform(0.6, 1.1) + rng.uniform(-0.1, 0.1, size=3)
    return np.clip(img, 0, 1).copy()


def _face_pixels(crop: np.ndarray, h: int, w: int, tint: np.ndarray) -> np.ndarray:
    g = Image.fromarray(crop).resize((max(w, 1), max(h, 1)), Image.LANCZOS)
    gray = np.asarray(g, dtype=np.float32)[..., None] / 255.0
    return np.clip(gray * tint * 1.25, 0, 1)


def _sample_width(rng: np.random.Generator) -> float:
    r, acc = rng.random(), 0.0
    for share, lo, hi in _WIDTH_BINS:
        acc += share
        if r <= acc:
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return float(_WIDTH_BINS[-1][2])


def _people(rng: np.random.Generator, H: int, W: int, identities: np.ndarray) -> list[dict]:
    """Where people stand and how big their faces are (drawn later, far to near)."""
    people = []
    n_groups = rng.integers(0, 3)
    for g in range(n_groups):
        w = _sample_width(rng)
        k = int(rng.integers(2, 6))
        x = rng.uniform(0, W)
        y = rng.uniform(0.1 * H, 0.9 * H)
        for j in range(k):
            people.append({"w": w * rng.uniform(0.9, 1.1), "cx": x + j * w * rng.uniform(2.2, 3),
                           "cy": y + rng.normal(0, 0.2 * w), "group": g})
    for _ in range(int(rng.integers(2, 9))):
        people.append({"w": _sample_width(rng), "cx": rng.uniform(0, W),
                       "cy": rng.uniform(0.05 * H, 0.95 * H), "group": None})
    ids = rng.choice(identities, size=len(people))
    if len(people) > 1 and rng.random() < 0.2:  # a near-duplicate: the same person twice
        ids[-1] = ids[0]
    for p, i in zip(people, ids):
        p["identity"] = int(i)
        p["h"] = p["w"] * rng.uniform(1.1, 1.3)
    people.sort(key=lambda p: p["w"])  # far (small) first, near (large) drawn last
    return people


def _bounds(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def make_image(seed: int, split: str, index: int, identities: np.ndarray,
               nonface_ids: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """One composed image and its annotations (without ids), from its own generator."""
    rng = np.random.default_rng([seed, _SPLIT_ID[split], index])
    H, W = int(rng.integers(320, 641)), int(rng.integers(320, 641))
    img = _background(rng, H, W)
    mat = _mat()
    for _ in range(int(rng.integers(0, 4))):  # hard negatives: face-like crops, no body
        w = _sample_width(rng)
        h = w * rng.uniform(1.1, 1.3)
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        _paste(img, mat["nonfaces"][rng.choice(nonface_ids)], cx, cy, w, h,
               _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.8, 1.1))
    objects = []
    for p in _people(rng, H, W, identities):
        w, h, cx, cy = p["w"], p["h"], p["cx"], p["cy"]
        cloth = _CLOTHES[rng.integers(len(_CLOTHES))] / 255.0 * rng.uniform(0.7, 1.1)
        skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.85, 1.05)
        body = _ellipse_window(H, W, cy + 2.6 * h, cx, 2.0 * h, 1.6 * w)  # torso, shoulders
        neck = _ellipse_window(H, W, cy + 0.9 * h, cx, 0.45 * h, 0.3 * w)
        head = _ellipse_window(H, W, cy - 0.08 * h, cx, 0.62 * h, 0.6 * w)  # hair
        hair = np.array([0.1, 0.07, 0.05]) * rng.uniform(0.5, 3.0)
        for (sy, sx, m), colour in ((body, cloth), (neck, skin * 0.9),
                                    (head, np.clip(hair, 0, 1))):
            img[sy, sx][m] = colour
            for o in objects:
                o["mask"][sy, sx] &= ~m
        face = _paste(img, mat["faces"][p["identity"]], cx, cy, w, h, skin)
        fy, fx = _bounds(face)
        for o in objects:
            o["mask"][fy, fx] &= ~face[fy, fx]
        objects.append({"mask": face, "full": max(int(face.sum()), 1), "group": p["group"],
                        "identity": p["identity"],
                        "head": [cx - 0.6 * w, cy - 0.7 * h, 1.2 * w, 1.34 * h],
                        "body": [cx - 1.6 * w, cy - 0.7 * h, 3.2 * w, 5.3 * h]})
    img = _degrade(img, rng)
    anns = []
    for o in objects:
        m = o["mask"]
        area = int(m.sum())
        if area < 6:
            continue
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        x1, y1, x2, y2 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
        anns.append({"bbox": [x1, y1, x2 - x1, y2 - y1], "area": area,
                     "iscrowd": int(area < 0.5 * o["full"]), "segmentation": _rle(m),
                     "head_bbox": [round(v, 2) for v in o["head"]],
                     "body_bbox": [round(v, 2) for v in o["body"]],
                     "group": o["group"], "identity": o["identity"]})
    return img, anns


def _paste(img: np.ndarray, crop: np.ndarray, cx: float, cy: float, w: float, h: float,
           tint: np.ndarray) -> np.ndarray:
    """Draw a face-like crop in an ellipse; returns its mask ``[H, W]`` (clipped to the image)."""
    H, W = img.shape[:2]
    x1, y1 = int(np.floor(cx - w / 2)), int(np.floor(cy - h / 2))
    wi, hi = max(int(round(w)), 2), max(int(round(h)), 2)
    mask = np.zeros((H, W), dtype=bool)
    ell = _ellipse(hi, wi, hi / 2, wi / 2, hi / 2, wi / 2)
    pix = _face_pixels(crop, hi, wi, tint)
    ya, yb = max(y1, 0), min(y1 + hi, H)
    xa, xb = max(x1, 0), min(x1 + wi, W)
    if ya >= yb or xa >= xb:
        return mask
    e = ell[ya - y1:yb - y1, xa - x1:xb - x1]
    region = img[ya:yb, xa:xb]
    region[e] = pix[ya - y1:yb - y1, xa - x1:xb - x1][e]
    mask[ya:yb, xa:xb] = e
    return mask


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One blur, noise and JPEG round trip for the whole image (every object size alike)."""
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(radius=0.6))
    arr = np.asarray(pil, dtype=np.float32) + rng.normal(0, 3.0, size=img.shape)
    pil = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=80)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _identity_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ids = np.arange(100)
    return {"train": (ids[:80], ids[:80]), "val": (ids[80:], ids[80:])}


def _make_one(args) -> tuple[int, list[dict], tuple[int, int]]:
    seed, split, index, folder = args
    faces, nonfaces = _identity_split()[split]
    img, anns = make_image(seed, split, index, faces, nonfaces)
    Image.fromarray(img).save(Path(folder) / f"{index:05d}.png", compress_level=1)
    return index, anns, img.shape[:2]


def make_dataset(out: str | os.PathLike | None = None, *, size: str = "quick", seed: int = 0,
                 progress: bool = True, num_train: int | None = None,
                 num_val: int | None = None, workers: int | None = None) -> Path:
    """Write a dataset root (``train/``, ``val/``, ``meta.json``) and return its path.

    Built in a temporary folder beside ``out`` and renamed at the end, so an interrupted
    run never leaves a folder that looks complete. ``num_train``/``num_val`` override the
    size's counts (tests); ``workers`` defaults to 2 processes for ``full``.
    """
    if size not in SIZES:
        raise ValueError(f"unknown dataset size {size!r}; choose from {sorted(SIZES)}")
    out = Path(out) if out is not None else default_dataset_dir(size, seed)
    counts = {"train": num_train or SIZES[size][0], "val": num_val or SIZES[size][1]}
    workers = workers if workers is not None else (2 if size == "full" else 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, n in counts.items():
            folder = tmp / split / "images"
            folder.mkdir(parents=True)
            jobs = [(seed, split, i, str(folder)) for i in range(n)]
            bar = tqdm(total=n, disable=not progress, desc=f"{split} images")
            if workers > 1:
                with ProcessPoolExecutor(workers) as pool:
                    results = []
                    for r in pool.map(_make_one, jobs, chunksize=16):
                        results.append(r)
                        bar.update()
            else:
                results = []
                for j in jobs:
                    results.append(_make_one(j))
                    bar.update()
            bar.close()
            coco = {"info": {"description": "sodlab embedded faces", "version":
                             GENERATOR_VERSION, "seed": seed, "split": split},
                    "images": [], "annotations": [],
                    "categories": [{"id": 1, "name": "face", "supercategory": "person"}]}
            for index, anns, (h, w) in sorted(results, key=lambda r: r[0]):
                coco["images"].append({"id": index + 1, "file_name": f"{index:05d}.png",
                                       "width": int(w), "height": int(h)})
                for a in anns:
                    coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                                "image_id": index + 1, "category_id": 1, **a})
            write_json(tmp / split / "annotations.json", coco, indent=None)
        write_json(tmp / "meta.json", {"generator_version": GENERATOR_VERSION, "size": size,
                                       "seed": seed, "counts": counts})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

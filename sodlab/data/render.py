"""Drawing for the embedded dataset: bundled material, shapes, face crops, degradation, RLE.

The low-level half of ``sodlab.data.synth`` (which lays out the people and writes the
files). Everything here is a plain function of its arguments and an explicit
``numpy.random.Generator``; nothing reads global random state. The material is read
straight from the files that ship inside scikit-image and scikit-learn (no fetcher, no
network): ``data/README.md`` gives their origin and licences. Taught in notebook
00_what_is_small.

Dimension legend: H, W image height and width; h, w a window's height and width.
Images are ``[H, W, 3]`` uint8 RGB; masks ``[H, W]`` bool; a window is
``(row slice, column slice, [h, w] bool mask)``.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

# bundled photos used as backgrounds (licences in data/README.md); photos that show a
# real person (astronaut, camera) are left out: their faces would be unannotated faces
SKIMAGE_PHOTOS = ("coffee.png", "chelsea.png", "rocket.jpg", "grass.png", "gravel.png",
                  "brick.png", "hubble_deep_field.jpg", "coins.png", "text.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
BLUR = ImageFilter.Kernel((3, 3), [1, 4, 1, 4, 16, 4, 1, 4, 1], scale=36)  # Gaussian, sigma~0.6
JPEG_QUALITY = 80
# noise = 2 * (number of set bits in a random byte - 4): binomial(8, 1/2), std 2.83 levels
_NOISE = (2 * (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1) - 4)
          ).astype(np.int16)


def _package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the embedded dataset needs the package {name!r}")
    return Path(list(spec.submodule_search_locations)[0])


def _normalise(crops: np.ndarray) -> np.ndarray:
    """Each ``[25, 25]`` crop to one mean and contrast, so brightness tells faces from the
    non-face crops no better than it tells sizes apart."""
    x = crops.astype(np.float64)
    mean, std = x.mean(axis=(1, 2), keepdims=True), x.std(axis=(1, 2), keepdims=True)
    x = (x - mean) / np.maximum(std, 8.0) * 45.0 + 125.0
    return np.clip(x, 0, 255).round().astype(np.uint8)


def load_material() -> dict:
    """The bundled crops and photos: faces ``[100, 25, 25]``, nonfaces ``[100, 25, 25]``
    (uint8, from ``lfw_subset.npy``: the first 100 are faces, the last 100 face-like
    background crops; each brought to mean 125 and standard deviation 45) and a list of
    ``[h, w, 3]`` uint8 photos."""
    skimage_data = _package_dir("skimage") / "data"
    lfw = np.load(skimage_data / "lfw_subset.npy")  # [200, 25, 25]
    if lfw.dtype != np.uint8:
        lfw = np.clip(np.asarray(lfw, dtype=np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)
    lfw = _normalise(lfw)
    photos = [skimage_data / n for n in SKIMAGE_PHOTOS]
    photos += [_package_dir("sklearn") / "datasets" / "images" / n for n in SKLEARN_PHOTOS]
    return {"faces": lfw[:100], "nonfaces": lfw[100:],
            "photos": [np.asarray(Image.open(p).convert("RGB")) for p in photos]}


def background(rng: np.random.Generator, photos: list[np.ndarray], H: int, W: int) -> np.ndarray:
    """A random crop of a photo, rescaled to ``[H, W, 3]``, maybe flipped, colour-shifted."""
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    s = rng.uniform(0.35, 1.0)
    ch, cw = max(16, int(ph * s)), max(16, int(pw * s))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    img = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((W, H), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    gain, offset = rng.uniform(0.6, 1.1), rng.uniform(-25, 25, size=3)
    levels = np.arange(256, dtype=np.float64)
    lut = np.concatenate([np.clip(levels * gain + o, 0, 255) for o in offset])
    return np.array(img.point(lut.round().astype(np.uint8).tolist()))  # [H, W, 3], writable


def ellipse_window(H: int, W: int, cy: float, cx: float, ry: float, rx: float):
    """The part of an axis-aligned ellipse inside the image: (rows, cols, [h, w] mask)."""
    ry, rx = max(ry, 0.5), max(rx, 0.5)
    y0, y1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)), H)
    x0, x1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)), W)
    if y0 >= y1 or x0 >= x1:
        return slice(0, 0), slice(0, 0), np.zeros((0, 0), dtype=bool)
    yy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / ry
    xx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / rx
    return slice(y0, y1), slice(x0, x1), yy ** 2 + xx ** 2 <= 1.0


def paste_crop(img: np.ndarray, crop: np.ndarray, cx: float, cy: float, w: float, h: float,
               tint: np.ndarray, *, blur: float = 0.0) -> np.ndarray:
    """Draw a grey ``[25, 25]`` crop, resized (antialiased) to ``w x h`` and tinted, inside
    its inscribed ellipse centred at ``(cx, cy)``; returns that ellipse's ``[H, W]`` mask
    (clipped to the image). ``blur`` > 0 smears the crop (a Gaussian of that radius in px)."""
    H, W = img.shape[:2]
    wi, hi = max(int(round(w)), 2), max(int(round(h)), 2)
    x1, y1 = int(np.floor(cx - wi / 2)), int(np.floor(cy - hi / 2))
    mask = np.zeros((H, W), dtype=bool)
    ya, yb, xa, xb = max(y1, 0), min(y1 + hi, H), max(x1, 0), min(x1 + wi, W)
    if ya >= yb or xa >= xb:
        return mask
    small = Image.fromarray(crop).resize((wi, hi), Image.LANCZOS)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    grey = np.asarray(small, dtype=np.float32)[ya - y1:yb - y1, xa - x1:xb - x1, None]
    pix = np.clip(grey * (np.asarray(tint, dtype=np.float32) * 1.25), 0, 255)  # [h, w, 3]
    _, _, ell = ellipse_window(hi, wi, hi / 2, wi / 2, hi / 2, wi / 2)
    ell = ell[ya - y1:yb - y1, xa - x1:xb - x1]
    img[ya:yb, xa:xb][ell] = pix.astype(np.uint8)[ell]
    mask[ya:yb, xa:xb] = ell
    return mask


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same slight blur, noise and JPEG round trip for the whole ``[H, W, 3]`` image,
    so an object's sharpness does not give its size away."""
    blurred = np.asarray(Image.fromarray(img).filter(BLUR), dtype=np.int16)
    noise = _NOISE[np.frombuffer(rng.bytes(img.size), dtype=np.uint8)].reshape(img.shape)
    noisy = np.clip(blurred + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def mask_bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``(x1, y1, x2, y2)`` of a ``[H, W]`` mask (x2, y2 exclusive), None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a ``[H, W]`` bool mask, as pycocotools writes it: run
    lengths over the column-major pixels, starting with a (maybe empty) run of zeros."""
    H, W = mask.shape
    b = mask_bounds(mask)
    if b is None:
        return {"size": [H, W], "counts": [H * W]}
    x1, y1, x2, y2 = b
    win = np.zeros((x2 - x1, y2 - y1 + 2), dtype=np.int8)  # [w, h + 2], columns as rows
    win[:, 1:-1] = mask[y1:y2, x1:x2].T
    d = np.diff(win, axis=1)  # [w, h + 1]
    cs, rs = np.nonzero(d == 1)  # run starts, in column-major order
    ce, re = np.nonzero(d == -1)  # run ends (exclusive)
    starts, ends = (x1 + cs) * H + y1 + rs, (x1 + ce) * H + y1 + re
    joined = starts[1:] == ends[:-1]  # a run that goes on into the next column
    starts = starts[np.concatenate([[True], ~joined])]
    ends = ends[np.concatenate([~joined, [True]])]
    edges = np.stack([starts, ends], axis=1).reshape(-1)
    counts = np.diff(np.concatenate([[0], edges, [H * W]]))
    if counts[-1] == 0:
        counts = counts[:-1]
    return {"size": [H, W], "counts": [int(c) for c in counts]}

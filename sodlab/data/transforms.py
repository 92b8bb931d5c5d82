"""Geometric and photometric transforms that keep an image and its target consistent.

Layer L1. Each transform is a callable ``t(image, target, g) -> (image, target)`` with
``image`` float32 ``[3, H, W]`` in [0, 1], ``target`` per the data contract of
``sodlab.data.dataset`` and ``g`` a ``torch.Generator``, the only source of randomness.
Geometric transforms move every ``[N, 4]`` xyxy entry whose key ends in ``"boxes"``
(``boxes``, ``head_boxes``, ...), the ``masks [N, H, W]`` and the ``area``. Boxes are
continuous pixels (x1 <= x < x2), so a horizontal flip maps ``x1' = W - x2, x2' = W - x1``.
Used by the dataset (``DetectionDataset(transforms=...)``) and taught in notebook
02_augmentation.

``DataAnchorSampling`` is PyramidBox's data-anchor-sampling (Tang et al. 2018, notebook
06): it rescales the image so that one randomly chosen face takes the size of a randomly
chosen anchor no larger than one step above the face's own, then crops a square training
input around that face, so small faces become more frequent in training.

``RandomSlice`` is SAHI's slicing for training (Akyon et al. 2022, "Slicing aided hyper
inference and fine-tuning for small object detection"): the training image becomes one tile
cut at the original resolution, so small objects reach the network larger than a resize of
the whole image would leave them. ``sodlab.slicing`` is its inference-time counterpart.

Dimension legend: N objects, H x W image height and width (H' x W' after resizing),
S the square crop's side, h x w a tile's height and width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sodlab.tiling import resize_image


def _box_keys(target: dict) -> list[str]:
    return [k for k, v in target.items()
            if k.endswith("boxes") and isinstance(v, torch.Tensor) and v.shape[-1:] == (4,)]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class Compose:
    """Apply transforms in order, passing the same generator along."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        for t in self.transforms:
            image, target = t(image, target, g)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ResizeLongest:
    """Resize so the longer side is ``max_size`` pixels, keeping the aspect ratio.

    Boxes scale by ``W'/W`` and ``H'/H`` (the exact ratios after rounding the new size),
    ``area`` by their product, masks by nearest-neighbour sampling (pixel centres). With
    ``upscale=False`` an image already smaller than ``max_size`` is left alone.
    """

    def __init__(self, max_size: int, *, upscale: bool = True) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self.upscale = upscale

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator | None = None):
        _, h, w = image.shape
        s = self.max_size / max(h, w)
        if s == 1.0 or (s > 1.0 and not self.upscale):
            return image, target
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        out = resize_image(image, (nh, nw), antialias=s < 1.0).clamp_(0.0, 1.0)  # [3, H', W']
        sx, sy = nw / w, nh / h
        target = dict(target)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        for k in _box_keys(target):
            target[k] = target[k] * scale.to(target[k])  # [N, 4]
        if "area" in target:
            target["area"] = target["area"] * (sx * sy)
        if "masks" in target:
            m = target["masks"]  # [N, H, W]
            if m.shape[0] == 0:
                target["masks"] = m.new_zeros((0, nh, nw))
            else:
                target["masks"] = F.interpolate(m[None].float(), size=(nh, nw),
                                                mode="nearest-exact")[0] > 0.5  # [N, H', W']
        return out, target

    def __repr__(self) -> str:
        return f"ResizeLongest({self.max_size}, upscale={self.upscale})"


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror left-right: ``x1' = W - x2``, ``x2' = W - x1``; masks flipped; area unchanged."""
    w = image.shape[-1]
    target = dict(target)
    for k in _box_keys(target):
        b = target[k]  # [N, 4]
        target[k] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=-1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


class RandomHFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        if float(torch.rand((), generator=g)) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHFlip(p={self.p})"


def _gray(image: torch.Tensor) -> torch.Tensor:
    r, gr, b = image[0], image[1], image[2]
    return (0.299 * r + 0.587 * gr + 0.114 * b)[None]  # [1, H, W]


class ColorJitter:
    """Random brightness, contrast and saturation factors drawn uniformly in ``[1-v, 1+v]``.

    Brightness scales the pixels, contrast blends with the mean grey level, saturation
    with the grey image (as torchvision's ColorJitter, in a fixed order). Targets unchanged.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.2) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast),
                        ("saturation", saturation)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        fb = _uniform(g, 1 - self.brightness, 1 + self.brightness)
        fc = _uniform(g, 1 - self.contrast, 1 + self.contrast)
        fs = _uniform(g, 1 - self.saturation, 1 + self.saturation)
        out = (image * fb).clamp(0.0, 1.0)  # [3, H, W]
        mean = _gray(out).mean()
        out = (fc * out + (1 - fc) * mean).clamp(0.0, 1.0)
        out = (fs * out + (1 - fs) * _gray(out)).clamp(0.0, 1.0)
        return out, target

    def __repr__(self) -> str:
        return (f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation})")


def _per_object_keys(target: dict, n: int) -> list[str]:
    return [k for k, v in target.items() if isinstance(v, torch.Tensor) and v.dim() >= 1
            and v.shape[0] == n]


class DataAnchorSampling:
    """PyramidBox's data-anchor-sampling, then a square ``size x size`` crop around one face.

    With probability ``p`` (0.5 in the paper's public code; otherwise, or when the image
    has no trained face, the image is only resized to ``ResizeLongest(size)``):

    1. pick one trained face (not ``iscrowd``, positive size) uniformly; its size is
       ``s = sqrt(w * h)``;
    2. ``i`` = index of the ``anchor_sizes`` entry nearest to ``s`` (the smaller on a tie);
    3. draw a target index uniformly from ``{0, ..., min(max_index, i + 1)}``
       (``max_index`` defaults to the last anchor, 5 for PyramidBox's six);
    4. draw the target size ``s_t`` uniformly in ``[a / 2, 2 a]`` for that anchor size ``a``;
    5. rescale the image by ``s_t / s`` and crop ``size x size`` around the face: the crop
       offset is uniform among windows that hold the whole face and, as far as the face
       allows, lie inside the rescaled image (or hold all of it when it is smaller than
       the crop); what the crop has beyond the image is zeros.

    Rule for the other objects: a box whose centre lies in the crop is kept, clipped to
    the crop; a box only partly in the crop with its centre outside is kept clipped but
    marked ``iscrowd`` (ignored, so its visible part is not trained as background); a box
    with nothing in the crop is dropped. ``area`` scales with the image and with the share
    of the box left after clipping. Context boxes (``head_boxes``, ``body_boxes``) are moved
    and scaled with the image but not clipped (the detector clips them to the image);
    missing (NaN) rows stay NaN. Masks are resampled to the crop (nearest pixel).

    Every argument is plain JSON, so ``DataAnchorSampling(**spec)`` builds it from a recipe
    dict; ``to_dict()`` gives that dict back. Randomness only from ``g``; ``draw`` exposes
    the choices of steps 1-4.
    """

    def __init__(self, anchor_sizes: Sequence[float], size: int, *, p: float = 0.5,
                 max_index: int | None = None) -> None:
        sizes = [float(a) for a in anchor_sizes]
        if not sizes or min(sizes) <= 0 or sizes != sorted(sizes):
            raise ValueError(f"anchor_sizes must be positive and ascending, got {anchor_sizes}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.anchor_sizes = sizes
        self.size = int(size)
        self.p = float(p)
        self.max_index = len(sizes) - 1 if max_index is None else int(max_index)
        if not 0 <= self.max_index < len(sizes):
            raise ValueError(f"max_index must index anchor_sizes, got {max_index}")
        self._resize = ResizeLongest(self.size)

    def to_dict(self) -> dict:
        return {"anchor_sizes": list(self.anchor_sizes), "size": self.size, "p": self.p,
                "max_index": self.max_index}

    def __repr__(self) -> str:
        return (f"DataAnchorSampling({self.anchor_sizes}, {self.size}, p={self.p}, "
                f"max_index={self.max_index})")

    def draw(self, boxes: torch.Tensor, iscrowd: torch.Tensor | None,
             g: torch.Generator) -> dict | None:
        """Steps 1-4: ``face`` (row of ``boxes``), ``nearest`` (i), ``index`` (target index),
        ``target`` (s_t) and ``scale`` (s_t / s); None when no face can be chosen."""
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # [N, 2]
        ok = (wh > 0).all(1)  # [N]
        if iscrowd is not None:
            ok &= ~iscrowd.bool()
        cand = torch.nonzero(ok).flatten()
        if len(cand) == 0:
            return None
        j = int(cand[int(torch.randint(len(cand), (1,), generator=g))])
        s = float(wh[j].prod().sqrt())
        dist = [abs(a - s) for a in self.anchor_sizes]
        i = dist.index(min(dist))
        top = min(self.max_index, i + 1)
        t = int(torch.randint(top + 1, (1,), generator=g))
        a = self.anchor_sizes[t]
        s_t = _uniform(g, a / 2, 2 * a)
        return {"face": j, "nearest": i, "index": t, "target": s_t, "scale": s_t / s}

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        if float(torch.rand((), generator=g)) >= self.p:
            return self._resize(image, target)
        boxes = target["boxes"]  # [N, 4]
        choice = self.draw(boxes, target.get("iscrowd"), g)
        if choice is None:
            return self._resize(image, target)
        _, H, W = image.shape
        scale = choice["scale"]
        if scale < 1.0:  # shrink with antialiasing first, then cut at scale 1
            nh, nw = max(1, round(H * scale)), max(1, round(W * scale))
            src = resize_image(image, (nh, nw), antialias=True)
            sx, sy, fx, fy = nw / W, nh / H, 1.0, 1.0
        else:
            src, sx, sy, fx, fy = image, scale, scale, scale, scale
        face = boxes[choice["face"]].tolist()
        x0 = self._offset(face[0] * sx, face[2] * sx, W * sx, g)
        y0 = self._offset(face[1] * sy, face[3] * sy, H * sy, g)
        out = _sample(src, x0, y0, fx, fy, self.size, mode="bilinear").clamp_(0.0, 1.0)
        return out, self._move_target(target, x0, y0, sx, sy)

    def _offset(self, lo: float, hi: float, extent: float, g: torch.Generator) -> float:
        """A crop start along one axis: the face ``[lo, hi)`` inside the window and the window
        inside the image ``[0, extent)`` (or the image inside the window) when both fit; a
        whole pixel when the drawn start can be rounded to one without breaking that."""
        S = self.size
        if hi - lo > S:  # the face is larger than the crop: the crop lies inside it
            a, b = lo, hi - S
        else:
            a, b = hi - S, lo  # windows holding the face
            ia, ib = (max(a, 0.0), min(b, extent - S)) if extent >= S else \
                (max(a, extent - S), min(b, 0.0))
            if ia <= ib:
                a, b = ia, ib
        x = _uniform(g, a, b)
        return float(round(x)) if a <= round(x) <= b else x

    def _move_target(self, target: dict, x0: float, y0: float, sx: float, sy: float) -> dict:
        S = self.size
        boxes = target["boxes"]
        n = len(boxes)
        shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        moved = boxes * scale - shift  # [N, 4] crop pixels
        clipped = moved.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, S)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, S)
        centre = (moved[:, :2] + moved[:, 2:]) / 2  # [N, 2]
        inside = ((centre >= 0) & (centre < S)).all(1)  # [N]
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])  # [N] visible
        per_object = _per_object_keys(target, n)
        out = {k: v for k, v in target.items() if k not in per_object}
        for k in per_object:
            out[k] = target[k][keep]
        out["boxes"] = clipped[keep]
        crowd = target.get("iscrowd", torch.zeros(n, dtype=torch.bool)).bool()
        out["iscrowd"] = (crowd | ~inside)[keep]
        if "area" in target:
            full = (moved[:, 2:] - moved[:, :2]).clamp(min=0).prod(1)  # [N]
            part = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(1)  # [N]
            share = torch.where(full > 0, part / full.clamp(min=1e-12), torch.zeros_like(full))
            out["area"] = (target["area"] * (sx * sy) * share)[keep]
        for k in _box_keys(target):
            if k != "boxes":
                out[k] = (target[k] * scale.to(target[k]) - shift.to(target[k]))[keep]
        if "masks" in target:
            m = target["masks"][keep]  # [N', H, W]
            if len(m):
                out["masks"] = _sample(m.float(), x0, y0, sx, sy, S, mode="nearest") > 0.5
            else:
                out["masks"] = torch.zeros((0, S, S), dtype=torch.bool)
        return out


def _sample(x: torch.Tensor, x0: float, y0: float, sx: float, sy: float, S: int, *,
            mode: str) -> torch.Tensor:
    """``x [C, H, W]`` scaled by ``(sx, sy)`` and cut at ``(x0, y0)`` to ``[C, S, S]``, zeros
    outside; output pixel centre ``u + 0.5`` reads input ``(u + 0.5 + x0) / sx`` (continuous
    pixels)."""
    _, H, W = x.shape
    u = (torch.arange(S, dtype=torch.float32) + 0.5 + x0) / sx  # [S] input x
    v = (torch.arange(S, dtype=torch.float32) + 0.5 + y0) / sy  # [S] input y
    gy, gx = torch.meshgrid(2 * v / H - 1, 2 * u / W - 1, indexing="ij")  # [S, S]
    grid = torch.stack([gx, gy], -1)[None].to(x.dtype)  # [1, S, S, 2]
    return F.grid_sample(x[None], grid, mode=mode, padding_mode="zeros",
                         align_corners=False)[0]  # [C, S, S]


class RandomSlice:
    """SAHI's slicing for training: with probability ``p`` the image becomes one random tile.

    Fine-tuning on slices (Akyon et al. 2022, "Slicing aided hyper inference and fine-tuning
    for small object detection"). Unlike ``sodlab.slicing``'s sliced inference, which covers
    the image with a fixed grid of overlapping tiles and merges their detections, training
    cuts one ``tile x tile`` window per item at a random position, at the original
    resolution (no down-scaling): a small object keeps its pixels instead of shrinking with a
    resize of the whole image. The chain's ``ResizeLongest`` then brings the tile to the
    input size (a tile of the input size is left alone). An image narrower or lower than
    the tile keeps its whole extent along that side (a smaller image is used whole).

    Draws from ``g``: nothing when ``p == 0`` (the item is then exactly what the chain gives
    without this transform); otherwise one ``torch.rand`` (a tile when it is below ``p``),
    then, for a tile, ``x0`` and ``y0`` in that order, each ``torch.randint`` over the
    whole-pixel starts ``0 .. W - w`` and ``0 .. H - h``.

    Objects: boxes are shifted and clipped to the tile; the visible share of a box is its
    clipped area over its own area (1 for a box of no area lying in the tile). A box with a
    share ``>= min_visible`` keeps its label; one below it but partly visible (clipped area
    > 0) is kept as ``iscrowd`` (ignored in training: a cut face is neither a face nor
    background); the others are dropped. Objects already ``iscrowd`` stay so. ``area``
    (the data contract's COCO area) is multiplied by the visible share; masks are cut
    like the image; context boxes (``head_boxes``, ...) are shifted, not clipped.
    """

    def __init__(self, tile: int, *, p: float = 0.5, min_visible: float = 0.5) -> None:
        if int(tile) != tile or tile < 1:
            raise ValueError(f"tile must be an integer >= 1, got {tile}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0.0 < min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
        self.tile, self.p, self.min_visible = int(tile), float(p), float(min_visible)

    def __repr__(self) -> str:
        return f"RandomSlice({self.tile}, p={self.p}, min_visible={self.min_visible})"

    def draw(self, height: int, width: int, g: torch.Generator) -> tuple[int, int, int, int] | None:
        """The tile ``(x0, y0, x1, y1)`` in whole pixels, or None for the full image."""
        if self.p <= 0.0 or float(torch.rand((), generator=g)) >= self.p:
            return None
        w, h = min(self.tile, width), min(self.tile, height)
        x0 = int(torch.randint(width - w + 1, (1,), generator=g))
        y0 = int(torch.randint(height - h + 1, (1,), generator=g))
        return x0, y0, x0 + w, y0 + h

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        _, H, W = image.shape
        window = self.draw(H, W, g)
        if window is None or window == (0, 0, W, H):
            return image, target
        x0, y0, x1, y1 = window
        out = image[:, y0:y1, x0:x1].contiguous()  # [3, h, w]
        return out, self.cut_target(target, window)

    def cut_target(self, target: dict, window: tuple[int, int, int, int]) -> dict:
        """``target`` seen through the tile ``window`` (x0, y0, x1, y1): the object rule above."""
        x0, y0, x1, y1 = window
        boxes = target["boxes"]  # [N, 4]
        n = len(boxes)
        b = boxes.double()
        shift = torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        clipped = b - shift  # [N, 4] tile pixels
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, x1 - x0)
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, y1 - y0)
        full = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # [N]
        part = ((clipped[:, 2] - clipped[:, 0]).clamp(min=0)
                * (clipped[:, 3] - clipped[:, 1]).clamp(min=0))  # [N]
        inside = (b[:, 0] >= x0) & (b[:, 1] >= y0) & (b[:, 2] <= x1) & (b[:, 3] <= y1)  # [N]
        share = torch.where(full > 0, part / full.clamp(min=1e-300), inside.double())  # [N]
        seen = share >= self.min_visible  # [N]
        keep = seen | (part > 0)  # [N]
        per_object = _per_object_keys(target, n)
        out = {k: v for k, v in target.items() if k not in per_object}
        for k in per_object:
            out[k] = target[k][keep]
        out["boxes"] = clipped[keep].to(boxes.dtype)
        crowd = target.get("iscrowd", torch.zeros(n, dtype=torch.bool)).bool()
        out["iscrowd"] = (crowd | ~seen)[keep]
        if "area" in target:
            area = target["area"]
            out["area"] = (area.double() * share)[keep].to(area.dtype)
        for k in _box_keys(target):
            if k != "boxes":
                out[k] = (target[k] - shift.to(target[k]))[keep]
        if "masks" in target:
            out["masks"] = target["masks"][keep][:, y0:y1, x0:x1].contiguous()  # [N', h, w]
        return out

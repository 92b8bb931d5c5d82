"""Augmentation for small objects: oversample images that hold them, copy-paste them by mask.

After Kisantal et al. 2019, "Augmentation for small object detection" (docs/methods.md):
images with small objects are repeated k times per epoch (2-4x, 3x best in the paper), and
small objects are copied by their mask and pasted inside the same image at random places,
scaled by +-20 % and rotated by +-15 degrees, never over an existing object.
Taught in notebook 02_augmentation.

Shapes: image ``[3, H, W]`` float in [0, 1]; target per the data contract with ``masks
[N, H, W]`` bool (the dataset's ``with_masks=True``). Optional ``context_boxes [N, 4]`` (xyxy)
give each object's context region (head and body); without it the context is the face box
widened 3x and stretched down 3.5x, the shape of a head and shoulders.

Dimension legend: N objects, H x W image, h x w patch, P pasted objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sodlab.data.coco import annotations_by_image

SMALL_AREA = 32.0**2

STRATEGIES = ("all_once", "one_many", "random_subset")


# --------------------------------------------------------------------------- oversampling
def contains_small(anns: Sequence[dict], max_area: float = SMALL_AREA) -> bool:
    """True if any non-crowd COCO annotation of an image has ``area <= max_area``."""
    return any(not a.get("iscrowd", 0) and a["area"] <= max_area for a in anns)


def oversample_repeats(coco: dict, *, k: int,
                       predicate: Callable[[Sequence[dict]], bool] = contains_small) -> list[int]:
    """Repeat count per image of ``coco["images"]`` (in that order): k where predicate holds, else 1."""
    if k < 1:
        raise ValueError(f"oversampling factor k must be >= 1, got {k}")
    by_image = annotations_by_image(coco)
    return [k if predicate(by_image.get(int(im["id"]), [])) else 1 for im in coco["images"]]


# --------------------------------------------------------------------------- copy-paste
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight xyxy box of a non-empty bool mask ``[h, w]`` in the continuous-pixel convention."""
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _context_regions(target: dict, idx: list[int]) -> torch.Tensor:
    """Context region ``[S, 4]`` of the objects ``idx``: ``context_boxes``, else the union of
    each box with its head and body boxes (the dataset's ``context_keys``; non-finite parts
    are left out), else a guessed head-and-shoulders region."""
    box = target["boxes"][idx]  # [S, 4]
    if "context_boxes" in target:
        return target["context_boxes"][idx]
    keys = [k for k in ("head_boxes", "body_boxes") if k in target]
    out = _default_context(box)  # [S, 4]
    if not keys:
        return out
    parts = torch.stack([target[k][idx] for k in keys], 1)  # [S, K, 4]
    finite = torch.isfinite(parts).all(2)  # [S, K]
    parts = torch.where(finite[..., None], parts, box[:, None])  # a missing part adds nothing
    allb = torch.cat([box[:, None], parts], 1)  # [S, 1 + K, 4]
    union = torch.cat([allb[..., :2].min(1).values, allb[..., 2:].max(1).values], 1)
    return torch.where(finite.any(1)[:, None], union, out)


def _default_context(box: torch.Tensor) -> torch.Tensor:
    """Face boxes ``[S, 4]`` widened 3x and stretched down 3.5x: head and shoulders."""
    w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    cx = (box[:, 0] + box[:, 2]) / 2
    return torch.stack([cx - 1.5 * w, box[:, 1] - 0.5 * h, cx + 1.5 * w, box[:, 3] + 2.5 * h], 1)


def _warp(patch: torch.Tensor, scale: float, angle_deg: float) -> torch.Tensor:
    """Scale and rotate a ``[C, h, w]`` patch about its centre into its new bounding size."""
    _, h, w = patch.shape
    a = math.radians(angle_deg)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    wo = max(1, math.ceil(scale * (w * c + h * s)))
    ho = max(1, math.ceil(scale * (w * s + h * c)))
    # output pixel offsets (from the centre) -> input offsets: R(-a) / scale, then to the
    # grid's [-1, 1] units; in float32 as torch's own matrix products would give it
    inv = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]],
                   dtype=np.float32) / np.float32(scale)
    theta = np.zeros((1, 2, 3), dtype=np.float32)  # [1, 2, 3]
    theta[0, :, :2] = (np.array([[2.0 / w], [2.0 / h]], dtype=np.float32) * inv
                       * np.array([[wo / 2.0, ho / 2.0]], dtype=np.float32))
    grid = F.affine_grid(torch.from_numpy(theta), [1, patch.shape[0], ho, wo],
                         align_corners=False)
    return F.grid_sample(patch[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]  # [C, ho, wo]


def _feather(alpha: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Soft edges that stay inside the footprint: blur, then zero outside it."""
    r = max(1, int(2 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    a = alpha[None, None]
    a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    a = F.conv2d(F.pad(a, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return a[0, 0] * (alpha > 0)


def _place(occupied: np.ndarray, fp: np.ndarray, g: torch.Generator,
           max_tries: int) -> tuple[int, int] | None:
    """The first of up to ``max_tries`` random offsets where ``fp`` misses ``occupied``.

    Each try draws a row then a column offset (``randint(H - ho + 1)``, ``randint(W - wo +
    1)``). All tries are drawn in one call from the product range (a draw modulo the product
    gives the same offsets as the two draws, since each range divides it), and the generator
    is then advanced by exactly the tries used, so the stream is that of one try at a time.
    """
    H, W = occupied.shape
    ho, wo = fp.shape
    ny, nx = H - ho + 1, W - wo + 1
    if ny * nx >= 2**32:  # torch draws 64 bits for such ranges: one try at a time
        for _ in range(max_tries):
            oy = int(torch.randint(ny, (1,), generator=g))
            ox = int(torch.randint(nx, (1,), generator=g))
            if not (occupied[oy:oy + ho, ox:ox + wo] & fp).any():
                return oy, ox
        return None
    state = g.get_state()
    draws = torch.randint(ny * nx, (2 * max_tries,), generator=g).tolist()
    for t in range(max_tries):
        oy, ox = draws[2 * t] % ny, draws[2 * t + 1] % nx
        if not (occupied[oy:oy + ho, ox:ox + wo] & fp).any():
            if t + 1 < max_tries:
                g.set_state(state)
                torch.randint(ny * nx, (2 * (t + 1),), generator=g)
            return oy, ox
    return None


def _check_copy_paste_arguments(target: dict, strategy: str, blend: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown copy-paste strategy {strategy!r}; choose from {STRATEGIES}")
    if blend not in ("hard", "soft"):
        raise ValueError(f"blend must be 'hard' or 'soft', got {blend!r}")
    if "masks" not in target:
        raise ValueError("copy_paste needs target['masks'] (load the dataset with with_masks=True)")


def _chosen_sources(is_small: torch.Tensor, strategy: str, g: torch.Generator,
                    subset_p: float) -> list[int]:
    """Indices of the small objects the strategy pastes (the draws of ``one_many`` and
    ``random_subset`` come first in the generator's stream)."""
    small = torch.nonzero(is_small).flatten().tolist()
    if strategy == "one_many":
        return [small[int(torch.randint(len(small), (1,), generator=g))]] if small else []
    if strategy == "random_subset":
        return [i for i in small if float(torch.rand((), generator=g)) < subset_p]
    return small


def _box_occupancy(boxes: torch.Tensor, H: int, W: int) -> np.ndarray:
    """``[H, W]`` bool: the pixels every box touches (every mask lies inside its box's)."""
    occupied = np.zeros((H, W), dtype=bool)
    for bx1, by1, bx2, by2 in boxes.tolist():
        x1, y1 = max(math.floor(bx1), 0), max(math.floor(by1), 0)
        occupied[y1:max(math.ceil(by2), 0), x1:max(math.ceil(bx2), 0)] = True
    return occupied


def _source_patch(img_np: np.ndarray, masks_np: np.ndarray, i: int, region: list[float],
                  with_context: bool) -> torch.Tensor:
    """The pixels of ``region`` with the object's mask as a 4th channel, and with context
    a 5th: the rectangle less the pixels of other objects. ``[4 or 5, h, w]``"""
    _, H, W = img_np.shape
    x1 = max(math.floor(region[0]), 0)
    y1 = max(math.floor(region[1]), 0)
    x2 = min(math.ceil(region[2]), W)
    y2 = min(math.ceil(region[3]), H)
    own = masks_np[i, y1:y2, x1:x2]  # [h, w]
    if with_context:  # the rectangle, less the pixels of other objects
        others = masks_np[:, y1:y2, x1:x2].any(0) & ~own
        patch = np.concatenate([img_np[:, y1:y2, x1:x2], own[None], ~others[None]],
                               dtype=np.float32)  # [5, h, w]
    else:  # the footprint is the object's mask: warp it once
        patch = np.concatenate([img_np[:, y1:y2, x1:x2], own[None]],
                               dtype=np.float32)  # [4, h, w]
    return torch.from_numpy(patch)


def _footprint(wn: np.ndarray, with_context: bool):
    """``(mask [ho, wo], footprint [ho, wo], tight box)`` of a warped patch ``[C, ho, wo]``
    (the footprint also covers the mask's tight box), or None when the mask vanished."""
    m = wn[3] > 0.5  # [ho, wo]
    if not m.any():
        return None
    fp = (wn[4] > 0.5) | m if with_context else m.copy()
    tx1, ty1, tx2, ty2 = _tight_box(m)
    fp[ty1:ty2, tx1:tx2] = True
    return m, fp, (tx1, ty1, tx2, ty2)


def _blend_at(image: torch.Tensor, warped: torch.Tensor, fp: np.ndarray, oy: int, ox: int,
              blend: str) -> None:
    """Write the warped pixels over ``image`` at ``(oy, ox)`` inside the footprint (in place)."""
    ho, wo = fp.shape
    if blend == "hard":
        dst = image.numpy()[:, oy:oy + ho, ox:ox + wo]  # [3, ho, wo]
        dst[:] = np.where(fp, np.clip(warped.numpy()[:3], 0, 1), dst)
    else:
        dst = image[:, oy:oy + ho, ox:ox + wo]  # [3, ho, wo]
        alpha = _feather(torch.from_numpy(fp).float())
        dst.copy_(alpha * warped[:3].clamp(0, 1) + (1 - alpha) * dst)


def _with_pasted(target: dict, areas: torch.Tensor, pasted: list) -> dict:
    """``target`` with the pasted objects ``(oy, ox, mask, box, source index)`` appended."""
    out = dict(target)
    if not pasted:
        return out
    boxes, masks, crowd = target["boxes"], target["masks"], target["iscrowd"]
    _, H, W = masks.shape
    src_idx = [i for *_, i in pasted]
    nb = torch.tensor([box for _, _, _, box, _ in pasted], dtype=torch.float32)  # [P, 4]
    all_masks = torch.empty(len(masks) + len(nb), H, W, dtype=torch.bool)  # [N + P, H, W]
    all_masks[:len(masks)] = masks
    all_masks[len(masks):] = False
    for k, (oy, ox, m, _, _) in enumerate(pasted):
        all_masks[len(masks) + k, oy:oy + m.shape[0], ox:ox + m.shape[1]] = torch.from_numpy(m)
    out["boxes"] = torch.cat([boxes, nb])
    out["masks"] = all_masks
    out["labels"] = torch.cat([target["labels"], target["labels"][src_idx]])
    out["iscrowd"] = torch.cat([crowd, torch.zeros(len(nb), dtype=torch.bool)])
    pasted_area = torch.tensor([float(m.sum()) for _, _, m, _, _ in pasted])  # [P]
    out["area"] = torch.cat([areas.float(), pasted_area])
    for key in target:  # context boxes (head, body) travel with their pasted object
        if key.endswith("_boxes"):
            shift = (nb[:, :2] - boxes[src_idx][:, :2]).repeat(1, 2)  # [P, 4] translation
            out[key] = torch.cat([target[key], target[key][src_idx] + shift])
    return out


def copy_paste(image: torch.Tensor, target: dict, *, g: torch.Generator,
               strategy: str = "all_once", n_copies: int = 1, max_area: float = SMALL_AREA,
               scale: tuple[float, float] = (0.8, 1.2), rotation: float = 15.0,
               blend: str = "hard", with_context: bool = False, max_tries: int = 20,
               subset_p: float = 0.5) -> tuple[torch.Tensor, dict]:
    """Paste small objects again inside the same image by their masks; returns new image and target.

    strategy: ``all_once`` pastes every small object once (``n_copies`` times each);
    ``one_many`` pastes one random small object ``n_copies`` times; ``random_subset`` pastes
    each small object with probability ``subset_p``, ``n_copies`` times. A paste that finds no
    free place in ``max_tries`` random positions is skipped (``target["pasted_skipped"]``
    counts them). Pasted objects never overlap an existing or earlier pasted object (box or
    mask) and lie inside the image; their box is the tight bound of their transformed mask.
    The occupancy bookkeeping runs in NumPy (cheaper per small operation than torch); the
    random stream, and so the output for a given generator, is that of the one-try-at-a-time
    loop.
    """
    _check_copy_paste_arguments(target, strategy, blend)
    _, H, W = image.shape
    masks = target["masks"]  # [N, H, W]
    areas = target["area"] if "area" in target else masks.flatten(1).sum(1).float()
    is_small = (target["iscrowd"] == 0) & (areas > 0) & (areas <= max_area)  # [N]
    small = _chosen_sources(is_small, strategy, g, subset_p)
    occupied = _box_occupancy(target["boxes"], H, W)
    image = image.clone()
    regions = (_context_regions(target, small) if with_context
               else target["boxes"][small]).tolist()
    pasted, skipped = [], 0  # pasted: (oy, ox, mask, box, source index)
    for i, region in zip(small, regions):
        patch = _source_patch(image.numpy(), masks.numpy(), i, region, with_context)
        for _ in range(n_copies):
            warped = _warp(patch, _uniform(g, *scale), _uniform(g, -rotation, rotation))
            found = _footprint(warped.numpy(), with_context)
            if found is None or found[1].shape[0] > H or found[1].shape[1] > W:
                skipped += 1
                continue
            m, fp, (tx1, ty1, tx2, ty2) = found
            where = _place(occupied, fp, g, max_tries)
            if where is None:
                skipped += 1
                continue
            oy, ox = where
            _blend_at(image, warped, fp, oy, ox, blend)
            occupied[oy:oy + fp.shape[0], ox:ox + fp.shape[1]] |= fp
            pasted.append((oy, ox, m, [tx1 + ox, ty1 + oy, tx2 + ox, ty2 + oy], i))
    out = _with_pasted(target, areas, pasted)
    out["pasted"] = len(pasted)
    out["pasted_skipped"] = skipped
    return image, out


class CopyPaste:
    """``copy_paste`` as a dataset transform ``t(image, target, g)``, applied with probability p."""

    def __init__(self, p: float = 0.5, **kwargs) -> None:
        self.p, self.kwargs = p, kwargs

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        if float(torch.rand((), generator=g)) >= self.p:
            return image, target
        return copy_paste(image, target, g=g, **self.kwargs)


class RepeatedDataset(torch.utils.data.Dataset):
    """A view of a ``DetectionDataset`` where item i appears ``repeats[i]`` times per epoch.

    Each copy draws its own random transforms (from (seed, epoch, position in the view)), so
    an oversampled image is flipped and pasted differently each time it is seen. Attributes
    the engine reads (``cat_ids``, ``num_classes``, ``ann_path``, ...) come from the base.
    """

    def __init__(self, base, repeats: Sequence[int]) -> None:
        if len(repeats) != len(base):
            raise ValueError(f"need one repeat count per item: {len(repeats)} for {len(base)}")
        self.base = base
        self.index = torch.repeat_interleave(torch.arange(len(base)),
                                             torch.as_tensor(list(repeats))).tolist()

    def __len__(self) -> int:
        return len(self.index)

    def __getattr__(self, name: str):
        if name in ("base", "index"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, j: int):
        from sodlab.data.dataset import item_generator

        return self.base.get(self.index[j], item_generator(self.base.seed, self.base.epoch, j))

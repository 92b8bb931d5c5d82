"""Augmentation for small objects: oversample images that hold them, copy-paste them by mask.

After Kisantal et al. 2019, "Augmentation for small object detection" (METHODS.md):
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
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

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
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    return [k if predicate(by_image[im["id"]]) else 1 for im in coco["images"]]


class OversamplingSampler(torch.utils.data.Sampler):
    """Yields each dataset index ``repeats[i]`` times per epoch, shuffled by (seed, epoch).

    Works as a distributed sampler too: with ``num_replicas`` > 1 each rank takes every
    ``num_replicas``-th index of the same shuffled list (padded by wrapping so all ranks get
    the same count). Call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, repeats: Sequence[int], *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.repeats = torch.as_tensor(list(repeats), dtype=torch.int64)  # [I]
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.total = int(self.repeats.sum())
        self.per_rank = math.ceil(self.total / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        idx = torch.repeat_interleave(torch.arange(len(self.repeats)), self.repeats)  # [T]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g)]
        pad = self.per_rank * self.num_replicas - len(idx)
        if pad:
            idx = torch.cat([idx, idx[:pad]])
        return iter(idx[self.rank::self.num_replicas].tolist())


# --------------------------------------------------------------------------- copy-paste
def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _rect_mask(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pixels a continuous xyxy box touches, as a bool mask ``[h, w]``."""
    x1, y1 = int(math.floor(box[0])), int(math.floor(box[1]))
    x2, y2 = int(math.ceil(box[2])), int(math.ceil(box[3]))
    m = torch.zeros(h, w, dtype=torch.bool)
    m[max(y1, 0):max(min(y2, h), 0), max(x1, 0):max(min(x2, w), 0)] = True
    return m


def _tight_box(mask: torch.Tensor) -> torch.Tensor:
    """Tight xyxy box of a bool mask ``[H, W]`` in the continuous-pixel convention."""
    ys = mask.any(1).nonzero()
    xs = mask.any(0).nonzero()
    return torch.tensor([xs[0, 0], ys[0, 0], xs[-1, 0] + 1, ys[-1, 0] + 1], dtype=torch.float32)


def _context_region(target: dict, i: int) -> torch.Tensor:
    """Object i's context: ``context_boxes``, else the union of its box with its head and body
    boxes (the dataset's ``context_keys``), else a guessed head-and-shoulders region."""
    box = target["boxes"][i]
    if "context_boxes" in target:
        return target["context_boxes"][i]
    parts = [target[k][i] for k in ("head_boxes", "body_boxes")
             if k in target and torch.isfinite(target[k][i]).all()]
    if not parts:
        return _default_context(box)
    allb = torch.stack([box, *parts])
    return torch.cat([allb[:, :2].min(0).values, allb[:, 2:].max(0).values])


def _default_context(box: torch.Tensor) -> torch.Tensor:
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2
    return torch.stack([cx - 1.5 * w, box[1] - 0.5 * h, cx + 1.5 * w, box[3] + 2.5 * h])


def _warp(patch: torch.Tensor, scale: float, angle_deg: float) -> torch.Tensor:
    """Scale and rotate a ``[C, h, w]`` patch about its centre into its new bounding size."""
    _, h, w = patch.shape
    a = math.radians(angle_deg)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    wo = max(1, math.ceil(scale * (w * c + h * s)))
    ho = max(1, math.ceil(scale * (w * s + h * c)))
    # output pixel offsets (from the centre) -> input offsets: R(-a) / scale
    inv = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) / scale
    theta = torch.diag(torch.tensor([2.0 / w, 2.0 / h])) @ inv @ torch.diag(
        torch.tensor([wo / 2.0, ho / 2.0]))
    theta = torch.cat([theta, torch.zeros(2, 1)], 1)[None]  # [1, 2, 3]
    grid = F.affine_grid(theta, [1, patch.shape[0], ho, wo], align_corners=False)
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
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown copy-paste strategy {strategy!r}; choose from {STRATEGIES}")
    if blend not in ("hard", "soft"):
        raise ValueError(f"blend must be 'hard' or 'soft', got {blend!r}")
    if "masks" not in target:
        raise ValueError("copy_paste needs target['masks'] (load the dataset with with_masks=True)")
    _, H, W = image.shape
    boxes, masks = target["boxes"], target["masks"]  # [N, 4], [N, H, W]
    areas = target["area"] if "area" in target else masks.flatten(1).sum(1).float()
    crowd = target["iscrowd"]
    small = [i for i in range(len(boxes)) if not crowd[i] and 0 < areas[i] <= max_area]
    if strategy == "one_many":
        small = [small[int(torch.randint(len(small), (1,), generator=g))]] if small else []
    elif strategy == "random_subset":
        small = [i for i in small if float(torch.rand((), generator=g)) < subset_p]

    occupied = torch.zeros(H, W, dtype=torch.bool)  # every mask lies inside its box's pixels
    for b in boxes:
        x1, y1 = max(int(math.floor(b[0])), 0), max(int(math.floor(b[1])), 0)
        occupied[y1:max(int(math.ceil(b[3])), 0), x1:max(int(math.ceil(b[2])), 0)] = True
    image = image.clone()
    new_boxes, new_masks, new_labels, src_idx = [], [], [], []
    skipped = 0
    for i in small:
        region = _context_region(target, i) if with_context else boxes[i]
        x1 = max(int(math.floor(region[0])), 0)
        y1 = max(int(math.floor(region[1])), 0)
        x2 = min(int(math.ceil(region[2])), W)
        y2 = min(int(math.ceil(region[3])), H)
        obj = masks[i, y1:y2, x1:x2].float()  # [h, w]
        if with_context:  # the rectangle, less the pixels of other objects
            others = (masks[:, y1:y2, x1:x2].any(0) & ~masks[i, y1:y2, x1:x2]).float()
            foot = 1.0 - others
        else:
            foot = obj
        patch = torch.cat([image[:, y1:y2, x1:x2], obj[None], foot[None]])  # [5, h, w]
        for _ in range(n_copies):
            warped = _warp(patch, _uniform(g, *scale), _uniform(g, -rotation, rotation))
            m = warped[3] > 0.5  # [ho, wo]
            fp = (warped[4] > 0.5) | m
            if not m.any():
                skipped += 1
                continue
            tb = _tight_box(m)
            fp = fp | _rect_mask(tb, *fp.shape)
            ho, wo = fp.shape
            if ho > H or wo > W:
                skipped += 1
                continue
            placed = False
            for _ in range(max_tries):
                oy = int(torch.randint(H - ho + 1, (1,), generator=g))
                ox = int(torch.randint(W - wo + 1, (1,), generator=g))
                if not (occupied[oy:oy + ho, ox:ox + wo] & fp).any():
                    placed = True
                    break
            if not placed:
                skipped += 1
                continue
            alpha = fp.float() if blend == "hard" else _feather(fp.float())
            dst = image[:, oy:oy + ho, ox:ox + wo]
            image[:, oy:oy + ho, ox:ox + wo] = alpha * warped[:3].clamp(0, 1) + (1 - alpha) * dst
            occupied[oy:oy + ho, ox:ox + wo] |= fp
            new_masks.append((oy, ox, m))  # placed into full-size masks once, at the end
            new_boxes.append(tb + torch.tensor([ox, oy, ox, oy], dtype=torch.float32))
            new_labels.append(target["labels"][i])
            src_idx.append(i)
    out = dict(target)
    if new_boxes:
        nb = torch.stack(new_boxes)  # [P, 4]
        all_masks = torch.zeros(len(masks) + len(nb), H, W, dtype=torch.bool)  # [N + P, H, W]
        all_masks[:len(masks)] = masks
        for k, (oy, ox, m) in enumerate(new_masks):
            all_masks[len(masks) + k, oy:oy + m.shape[0], ox:ox + m.shape[1]] = m
        out["boxes"] = torch.cat([boxes, nb])
        out["masks"] = all_masks
        out["labels"] = torch.cat([target["labels"], torch.stack(new_labels)])
        out["iscrowd"] = torch.cat([crowd, torch.zeros(len(nb), dtype=torch.bool)])
        pasted_area = torch.tensor([float(m.sum()) for _, _, m in new_masks])  # [P]
        out["area"] = torch.cat([areas.float(), pasted_area])
        for key in target:  # context boxes (head, body) travel with their pasted object
            if key.endswith("_boxes"):
                shift = (nb[:, :2] - boxes[src_idx][:, :2]).repeat(1, 2)  # [P, 4] translation
                out[key] = torch.cat([target[key], target[key][src_idx] + shift])
    out["pasted"] = len(new_boxes)
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

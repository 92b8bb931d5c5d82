"""A split folder as a PyTorch dataset of (image, target) pairs, and the batch collate.

Layer L1. Implements the data contract of ``docs/design.md``: images are float32 ``[3, H, W]`` in
[0, 1] (read with PIL, converted to RGB), boxes ``[N, 4]`` float32 xyxy in pixels, labels
contiguous ``0..C-1`` with ``cat_ids`` mapping them back to the dataset's own category ids
(any integers). Masks are decoded per item, only when ``with_masks=True``. Random
transforms draw from a ``torch.Generator`` seeded by ``(seed, epoch, index)``, so an item
looks the same in every run and in every DataLoader worker. Taught in notebook
00_what_is_small; every training notebook reads data through it.

Decoded pixels can come from two caches, neither of which changes a pixel: with
``pixel_cache=True`` from the on-disk pixel cache (``sodlab.data.pixel_cache``: every image
decoded once per machine, memory-mapped, shared by workers and runs; what training uses by
default), otherwise from ``cache_mb`` MiB of decoded images kept in this process's memory.
When the pixel cache is open the in-memory one is not filled: the mapped pages already live
in the operating system's page cache, and a second copy would only cost memory.

Dimension legend: N objects in an image, C categories, B images in a batch,
H x W image height and width (Hp x Wp padded to a multiple of 32).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from sodlab.boxes import box_slices, xywh_to_xyxy
from sodlab.data.coco import annotations_path, decode_segmentation, load_coco
from sodlab.data.formats_common import to_rgb8
from sodlab.errors import InputError

Transform = Callable[[torch.Tensor, dict, torch.Generator], tuple[torch.Tensor, dict]]
PAD_MULTIPLE = 32


def mixed_seed(seed: int, *parts: int) -> int:
    """One 63-bit seed mixed from ``(seed, *parts)`` by numpy's ``SeedSequence``.

    Nearby tuples such as ``(0, 1, 2)`` and ``(0, 2, 1)`` give unrelated seeds, so streams
    keyed on (seed, epoch, index) never overlap. ``seed`` is taken modulo 2**32. The one
    place sodlab mixes seeds.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(p) for p in parts)])
    return int(state.generate_state(1, np.uint64)[0] >> 1)


def seeded_generator(seed: int, *parts: int) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``mixed_seed(seed, *parts)``."""
    return torch.Generator().manual_seed(mixed_seed(seed, *parts))


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item ``index`` in epoch ``epoch``: ``seeded_generator(seed, epoch, index)``."""
    return seeded_generator(seed, epoch, index)


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB ``[H, W, 3]``; InputError if unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(to_rgb8(im))  # [H, W, 3] uint8
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from None


def rgb8_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [0, 1] (a new tensor)."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float32 RGB ``[3, H, W]`` in [0, 1]; InputError if unreadable."""
    return rgb8_to_tensor(read_rgb8(path))  # [3, H, W]


class DetectionDataset(torch.utils.data.Dataset):
    """Images and targets of one split folder (``annotations.json`` + ``images/``).

    ``split_dir`` may also be an annotations file; images are looked up in ``images/``
    beside it. ``context_keys`` names extra per-annotation xywh boxes to return (e.g.
    ``("head_bbox", "body_bbox")`` -> ``target["head_boxes"]``, ``target["body_boxes"]``,
    ``[N, 4]`` xyxy, NaN where an annotation lacks the key).

    ``pixel_cache``: read decoded pixels from the on-disk pixel cache
    (``sodlab.data.pixel_cache.PixelCache``), building it first if this split has none
    (``progress``: a bar while it builds); when the disk is short of space it warns once
    and decodes as before. ``cache_mb``: otherwise, keep up to this many MiB of decoded
    uint8 images in memory, so epochs after the first skip decoding (in a DataLoader worker
    that cache is the worker's own). The pixels are the same either way.
    """

    def __init__(self, split_dir: str | os.PathLike, *, transforms: Transform | None = None,
                 with_masks: bool = False, seed: int = 0,
                 context_keys: Sequence[str] = (), cache_mb: float = 0,
                 pixel_cache: bool = False, progress: bool = False) -> None:
        self.ann_path = annotations_path(split_dir)
        self.split_dir = self.ann_path.parent
        self.images_dir = self.split_dir / "images"
        self.coco = load_coco(self.ann_path)
        self.transforms = transforms
        self.with_masks = with_masks
        self.seed = int(seed)
        self.epoch = 0
        self.context_keys = tuple(context_keys)
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self.categories = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.cat_ids = [int(c["id"]) for c in self.categories]
        self.cat_index = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.images = list(self.coco["images"])
        self._anns: dict[int, list[dict]] = {int(im["id"]): [] for im in self.images}
        for ann in self.coco["annotations"]:
            img_id = ann.get("image_id")
            if img_id not in self._anns:
                raise InputError(f"{self.ann_path}: annotation {ann.get('id')} refers to "
                                 f"unknown image_id {img_id}")
            if ann.get("category_id") not in self.cat_index:
                raise InputError(f"{self.ann_path}: annotation {ann.get('id')} has unknown "
                                 f"category_id {ann.get('category_id')}")
            self._anns[img_id].append(ann)
        self.pixels = None
        if pixel_cache:
            from sodlab.data.pixel_cache import PixelCache

            self.pixels = PixelCache.open_or_build(
                self.ann_path, progress, file_names=[im["file_name"] for im in self.images])

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch whose random transforms ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, index: int) -> list[dict]:
        """The COCO annotation dicts of item ``index``."""
        return self._anns[int(self.images[index]["id"])]

    def load_target(self, index: int, height: int, width: int) -> dict:
        """The untransformed target of item ``index`` for an image of ``height x width``."""
        info = self.images[index]
        anns = self.annotations(index)
        n = len(anns)
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(n, 4)
        target = {
            "boxes": xywh_to_xyxy(xywh),  # [N, 4]
            "labels": torch.tensor([self.cat_index[a["category_id"]] for a in anns],
                                   dtype=torch.int64),  # [N]
            "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns],
                                    dtype=torch.bool),  # [N]
            "area": torch.tensor([float(a["area"]) if "area" in a else a["bbox"][2] * a["bbox"][3]
                                  for a in anns], dtype=torch.float32),  # [N]
            "image_id": int(info["id"]),
        }
        for key in self.context_keys:
            rows = [a.get(key) or [math.nan] * 4 for a in anns]
            name = key[:-5] + "_boxes" if key.endswith("_bbox") else key
            target[name] = xywh_to_xyxy(torch.tensor(rows, dtype=torch.float32).reshape(n, 4))
        if self.with_masks:
            masks = np.zeros((n, height, width), dtype=bool)  # [N, H, W]
            for j, a in enumerate(anns):
                segm = a.get("segmentation")
                if segm:
                    try:
                        masks[j] = decode_segmentation(segm, height, width)
                    except InputError as exc:
                        raise InputError(f"{self.ann_path}: annotation {a.get('id')}: "
                                         f"{exc}") from None
                else:  # no segmentation: the pixels its box touches
                    masks[j][box_slices(target["boxes"][j].tolist(), height, width)] = True
            target["masks"] = torch.from_numpy(masks)
        return target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.get(index, item_generator(self.seed, self.epoch, index))

    def get(self, index: int, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Item ``index`` with its random transforms drawn from ``g``."""
        info = self.images[index]
        path = self.images_dir / info["file_name"]
        rgb = (self.pixels.get(index, writable=True) if self.pixels is not None
               else self._cache.get(index))
        if rgb is None:
            rgb = read_rgb8(path)  # [H, W, 3] uint8
            if self._cached_bytes + rgb.nbytes <= self.cache_bytes:
                self._cache[index] = rgb
                self._cached_bytes += rgb.nbytes
        image = rgb8_to_tensor(rgb)  # [3, H, W]
        _, h, w = image.shape
        if ("width" in info and int(info["width"]) != w) or (
                "height" in info and int(info["height"]) != h):
            raise InputError(f"{path}: image is {w}x{h} but {self.ann_path.name} says "
                             f"{info.get('width')}x{info.get('height')} (run 'sodlab data check')")
        target = self.load_target(index, h, w)
        if self.transforms is not None:
            image, target = self.transforms(image, target, g)
        return image, target


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images zero-padded at right/bottom to a multiple of 32 -> ``[B, 3, Hp, Wp]``.

    Each target is copied and gets ``"size": (h, w)``, its unpadded image size; masks keep
    their unpadded ``[N, h, w]``.
    """
    if not batch:
        raise ValueError("collate needs at least one (image, target) pair")
    hmax = max(img.shape[-2] for img, _ in batch)
    wmax = max(img.shape[-1] for img, _ in batch)
    hp = -(-hmax // PAD_MULTIPLE) * PAD_MULTIPLE
    wp = -(-wmax // PAD_MULTIPLE) * PAD_MULTIPLE
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], hp, wp))  # [B, 3, Hp, Wp]
    targets = []
    for b, (img, tgt) in enumerate(batch):
        h, w = img.shape[-2:]
        images[b, :, :h, :w] = img
        targets.append({**tgt, "size": (int(h), int(w))})
    return images, targets

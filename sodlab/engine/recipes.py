"""Training recipes: a JSON-able dict that says how the training data is augmented or rescaled.

Layer L4. A recipe is part of a run's cache key, so it must be plain JSON. Keys (all optional):

- ``"oversample": k`` — repeat images holding a small object k times per epoch (Kisantal et al.);
  ``"oversample_area"`` sets "small" (default 32², COCO's bound).
- ``"copy_paste": {...}`` — keyword arguments of ``sodlab.augment.copy_paste`` plus ``p``
  (probability per image); loads masks.
- ``"snip": {"scales": [...], "ranges": [[lo, hi], ...]}`` — SNIP training
  (``sodlab.snip.SnipScale``); ranges ``[lo, null]`` mean no upper bound. With all ranges
  ``[0, null]`` it is plain multi-scale training (MST).
- ``"sniper": {"scales", "ranges", "chip", "stride"}`` — SNIPER chips (``sodlab.snip.SniperChip``).
- ``"flip": false`` — no horizontal flips (default on).

Taught in notebooks 02_augmentation and 05_snip_sniper.
"""

from __future__ import annotations

import math
from pathlib import Path

RECIPE_KEYS = ("oversample", "oversample_area", "copy_paste", "snip", "sniper", "flip")
GROUPS = ("batch", "image")


def _ranges(spec: dict) -> tuple[tuple[float, float], ...]:
    return tuple((float(lo), math.inf if hi is None else float(hi)) for lo, hi in spec["ranges"])


def build_transforms(recipe: dict | None, *, input_size: int,
                     train_split: str | Path) -> dict:
    """The whole training transform chain of a recipe, built in one place.

    Returns ``{"transforms": [...], "oversample": repeats or None, "with_masks": bool,
    "batch_scales": n or None}``:
    ``ResizeLongest(input_size)`` then flips and copy-paste, or SNIP/SNIPER's own rescaling
    transform first (they resize themselves); ``oversample`` is a repeat count per training
    image (``sodlab.augment.oversample_repeats``); ``with_masks``: copy-paste needs masks;
    ``batch_scales``: SNIP/MST with ``group: batch`` — the engine draws one of this many
    scales per batch (``sodlab.engine.train.scale_grouped``).
    """
    from sodlab.augment import CopyPaste, contains_small, oversample_repeats
    from sodlab.data.coco import load_coco
    from sodlab.data.transforms import RandomHFlip, ResizeLongest
    from sodlab.errors import InputError
    from sodlab.snip import SniperChip, SnipScale

    recipe = dict(recipe or {})
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise InputError(f"unknown recipe keys {sorted(unknown)}; valid: {list(RECIPE_KEYS)}")
    if recipe.get("snip") and recipe.get("sniper"):
        raise InputError("a recipe takes 'snip' or 'sniper', not both")
    chain: list = [RandomHFlip()] if recipe.get("flip", True) else []
    with_masks = False
    if recipe.get("copy_paste") is not None:
        kw = dict(recipe["copy_paste"])
        chain.append(CopyPaste(p=float(kw.pop("p", 0.5)), **kw))
        with_masks = True
    first = ResizeLongest(input_size)
    batch_scales = None
    for key, cls in (("snip", SnipScale), ("sniper", SniperChip)):
        if recipe.get(key):
            spec = dict(recipe[key])
            if key == "snip":
                group = spec.pop("group", "batch")
                if group not in GROUPS:
                    raise InputError(f"recipe snip.group {group!r}: expected one of {GROUPS}")
                batch_scales = len(spec["scales"]) if group == "batch" else None
            extra = {k: v for k, v in spec.items() if k not in ("scales", "ranges")}
            first = cls(tuple(spec["scales"]), _ranges(spec), input_size=input_size, **extra)
    oversample = None
    k = int(recipe.get("oversample", 1))
    if k > 1:
        area = float(recipe.get("oversample_area", 32.0**2))
        oversample = oversample_repeats(load_coco(train_split), k=k,
                                        predicate=lambda anns: contains_small(anns, area))
    return {"transforms": [first, *chain], "oversample": oversample, "with_masks": with_masks,
            "batch_scales": batch_scales}

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

import json
import math
from pathlib import Path

RECIPE_KEYS = ("oversample", "oversample_area", "copy_paste", "snip", "sniper", "flip")


def _ranges(spec: dict) -> tuple[tuple[float, float], ...]:
    return tuple((float(lo), math.inf if hi is None else float(hi)) for lo, hi in spec["ranges"])


def train_kwargs(recipe: dict | None, *, input_size: int, train_split: str | Path) -> dict:
    """``sodlab.engine.train`` keyword arguments (augment, transforms, oversample, with_masks)."""
    from sodlab.augment import CopyPaste, contains_small, oversample_repeats
    from sodlab.data.transforms import RandomHFlip
    from sodlab.errors import InputError
    from sodlab.snip import SniperChip, SnipScale

    recipe = dict(recipe or {})
    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise InputError(f"unknown recipe keys {sorted(unknown)}; valid: {list(RECIPE_KEYS)}")
    if recipe.get("snip") and recipe.get("sniper"):
        raise InputError("a recipe takes 'snip' or 'sniper', not both")
    flip = [RandomHFlip()] if recipe.get("flip", True) else []
    out: dict = {"augment": list(flip)}
    if recipe.get("copy_paste") is not None:
        kw = dict(recipe["copy_paste"])
        out["augment"].append(CopyPaste(p=float(kw.pop("p", 0.5)), **kw))
        out["with_masks"] = True
    for key, cls in (("snip", SnipScale), ("sniper", SniperChip)):
        if recipe.get(key):
            spec = dict(recipe[key])
            extra = {k: v for k, v in spec.items() if k not in ("scales", "ranges")}
            first = cls(tuple(spec["scales"]), _ranges(spec), input_size=input_size, **extra)
            out["transforms"] = [first, *out.pop("augment")]
    k = int(recipe.get("oversample", 1))
    if k > 1:
        coco = json.loads((Path(train_split) / "annotations.json").read_text())
        area = float(recipe.get("oversample_area", 32.0**2))
        out["oversample"] = oversample_repeats(
            coco, k=k, predicate=lambda anns: contains_small(anns, area))
    return out

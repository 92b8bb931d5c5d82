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
- ``"das": {"p": 0.5, "max_index": null}`` — PyramidBox's data-anchor-sampling
  (``sodlab.data.transforms.DataAnchorSampling``) replaces ``ResizeLongest`` as the first
  transform: one face is rescaled to a randomly chosen anchor size and a square
  ``input_size`` crop is cut around it. The anchor sizes are the detector's own (the
  preset's paper sizes x ``anchor_scale``), given to ``build_transforms`` by the engine;
  not with ``snip``/``sniper`` (they rescale themselves too).
- ``"slice": {"p": 0.5, "tile": null, "min_visible": 0.5}`` — SAHI's slicing for training
  (Akyon et al. 2022; ``sodlab.data.transforms.RandomSlice``): with probability ``p`` the
  image becomes one ``tile`` px square tile (null: the input size) cut at a random position
  at the original resolution, before the usual ``ResizeLongest``; a box less than
  ``min_visible`` visible in it becomes ``iscrowd`` (ignored). The training-time side of
  ``sodlab.slicing``'s sliced inference; not with ``das``/``snip``/``sniper``.

Taught in notebooks 02_augmentation, 05_snip_sniper and 08_pyramidbox.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

RECIPE_KEYS = ("oversample", "oversample_area", "copy_paste", "snip", "sniper", "flip", "das",
               "slice")
DAS_KEYS = ("p", "max_index")
SLICE_KEYS = ("p", "tile", "min_visible")
MIN_TILE = 16
GROUPS = ("batch", "image")


def _ranges(spec: dict) -> tuple[tuple[float, float], ...]:
    return tuple((float(lo), math.inf if hi is None else float(hi)) for lo, hi in spec["ranges"])


def _flat_sizes(anchor_sizes: Sequence[float] | Sequence[Sequence[float]]) -> list[float]:
    """The anchor sizes data-anchor-sampling draws from: flattened (one list per level is
    accepted, as ``sodlab.detector.scaled_anchor_sizes`` gives them), distinct, ascending."""
    flat = [float(a) for lv in anchor_sizes
            for a in (lv if isinstance(lv, (list, tuple)) else [lv])]
    return sorted(set(flat))


def _das(spec, *, anchor_sizes, input_size: int):
    from sodlab.data.transforms import DataAnchorSampling
    from sodlab.errors import InputError

    if not isinstance(spec, dict):
        raise InputError(f"recipe das: expected an object like {{\"p\": 0.5}}, got {spec!r}")
    unknown = set(spec) - set(DAS_KEYS)
    if unknown:
        raise InputError(f"recipe das: unknown keys {sorted(unknown)}; valid: {list(DAS_KEYS)}")
    if not anchor_sizes:
        raise InputError("recipe das needs the detector's anchor sizes (build_transforms("
                         "..., anchor_sizes=...); the engine passes the config's own)")
    try:
        return DataAnchorSampling(_flat_sizes(anchor_sizes), input_size,
                                  p=float(spec.get("p", 0.5)), max_index=spec.get("max_index"))
    except (TypeError, ValueError) as exc:
        raise InputError(f"recipe das: {exc}") from None


def _number(spec: dict, key: str, default, ok, want: str) -> float:
    from sodlab.errors import InputError

    v = spec.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
        raise InputError(f"recipe slice.{key}: expected {want}, got {v!r}")
    return v


def _slice(spec, *, input_size: int):
    """SAHI's slicing for training (``RandomSlice``) from the recipe's ``slice`` object."""
    from sodlab.data.transforms import RandomSlice
    from sodlab.errors import InputError

    if not isinstance(spec, dict):
        raise InputError(f"recipe slice: expected an object like {{\"p\": 0.5}}, got {spec!r}")
    unknown = set(spec) - set(SLICE_KEYS)
    if unknown:
        raise InputError(f"recipe slice: unknown keys {sorted(unknown)}; "
                         f"valid: {list(SLICE_KEYS)}")
    p = _number(spec, "p", 0.5, lambda v: 0 <= v <= 1, "a number in [0, 1]")
    mv = _number(spec, "min_visible", 0.5, lambda v: 0 < v <= 1, "a number in (0, 1]")
    tile = spec.get("tile")
    if tile is not None:
        tile = _number(spec, "tile", None, lambda v: float(v).is_integer() and v >= MIN_TILE,
                       f"an integer >= {MIN_TILE} (pixels) or null")
    return RandomSlice(int(input_size if tile is None else tile), p=float(p),
                       min_visible=float(mv))


def _check_keys(recipe: dict) -> None:
    """InputError for unknown keys and for keys that cannot go together."""
    from sodlab.errors import InputError

    unknown = set(recipe) - set(RECIPE_KEYS)
    if unknown:
        raise InputError(f"unknown recipe keys {sorted(unknown)}; valid: {list(RECIPE_KEYS)}")
    if recipe.get("snip") and recipe.get("sniper"):
        raise InputError("a recipe takes 'snip' or 'sniper', not both")
    if recipe.get("das") is not None and (recipe.get("snip") or recipe.get("sniper")):
        raise InputError("a recipe takes 'das' or 'snip'/'sniper', not both (each rescales "
                         "the image itself)")
    if recipe.get("slice") is not None and (recipe.get("das") is not None
                                            or recipe.get("snip") or recipe.get("sniper")):
        raise InputError("a recipe takes 'slice' or 'das'/'snip'/'sniper', not both (each "
                         "cuts or rescales the image itself)")


def build_transforms(recipe: dict | None, *, input_size: int,
                     train_split: str | Path,
                     anchor_sizes: Sequence[float] | Sequence[Sequence[float]] | None = None,
                     ) -> dict:
    """The whole training transform chain of a recipe, built in one place.

    Returns ``{"transforms": [...], "oversample": repeats or None, "with_masks": bool,
    "batch_scales": n or None}``:
    ``ResizeLongest(input_size)`` then flips and copy-paste (with ``slice``, SAHI's
    ``RandomSlice`` tile cut comes before the resize), or SNIP/SNIPER's own rescaling
    transform first (they resize themselves), or with ``das`` PyramidBox's
    ``DataAnchorSampling`` first, drawing from ``anchor_sizes`` (the detector's scaled
    sizes, flat or one list per level; only ``das`` reads them); ``oversample`` is a
    repeat count per training image (``sodlab.augment.oversample_repeats``);
    ``with_masks``: copy-paste needs masks;
    ``batch_scales``: SNIP/MST with ``group: batch`` — the engine draws one of this many
    scales per batch (``sodlab.engine.train.scale_grouped``).
    """
    from sodlab.augment import CopyPaste, contains_small, oversample_repeats
    from sodlab.data.coco import load_coco
    from sodlab.data.transforms import RandomHFlip, ResizeLongest
    from sodlab.errors import InputError
    from sodlab.snip import SniperChip, SnipScale

    recipe = dict(recipe or {})
    _check_keys(recipe)
    chain: list = [RandomHFlip()] if recipe.get("flip", True) else []
    with_masks = False
    if recipe.get("copy_paste") is not None:
        kw = dict(recipe["copy_paste"])
        chain.append(CopyPaste(p=float(kw.pop("p", 0.5)), **kw))
        with_masks = True
    cut = [] if recipe.get("slice") is None else [_slice(recipe["slice"], input_size=input_size)]
    first = ResizeLongest(input_size) if recipe.get("das") is None else \
        _das(recipe["das"], anchor_sizes=anchor_sizes, input_size=input_size)
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
    return {"transforms": [*cut, first, *chain], "oversample": oversample, "with_masks": with_masks,
            "batch_scales": batch_scales}

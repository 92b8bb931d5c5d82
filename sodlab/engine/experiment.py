"""Techniques as data, run once: a record when one exists, else train, predict, evaluate, record.

Layer L4. A ``Technique`` is declared once (frozen, typed): its preset, overrides, a
training recipe named from ``RECIPES``, an optional second stage, the test path and what it
needs from the data. A ``Mode`` (``MODES["quick"]``, ``MODES["full"]``) says the data size,
the seeds and the budget in one place. ``run_technique(tech, root, seed=..., mode=...)``
returns the run's record (``sodlab.engine.records``): a record already written answers at
once and trains nothing; otherwise the model comes from the run cache (``cached_train`` or
``cached_stage_two``, trained when missing), predicts the validation split through the
technique's own test path (``predict_fn``), is evaluated on the fixed resamples and
recorded. A study cut off mid-way loses nothing it recorded. ``sodlab.engine.study`` runs
many techniques and compares them; taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sodlab.errors import InputError

TESTS = ("single", "pyramid", "multiscale", "sliced")
NEEDS = ("masks", "large objects")

_CP = {"p": 0.5, "strategy": "all_once"}


def _snip(name: str) -> Callable[[int], dict]:
    def make(input_size: int) -> dict:
        from sodlab.snip import DEFAULT_RANGES, DEFAULT_SCALES

        scales = list(DEFAULT_SCALES)
        ranges = [[lo, None if math.isinf(hi) else hi] for lo, hi in DEFAULT_RANGES]
        if name == "mst":
            return {"snip": {"scales": scales, "ranges": [[0, None]] * len(scales)}}
        if name == "snip":
            return {"snip": {"scales": scales, "ranges": ranges}}
        return {"sniper": {"scales": scales, "ranges": ranges, "chip": input_size // 2,
                           "stride": 32}}
    return make


# Training recipes by name (``sodlab.engine.recipes`` says what each key does). A recipe is
# a function of the preset's input size, since SNIPER's chip is half of it.
RECIPES: dict[str, Callable[[int], dict]] = {
    "oversample 2x": lambda size: {"oversample": 2},
    "oversample 3x": lambda size: {"oversample": 3},
    "oversample 4x": lambda size: {"oversample": 4},
    "copy-paste alone": lambda size: {"copy_paste": {**_CP, "with_context": False}},
    "copy-paste": lambda size: {"copy_paste": {**_CP, "with_context": True}},
    "3x + copy-paste": lambda size: {"oversample": 3,
                                     "copy_paste": {**_CP, "with_context": True}},
    "das": lambda size: {"das": {"p": 0.5}},
    "mst": _snip("mst"),
    "snip": _snip("snip"),
    "sniper": _snip("sniper"),
    "sliced training": lambda size: {"slice": {"p": 0.5, "tile": size, "min_visible": 0.5}},
}


@dataclass(frozen=True)
class Technique:
    """One trained-and-tested configuration, declared once."""

    name: str
    preset: str
    overrides: tuple[tuple[str, object], ...] = ()   # (key, value) pairs on the preset
    recipe: str | None = None                         # a name in RECIPES
    stage_two: Mapping | None = field(default=None, hash=False)  # a stage-two spec
    test: str = "single"                              # one of TESTS
    needs: tuple[str, ...] = ()                       # what the data must have (NEEDS)
    init: str | None = None                           # run key whose backbone starts it

    def __post_init__(self) -> None:
        if not self.name or not self.preset:
            raise InputError("a Technique needs a name and a preset")
        if self.test not in TESTS:
            raise InputError(f"technique {self.name!r}: test {self.test!r} is not one of {TESTS}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise InputError(f"technique {self.name!r}: unknown recipe {self.recipe!r}; "
                             f"known: {sorted(RECIPES)}")
        bad = [n for n in self.needs if n not in NEEDS]
        if bad:
            raise InputError(f"technique {self.name!r}: unknown needs {bad}; known: {NEEDS}")
        if self.init is not None and (not isinstance(self.init, str) or not self.init):
            raise InputError(f"technique {self.name!r}: init must be a run key, got {self.init!r}")
        if self.init is not None and self.stage_two is not None:
            raise InputError(f"technique {self.name!r}: init applies to a single-stage run only")

    def recipe_dict(self, input_size: int) -> dict | None:
        return None if self.recipe is None else RECIPES[self.recipe](int(input_size))

    def as_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "overrides": dict(self.overrides),
                "recipe": self.recipe, "test": self.test,
                "stage_two": None if self.stage_two is None else
                json.loads(json.dumps(dict(self.stage_two))),
                **({} if self.init is None else {"init": self.init})}


@dataclass(frozen=True)
class Mode:
    """Data size, seeds and budgets of quick or full mode, in one place."""

    name: str
    data: str                   # the embedded dataset's size
    seeds: tuple[int, ...]

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    def budget(self, preset: str) -> dict:
        from sodlab.engine.budgets import standard_budget

        b = standard_budget(preset, quick=self.quick)
        return {"max_steps": b["max_steps"], "batch_size": b["batch_size"],
                "overrides": dict(b["overrides"])}

    def stage_budget(self) -> dict:
        from sodlab.engine.stage_two import stage_two_budget

        return stage_two_budget(quick=self.quick)


MODES: dict[str, Mode] = {"quick": Mode("quick", "quick", (0,)),
                          "full": Mode("full", "full", (0, 1, 2))}


def mode_of(mode: str | Mode) -> Mode:
    if isinstance(mode, Mode):
        return mode
    if mode not in MODES:
        raise InputError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return MODES[mode]


def _facts(root: Path) -> dict:
    from sodlab.data.coco import load_coco
    from sodlab.engine.cache import data_hash_of

    return {"num_classes": len(load_coco(root / "train")["categories"]),
            "data_hash": data_hash_of(root)}


def plan(tech: Technique, root: str | os.PathLike, *, seed: int, budget: Mapping,
         stage_budget: Mapping | None = None, facts: Mapping | None = None) -> dict:
    """What ``tech`` trains at ``seed``: ``{"key", "kwargs", "base_key"}`` (nothing trains).

    ``key`` is the run key of the model whose predictions are recorded (the second stage's
    for a two-stage technique), from ``sodlab.engine.cache.train_key``, the one function
    that keys runs; ``kwargs`` are ``cached_train``'s arguments of a single-stage run
    (with ``extra={"init_backbone": tech.init}`` only when the technique sets ``init``).
    """
    from sodlab.detector import make_config, parse_overrides
    from sodlab.engine.cache import train_key

    root = Path(root)
    facts = dict(facts or _facts(root))
    over = {**parse_overrides(budget.get("overrides") or {}), **dict(tech.overrides)}
    size = int(make_config(tech.preset, num_classes=facts["num_classes"],
                           overrides=over).input_size)
    kw = {"overrides": over, "seed": seed, "max_steps": int(budget["max_steps"]),
          "batch_size": int(budget["batch_size"]), "recipe": tech.recipe_dict(size)}
    if tech.init is not None:  # keyed only when set: every run without it keeps its key
        kw["extra"] = {"init_backbone": tech.init}
    key = train_key(tech.preset, root, **kw, **facts)[0]
    if tech.stage_two is None:
        return {"key": key, "kwargs": kw, "base_key": None, "input_size": size}
    from sodlab.engine.stage_two import parse_stage_two

    if tech.recipe is not None:
        raise InputError(f"technique {tech.name!r}: a second stage trains on the plain base")
    sb = dict(stage_budget or {})
    s2 = train_key(tech.preset, root, overrides=over, seed=seed,
                   max_steps=int(sb["max_steps"]), batch_size=int(sb["batch_size"]),
                   extra={"stage_two": parse_stage_two(dict(tech.stage_two)),
                          "base_key": key}, **facts)[0]
    return {"key": s2, "kwargs": kw, "base_key": key, "input_size": size}


def _load(tech: Technique, root: Path, p: dict, *, budget: Mapping, stage_budget: Mapping,
          mode: Mode, progress: bool):
    """(Predictor, training summary) of the planned run, trained when the cache lacks it."""
    from sodlab.engine.cache import cached_train
    from sodlab.engine.predict import load_detector

    if tech.stage_two is None:
        from sodlab.engine.cache import backbone_init_builder

        build = None if tech.init is None else backbone_init_builder(tech.init)
        ckpt, summary = cached_train(tech.preset, root, quick=mode.quick, progress=progress,
                                     build_model=build, **p["kwargs"])
        return load_detector(ckpt), summary
    from sodlab.engine.stage_two import cached_stage_two, load_stage_two

    kw = p["kwargs"]
    ckpt, summary = cached_stage_two(
        tech.preset, root, dict(tech.stage_two), seed=kw["seed"], quick=mode.quick,
        progress=progress, budget=dict(stage_budget),
        base_budget={"max_steps": kw["max_steps"], "batch_size": kw["batch_size"],
                     "overrides": kw["overrides"]})
    return load_stage_two(ckpt), summary


def predict_fn(test: str, model, input_size: int):
    """``fn(images: list of [3, H, W]) -> list of {"boxes" [N, 4], "scores", "labels"}``.

    Boxes in each original image's pixels, labels contiguous (0..C-1), along the test path:
    ``single`` (the input size), ``pyramid`` (half, one and two times it, merged by NMS;
    notebook 03), ``multiscale`` (SNIP's three scales and valid ranges; notebook 05),
    ``sliced`` (overlapping tiles at twice the scale plus the full image; notebook 05).
    """
    from sodlab.engine.predict import as_given_predict_fn, detect_batch, detect_pyramid
    from sodlab.slicing import sliced_predict
    from sodlab.snip import DEFAULT_RANGES, DEFAULT_SCALES, multiscale_predict

    size = int(input_size)
    if test == "single":
        return lambda images: detect_batch(model, images, input_size=size)
    if test == "pyramid":
        return lambda images: detect_pyramid(model, images,
                                             input_sizes=[size // 2, size, size * 2])
    raw = as_given_predict_fn(model)

    def resized(img):
        f = size / max(img.shape[1:])
        return multiscale_predict(raw, img, factors=(f,), ranges=((0.0, math.inf),))

    if test == "multiscale":
        def one(img):
            f = size / max(img.shape[1:])
            return multiscale_predict(raw, img, factors=tuple(s * f for s in DEFAULT_SCALES),
                                      ranges=DEFAULT_RANGES, merge="nms")
    elif test == "sliced":
        def one(img):
            return sliced_predict(resized, img, tile=size // 2, overlap=0.25, method="nms",
                                  metric="ios", thresh=0.5, full_image=True)
    else:
        raise InputError(f"unknown test path {test!r}; known: {TESTS}")
    return lambda images: [one(img) for img in images]


def predict_split_with(fn, split_dir: str | os.PathLike, cat_ids: Sequence[int], *,
                       batch_size: int = 8, progress: bool = False) -> tuple[list[dict], float]:
    """COCO results of ``fn`` on every image of a split folder, and seconds per image."""
    from tqdm.auto import tqdm

    from sodlab.data.coco import to_coco_results
    from sodlab.data.dataset import DetectionDataset

    ds = DetectionDataset(split_dir)
    dets, seconds = [], 0.0
    for i in tqdm(range(0, len(ds), batch_size), disable=not progress, desc="predict",
                  leave=False):
        idx = list(range(i, min(i + batch_size, len(ds))))
        images = [ds[j][0] for j in idx]
        t0 = time.perf_counter()
        outs = fn(images)
        seconds += time.perf_counter() - t0
        dets += to_coco_results([int(ds.images[j]["id"]) for j in idx], outs, cat_ids=cat_ids)
    return dets, seconds / max(len(ds), 1)


_REGIONS: dict[str, object] = {}


def _hard_negative_regions(split_dir: Path, val_hash: str):
    """The split's hard-negative regions (embedded data only; None elsewhere), once per split."""
    from sodlab.metrics.hard_negatives import hard_negative_regions

    if val_hash not in _REGIONS:
        try:
            _REGIONS[val_hash] = hard_negative_regions(split_dir)
        except InputError:  # another dataset: it lists no hard negatives
            _REGIONS[val_hash] = None
    return _REGIONS[val_hash]


def evaluation_extras(split_dir: Path, gt: dict, dets: list[dict]) -> tuple[dict, dict]:
    """(per-image metrics, diagnostics) a record keeps beside the COCO metrics.

    Per image: false alarms on the embedded data's hard negatives (``hn_fp_per_image``,
    notebook 08). Diagnostics: TIDE's error breakdown per bucket (notebook 10) and the
    precision-recall curves per bucket at IoU 0.5.
    """
    from sodlab.engine.records import split_hash
    from sodlab.metrics.coco import pr_curves
    from sodlab.metrics.hard_negatives import hard_negative_fp
    from sodlab.metrics.tide import error_breakdown

    per_image = {}
    regions = _hard_negative_regions(split_dir, split_hash(gt))
    if regions is not None:
        per_image["hn_fp_per_image"] = hard_negative_fp(gt, dets, regions)["per_image"]
    tide = error_breakdown(gt, dets)
    curves = pr_curves(gt, dets)
    diagnostics = {"tide": {"counts": tide["counts"], "dAP": tide["dAP"]},
                   "pr": {"iou": curves["iou"], "precision": {
                       b: [round(x, 4) for x in v] for b, v in curves["precision"].items()}}}
    return per_image, diagnostics


def run_technique(tech: Technique, root: str | os.PathLike, *, seed: int,
                  mode: str | Mode = "full", budget: Mapping | None = None,
                  stage_budget: Mapping | None = None, progress: bool = False) -> dict:
    """The record of ``tech`` at ``seed`` on ``root`` (see the module docstring).

    ``budget`` / ``stage_budget`` replace the mode's (the learning curve's multiples).
    """
    from sodlab.engine.records import make_record, read_record, write_record
    from sodlab.metrics.coco import load_dets, load_gt

    m = mode_of(mode)
    root = Path(root)
    budget = dict(budget or m.budget(tech.preset))
    stage_budget = dict(stage_budget or m.stage_budget())
    facts = _facts(root)
    p = plan(tech, root, seed=seed, budget=budget, stage_budget=stage_budget, facts=facts)
    rec = read_record(p["key"], test=tech.test, mode=m.name)
    if rec is not None:
        return {**rec, "from_record": True}
    t0 = time.perf_counter()
    pred, summary = _load(tech, root, p, budget=budget, stage_budget=stage_budget, mode=m,
                          progress=progress)
    if summary["key"] != p["key"]:
        raise RuntimeError("the run cache and plan() disagree on the run key")
    fn = predict_fn(tech.test, pred.model.eval(), pred.input_size)
    gt = load_gt(root / "val")
    dets, s_per_image = predict_split_with(fn, root / "val", pred.cat_ids,
                                           batch_size=int(budget["batch_size"]),
                                           progress=progress)
    trained = stage_budget if tech.stage_two is not None else budget
    clean = load_dets(dets, gt)
    per_image, diagnostics = evaluation_extras(root / "val", gt, clean)
    rec = make_record(
        key=p["key"], technique=tech.as_dict(),
        budget={"max_steps": int(trained["max_steps"]), "batch_size": int(trained["batch_size"])},
        seed=seed, mode=m.name, data_hash=facts["data_hash"], gt=gt, dets=clean,
        per_image=per_image, diagnostics=diagnostics,
        provenance={**summary["provenance"], "precision": summary.get("precision"),
                    "cached_model": bool(summary.get("cached"))},
        train_seconds=summary.get("seconds"), progress=progress,
        extra={"base_key": p["base_key"],
               "base_budget": None if p["base_key"] is None else
               {"max_steps": int(budget["max_steps"]), "batch_size": int(budget["batch_size"])},
               "test_seconds_per_image": round(s_per_image, 5),
               "record_seconds": round(time.perf_counter() - t0, 1)})
    write_record(rec)
    return {**rec, "from_record": False}


def is_cached_plan(p: Mapping) -> bool:
    """Whether the run cache holds the model of a ``plan`` (and a second stage's base):
    ``run_technique`` would then train nothing."""
    from sodlab.engine.cache import cached_path

    if p["base_key"] is not None and cached_path(p["base_key"]) is None:
        return False
    return cached_path(p["key"]) is not None


def has_record(tech: Technique, root: str | os.PathLike, *, seed: int,
               mode: str | Mode = "full", facts: Mapping | None = None) -> bool:
    """Whether ``tech`` at ``seed`` already has a record in ``mode`` (nothing trains)."""
    from sodlab.engine.records import read_record

    m = mode_of(mode)
    p = plan(tech, root, seed=seed, budget=m.budget(tech.preset),
             stage_budget=m.stage_budget(), facts=facts)
    return read_record(p["key"], test=tech.test, mode=m.name) is not None


__all__ = ["TESTS", "NEEDS", "RECIPES", "Technique", "Mode", "MODES", "mode_of", "plan",
           "predict_fn", "predict_split_with", "evaluation_extras", "run_technique", "is_cached_plan", "has_record"]

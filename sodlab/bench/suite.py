"""Benchmark ``suite``: every technique the notebooks teach, on one data set and one budget, side by side.

Layer L4. ``sodlab bench`` runs it and ``sodlab.bench.page`` turns its result into
``reports/bench.html``; notebook 10_benchmark_report reads it back. The papers are those of
each technique (``docs/methods.md``, ``sodlab.bench.papers``); the verdict rule is
``sodlab.metrics.verdict`` and the intervals are Efron's percentile bootstrap over images.

What runs. Every technique of ``TECHNIQUES`` (presets, training recipes, test-time
variants, second stages and torchvision's SSDlite) is trained on the same data root with
the shared budget (``sodlab.engine.standard_budget``; second stages on the cached ``fpn``
base with ``stage_two_budget``), so its model comes from the run cache the notebooks fill
and trains only when it is missing; the same seeds (quick: 1, full: 3) for every one.
Each model predicts the validation split through its technique's own test path (one
scale, an image pyramid, SNIP's multi-scale test, sliced inference) and is evaluated by
size bucket (``sodlab.metrics.evaluate``); on the embedded dataset also its false alarms on
the unannotated face-like crops (``sodlab.metrics.hard_negatives``). Then, on the first
seed's detections of every technique at once:

- ``paired_bootstrap``: the SAME image resamples for every technique, so a technique's
  percentile interval equals ``bootstrap_ci``'s and the difference of two techniques has a
  paired interval too;
- the TIDE error breakdown per size bucket (``sodlab.metrics.tide``);
- precision-recall curves per size bucket at IoU 0.5 for the best model (highest mean
  AP_small).

Speed: every technique's own test path on one 640 x 480 image with trained weights, on 1
and 2 threads (fp32, median of ``repeats``); per preset, ``train_speed.measure_preset`` in
a fresh subprocess (training images/s, peak memory). SSDlite320 trains from scratch in the
run for the wall-clock time our ``fpn`` took (capped in quick mode).

Each technique is compared with the one it changes (``against``) on every key: the mean of
the paired per-seed differences, the paired bootstrap interval of the difference, and the
verdict of the per-seed pairs with the two techniques' own intervals (the same inputs as
the notebooks and ``sodlab.bench.quality``). ``regression`` checks a result against a
reference result (``results/bench_reference.json``) number by number.

A technique the data cannot support is *skipped* with the reason (copy-paste needs masks;
a Perceptual GAN needs large objects); one that raises is *failed* with its error, and the
rest still run.

Shapes: ``seeds`` maps a seed to ``{key: value}``; ``ci`` is ``{key: [lo, hi]}``; bootstrap
samples are ``[B]`` arrays per technique and key. Dimension legend: B bootstrap resamples,
S seeds, R = 101 recall thresholds of a precision-recall curve, K categories.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sodlab.errors import InputError

# Metric keys recorded per technique and seed; SHOWN are the page's columns.
KEYS = ("AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "AR_small", "R50_tiny", "R50_small")
SHOWN = ("AP", "AP_tiny", "AP_small", "AP_medium", "R50_tiny")
HN_KEY = "hn_fp_per_image"
PR_BUCKETS = ("all", "tiny", "small", "medium", "large")
SPEED_TOLERANCE = 0.25  # a latency "moved" when it left +-25 % of the reference's
QUICK_SSDLITE_S = 30.0  # SSDlite's wall-clock cap in quick mode
FULL_SSDLITE_S = 300.0  # its budget in full mode when fpn's training time is unknown

@dataclass(frozen=True)
class Row:
    """One row of the benchmark: how its model is trained and how it predicts.

    ``technique`` is the same ``sodlab.engine.experiment.Technique`` a notebook's study
    declares under the same name (a test checks it), so both share run-cache entries.
    """

    name: str
    notebook: str                      # the notebook that teaches it ("" when none does)
    kind: str                          # "preset", "recipe", "test", "stage two", "other"
    preset: str | None = None          # the detector preset (None: SSDlite)
    recipe: str | None = None          # a name in sodlab.engine.experiment.RECIPES
    test: str = "single"               # "single", "pyramid", "multiscale", "sliced", "ssdlite"
    stage_two: dict | None = field(default=None, hash=False)  # a stage-two spec
    against: str | None = None         # the technique this one changes
    needs: tuple[str, ...] = ()        # "masks", "large objects"
    what: str = ""                     # one line for the page

    @property
    def technique(self):
        """The experiment layer's ``Technique`` of this row (None for SSDlite)."""
        from sodlab.engine.experiment import Technique

        if self.preset is None:
            return None
        return Technique(self.name, self.preset, recipe=self.recipe, stage_two=self.stage_two,
                         test=self.test, needs=self.needs)


TECHNIQUES: tuple[Row, ...] = (
    Row("baseline", "03_fpn", "preset", "baseline",
              what="one level at stride 16, every anchor size on it"),
    Row("image pyramid", "03_fpn", "test", "baseline", test="pyramid", against="baseline",
              what="the baseline at half, one and two times its input size, merged by NMS"),
    Row("fpn", "03_fpn", "preset", "fpn", against="baseline",
              what="feature pyramid, strides 4-64, one anchor size per level"),
    Row("ssh", "04_ssh_receptive_fields", "preset", "ssh", against="baseline",
              what="SSH's three detection modules with context modules"),
    Row("s3fd", "06_dense_anchors", "preset", "s3fd", against="fpn",
              what="equal-proportion anchors, compensated matching, max-out background"),
    Row("faceboxes", "06_dense_anchors", "preset", "faceboxes", against="fpn",
              what="rapidly digested stride-32 backbone, densified anchors"),
    Row("pyramidbox", "08_pyramidbox", "preset", "pyramidbox", against="s3fd",
              what="S3FD + low-level FPN, PyramidAnchors, CPM, max-in-out"),
    Row("pyramidbox + DAS", "08_pyramidbox", "recipe", "pyramidbox", recipe="das",
              against="pyramidbox", what="PyramidBox trained with data-anchor-sampling"),
    Row("fast", "", "preset", "fast", against="fpn",
              what="fpn's levels with depthwise-separable convolutions, no head tower"),
    Row("oversample 3x", "02_augmentation", "recipe", "fpn", recipe="oversample 3x",
              against="fpn", what="images holding a small object three times per epoch"),
    Row("copy-paste", "02_augmentation", "recipe", "fpn", recipe="copy-paste",
              against="fpn", needs=("masks",),
              what="small faces pasted again, with their head-and-body context"),
    Row("MST", "05_snip_sniper", "recipe", "fpn", recipe="mst", test="multiscale",
              against="fpn", what="multi-scale training (no valid ranges), three-scale test"),
    Row("SNIP", "05_snip_sniper", "recipe", "fpn", recipe="snip", test="multiscale",
              against="MST", what="multi-scale training and test with SNIP's valid ranges"),
    Row("SNIPER", "05_snip_sniper", "recipe", "fpn", recipe="sniper", test="multiscale",
              against="fpn", what="SNIPER's chips at three scales, three-scale test"),
    Row("sliced inference", "05_snip_sniper", "test", "fpn", test="sliced",
              against="fpn", what="fpn on 2x up-sampled overlapping tiles + the full image"),
    Row("RoI head", "09_relation_networks", "stage two", "fpn",
              stage_two={"kind": "roi"}, against="fpn",
              what="a Fast R-CNN head on the frozen fpn's proposals"),
    Row("Perceptual GAN (perception only)", "07_perceptual_gan", "stage two", "fpn",
              stage_two={"kind": "pgan", "adversarial": False}, against="RoI head",
              needs=("large objects",),
              what="the GAN's generator trained by the perception loss alone"),
    Row("Perceptual GAN", "07_perceptual_gan", "stage two", "fpn",
              stage_two={"kind": "pgan"}, against="Perceptual GAN (perception only)",
              needs=("large objects",), what="generator + adversarial and perception branches"),
    Row("Relation Networks", "09_relation_networks", "stage two", "fpn",
              stage_two={"kind": "roi", "relation": 1, "learned_nms": True},
              against="RoI head", what="relation modules after the fc layers + learned NMS"),
    Row("SSDlite", "", "other", None, test="ssdlite", against="fpn",
              what="torchvision's ssdlite320_mobilenet_v3_large from scratch, same wall clock"),
)
NAMES: tuple[str, ...] = tuple(t.name for t in TECHNIQUES)
BY_NAME: dict[str, Row] = {t.name: t for t in TECHNIQUES}


def select(names: Sequence[str] | None) -> list[Row]:
    """The techniques named (in suite order), or all; InputError names an unknown one."""
    if names is None:
        return list(TECHNIQUES)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise InputError(f"unknown technique(s) {unknown}; choose from {list(NAMES)}")
    return [t for t in TECHNIQUES if t.name in set(names)]


# ----------------------------------------------------------------------------- the data
def data_facts(root: str | os.PathLike, *, progress: bool = False) -> dict:
    """What a dataset root offers the techniques: classes, masks, head/body boxes, hard negatives.

    ``hard_negative_regions`` is ``{image_id: [M, 4]}`` of the val split or None; it is
    popped by ``run`` (tensors are not JSON).
    """
    from sodlab.data.coco import load_coco
    from sodlab.metrics.hard_negatives import hard_negative_regions

    root = Path(root)
    train = load_coco(root / "train")
    anns = [a for a in train["annotations"] if not a.get("iscrowd", 0)]
    facts = {"classes": len(train["categories"]), "train_images": len(train["images"]),
             "train_objects": len(anns),
             "masks": any(a.get("segmentation") for a in anns),
             "head_body_boxes": any(a.get("head_bbox") or a.get("body_bbox") for a in anns)}
    try:
        facts["hard_negative_regions"] = hard_negative_regions(root / "val", progress=progress)
        facts["hard_negatives"] = True
    except InputError as exc:
        facts["hard_negative_regions"] = None
        facts["hard_negatives"] = False
        facts["hard_negatives_why"] = str(exc)
    return facts


def skip_reason(tech: Row, facts: Mapping, *, input_size: int | None = None,
                root: str | os.PathLike | None = None) -> str | None:
    """Why ``tech`` cannot run on this data (None when it can)."""
    if "masks" in tech.needs and not facts.get("masks"):
        return ("copy-paste cuts objects out by their masks, and no training annotation has "
                "a 'segmentation'")
    if "large objects" in tech.needs and root is not None and input_size is not None:
        from sodlab.engine.stage_two import check_stage_two_data

        try:
            check_stage_two_data(tech.stage_two, root, input_size=input_size)
        except InputError as exc:
            return f"the Perceptual GAN's discriminator needs large objects: {exc}"
    return None


def data_notes(facts: Mapping, techniques: Sequence[Row]) -> list[str]:
    """Sentences on what the data lacks and what runs anyway (for the page)."""
    names = {t.name for t in techniques}
    notes = []
    if not facts.get("head_body_boxes") and names & {"pyramidbox", "pyramidbox + DAS"}:
        notes.append("PyramidBox: the data has no real head/body boxes; its PyramidAnchors "
                     "train on head and body boxes derived from each face box (the paper's "
                     "own rule, and the preset's default), so it still runs.")
    if not facts.get("hard_negatives"):
        notes.append("False alarms on hard negatives (the face-like crops without a body) "
                      "need the embedded dataset, which lists where it pasted them: not "
                      f"measured ({facts.get('hard_negatives_why', 'no list')}).")
    return notes


# ----------------------------------------------------------------------------- models
def _recipe(tech: Row, input_size: int) -> dict | None:
    return tech.technique.recipe_dict(input_size) if tech.technique else None


def _budget(preset: str, *, quick: bool, budget: Mapping | None) -> dict:
    from sodlab.engine.budgets import standard_budget

    if budget is None:
        return standard_budget(preset, quick=quick)
    return {"max_steps": int(budget["max_steps"]), "batch_size": int(budget["batch_size"]),
            "overrides": dict(budget.get("overrides") or {})}


def input_size_of(preset: str, root: str | os.PathLike, *, quick: bool,
                  budget: Mapping | None = None) -> int:
    """The preset's input size (longest side) under the budget's overrides."""
    from sodlab.data.coco import load_coco
    from sodlab.detector import make_config

    n = len(load_coco(Path(root) / "train")["categories"])
    b = _budget(preset, quick=quick, budget=budget)
    return int(make_config(preset, num_classes=n, overrides=b["overrides"]).input_size)


def train_kwargs(tech: Row, root: str | os.PathLike, *, quick: bool,
                 budget: Mapping | None = None) -> dict:
    """The ``cached_train`` keyword arguments of a single-stage technique (seed aside)."""
    b = _budget(tech.preset, quick=quick, budget=budget)
    size = input_size_of(tech.preset, root, quick=quick, budget=budget)
    return {**b, "recipe": _recipe(tech, size)}


def is_cached(tech: Row, root: str | os.PathLike, *, seed: int, quick: bool,
              budget: Mapping | None = None, stage_budget: Mapping | None = None) -> bool:
    """Whether the run cache already holds ``tech``'s model for ``seed`` (nothing trains).

    The key is computed as ``sodlab.engine.cache.cached_train`` computes it.
    """
    if tech.preset is None:
        return False  # SSDlite trains in the run, every time
    from sodlab.data.coco import load_coco
    from sodlab.detector import parse_overrides
    from sodlab.engine.cache import cached_path, data_hash_of, train_key
    from sodlab.engine.stage_two import parse_stage_two, stage_two_budget

    root = Path(root)
    facts = {"num_classes": len(load_coco(root / "train")["categories"]),
             "data_hash": data_hash_of(root)}

    def key(overrides, steps, batch, recipe=None, extra=None) -> str:
        return train_key(tech.preset, root, overrides=overrides, seed=seed, max_steps=steps,
                         batch_size=batch, recipe=recipe, extra=extra, **facts)[0]

    b = _budget(tech.preset, quick=quick, budget=budget)
    if tech.stage_two is None:
        kw = train_kwargs(tech, root, quick=quick, budget=budget)
        return cached_path(key(kw["overrides"], kw["max_steps"], kw["batch_size"],
                               kw["recipe"])) is not None
    over = parse_overrides(b["overrides"])
    base = key(over, b["max_steps"], b["batch_size"])
    if cached_path(base) is None:
        return False
    s2 = dict(stage_budget or stage_two_budget(quick=quick))
    return cached_path(key(over, s2["max_steps"], s2["batch_size"],
                           extra={"stage_two": parse_stage_two(tech.stage_two),
                                  "base_key": base})) is not None


def missing_models(root: str | os.PathLike, *, quick: bool,
                   techniques: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                   budget: Mapping | None = None,
                   stage_budget: Mapping | None = None) -> list[str]:
    """``"name (seed s)"`` for every model a run would have to train (SSDlite always trains)."""
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    out = []
    for tech in select(techniques):
        for s in seeds:
            if not is_cached(tech, root, seed=s, quick=quick, budget=budget,
                             stage_budget=stage_budget):
                out.append(f"{tech.name} (seed {s})")
    return out


def _load(tech: Row, root: Path, *, seed: int, quick: bool, progress: bool,
          budget: Mapping | None, stage_budget: Mapping | None):
    """(model, input_size, cat_ids, training summary) of a detector technique."""
    from sodlab.engine import cached_train, load_detector
    from sodlab.engine.stage_two import cached_stage_two, load_stage_two

    if tech.stage_two is not None:
        ckpt, summary = cached_stage_two(
            tech.preset, root, tech.stage_two, seed=seed, quick=quick, progress=progress,
            base_budget=_budget(tech.preset, quick=quick, budget=budget),
            budget=dict(stage_budget) if stage_budget else None)
        pred = load_stage_two(ckpt)
    else:
        ckpt, summary = cached_train(tech.preset, root, seed=seed, quick=quick,
                                     progress=progress,
                                     **train_kwargs(tech, root, quick=quick, budget=budget))
        pred = load_detector(ckpt)
    return pred.model.eval(), pred.input_size, pred.cat_ids, summary


# ----------------------------------------------------------------------------- prediction
def _row_predict_fn(tech: Row, model, input_size: int | None):
    """The row's test path (``sodlab.engine.experiment.predict_fn``; SSDlite its own)."""
    import torch

    from sodlab.engine.experiment import predict_fn

    if tech.test != "ssdlite":
        return predict_fn(tech.test, model, int(input_size))

    @torch.inference_mode()
    def ssd(images):
        outs = []
        for img in images:
            o = model([img])[0]  # labels 1..C, boxes in the image's pixels
            top = o["scores"].argsort(descending=True)[:100]
            outs.append({"boxes": o["boxes"][top], "scores": o["scores"][top],
                         "labels": o["labels"][top] - 1})
        return outs
    return ssd


def _predict_preloaded(fn, images: Sequence, image_ids: Sequence[int],
                       cat_ids: Sequence[int], *, batch_size: int = 8, progress: bool = False,
                       desc: str = "predict") -> tuple[list[dict], float]:
    """COCO results of ``fn`` on images already in memory (every row predicts the same
    ones), and the mean seconds per image."""
    from tqdm.auto import tqdm

    from sodlab.data.coco import to_coco_results

    dets, seconds = [], 0.0
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, disable=not progress, desc=desc, leave=False):
        chunk = list(images[i:i + batch_size])
        t0 = time.perf_counter()
        outs = fn(chunk)
        seconds += time.perf_counter() - t0
        dets += to_coco_results(list(image_ids[i:i + batch_size]), outs, cat_ids=cat_ids)
    return dets, seconds / max(len(images), 1)


def vga_image(images: Sequence) -> "torch.Tensor":  # noqa: F821
    """The first validation image stretched to 640 x 480, ``[3, 480, 640]`` in [0, 1]."""
    from sodlab.tiling import resize_image

    return resize_image(images[0], (480, 640), antialias=True).clamp(0, 1)


# ----------------------------------------------------------------------------- statistics
def paired_bootstrap(gt, dets_by_name: Mapping[str, list], *, keys: Sequence[str] = KEYS,
                     n: int = 200, seed: int = 0,
                     progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """``{name: {key: [B] values}}`` over the SAME image resamples for every name.

    The draws are ``bootstrap_ci``'s (``numpy.random.default_rng(seed)``, images with
    replacement), so each name's percentile interval is the one ``bootstrap_ci`` gives;
    a value of -1 (a resample without objects of a bucket) becomes NaN.
    """
    from tqdm.auto import tqdm

    from sodlab.data.coco import annotations_by_image
    from sodlab.metrics.bootstrap import resample
    from sodlab.metrics.coco import evaluate_clean, load_dets, load_gt, paused_gc

    g = load_gt(gt)
    clean = {name: load_dets(d, g) for name, d in dets_by_name.items()}
    g_by = annotations_by_image(g)
    by_img = {name: (g_by, annotations_by_image(d)) for name, d in clean.items()}
    rng = np.random.default_rng(seed)
    n_img = len(g["images"])
    out = {name: {k: np.full(int(n), np.nan) for k in keys} for name in clean}
    for b in tqdm(range(int(n)), disable=not progress, desc="bootstrap", leave=False):
        draw = rng.integers(0, n_img, size=n_img)
        for name, d in clean.items():
            with paused_gc():
                rg, rd = resample(g, d, draw, by_img[name])
                m = evaluate_clean(rg, rd)
            for k in keys:
                if m[k] > -1:
                    out[name][k][b] = m[k]
    return out


def percentile(values: np.ndarray, *, alpha: float = 0.05) -> list[float]:
    """``[lo, hi]`` of the finite values (``[-1, -1]`` when there are none, as bootstrap_ci)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return [-1.0, -1.0]
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def pareto_frontier(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names on the speed-accuracy frontier of ``{name: (latency, accuracy)}``, fastest first.

    A point is on it when no other point is at least as fast and at least as accurate and
    strictly better in one. Points with a NaN are left out.
    """
    ok = {k: (float(x), float(y)) for k, (x, y) in points.items()
          if not (math.isnan(float(x)) or math.isnan(float(y)))}
    front = []
    for name, (x, y) in ok.items():
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y)
                        for other, (x2, y2) in ok.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda k: (ok[k][0], -ok[k][1]))


def compare(a: Mapping, b: Mapping, key: str, *, samples: Mapping | None = None,
            a_name: str = "A", b_name: str = "B") -> dict:
    """B against A on ``key``: paired per-seed differences, their mean, the paired bootstrap
    interval of the difference, and ``verdict`` of the pairs with A's and B's intervals."""
    from sodlab.metrics.verdict import verdict, verdict_sentence

    seeds = [s for s in a.get("seeds", {}) if s in b.get("seeds", {})]
    pairs = {s: (a["seeds"][s].get(key), b["seeds"][s].get(key)) for s in seeds}
    pairs = {s: (math.nan if x is None else float(x), math.nan if y is None else float(y))
             for s, (x, y) in pairs.items()}
    diffs = [y - x for x, y in pairs.values() if x > -1 and y > -1 and
             not (math.isnan(x) or math.isnan(y))]
    ca, cb = (a.get("ci") or {}).get(key), (b.get("ci") or {}).get(key)
    intervals = (ca, cb) if ca is not None and cb is not None else None
    diff_ci = None
    if samples is not None and a_name in samples and b_name in samples and \
            key in samples[a_name] and key in samples[b_name]:
        diff_ci = percentile(samples[b_name][key] - samples[a_name][key])
        diff_ci = None if diff_ci == [-1.0, -1.0] else diff_ci
    return {"key": key, "per_seed": {s: y - x for s, (x, y) in pairs.items()},
            "delta": float(np.mean(diffs)) if diffs else None, "diff_ci": diff_ci,
            "verdict": verdict(pairs, intervals),
            "sentence": verdict_sentence(pairs, intervals, metric=key, a=a_name, b=b_name)}


def outcome(paper_direction: int, our_verdict: str) -> str:
    """What our verdict says about the paper's direction of change."""
    from sodlab.metrics.verdict import DOWN, UP

    if paper_direction == 0:
        return "no direction to compare"
    if our_verdict not in (UP, DOWN):
        return "no clear difference"
    same = (our_verdict == UP) == (paper_direction > 0)
    return "direction reproduced" if same else "not reproduced"


def paper_rows(techs: Mapping[str, dict], samples: Mapping | None) -> list[dict]:
    """Every ``sodlab.bench.papers.PAPER_CHANGES`` row with our delta, interval and verdict."""
    from sodlab.bench.papers import PAPER_CHANGES

    rows = []
    for change in PAPER_CHANGES:
        row = change.to_dict()
        row.update(ours_delta=None, ours_ci=None, verdict=None, sentence=None)
        if change.ours is None:
            row["outcome"] = "not run here"
        else:
            a, b, key = change.ours
            ta, tb = techs.get(a) or {}, techs.get(b) or {}
            if ta.get("status") != "ok" or tb.get("status") != "ok":
                bad = a if ta.get("status") != "ok" else b
                row["outcome"] = f"{bad} {(techs.get(bad) or {}).get('status', 'not run')}"
            else:
                c = compare(ta, tb, key, samples=samples, a_name=a, b_name=b)
                row.update(ours_delta=c["delta"], ours_ci=c["diff_ci"], verdict=c["verdict"],
                           sentence=c["sentence"])
                row["outcome"] = outcome(change.direction, c["verdict"])
        rows.append(row)
    return rows


def paper_value_rows(techs: Mapping[str, dict]) -> list[dict]:
    """``PAPER_VALUES`` with our number beside each (None when not measured)."""
    from sodlab.bench.papers import PAPER_VALUES

    out = []
    for pv in PAPER_VALUES:
        t = techs.get(pv.technique) or {}
        ours = t.get(pv.key)
        out.append({**pv.to_dict(), "ours": ours if isinstance(ours, (int, float)) else None})
    return out


def regression(result: Mapping, reference: Mapping | None, *,
               tolerance: float = SPEED_TOLERANCE) -> dict:
    """Every number of ``result`` against ``reference`` (both ``run`` results).

    Accuracy keys (``SHOWN``): the value of the seed the reference's interval was computed
    on "moved" when it lies outside that interval. Latencies (``vga_ms_1t``, ``vga_ms_2t``):
    "moved" beyond ``tolerance`` (a share) of the reference's, compared only on the same
    CPU and thread count. Returns ``{"comparable", "why", "marks": {technique: {key:
    "moved" | "held" | "new"}}, "moved": [...], "checked": n}``; nothing is compared when
    the mode, data or budget differ.
    """
    out = {"comparable": False, "why": "", "marks": {}, "moved": [], "checked": 0,
           "speed_compared": False}
    if not reference:
        out["why"] = "no reference result"
        return out
    for what, get in (("mode", lambda r: (r.get("provenance") or {}).get("mode")),
                      ("data", lambda r: (r.get("data") or {}).get("hash")),
                      ("budget", lambda r: {k: (r.get("budget") or {}).get(k) for k in
                                            ("max_steps", "batch_size", "overrides",
                                             "stage_two")})):
        if get(result) != get(reference):
            out["why"] = f"the reference was made with another {what}"
            return out
    out["comparable"] = True
    rp, fp = result.get("provenance") or {}, reference.get("provenance") or {}
    same_machine = rp.get("cpu") == fp.get("cpu") and rp.get("threads") == fp.get("threads")
    out["speed_compared"] = bool(same_machine)
    for name, t in (result.get("techniques") or {}).items():
        if t.get("status") != "ok":
            continue
        ref = (reference.get("techniques") or {}).get(name) or {}
        marks = out["marks"].setdefault(name, {})
        if ref.get("status") != "ok":
            marks.update({k: "new" for k in SHOWN})
            continue
        seed = str(ref.get("ci_seed", 0))
        mine = (t.get("seeds") or {}).get(seed) or {}
        for k in SHOWN:
            v, ci = mine.get(k), (ref.get("ci") or {}).get(k)
            if v is None or ci is None or list(ci) == [-1.0, -1.0]:
                marks[k] = "new"
                continue
            out["checked"] += 1
            moved = not (ci[0] <= v <= ci[1])
            marks[k] = "moved" if moved else "held"
            if moved:
                out["moved"].append({"technique": name, "key": k, "value": v,
                                     "reference": ((ref.get("seeds") or {}).get(seed) or {})
                                     .get(k), "interval": list(ci)})
        for k in ("vga_ms_1t", "vga_ms_2t"):
            v, r = t.get(k), ref.get(k)
            if not same_machine or v is None or not r:
                marks[k] = "new"
                continue
            out["checked"] += 1
            moved = abs(v - r) > tolerance * r
            marks[k] = "moved" if moved else "held"
            if moved:
                out["moved"].append({"technique": name, "key": k, "value": v, "reference": r,
                                     "interval": [r * (1 - tolerance), r * (1 + tolerance)]})
    return out


# ----------------------------------------------------------------------------- speed
def preset_speed(preset: str, root: str | os.PathLike, *, timeout: float = 900.0,
                 **kw) -> dict:
    """``train_speed.measure_preset`` in a fresh subprocess (its memory peak is its own)."""
    import json

    code = ("import json, sys; from sodlab.bench.train_speed import measure_preset; "
            "a = json.loads(sys.argv[1]); print(json.dumps(measure_preset(**a)))")
    args = json.dumps({"preset": preset, "data_root": str(root), **kw})
    try:
        res = subprocess.run([sys.executable, "-c", code, args], capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"preset": preset, "error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or [f"exit code {res.returncode}"]
        return {"preset": preset, "error": tail[0]}
    return json.loads(res.stdout.strip().splitlines()[-1])


SPEED_KEYS = ("train_images_per_s", "train_images_per_s_fp32", "fast_precision",
              "peak_rss_infer_mb", "peak_rss_train_mb", "vga_ms_1t_fast", "params")


# ----------------------------------------------------------------------------- the run
def finish(techs: dict[str, dict], first_dets: Mapping[str, list], gt, *, ci_seed: int = 0,
           n_boot: int = 200, progress: bool = False) -> dict:
    """The statistics over techniques, from each one's per-seed metrics and first-seed dets.

    Adds ``ci_seed``, ``ci`` and ``errors`` (TIDE) to every ``"ok"`` entry of ``techs`` (in
    place) and returns ``{"comparisons", "papers", "pr_curves"}``: each technique against
    its ``against``, the papers' rows, and the best model's precision-recall curves.
    """
    from sodlab.metrics.tide import error_breakdown

    ok = [n for n, t in techs.items() if t.get("status") == "ok" and n in first_dets]
    samples = paired_bootstrap(gt, {n: first_dets[n] for n in ok}, n=n_boot,
                               progress=progress) if ok and n_boot else {}
    for n in ok:
        t = techs[n]
        t["ci_seed"] = ci_seed
        t["ci"] = {k: percentile(v) for k, v in samples.get(n, {}).items()}
        try:
            tide = error_breakdown(gt, first_dets[n])
            t["errors"] = {"counts": tide["counts"], "dAP": tide["dAP"], "AP": tide["AP"]}
        except Exception as exc:  # the table still stands without its error breakdown
            t.setdefault("notes", []).append(f"error breakdown failed: "
                                             f"{type(exc).__name__}: {exc}")
    comparisons = {}
    for n in ok:
        a = techs[n].get("against")
        if a in ok:
            comparisons[n] = {"against": a, **{k: compare(techs[a], techs[n], k,
                                                          samples=samples, a_name=a, b_name=n)
                                               for k in SHOWN}}
    best = max(ok, key=lambda n: (techs[n].get("mean") or {}).get("AP_small") or -1.0,
               default=None)
    from sodlab.metrics.coco import pr_curves

    curves = {"technique": best, **pr_curves(gt, first_dets[best])} if best else None
    return {"comparisons": comparisons, "papers": paper_rows(techs, samples),
            "pr_curves": curves}


def _ssdlite_seconds(quick: bool, fpn: dict | None, given: float | None) -> float:
    if given is not None:
        return float(given)
    secs = None
    for tr in ((fpn or {}).get("train") or {}).values():
        if isinstance(tr.get("seconds"), (int, float)):
            secs = float(tr["seconds"])
            break
    if secs is None:
        secs = QUICK_SSDLITE_S if quick else FULL_SSDLITE_S
    return min(secs, QUICK_SSDLITE_S) if quick else secs


def run(*, quick: bool = True, progress: bool = False,
        data_root: str | os.PathLike | None = None,
        techniques: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
        budget: Mapping | None = None, stage_budget: Mapping | None = None,
        n_boot: int | None = None, speed: bool = True, repeats: int | None = None,
        ssdlite_seconds: float | None = None, max_val_images: int | None = None) -> dict:
    """Train (or take from the run cache), evaluate and time every technique; one dict.

    ``techniques``: names from ``NAMES`` (default: all). ``budget``: ``{"max_steps",
    "batch_size", "overrides"}`` for every preset instead of ``standard_budget`` (tests use a
    tiny one); ``stage_budget`` the same for second stages. ``n_boot``: bootstrap resamples
    (quick 20, full 200). ``speed``: per-preset ``measure_preset`` subprocesses (quick:
    2 timed steps). ``repeats``: VGA latency repeats (quick 3, full 10).
    ``ssdlite_seconds``: SSDlite's wall-clock budget (default: what fpn's training took,
    at most 30 s in quick mode). ``max_val_images``: evaluate on the first N val images.
    """
    import torch
    from tqdm.auto import tqdm

    from sodlab.bench.train_speed import evaluate_ssdlite, train_ssdlite, vga_latency_ms
    from sodlab.data.coco import dataset_hash
    from sodlab.data.dataset import DetectionDataset
    from sodlab.metrics import evaluate
    from sodlab.metrics.hard_negatives import hard_negative_fp
    from sodlab.provenance import provenance

    t_start = time.perf_counter()
    if data_root is None:
        from sodlab.data import ensure_dataset

        data_root = ensure_dataset("quick" if quick else "full", 0, progress=progress)
    root = Path(data_root)
    chosen = select(techniques)
    seeds = [int(s) for s in seeds] if seeds is not None else ([0] if quick else [0, 1, 2])
    n_boot = int(n_boot) if n_boot is not None else (20 if quick else 200)
    repeats = int(repeats) if repeats is not None else (3 if quick else 10)
    facts = data_facts(root, progress=progress)
    regions = facts.pop("hard_negative_regions")

    val = DetectionDataset(root / "val")
    n_val = len(val) if max_val_images is None else min(len(val), int(max_val_images))
    images = [val[i][0] for i in range(n_val)]  # [3, H, W] each
    image_ids = [int(im["id"]) for im in val.images[:n_val]]
    keep = set(image_ids)
    gt = dict(val.coco, images=[im for im in val.coco["images"] if int(im["id"]) in keep],
              annotations=[a for a in val.coco["annotations"] if int(a["image_id"]) in keep])
    vga = vga_image(images)

    techs: dict[str, dict] = {}
    first_dets: dict[str, list] = {}
    bar = tqdm(chosen, disable=not progress, desc="techniques")
    for tech in bar:
        bar.set_postfix_str(tech.name)
        entry = {"status": "ok", **{k: v for k, v in asdict(tech).items() if k != "name"},
                 "seeds": {}, "train": {}, "notes": []}
        techs[tech.name] = entry
        try:
            size = input_size_of(tech.preset, root, quick=quick, budget=budget) \
                if tech.preset else None
            why = skip_reason(tech, facts, input_size=size, root=root)
            if why:
                entry.update(status="skipped", reason=why)
                continue
            entry["input_size"] = size if size is not None else 320
            for s in seeds:
                if tech.test == "ssdlite":
                    secs = _ssdlite_seconds(quick, techs.get("fpn"), ssdlite_seconds)
                    model, stats = train_ssdlite(root, max_seconds=secs, seed=s,
                                                 progress=progress)
                    cat_ids = DetectionDataset(root / "train").cat_ids  # its labels' ids
                    entry["train"][str(s)] = {**stats, "cached": False, "budget_s": secs}
                    if s == seeds[0]:  # the train_speed path, as a cross-check
                        entry["evaluate_ssdlite_AP"] = float(
                            evaluate_ssdlite(model, root / "val")["AP"]) \
                            if max_val_images is None else None
                else:
                    model, size, cat_ids, summary = _load(
                        tech, root, seed=s, quick=quick, progress=progress, budget=budget,
                        stage_budget=stage_budget)
                    entry["train"][str(s)] = {
                        "images_seen": summary.get("images_seen"),
                        "seconds": summary.get("seconds"), "cached": summary.get("cached"),
                        "key": summary.get("key")}
                fn = _row_predict_fn(tech, model, size)
                dets, sec = _predict_preloaded(fn, images, image_ids, cat_ids,
                                               progress=progress, desc=tech.name)
                m = evaluate(gt, dets)
                row = {k: float(m[k]) for k in KEYS}
                row["val_ms_per_image"] = 1000.0 * sec
                if regions is not None:
                    row[HN_KEY] = float(hard_negative_fp(gt, dets, regions)["fp_per_image"])
                entry["seeds"][str(s)] = row
                if s == seeds[0]:
                    first_dets[tech.name] = dets
                    lat = {t: vga_latency_ms(lambda x, fn=fn: fn([x]), vga, threads=t,
                                             repeats=repeats) for t in (1, 2)}
                    entry.update(vga_ms_1t=lat[1], vga_ms_2t=lat[2],
                                 vga_fps_1t=1000.0 / lat[1])
                    tr = entry["train"][str(s)]
                    if tech.test == "ssdlite" or tech.stage_two is not None:
                        # its own training run (a stage two: recorded when it trained)
                        if tr.get("images_seen") and tr.get("seconds"):
                            entry["train_images_per_s"] = tr["images_seen"] / tr["seconds"]
                del model
            entry["mean"] = {k: _mean([r[k] for r in entry["seeds"].values() if k in r])
                             for k in (*KEYS, HN_KEY, "val_ms_per_image")
                             if any(k in r for r in entry["seeds"].values())}
        except Exception as exc:  # one broken technique must not hide the others
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            first_dets.pop(tech.name, None)
    bar.close()

    ok = [n for n, t in techs.items() if t["status"] == "ok"]
    summary = finish(techs, first_dets, gt, ci_seed=seeds[0], n_boot=n_boot,
                     progress=progress)
    presets = sorted({BY_NAME[n].preset for n in ok if BY_NAME[n].preset})
    speeds = {}
    if speed:
        kw = (dict(steps=2, warmup=1, repeats=2, batch_size=4) if quick else
              dict(steps=10, warmup=2, repeats=10, batch_size=8))
        for p in tqdm(presets, disable=not progress, desc="speed"):
            speeds[p] = preset_speed(p, root, seed=seeds[0], **kw)
        for n in ok:
            if BY_NAME[n].stage_two is not None:
                continue  # its training is the head's on a frozen base, not the preset's
            sp = speeds.get(BY_NAME[n].preset) or {}
            if "error" in sp:
                techs[n]["notes"].append(f"measure_preset failed: {sp['error']}")
            elif sp:
                techs[n]["speed"] = {k: sp.get(k) for k in SPEED_KEYS}
                techs[n].setdefault("train_images_per_s", sp.get("train_images_per_s"))

    first_budget = _budget("fpn", quick=quick, budget=budget)
    from sodlab.engine.stage_two import stage_two_budget

    return {
        "techniques": techs, "order": [t.name for t in chosen], **summary,
        "paper_values": paper_value_rows(techs),
        "frontier": pareto_frontier({n: (techs[n].get("vga_ms_1t", math.nan),
                                         techs[n]["mean"].get("AP_small", math.nan))
                                     for n in ok}),
        "skipped": {n: t["reason"] for n, t in techs.items() if t["status"] == "skipped"},
        "failed": {n: t["error"] for n, t in techs.items() if t["status"] == "failed"},
        "data": {**facts, "root": str(root), "hash": dataset_hash(root), "val_images": n_val,
                 "notes": data_notes(facts, chosen)},
        "budget": {**first_budget, "budget_given": budget is not None,
                   "stage_two": dict(stage_budget or stage_two_budget(quick=quick)),
                   "seeds": seeds, "n_boot": n_boot, "vga_repeats": repeats},
        "speed": speeds,
        "provenance": provenance(seed=seeds[0], data_hash=dataset_hash(root), quick=quick,
                                 seconds=time.perf_counter() - t_start,
                                 torch_threads=torch.get_num_threads()),
    }


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


__all__ = ["Row", "TECHNIQUES", "NAMES", "KEYS", "SHOWN", "run", "select", "data_facts",
           "skip_reason", "is_cached", "missing_models", "paired_bootstrap",
           "percentile", "pareto_frontier", "compare", "outcome", "paper_rows",
           "finish", "regression", "preset_speed"]

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
UNCLEAR_TEXT = "no clear difference"
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
    overrides: tuple[tuple[str, object], ...] = ()  # (key, value) pairs on the preset
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
        return Technique(self.name, self.preset, overrides=self.overrides, recipe=self.recipe,
                         stage_two=self.stage_two, test=self.test, needs=self.needs)


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
    # the tiny_objects study's calibrated thresholds (studies.NWD_CALIBRATED, DOTD_CALIBRATED;
    # written out so that the command line's help does not import torch; a test checks them)
    Row("fpn + NWD", "11_tiny_objects", "preset", "fpn",
        (("matcher", "nwd"), ("nwd_pos", 0.89), ("nwd_neg", 0.84)), against="fpn",
        what="fpn with anchors assigned by the normalised Gaussian Wasserstein distance, "
        "thresholds calibrated to IoU's positives per face"),
    Row("fpn + DotD", "11_tiny_objects", "preset", "fpn",
        (("matcher", "dotd"), ("dotd_pos", 1.0), ("dotd_neg", 0.93)), against="fpn",
        what="fpn with anchors assigned by dot distance (centres only), thresholds "
        "calibrated to IoU's positives per face"),
    Row("fpn + sliced training", "11_tiny_objects", "recipe", "fpn",
        recipe="sliced training", against="fpn",
        what="fpn trained on tiles at original resolution half of the time (SAHI)"),
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
    return {**b, "overrides": {**b["overrides"], **dict(tech.overrides)},
            "recipe": _recipe(tech, size)}


def is_cached(tech: Row, root: str | os.PathLike, *, seed: int, quick: bool,
              budget: Mapping | None = None, stage_budget: Mapping | None = None) -> bool:
    """Whether the run cache already holds ``tech``'s model for ``seed`` (nothing trains).

    The key is ``sodlab.engine.experiment.plan``'s, the one ``run_technique`` trains under;
    a second stage also needs its base.
    """
    if tech.preset is None:
        return False  # SSDlite trains in the run, every time
    from sodlab.engine.experiment import is_cached_plan, plan
    from sodlab.engine.stage_two import stage_two_budget

    return is_cached_plan(plan(tech.technique, root, seed=seed,
                               budget=_budget(tech.preset, quick=quick, budget=budget),
                               stage_budget=dict(stage_budget or stage_two_budget(quick=quick))))


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


def vga_image(images: Sequence) -> "torch.Tensor":  # noqa: F821
    """The first validation image stretched to 640 x 480, ``[3, 480, 640]`` in [0, 1]."""
    from sodlab.tiling import resize_image

    return resize_image(images[0], (480, 640), antialias=True).clamp(0, 1)


# ----------------------------------------------------------------------------- statistics
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


def compare(ra: Mapping, rb: Mapping, key: str, *, a_name: str = "A",
            b_name: str = "B") -> dict:
    """B against A on ``key`` from their records per seed (``{seed: record}``): the per-seed
    differences, their mean, the paired interval and the paired verdict
    (``sodlab.metrics.verdict.paired_decide``)."""
    from sodlab.engine.study import paired_comparison

    lacking = [r["key"][:12] for r in (*ra.values(), *rb.values())
               if key not in r.get("samples", {})]
    if lacking:
        return {"key": key, "per_seed": {}, "delta": None, "diff_ci": None,
                "verdict": UNCLEAR_TEXT, "sentence": f"{b_name} against {a_name} on {key}: "
                f"not compared (records {', '.join(lacking)} keep no resamples of it)."}
    diffs, d, sentence = paired_comparison(ra, rb, key, a=a_name, b=b_name)
    return {"key": key, "per_seed": diffs,
            "delta": None if math.isnan(d.mean) else d.mean,
            "diff_ci": None if d.interval_diff is None else list(d.interval_diff),
            "verdict": d.verdict, "sentence": sentence}


def outcome(paper_direction: int, our_verdict: str) -> str:
    """What our verdict says about the paper's direction of change."""
    from sodlab.metrics.verdict import DOWN, UP

    if paper_direction == 0:
        return "no direction to compare"
    if our_verdict not in (UP, DOWN):
        return "no clear difference"
    same = (our_verdict == UP) == (paper_direction > 0)
    return "direction reproduced" if same else "not reproduced"


def paper_rows(techs: Mapping[str, dict], recs: Mapping[str, Mapping]) -> list[dict]:
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
                c = compare(recs[a], recs[b], key, a_name=a, b_name=b)
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
        _accuracy_marks(out, name, t, ref, marks)
        _latency_marks(out, name, t, ref, marks, same_machine=same_machine,
                       tolerance=tolerance)
    return out


def _accuracy_marks(out: dict, name: str, t: Mapping, ref: Mapping, marks: dict) -> None:
    """Each shown metric of the reference's seed: inside its interval ("held") or not."""
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


def _latency_marks(out: dict, name: str, t: Mapping, ref: Mapping, marks: dict, *,
                   same_machine: bool, tolerance: float) -> None:
    """VGA latencies within ``tolerance`` of the reference's, on the same CPU and threads."""
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
def finish(techs: dict[str, dict], recs: Mapping[str, Mapping]) -> dict:
    """The statistics over techniques, from each one's run records (``{name: {seed: rec}}``).

    Adds ``ci_seed``, ``ci`` (the first seed's 95 % interval over the resamples) and
    ``errors`` (TIDE, from the first seed's record) to every ``"ok"`` entry of ``techs`` (in
    place) and returns ``{"comparisons", "papers", "pr_curves"}``: each technique against
    its ``against`` (the paired rule), the papers' rows, and the best model's
    precision-recall curves.
    """
    from sodlab.engine.records import samples_of

    ok = [n for n, t in techs.items() if t.get("status") == "ok" and recs.get(n)]
    for n in ok:
        first = min(recs[n], key=str)
        rec = recs[n][first]
        techs[n]["ci_seed"] = int(first)
        techs[n]["ci"] = {k: percentile(samples_of(rec, k)) for k in rec["samples"]}
        tide = (rec.get("diagnostics") or {}).get("tide")
        if tide:
            techs[n]["errors"] = tide
    comparisons = {}
    for n in ok:
        a = techs[n].get("against")
        if a in ok:
            comparisons[n] = {"against": a, **{k: compare(recs[a], recs[n], k, a_name=a,
                                                          b_name=n) for k in SHOWN}}
    best = max(ok, key=lambda n: (techs[n].get("mean") or {}).get("AP_small") or -1.0,
               default=None)
    curves = None
    if best:
        pr = (recs[best][min(recs[best], key=str)].get("diagnostics") or {}).get("pr")
        curves = {"technique": best, "iou": pr["iou"], "recall":
                  [i / 100 for i in range(101)], "precision": pr["precision"]} if pr else None
    return {"comparisons": comparisons, "papers": paper_rows(techs, recs),
            "pr_curves": curves}


def record_of_dets(gt: dict, dets: list[dict], *, name: str, seed: int,
                   split_dir: Path | None = None) -> dict:
    """An in-memory record (never written) of detections that no Technique made (SSDlite).

    The same fixed resamples as every record on this validation split, so it pairs with
    them; ``split_dir`` lets it count false alarms on the embedded data's hard negatives.
    """
    from sodlab.engine.experiment import evaluation_extras
    from sodlab.engine.records import make_record
    from sodlab.metrics.coco import load_dets, load_gt

    g = load_gt(gt)
    d = load_dets(dets, g)
    per_image, diagnostics = evaluation_extras(split_dir, g, d) if split_dir else ({}, {})
    return make_record(key=f"{name}-seed{seed}", technique={"name": name},
                       budget={"max_steps": 0, "batch_size": 1}, seed=seed, mode="run",
                       data_hash="", gt=g, dets=d, provenance={}, per_image=per_image,
                       diagnostics=diagnostics)


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


def _technique_runs(tech: Row, root: Path, entry: dict, *, seeds: Sequence[int], mode: str,
                    budget: Mapping | None, stage_budget: Mapping | None,
                    progress: bool) -> dict:
    """``{seed: record}`` of a detector row (trained only where it has no record)."""
    from sodlab.engine.experiment import run_technique

    recs = {}
    for s in seeds:
        rec = run_technique(tech.technique, root, seed=s, mode=mode, budget=budget,
                            stage_budget=stage_budget, progress=progress)
        entry["train"][str(s)] = {"images_seen": rec["budget"]["images_seen"],
                                  "seconds": rec.get("train_seconds"),
                                  "cached": rec.get("from_record", False), "key": rec["key"]}
        entry["seeds"][str(s)] = _seed_row(rec)
        recs[s] = rec
    return recs


def _seed_row(rec: Mapping) -> dict:
    row = {k: float(rec["metrics"][k]) for k in KEYS}
    if rec.get("test_seconds_per_image") is not None:
        row["val_ms_per_image"] = 1000.0 * rec["test_seconds_per_image"]
    if rec["metrics"].get(HN_KEY) is not None:
        row[HN_KEY] = float(rec["metrics"][HN_KEY])
    return row


def _ssdlite_runs(root: Path, entry: dict, gt: dict, *, seeds: Sequence[int], secs: float,
                  progress: bool) -> tuple[dict, object]:
    """``{seed: record}`` of SSDlite trained in the run, and the first seed's model."""
    from sodlab.bench.train_speed import evaluate_ssdlite, train_ssdlite
    from sodlab.data.dataset import DetectionDataset

    cat_ids = DetectionDataset(root / "train").cat_ids  # its labels' ids
    recs, first = {}, None
    for s in seeds:
        model, stats = train_ssdlite(root, max_seconds=secs, seed=s, progress=progress)
        entry["train"][str(s)] = {**stats, "cached": False, "budget_s": secs}
        fn = _row_predict_fn(BY_NAME["SSDlite"], model, None)
        t0 = time.perf_counter()
        dets = _predict_split(fn, root / "val", cat_ids, progress=progress)
        rec = record_of_dets(gt, dets, name="SSDlite", seed=s, split_dir=root / "val")
        rec["test_seconds_per_image"] = (time.perf_counter() - t0) / max(len(gt["images"]), 1)
        entry["seeds"][str(s)] = _seed_row(rec)
        recs[s] = rec
        if first is None:  # the train_speed path, as a cross-check
            first = model
            entry["evaluate_ssdlite_AP"] = float(evaluate_ssdlite(model, root / "val")["AP"])
    return recs, first


def _predict_split(fn, split_dir: Path, cat_ids, *, progress: bool) -> list[dict]:
    from sodlab.engine.experiment import predict_split_with

    return predict_split_with(fn, split_dir, cat_ids, progress=progress)[0]


def _latency(tech: Row, entry: dict, rec: Mapping | None, model, vga, *, repeats: int) -> None:
    """VGA latency on 1 and 2 threads of the row's own test path, with trained weights.

    A detector row loads its checkpoint from the run cache; a record from another machine
    without one gets a note instead (latency belongs to this CPU anyway).
    """
    from sodlab.bench.train_speed import vga_latency_ms

    if model is None:
        from sodlab.engine.cache import cached_path
        from sodlab.engine.predict import load_detector
        from sodlab.engine.stage_two import load_stage_two

        run_dir = cached_path(rec["key"]) if rec else None
        if run_dir is None:
            entry["notes"].append("no trained checkpoint on this machine: latency not measured")
            return
        pred = (load_stage_two if tech.stage_two else load_detector)(run_dir / "best.pt")
        model, size = pred.model.eval(), pred.input_size
    else:
        size = None
    fn = _row_predict_fn(tech, model, size)
    lat = {t: vga_latency_ms(lambda x, fn=fn: fn([x]), vga, threads=t, repeats=repeats)
           for t in (1, 2)}
    entry.update(vga_ms_1t=lat[1], vga_ms_2t=lat[2], vga_fps_1t=1000.0 / lat[1])


def _row(tech: Row, root: Path, gt: dict, facts: Mapping, vga, techs: dict, *, quick: bool,
         seeds: Sequence[int], budget, stage_budget, ssdlite_seconds, repeats: int,
         progress: bool) -> tuple[dict, dict]:
    """One row's entry and records (``status`` skipped or failed with the reason)."""
    entry = {"status": "ok", **{k: v for k, v in asdict(tech).items() if k != "name"},
             "seeds": {}, "train": {}, "notes": []}
    recs: dict = {}
    try:
        size = input_size_of(tech.preset, root, quick=quick, budget=budget) \
            if tech.preset else None
        why = skip_reason(tech, facts, input_size=size, root=root)
        if why:
            entry.update(status="skipped", reason=why)
            return entry, recs
        entry["input_size"] = size if size is not None else 320
        model = None
        if tech.test == "ssdlite":
            secs = _ssdlite_seconds(quick, techs.get("fpn"), ssdlite_seconds)
            recs, model = _ssdlite_runs(root, entry, gt, seeds=seeds, secs=secs,
                                        progress=progress)
        else:
            recs = _technique_runs(tech, root, entry, seeds=seeds,
                                   mode="quick" if quick else "full", budget=budget,
                                   stage_budget=stage_budget, progress=progress)
        first = recs[seeds[0]]
        _latency(tech, entry, first, model, vga, repeats=repeats)
        tr = entry["train"][str(seeds[0])]
        if (tech.test == "ssdlite" or tech.stage_two is not None) and tr.get("seconds") \
                and tr.get("images_seen"):
            entry["train_images_per_s"] = tr["images_seen"] / tr["seconds"]
        entry["mean"] = {k: _mean([r[k] for r in entry["seeds"].values() if k in r])
                         for k in (*KEYS, HN_KEY, "val_ms_per_image")
                         if any(k in r for r in entry["seeds"].values())}
    except Exception as exc:  # one broken technique must not hide the others
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        recs = {}
    return entry, recs


def _speeds(techs: dict, ok: list[str], root: Path, *, quick: bool, seed: int,
            progress: bool) -> dict:
    """Per preset, ``measure_preset`` in a subprocess; copied into the rows that train it."""
    from tqdm.auto import tqdm

    kw = (dict(steps=2, warmup=1, repeats=2, batch_size=4) if quick else
          dict(steps=10, warmup=2, repeats=10, batch_size=8))
    presets = sorted({BY_NAME[n].preset for n in ok if BY_NAME[n].preset})
    speeds = {p: preset_speed(p, root, seed=seed, **kw)
              for p in tqdm(presets, disable=not progress, desc="speed")}
    for n in ok:
        if BY_NAME[n].stage_two is not None:
            continue  # its training is the head's on a frozen base, not the preset's
        sp = speeds.get(BY_NAME[n].preset) or {}
        if "error" in sp:
            techs[n]["notes"].append(f"measure_preset failed: {sp['error']}")
        elif sp:
            techs[n]["speed"] = {k: sp.get(k) for k in SPEED_KEYS}
            techs[n].setdefault("train_images_per_s", sp.get("train_images_per_s"))
    return speeds


def run(*, quick: bool = True, progress: bool = False,
        data_root: str | os.PathLike | None = None,
        techniques: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
        budget: Mapping | None = None, stage_budget: Mapping | None = None,
        speed: bool = True, repeats: int | None = None,
        ssdlite_seconds: float | None = None) -> dict:
    """Every technique from its run records (trained only where missing), compared; one dict.

    ``techniques``: names from ``NAMES`` (default: all). ``budget``: ``{"max_steps",
    "batch_size", "overrides"}`` for every preset instead of the mode's (tests use a tiny
    one); ``stage_budget`` the same for second stages. With every record present (full mode:
    ``results/runs/``) nothing trains: the statistics come from the records' fixed
    resamples. ``speed``: per-preset ``measure_preset`` subprocesses. ``repeats``: VGA
    latency repeats (quick 3, full 10), measured where the trained checkpoint is in this
    machine's run cache. ``ssdlite_seconds``: SSDlite's wall-clock budget (default: what
    fpn's training took, at most 30 s in quick mode); SSDlite trains in the run every time.
    """
    from tqdm.auto import tqdm

    from sodlab.data.coco import load_coco
    from sodlab.data.dataset import DetectionDataset

    t_start = time.perf_counter()
    if data_root is None:
        from sodlab.data import ensure_dataset

        data_root = ensure_dataset("quick" if quick else "full", 0, progress=progress)
    root = Path(data_root)
    chosen = select(techniques)
    seeds = [int(s) for s in seeds] if seeds is not None else ([0] if quick else [0, 1, 2])
    repeats = int(repeats) if repeats is not None else (3 if quick else 10)
    facts = data_facts(root, progress=progress)
    facts.pop("hard_negative_regions")
    gt = load_coco(root / "val")
    val = DetectionDataset(root / "val")
    vga = vga_image([val[0][0]])
    techs: dict[str, dict] = {}
    recs: dict[str, dict] = {}
    bar = tqdm(chosen, disable=not progress, desc="techniques")
    for tech in bar:
        bar.set_postfix_str(tech.name)
        techs[tech.name], recs[tech.name] = _row(
            tech, root, gt, facts, vga, techs, quick=quick, seeds=seeds, budget=budget,
            stage_budget=stage_budget, ssdlite_seconds=ssdlite_seconds, repeats=repeats,
            progress=progress)
    bar.close()
    ok = [n for n, t in techs.items() if t["status"] == "ok"]
    summary = finish(techs, recs)
    speeds = _speeds(techs, ok, root, quick=quick, seed=seeds[0], progress=progress) \
        if speed else {}
    return _result(techs, summary, chosen, speeds, facts, root, gt, quick=quick, seeds=seeds,
                   budget=budget, stage_budget=stage_budget, repeats=repeats, recs=recs,
                   seconds=time.perf_counter() - t_start)


def _result(techs: dict, summary: dict, chosen: Sequence[Row], speeds: dict, facts: Mapping,
            root: Path, gt: dict, *, quick: bool, seeds: Sequence[int], budget, stage_budget,
            repeats: int, recs: Mapping, seconds: float) -> dict:
    """The suite's result dict (the page and notebook 10 read it)."""
    import torch

    from sodlab.data.coco import dataset_hash
    from sodlab.engine.stage_two import stage_two_budget
    from sodlab.provenance import provenance

    ok = [n for n, t in techs.items() if t["status"] == "ok"]
    return {
        "techniques": techs, "order": [t.name for t in chosen], **summary,
        "paper_values": paper_value_rows(techs),
        "frontier": pareto_frontier({n: (techs[n].get("vga_ms_1t", math.nan),
                                         techs[n]["mean"].get("AP_small", math.nan))
                                     for n in ok}),
        "skipped": {n: t["reason"] for n, t in techs.items() if t["status"] == "skipped"},
        "failed": {n: t["error"] for n, t in techs.items() if t["status"] == "failed"},
        "data": {**facts, "root": str(root), "hash": dataset_hash(root),
                 "val_images": len(gt["images"]), "notes": data_notes(facts, chosen)},
        "budget": {**_budget("fpn", quick=quick, budget=budget),
                   "budget_given": budget is not None,
                   "stage_two": dict(stage_budget or stage_two_budget(quick=quick)),
                   "seeds": list(seeds), "n_boot": _n_resamples(recs), "vga_repeats": repeats},
        "speed": speeds,
        "provenance": provenance(seed=seeds[0], data_hash=dataset_hash(root), quick=quick,
                                 seconds=seconds, torch_threads=torch.get_num_threads()),
    }


def _n_resamples(recs: Mapping) -> int | None:
    for by_seed in recs.values():
        for rec in by_seed.values():
            return int(rec["resamples"]["n"])
    return None


def _mean(values: list) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


__all__ = ["Row", "TECHNIQUES", "NAMES", "KEYS", "SHOWN", "run", "select", "data_facts",
           "skip_reason", "is_cached", "missing_models", "record_of_dets",
           "percentile", "pareto_frontier", "compare", "outcome", "paper_rows",
           "finish", "regression", "preset_speed"]

"""The result sections of the README and the docs, generated from the committed results.

Layer L4. ``README.md``, ``docs/design.md`` and ``docs/methods.md`` hold sections between
``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->`` markers (``FILES`` lists
which file holds which); ``render(name)`` writes each from ``results/``, so no number of
ours is typed by hand:

- ``benchmarks`` (README's "The benchmark"): one item per benchmark of
  ``sodlab.bench.BENCHMARKS``, its key facts as ratios where it measures side by side, each
  with its file and the provenance's mode, date, threads and CPU; ``render_benchmark_results``
  reads ``results/bench_NAME.json`` as ``sodlab bench --only NAME --out ...`` writes it
  (``{"benchmarks": {NAME: result}, "provenance": ...}``), a bare result file, or any
  ``results/bench_*.json`` holding NAME; ``train_speed`` adds the committed runs beside it
  (fast path, batched matching, SSDlite) and ``quality`` reads ``results/quality.json``. A
  benchmark no file holds reads "not committed yet" with the command that makes it;
- ``curve``: the learning curve (``results/budget_curve.json``): AP_small per preset and
  budget multiple, the multiple the full budget was set from, the full budget in force;
- ``studies``: each notebook's study (``results/studies/NAME.json``) at the full budget: one
  line per comparison on AP_small with its paired difference and verdict, or what is
  still to run;
- ``old_results``: the notebooks' results of the earlier budget, converted to studies
  (``results/studies/NAME-3200.json``): each notebook's headline numbers (the keys its
  ``record(headline=...)`` names, kept in the study's ``extras["headline"]``);
- ``ours_*`` (``docs/methods.md``, after the paper tables): ``OURS`` declares one per table
  that sets our numbers beside a paper's. ``render_ours`` writes a study's comparisons on
  one metric (B against A, the paired difference, its 95 % interval, the verdict) and the
  techniques' means when ``results/studies/NAME.json`` exists; otherwise the command that
  makes it, then the same comparisons from the study at the earlier budget
  (``results/studies/NAME-3200.json``) under the older unpaired rule. Either way it adds the
  section's named facts from that file (its techniques' numbers, and its ``extras``: numbers
  a study does not compare, such as receptive fields).
  PyramidBox has three: the ablation row by row on AP_tiny with every metric's means
  (``ours_pyramidbox_rows``), the neck (``ours_pyramidbox_neck``: no neck against LFPN, per
  seed, and the receptive fields), and AP_small beside the paper (``ours_pyramidbox``).
  Three more read the committed benchmarks (``results/bench_*.json``): the sliding-window
  speed-up, the VGA frame rates, the cost of the multi-scale recipes; a benchmark no
  committed file holds is said to be not committed.

``python -m sodlab.bench.readme`` rewrites every section; ``--check`` exits 1 when a file
differs from what the results give (a test runs it). Taught nowhere: it keeps the docs true.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

from sodlab.errors import InputError

SECTIONS = ("benchmarks", "curve", "studies", "old_results")


def _results() -> Path:
    from sodlab.files import repo_root

    return repo_root() / "results"


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render_curve() -> str:
    from sodlab.bench.budget_curve import load_curve, sufficiency_sentences
    from sodlab.engine.budgets import FULL, images_seen

    curve = load_curve()
    if curve is None:
        return "No learning curve committed yet (`sodlab bench --full --only budget_curve`)."
    presets = sorted({r["preset"] for r in curve["rows"]})
    mults = sorted({r["multiple"] for r in curve["rows"]})
    by = {(r["preset"], r["multiple"]): r for r in curve["rows"]}
    lines = ["| images seen | " + " | ".join(f"{p} AP_small" for p in presets) + " |",
             "|---|" + "---|" * len(presets)]
    for m in mults:
        seen = next(r["images_seen"] for r in curve["rows"] if r["multiple"] == m)
        cells = [_fmt(by[(p, m)]["AP_small"]) if (p, m) in by else "—" for p in presets]
        lines.append(f"| {seen:,} ({m}×) | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {s}." for s in sufficiency_sentences(curve)]
    lines.append(f"- The full budget in force (`sodlab.engine.budgets.FULL`): "
                 f"{images_seen(FULL):,} images seen.")
    return "\n".join(lines)


def render_studies() -> str:
    from sodlab.bench.studies import STUDIES
    from sodlab.bench.study_view import load_study, seen_labels

    lines = []
    for name, st in STUDIES.items():
        res = load_study(name, partial=True)
        if res is None:
            lines.append(f"- `{st.notebook}`: not yet run at the full budget "
                         f"(`sodlab study run {name} --full`).")
            continue
        parts = [f"{c['b']} vs {c['a']} {_fmt(c['mean'])} ({c['verdict']})"
                 for c in res["comparisons"] if c["metric"] == "AP_small"]
        left = f"partial, {len(res['missing'])} runs to go; " if res.get("missing") else ""
        lines.append(f"- `{st.notebook}` ({left}{seen_labels(res)} images seen, "
                     f"AP_small, B − A): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def _earlier(study: str) -> tuple[str, dict | None]:
    """(file, result) of ``study`` at the earlier budget (``results/studies/NAME-3200.json``)."""
    from sodlab.bench.study_view import earlier_images, load_study

    images = earlier_images()
    return (f"results/studies/{study}-{images}.json", load_study(study, images=images))


def render_old_results() -> str:
    from sodlab.bench.studies import STUDIES

    lines = []
    for name, st in STUDIES.items():
        res = _earlier(name)[1]
        extras = (res or {}).get("extras") or {}
        if extras.get("headline"):
            vals = "; ".join(f"{k} {_fmt(v)}" for k, v in extras["headline"].items())
            lines.append(f"- `{st.notebook}` ({_earlier_seen(extras)}): {vals}.")
    return "\n".join(lines) or "No committed notebook results."


# ----------------------------------------------------------------- docs/methods.md: ours

class Ours(NamedTuple):
    """One "ours" section of docs/methods.md: a study's comparisons beside a paper table.

    ``only``: a regular expression searched in each comparison's B (the study's technique
    name); "" shows them all. ``facts``: ``(label, keys)`` pairs, each key the flattened
    path of a number in the study's file at the earlier budget: ``techniques.NAME.mean.METRIC``,
    ``techniques.NAME.seeds.SEED.METRIC`` or ``extras.KEY...``.
    """

    study: str
    only: str = ""
    metric: str = "AP_small"
    facts: tuple[tuple[str, tuple[str, ...]], ...] = ()


_SLICING = ("full image", "tiles 1x, nms", "tiles 2x up, nms", "tiles 1x, merge",
            "tiles 2x up, merge")
_RN = ("RoI head", "RoI head + soft-NMS", "RoI head + learned NMS", "relation",
       "relation + soft-NMS", "relation + learned NMS")
_SOFT = ("RoI head", "RoI head + soft-NMS", "relation + soft-NMS")
_PB = ("s3fd", "+ LFPN", "+ PyramidAnchors", "+ CPM", "pyramidbox", "pyramidbox + DAS")
_NECKS = ("plain (s3fd)", "LFPN from stride 32", "top-down from the top (stride 128)")


def _means(names, metric: str) -> tuple[str, ...]:
    """The fact keys of techniques ``names``' means on ``metric``."""
    return tuple(f"techniques.{n}.mean.{metric}" for n in names)


def _extras(key: str, names) -> tuple[str, ...]:
    """The fact keys ``extras.KEY.NAME`` of each of ``names``."""
    return tuple(f"extras.{key}.{n}" for n in names)


def _pb_row_fact(label: str, metric: str) -> tuple[str, tuple[str, ...]]:
    """PyramidBox's ablation rows on one metric, mean of the seeds."""
    return (f"{label}, mean of the seeds: " + " / ".join(_PB), _means(_PB, metric))


def _pb_seed_fact(label: str, row: str) -> tuple[str, tuple[str, ...]]:
    return (f"AP_small of seeds 0 / 1 / 2, {label}",
            tuple(f"techniques.{row}.seeds.{seed}.AP_small" for seed in (0, 1, 2)))

# docs/methods.md's "ours" sections of a study, by section name.
OURS: dict[str, Ours] = {
    "ours_augmentation": Ours("augmentation"),
    "ours_fpn": Ours("fpn"),
    "ours_ssh": Ours("ssh", facts=(
        ("theoretical receptive field of M1 / M2 / M3, px",
         _extras("ssh_rf_px", ("M1", "M2", "M3"))),
        ("side of the square holding 95 % of M1's effective receptive field, untrained / "
         "trained, px", _extras("erf95_side_px", ("untrained/M1", "trained/M1"))))),
    "ours_snip": Ours("snip_sniper", only=r"^(SNIP|MST)\b"),
    "ours_sniper": Ours("snip_sniper", only=r"^SNIPER\b", facts=(
        ("pixels processed in an epoch against single-scale training, SNIPER",
         _extras("pixels_vs_single", ("sniper",))),)),
    "ours_sliced_inference": Ours("snip_sniper", only=r"^sliced", facts=(
        ("AP_small: " + " / ".join(_SLICING),
         _extras("slicing", (f"{k}.AP_small" for k in _SLICING))),
        ("ms per image, same order", _extras("slicing", (f"{k}.ms/img" for k in _SLICING))))),
    "ours_faceboxes": Ours("dense_anchors", only=r"^faceboxes", facts=(
        ("share of the faces under 16 px with no anchor at IoU 0.35, faceboxes",
         _extras("unmatched_share_tiny", ("faceboxes (0.35)",))),)),
    "ours_s3fd": Ours("dense_anchors", only=r"^s3fd", facts=(
        ("share of the faces under 16 px with no matched anchor, s3fd at IoU 0.5 / 0.35 / "
         "0.35 + compensation", _extras("unmatched_share_tiny", (
             f"s3fd ({k})" for k in ("0.5", "0.35", "0.35 + compensation")))),)),
    "ours_perceptual_gan": Ours("perceptual_gan"),
    "ours_pyramidbox_rows": Ours("pyramidbox", metric="AP_tiny", facts=(
        _pb_row_fact("AP", "AP"), _pb_row_fact("AP_small", "AP_small"),
        _pb_row_fact("AP_tiny", "AP_tiny"), _pb_row_fact("R50_tiny", "R50_tiny"),
        _pb_row_fact("hard-negative false alarms per image", "hn_fp_per_image"),
        ("median face side after the training resize, px: ResizeLongest / "
         "data-anchor-sampling", _extras("das_face_side_median_px",
                                         ("ResizeLongest", "data-anchor-sampling"))))),
    "ours_pyramidbox_neck": Ours("pyramidbox", only=r"^\+ LFPN( \(sum\))?$", facts=(
        _pb_seed_fact("no neck (`s3fd`)", "s3fd"),
        _pb_seed_fact("LFPN merging by product, the paper's (`+ LFPN`)", "+ LFPN"),
        ("AP_tiny, mean of the seeds, no neck / LFPN", _means(("s3fd", "+ LFPN"), "AP_tiny")),
        ("theoretical receptive field at stride 4, px: " + " / ".join(_NECKS),
         _extras("rf_px", (f"{k}.4" for k in _NECKS))),
        ("side of the square holding 95 % of the effective receptive field at stride 4, "
         "untrained, px, same order", _extras("erf95_p4_px", _NECKS)))),
    "ours_pyramidbox": Ours("pyramidbox"),
    "ours_relation_networks": Ours("relation_networks", facts=(
        ("AP_small, mean of the seeds, with soft-NMS (a post-processing the study does not "
         "declare): " + " / ".join(_SOFT), _means(_SOFT, "AP_small")),
        ("duplicates per image: " + " / ".join(_RN), _means(_RN, "duplicates_per_image")))),
    "ours_tiny_objects": Ours("tiny_objects"),
    "ours_wider": Ours("dense_anchors", metric="AP50", facts=(
        ("AP50: fpn / s3fd / faceboxes", _means(("fpn", "s3fd", "faceboxes"), "AP50")),)),
}

_OLD_RULE = ("older unpaired rule: every seed agrees and the two techniques' own 95 % "
             "intervals are apart")


def _signed(x) -> str:
    """``+0.012`` / ``−0.012`` (a typographic minus; ``0.000`` when it rounds to zero)."""
    if x is None:
        return "—"
    return "0.000" if abs(x) < 5e-4 else f"{x:+.3f}".replace("-", "−")


def _value(x) -> str:
    """A fact's number: whole floats (pixels, counts) without decimals."""
    return _fmt(int(x)) if isinstance(x, float) and x.is_integer() else _fmt(x)


def _shown(spec: Ours, b: str) -> bool:
    return not spec.only or re.search(spec.only, b) is not None


def _study_lines(res: dict, spec: Ours) -> list[str]:
    """A full-budget study's comparisons on ``spec.metric`` as a table, then the means (a
    partial study says so and what it still lacks)."""
    from sodlab.bench.study_view import partial_line, seen_labels

    m = spec.metric
    comps = [c for c in res["comparisons"] if c["metric"] == m and _shown(spec, c["b"])]
    names = [n for n in res["techniques"] if any(n in (c["a"], c["b"]) for c in comps)]
    techs = [res["techniques"][n] for n in names]
    seen = seen_labels(res, names)
    seeds = " / ".join(str(s) for s in sorted({len(t["seeds"]) for t in techs}))
    mode = "full budget" if res.get("mode") == "full" else f"{res.get('mode')} mode"
    file = f"`results/studies/{res['study']}.json`"
    if res.get("missing"):
        file = f"`results/studies/{res['study']}.partial.json`; {partial_line(res)}"
    if not comps:
        return [f"Ours, {mode} ({file}): no comparison on {m} recorded yet."]
    lines = [f"Ours, {mode} ({seen} images seen, {seeds} seeds, paired rule), {file}:", "",
             f"| B vs A | mean B − A, {m} | paired 95 % interval | verdict |", "|---|---|---|---|"]
    for c in comps:
        iv = c.get("interval")
        ivs = "—" if not iv else f"{_signed(iv[0])} to {_signed(iv[1])}"
        lines.append(f"| {c['b']} vs {c['a']} | {_signed(c.get('mean'))} | {ivs} | "
                     f"{c['verdict']} |")
    means = [f"{n} {_fmt(t['mean'].get(m))}" for n, t in zip(names, techs)]
    return lines + ["", f"Mean {m} over the seeds: " + ", ".join(means) + "."]


def _steps_seen(budget: dict | None) -> int | None:
    b = budget or {}
    if b.get("images_seen"):
        return b["images_seen"]
    steps, batch = b.get("steps", b.get("max_steps")), b.get("batch", b.get("batch_size"))
    return steps * batch if steps and batch else None


def _earlier_seen(extras: dict) -> str:
    """The images seen at the earlier budget, as the notebook's run recorded its budget
    (the converted study's ``extras``)."""
    budget = extras.get("budget") or {}
    base = budget.get("base") or extras.get("base_budget")
    if base:
        stage = extras.get("stage_two_budget") or budget
        return (f"{_fmt(_steps_seen(base))} base + {_fmt(_steps_seen(stage))} second-stage "
                f"images seen, {len(extras.get('seeds') or budget.get('seeds') or [])} seeds")
    seen = _steps_seen(budget)
    seeds = extras.get("seeds") or budget.get("seeds")
    n = len(seeds) if isinstance(seeds, list) else 1 if "seed" in budget else None
    return ((f"{seen:,} images seen" if seen else "images seen not recorded")
            + (f", {n} seed{'s' if n != 1 else ''}" if n else ""))


def _earlier_mean(c: dict, techniques: dict, side: str) -> float | None:
    """Technique ``c[side]``'s mean on the comparison's metric over the seeds it compares."""
    k, t = c["metric"], techniques[c[side]]
    other = techniques[c["b" if side == "a" else "a"]]["seeds"]
    vals = [m[k] for s, m in t["seeds"].items()
            if s in c["per_seed"] and k in m and k in other.get(s, {})]
    return sum(vals) / len(vals) if vals else t["mean"].get(k)


def _earlier_row(c: dict, techniques: dict) -> str:
    """One earlier-budget comparison as a table row: A, B, B − A per seed, the verdict."""
    diffs = " / ".join(_signed(d) for d in c["per_seed"].values()) or "—"
    return (f"| {c['b']} vs {c['a']} | {_fmt(_earlier_mean(c, techniques, 'a'))} | "
            f"{_fmt(_earlier_mean(c, techniques, 'b'))} | {diffs} | {c['verdict']} |")


def _earlier_lines(spec: Ours, file: str, res: dict | None) -> list[str]:
    """The earlier budget's comparisons on ``spec.metric`` (``file``, the study ``res``)."""
    if res is None:
        return ["No earlier-budget result is committed either."]
    comps = [c for c in res["comparisons"]
             if c["metric"] == spec.metric and _shown(spec, c["b"])]
    if not comps:
        return [f"The earlier budget (`{file}`) holds no comparison on {spec.metric} for "
                f"this table."]
    head = (f"The earlier budget ({_earlier_seen(res.get('extras') or {})}, `{file}`), "
            f"{_OLD_RULE}:")
    return [head, "", f"| B vs A | A, {spec.metric} | B | B − A per seed | verdict |",
            "|---|---|---|---|---|", *(_earlier_row(c, res["techniques"]) for c in comps)]


def _fact_lines(spec: Ours, file: str, res: dict | None) -> list[str]:
    """The section's named facts from the earlier-budget study (``Ours.facts``)."""
    if not spec.facts:
        return []
    from sodlab.bench.report import flatten

    flat = flatten(res) if res is not None else {}
    where = (f"`{file}`, the earlier budget ({_earlier_seen(res.get('extras') or {})})"
             if res is not None else f"`{file}`: not committed")
    lines = [f"From {where}:", ""]
    for label, keys in spec.facts:
        vals = [_value(flat[k]) if k in flat else "not committed" for k in keys]
        lines.append(f"- {label}: {' / '.join(vals)}.")
    return lines


def render_ours(spec: Ours) -> str:
    """One "ours" section of docs/methods.md (``OURS``): the study at the full budget, or the
    command to run it and the earlier budget's numbers; then the section's facts."""
    from sodlab.bench.study_view import load_study

    file, earlier = _earlier(spec.study)
    res = load_study(spec.study, partial=True)
    if res is not None and res.get("missing"):
        lines = [*_study_lines(res, spec), "", *_earlier_lines(spec, file, earlier)]
    elif res is not None:
        lines = _study_lines(res, spec)
    else:
        lines = [f"Ours: not yet run at the full budget (`sodlab study run {spec.study} "
                 f"--full`).", "", *_earlier_lines(spec, file, earlier)]
    facts = _fact_lines(spec, file, earlier)
    return "\n".join(lines + ([""] + facts if facts else []))


# ------------------------------------------------------------ docs/methods.md: benchmarks

def _bench(name: str) -> tuple[str, dict, dict] | None:
    """(file name, result, provenance) of benchmark ``name`` in the committed
    ``results/bench_*.json`` (``bench_<name>.json`` first), or None when none holds it."""
    paths = sorted(_results().glob("bench_*.json"),
                   key=lambda p: (p.name != f"bench_{name}.json", p.name))
    for p in paths:
        obj = json.loads(p.read_text())
        if not isinstance(obj, dict):
            continue
        res = (obj.get("benchmarks") or {}).get(name)
        if res is None and p.name == f"bench_{name}.json" and "benchmarks" not in obj:
            res = {k: v for k, v in obj.items() if k != "provenance"}  # a bare result
        if isinstance(res, dict):
            return p.name, res, obj.get("provenance") or res.get("provenance") or {}
    return None


def _not_committed(name: str) -> str:
    return (f"Ours: not committed (no `results/bench_*.json` holds the `{name}` benchmark; "
            f"`sodlab bench --full --only {name}` measures it).")


def _mode(prov: dict) -> str:
    return f"{prov.get('mode') or 'unknown'} mode"


def render_sliding_speed() -> str:
    """Notebook 01's speed-up of the fully-convolutional pass over crop-and-classify."""
    found = _bench("sliding")
    if found is None:
        return _not_committed("sliding")
    name, b, prov = found
    h, w = b["image"]
    return (f"Ours (`results/{name}`, `sliding`, {_mode(prov)}, {b.get('threads')} threads): "
            f"the fully-convolutional pass scores {_fmt(b['fcn_windows_per_s'])} windows/s, "
            f"crop-and-classify {_fmt(b['crop_windows_per_s'])}: {b['speedup']:.1f}× "
            f"(overlap bound {b['window']}²/{b['stride']}² = {b['overlap_ratio']:g}×; the "
            f"network's multiply-add bound {_fmt(b.get('mac_bound'))}×), {w} × {h} image, "
            f"{b['window']} px windows, stride {b['stride']}, the same classifier and windows.")


def render_vga_speed() -> str:
    """Frames/s on one VGA image, one thread, per preset (the ``train_speed`` benchmark)."""
    found = _bench("train_speed")
    if found is None:
        return _not_committed("train_speed")
    name, b, prov = found
    presets = b.get("presets") or {}
    fps = [f"`{p}` {1000 / presets[p]['vga_ms_1t']:.1f}" for p in ("faceboxes", "fpn", "s3fd")
           if (presets.get(p) or {}).get("vga_ms_1t")]
    if not fps:
        return _not_committed("train_speed") + " Its file holds no VGA timing."
    return (f"Ours (`results/{name}`, `train_speed`, {_mode(prov)}): VGA frames/s on one "
            f"thread (median forward and post-processing of one image): {', '.join(fps)}.")


def render_recipe_cost() -> str:
    """The multi-scale recipes' cost against single scale (the ``recipe_speed`` benchmark)."""
    found = _bench("recipe_speed")
    if found is None:
        return _not_committed("recipe_speed")
    name, b, prov = found
    step, pix = b.get("train_step_vs_single") or {}, b.get("train_pixels_vs_single") or {}
    cost = "; ".join(f"{k}: step time {v:.2f}×, pixels {pix.get(k, float('nan')):.2f}×"
                     for k, v in step.items() if k != "single scale")
    test = b.get("test_multi_vs_single")
    return (f"Cost (`results/{name}`, `recipe_speed`, {_mode(prov)}, {b.get('precision')}, "
            f"{b.get('threads')} threads, {b.get('input_size')} px images, {b.get('chip')} px "
            f"chips), per training step against single scale: {cost}. The three-scale test: "
            f"{'not committed' if test is None else f'{test:.2f}×'} a single-scale test's time.")


# --------------------------------------------------------------- README.md: benchmarks

def _where(fname: str, prov: dict, notes: dict | None = None) -> str:
    """``results/<fname>`` and the provenance's mode, date, threads and CPU (when recorded)."""
    parts = [f"`results/{fname}`", _mode(prov)]
    if prov.get("time"):
        parts.append(str(prov["time"])[:10])
    if prov.get("threads"):
        parts.append(f"{prov['threads']} thread{'s' if prov['threads'] != 1 else ''}")
    if prov.get("cpu"):
        cores = prov.get("cpu_count")
        parts.append(f"{prov['cpu']}{f' ({cores} cores)' if cores else ''}")
    if (notes or {}).get("machine"):
        parts.append(f"machine {notes['machine']}")
    return ", ".join(parts)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _times(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def _eval_speed_line(b: dict) -> str:
    if b.get("speedup") is None:
        return f"no pycocotools comparison recorded ({b.get('note') or 'no ratio'})"
    diff = b.get("max_abs_diff")
    return (f"faster-coco-eval {_times(b['speedup'])} as fast as pycocotools on the same "
            f"{b['n_images']:,} images and {b['n_dets']:,} detections; largest difference of "
            f"any metric {'—' if diff is None else f'{diff:.1g}'}")


def _presets_vs_baseline(b: dict) -> str:
    """Each preset's training images/s over ``baseline``'s, from one ``train_speed`` run."""
    presets = b.get("presets") or {}
    base = (presets.get("baseline") or {}).get("train_images_per_s")
    rel = [f"`{p}` {_times(_ratio(r.get('train_images_per_s'), base))}"
           for p, r in presets.items() if p != "baseline"]
    return ("training images/s against `baseline`'s in the same run (batch "
            f"{next(iter(presets.values()), {}).get('batch_size')}): "
            + ", ".join(rel)) if base and rel else "no `baseline` rate to compare with"


def _vga_vs(row: dict, ssd: dict) -> str | None:
    """One model's VGA frames/s on one thread over SSDlite's, fp32 and the fast path."""
    fp32 = _ratio(row.get("vga_fps_1t"), ssd.get("vga_fps_1t"))
    if fp32 is None:
        return None
    fast = _ratio(row.get("vga_fps_1t_fast"), ssd.get("vga_fps_1t_fast"))
    if fast is None:
        return _times(fp32)
    return f"{_times(fp32)} in fp32, {_times(fast)} both in {row.get('fast_precision')}"


def _vs_ssdlite(rows: dict, budget) -> str:
    """Each model beside SSDlite, trained for the same seconds: AP_small, VGA frame rates."""
    ssd = rows.get("ssdlite320_mobilenet_v3") or {}
    ours = {k: v for k, v in rows.items()
            if isinstance(v, dict) and k != "ssdlite320_mobilenet_v3"}
    ap = " / ".join(f"`{k}` {_fmt(v.get('AP_small'))}" for k, v in ours.items())
    fps = [f"`{k}` {_vga_vs(v, ssd)}" for k, v in ours.items() if _vga_vs(v, ssd)]
    text = (f"against torchvision's SSDlite, {_value(budget)} s of training each from "
            f"scratch: AP_small {ap} vs SSDlite {_fmt(ssd.get('AP_small'))}")
    return text + (f"; VGA frames/s on one thread over SSDlite's: {', '.join(fps)}"
                   if fps else "")


def _fast_vs_fp32(presets: dict) -> str:
    """The fast path (bf16 + channels-last) over fp32, side by side, per preset."""
    parts = []
    for p, r in presets.items():
        vga = _ratio(r.get("vga_ms_1t"), r.get("vga_ms_1t_fast"))
        parts.append(f"`{p}` {_times(r.get('fast_vs_fp32'))} (end to end with data loading "
                     f"{_times(r.get('fast_vs_fp32_e2e'))}; VGA on one thread "
                     f"{_times(vga)} as fast)")
    return "; ".join(parts)


def _train_speed_lines() -> list[str]:
    """The ``train_speed`` benchmark and the committed runs beside it, one sub-item each."""
    lines = []
    found = _bench("train_speed")
    if found is not None:
        name, b, prov = found
        lines.append(f"{_presets_vs_baseline(b)} ({_where(name, prov)})")
        if b.get("vs_ssdlite"):
            vs = b["vs_ssdlite"]
            lines.append(f"{_vs_ssdlite(vs, vs.get('budget_s'))} ({_where(name, prov)})")
    found = _bench("train_speed_fast_path")
    if found is not None:
        name, b, prov = found
        lines.append(f"training images/s, the fast path over fp32 in one process: "
                     f"{_fast_vs_fp32(b.get('presets') or {})} "
                     f"({_where(name, prov, b.get('notes'))})")
    found = _bench("train_speed_batched_matching")
    if found is not None:
        name, b, _ = found
        runs = b.get("runs") or []
        each = [_fast_vs_fp32(r.get("presets") or {}) for r in runs]
        where = dict.fromkeys(_where(name, r.get("provenance") or {}, r.get("notes"))
                              for r in runs)
        lines.append(f"the same with anchor matching batched over a step's images, "
                     f"{len(runs)} runs: " + "; ".join(each) + f" ({'; '.join(where)})")
    for stem in ("vs_ssdlite_fast", "vs_ssdlite"):
        found = _bench(stem)
        if found is not None:
            name, b, prov = found
            rows = b.get("numbers") or b
            lines.append(f"{_vs_ssdlite(rows, rows.get('budget_s'))} ({_where(name, prov)})")
    return lines


def _step_speed_line(b: dict) -> str:
    """Each preset's train step over the yardstick's, and its three costliest operators."""
    parts = []
    for p, r in (b.get("presets") or {}).items():
        ops = sorted(r.get("operators") or [], key=lambda o: -o.get("share", 0))[:3]
        top = ", ".join(f"`{o['operator']}` {_pct(o.get('share'))}"
                        + (" (backward)" if o.get("backward") else "") for o in ops)
        dense = r.get("vs_dense_matching")
        saved = "" if dense is None else (f", {_times(dense)} the same steps with the dense "
                                          f"reference matching")
        parts.append(f"`{p}` {_times(r.get('vs_yardstick'))} the yardstick's images/s{saved} "
                     f"(largest operators: {top or 'none recorded'})")
    return (f"{b.get('precision')}, against {b.get('yardstick') or 'the yardstick'} in the "
            f"same process: " + "; ".join(parts))


def _data_path_line(b: dict) -> str:
    ratios = ", ".join(f"`{m}` {_times(v)}" for m, v in (b.get("vs_compute") or {}).items()
                       if m != "compute")
    return (f"training images/s with the engine's data path over in-memory batches "
            f"(`{b.get('preset')}`, {b.get('precision')}): {ratios}")


def _augment_speed_line(b: dict) -> str:
    met = "met" if b.get("meets_target") else "not met"
    return (f"copy-paste costs {_pct(b.get('copy_paste_share_of_step'))} of the "
            f"`{b.get('preset')}` training step per image alone, {_pct(b.get('copy_paste_context_share_of_step'))}"
            f" with context (target < {_pct(b.get('target_share'))}: {met}); "
            f"{_pct(b.get('copy_paste_share_of_baseline_step'))} / "
            f"{_pct(b.get('copy_paste_context_share_of_baseline_step'))} of the far smaller "
            f"`baseline` step; decoding the masks copy-paste needs "
            f"{_pct(b.get('masks_share_of_step'))} of the `{b.get('preset')}` step "
            f"({b.get('precision')}, batch {b.get('batch_size')}, {b.get('input_size')} px)")


def _recipe_speed_line(b: dict) -> str:
    step, pix = b.get("train_step_vs_single") or {}, b.get("train_pixels_vs_single") or {}
    pad = b.get("train_padding_share") or {}
    each = "; ".join(f"{k}: step {_times(v)}, pixels {_times(pix.get(k))}, padding "
                     f"{_pct(pad.get(k))}" for k, v in step.items() if k != "single scale")
    return (f"per training step against single scale (padding {_pct(pad.get('single scale'))})"
            f": {each}; the three-scale test {_times(b.get('test_multi_vs_single'))} a "
            f"single-scale test (`{b.get('preset')}`, {b.get('precision')}, "
            f"{b.get('input_size')} px)")


def _sliding_line(b: dict) -> str:
    return (f"the fully-convolutional pass scores {_times(b.get('speedup'))} the windows/s of "
            f"crop-and-classify (overlap bound {_times(b.get('overlap_ratio'))}, the network's "
            f"multiply-add bound {_times(b.get('mac_bound'))})")


def _precision_line(b: dict) -> str:
    fast = b.get("fast") or "fast"
    runs = b.get("runs") or {}

    def mean(prec: str):
        v = [r["AP_small"] for k, r in runs.items() if k.split("/")[0] == prec]
        return sum(v) / len(v) if v else None

    budget = b.get("budget") or {}
    return (f"`{b.get('preset')}`, {budget.get('max_steps')} steps × batch "
            f"{budget.get('batch_size')}, {len(b.get('seeds') or [])} seeds: mean AP_small {fast} "
            f"{_fmt(mean(fast))}, fp32 {_fmt(mean('fp32'))}: "
            f"{b.get('verdict_AP_small') or 'no verdict recorded'}")


def _quality_line() -> str | None:
    p = _results() / "quality.json"
    if not p.is_file():
        return None
    obj = json.loads(p.read_text())
    n = obj.get("numbers") or {}
    means = ", ".join(f"`{k}` {_fmt((v.get('mean') or {}).get('AP_small'))}"
                      for k, v in (n.get("presets") or {}).items())
    dirs = "; ".join(f"`{k}` " + ", ".join(f"{m} {d}" for m, d in v.items())
                     for k, v in (n.get("direction") or {}).items())
    return (f"mean AP_small {means}; against `{n.get('against')}`: {dirs} "
            f"({_where(p.name, obj.get('provenance') or {})})")


BENCH_LINES = {"eval_speed": _eval_speed_line, "step_speed": _step_speed_line,
               "data_path": _data_path_line, "sliding": _sliding_line,
               "augment_speed": _augment_speed_line, "recipe_speed": _recipe_speed_line,
               "precision": _precision_line}


def _bench_item(name: str) -> list[str]:
    """The README's item for benchmark ``name``: its facts and source, or not committed."""
    todo = f"not committed yet (`sodlab bench --full --only {name}`)"
    if name == "train_speed":
        subs = _train_speed_lines()
        if not subs:
            return [f"- `{name}`: {todo}."]
        return [f"- `{name}`:"] + [f"  - {s}." for s in subs]
    if name == "quality":
        line = _quality_line()
        return [f"- `{name}`: {line or todo}."]
    found = _bench(name)
    if found is None:
        return [f"- `{name}`: {todo}."]
    fname, b, prov = found
    render = BENCH_LINES.get(name)
    what = render(b) if render else "the report page `reports/bench.html` renders it"
    return [f"- `{name}`: {what} ({_where(fname, prov, b.get('notes'))})."]


def render_benchmark_results() -> str:
    """The README's measured results of every benchmark, in ``BENCHMARKS`` order."""
    from sodlab.bench import BENCHMARKS

    lines = []
    for name in BENCHMARKS:
        lines += _bench_item(name)
    return "\n".join(line.rstrip() for line in lines)


# docs/methods.md's sections, in the order the file holds them.
METHODS_SECTIONS = ("ours_sliding_speed", "ours_augmentation", "ours_fpn", "ours_ssh",
                    "ours_snip", "ours_sniper", "ours_recipe_cost", "ours_sliced_inference",
                    "ours_faceboxes", "ours_vga_speed", "ours_s3fd", "ours_perceptual_gan",
                    "ours_pyramidbox_rows", "ours_pyramidbox_neck", "ours_pyramidbox",
                    "ours_relation_networks", "ours_tiny_objects", "ours_wider")

RENDER = {"benchmarks": render_benchmark_results, "curve": render_curve,
          "studies": render_studies, "old_results": render_old_results,
          "ours_sliding_speed": render_sliding_speed, "ours_vga_speed": render_vga_speed,
          "ours_recipe_cost": render_recipe_cost,
          **{name: functools.partial(render_ours, spec) for name, spec in OURS.items()}}


def render(name: str) -> str:
    if name not in RENDER:
        raise InputError(f"unknown generated section {name!r}; known: {', '.join(RENDER)}")
    return RENDER[name]()


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- end generated: {name} -->)",
                      re.S)


# The files with generated sections, and the sections each must hold.
FILES = {"README.md": SECTIONS, "docs/design.md": ("curve",),
         "docs/methods.md": METHODS_SECTIONS}


def updated(text: str, sections: tuple[str, ...] = SECTIONS) -> str:
    """``text`` (a README or doc) with each of its generated ``sections`` rendered anew."""
    for name in sections:
        pat = _pattern(name)
        if not pat.search(text):
            raise InputError(f"no generated section {name!r} (markers "
                             f"'<!-- generated: {name} -->' ... '<!-- end generated: {name} -->')")
        body = render(name).rstrip("\n") + "\n"
        text = pat.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    return text


def refresh(argv: list[str] | None = None) -> int:
    from sodlab.files import repo_root

    args = list(sys.argv[1:] if argv is None else argv)
    stale = []
    for rel, sections in FILES.items():
        path = repo_root() / rel
        old = path.read_text()
        new = updated(old, sections)
        if new != old:
            stale.append(rel)
            if "--check" not in args:
                path.write_text(new)
    if "--check" in args and stale:
        print(f"{', '.join(stale)} out of date with results/: run python -m sodlab.bench.readme")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(refresh())


__all__ = ["SECTIONS", "METHODS_SECTIONS", "OURS", "Ours", "FILES", "render", "render_ours",
           "render_sliding_speed", "render_vga_speed", "render_recipe_cost",
           "render_benchmark_results", "BENCH_LINES", "updated", "refresh"]

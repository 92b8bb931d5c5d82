"""Benchmark ``budget_curve``: AP_small, AP_tiny and AP50 against images seen, from run records.

Layer L4. ``fpn`` and ``s3fd`` trained at 1x, 2x, 4x, 8x and 16x the old full budget (400
steps x 8 images at 384 px = 3,200 images seen), one seed, each with the same schedule
shape (warm-up then cosine over its own length), and the RoI head of notebooks 07 and 09
trained with its own (fixed) second-stage budget on each ``fpn`` base; a row's images
seen are its base's. Every point is a run record
(``sodlab.engine.experiment.run_technique``): a committed record trains nothing, so the
curve is assembled in minutes once its records exist, and a run cut off mid-curve keeps
every point it finished. Points run cheapest first, one preset after the other, so each
preset's curve fills from the left. ``results/budget_curve.json`` is what ``sodlab bench
--full --only budget_curve`` writes; notebook 03 and the benchmark report plot it, and
``sodlab.engine.budgets`` takes the full budget from it (``smallest_sufficient``).

Quick mode runs the same code on the quick dataset at 1/16 of the multiples' steps, so the
tests and a class can see it work; its numbers decide nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sodlab.errors import InputError

OLD_FULL = {"max_steps": 400, "batch_size": 8}   # the budget every verdict used until now
MULTIPLES = (1, 2, 4, 8, 16)
PRESETS = ("fpn", "s3fd")
ROI_ON = ("fpn",)            # the RoI head of notebooks 07 and 09, on each of these bases
KEYS = ("AP_small", "AP_tiny", "AP50")
QUICK_STEPS = 25                                   # 1x in quick mode: 25 steps x 8 images
SUFFICIENT = 0.9                                   # the new full budget: >= 90 % of 16x


def budget_at(multiple: int, *, quick: bool) -> dict:
    """``{"max_steps", "batch_size"}`` of ``multiple`` x the old full budget (quick: 1/16)."""
    if int(multiple) != multiple or multiple < 1:
        raise InputError(f"a budget multiple is a whole number >= 1, got {multiple!r}")
    base = QUICK_STEPS if quick else OLD_FULL["max_steps"]
    return {"max_steps": int(base * multiple), "batch_size": OLD_FULL["batch_size"]}


def curve_points(presets: Sequence[str] = PRESETS, multiples: Sequence[int] = MULTIPLES
                 ) -> list[tuple[str, int]]:
    """The (preset, multiple) points in run order: one preset's curve, cheapest first."""
    return [(p, int(m)) for p in presets for m in sorted(multiples)]


def smallest_sufficient(points: dict[int, float], *, share: float = SUFFICIENT,
                        lower: dict[int, float] | None = None) -> int | None:
    """The smallest multiple whose value is >= ``share`` x the value at the largest multiple.

    ``points`` maps a multiple to a metric (one preset). ``lower``: per multiple, the 2.5 %
    quantile over the validation resamples of value / top value (``share_lower``); when
    given, the multiple must reach ``share`` there too, so a multiple that reaches the share
    only on half of the possible validation sets does not count. None when empty.
    """
    if not points:
        return None
    top = max(points)
    target = share * points[top]
    ok = [m for m, v in points.items() if v is not None and v >= target
          and (lower is None or (lower.get(m) is not None and lower[m] >= share))]
    return min(ok) if ok else top


def share_lower(records: dict[int, dict], key: str = "AP_small") -> dict[int, float]:
    """Per multiple, the 2.5 % quantile over the records' shared resamples of the ratio of its
    ``key`` to the largest multiple's (one seed, the same validation resamples: paired)."""
    import numpy as np

    from sodlab.engine.records import samples_of

    top = samples_of(records[max(records)], key)
    out = {}
    for m, rec in records.items():
        ratio = samples_of(rec, key) / top
        ratio = ratio[np.isfinite(ratio)]
        out[m] = float(np.quantile(ratio, 0.025)) if ratio.size else None
    return out


def curve_technique(preset: str):
    """The technique the learning curve trains for ``preset`` (the preset as it is)."""
    from sodlab.engine.experiment import Technique

    return Technique(preset, preset)


def budget_curve_key(preset: str, multiple: int, root: str | os.PathLike, seed: int = 0, *,
                     quick: bool = False) -> str:
    """The run key the learning curve trains for ``preset`` at ``multiple`` x the old full
    budget on ``root`` (nothing trains), e.g. for ``Technique(..., init=...)``."""
    from sodlab.engine.experiment import plan

    return plan(curve_technique(preset), root, seed=seed,
                budget=budget_at(multiple, quick=quick))["key"]


def run(*, quick: bool = True, progress: bool = False, data_root: str | os.PathLike | None = None,
        presets: Sequence[str] = PRESETS, multiples: Sequence[int] = MULTIPLES,
        out: str | os.PathLike | None = None) -> dict:
    """Record every missing point and assemble the curve (in full mode written after each)."""
    from tqdm.auto import tqdm

    from sodlab.data import ensure_dataset
    from sodlab.engine.experiment import Technique, run_technique
    from sodlab.files import repo_root, write_json

    root = Path(data_root) if data_root else ensure_dataset("quick" if quick else "full", seed=0)
    mode = "quick" if quick else "full"
    jobs = []
    for p in presets:  # one preset's curve, then the RoI head on its bases, then the next
        jobs += [(p, m, curve_technique(p)) for _, m in curve_points([p], multiples)]
        if p in ROI_ON:
            jobs += [(f"{p} + RoI head", m, Technique("RoI head", p, stage_two={"kind": "roi"}))
                     for _, m in curve_points([p], multiples)]
    rows, recs = [], {}
    path = Path(out) if out else repo_root() / "results" / "budget_curve.json"
    result = None
    for label, m, tech in tqdm(jobs, disable=not progress, desc="budget curve"):
        budget = budget_at(m, quick=quick)
        rec = run_technique(tech, root, seed=0, mode=mode, budget=budget, progress=progress)
        recs.setdefault(label, {})[m] = rec
        rows.append({"preset": label, "multiple": m,
                     "images_seen": int(budget["max_steps"]) * int(budget["batch_size"]),
                     "train_seconds": rec.get("train_seconds"), "key": rec["key"],
                     **{k: rec["metrics"][k] for k in KEYS}})
        result = _with_shares(rows, recs, quick=quick)
        if not quick:  # after every point: a run cut off keeps the curve so far
            write_json(path, result)
    return result


def _with_shares(rows: list[dict], recs: dict, *, quick: bool) -> dict:
    """The curve so far, each row with its resampled share of its preset's top multiple."""
    for label, by_m in recs.items():
        if max(MULTIPLES) not in by_m:
            continue  # the share is of the largest budget: wait for it
        lows = share_lower(by_m)
        for r in rows:
            if r["preset"] == label:
                r["share_of_top_lower"] = lows[r["multiple"]]
    return assemble_curve(rows, quick=quick)


def assemble_curve(rows: list[dict], *, quick: bool) -> dict:
    """The curve's JSON: rows, the old full and quick budgets, and the sufficient multiple."""
    from sodlab.engine.budgets import QUICK_DEFAULT

    by, low = {}, {}
    for r in rows:
        by.setdefault(r["preset"], {})[r["multiple"]] = r["AP_small"]
        if "share_of_top_lower" in r:
            low.setdefault(r["preset"], {})[r["multiple"]] = r["share_of_top_lower"]
    return {"rows": rows, "keys": list(KEYS), "old_full": {**OLD_FULL, "images_seen":
                                                          OLD_FULL["max_steps"] * 8},
            "quick_images_seen": QUICK_DEFAULT["max_steps"] * QUICK_DEFAULT["batch_size"],
            "sufficient_share": SUFFICIENT,
            "sufficient_multiple": {p: smallest_sufficient(v, lower=low.get(p))
                                    for p, v in by.items() if max(v) == max(MULTIPLES)},
            "mode": "quick" if quick else "full"}


def load_curve(path=None) -> dict | None:
    """The committed ``results/budget_curve.json`` (or ``path``), None when there is none."""
    import json

    from sodlab.files import repo_root

    p = Path(path) if path else repo_root() / "results" / "budget_curve.json"
    return json.loads(p.read_text()) if p.is_file() else None


def curve_table(curve: dict):
    """The curve as a table: one row per multiple, a column per (preset, metric)."""
    import pandas as pd

    df = pd.DataFrame(curve["rows"])
    out = df.pivot_table(index=["multiple", "images_seen"], columns="preset",
                         values=list(curve["keys"]))
    return out.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0)


def sufficiency_sentences(curve: dict) -> list[str]:
    """Per preset with a complete curve: where it reaches the sufficient share of its top."""
    out = []
    for preset, m in (curve.get("sufficient_multiple") or {}).items():
        rows = {r["multiple"]: r for r in curve["rows"] if r["preset"] == preset}
        top = max(rows)
        lo = rows[m].get("share_of_top_lower")
        out.append(f"{preset}: {m}x the old full budget ({rows[m]['images_seen']:,} images) "
                   f"reaches AP_small {rows[m]['AP_small']:.3f}, at least "
                   f"{curve['sufficient_share']:.0%} of its {top}x value "
                   f"({rows[top]['AP_small']:.3f}, {rows[top]['images_seen']:,} images)"
                   + ("" if lo is None else f" on 97.5 % of the validation resamples "
                      f"(lowest 2.5 %: {lo:.1%})"))
    return out


def plot_curve(curve: dict, *, full_images: int | None = None):
    """AP_small, AP_tiny and AP50 against images seen (log axis), one line per preset.

    The quick budget, the old full budget and ``full_images`` (the full budget in force,
    ``sodlab.engine.budgets``) are marked. Returns a ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, len(curve["keys"]), sharex=True)
    presets = sorted({r["preset"] for r in curve["rows"]})
    marks = [(curve["quick_images_seen"], "quick", ":"),
             (curve["old_full"]["images_seen"], "old full", "--")]
    if full_images:
        marks.append((full_images, "full", "-"))
    for ax, key in zip(axes, curve["keys"]):
        for p in presets:
            rows = sorted((r for r in curve["rows"] if r["preset"] == p),
                          key=lambda r: r["images_seen"])
            ax.plot([r["images_seen"] for r in rows], [r[key] for r in rows], "o-", label=p)
        for x, label, style in marks:
            ax.axvline(x, color="0.5", ls=style, lw=1)
            ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                        fontsize=8, color="0.35", ha="right", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("training images seen")
        ax.set_title(key)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("on val (0-1)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"learning curve ({curve['mode']} mode, one seed)", fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["OLD_FULL", "MULTIPLES", "PRESETS", "KEYS", "budget_at", "curve_points",
           "curve_technique", "budget_curve_key",
           "smallest_sufficient", "share_lower", "run", "assemble_curve", "load_curve", "curve_table",
           "sufficiency_sentences", "plot_curve"]

"""Benchmark ``budget_curve``: AP_small, AP_tiny and AP50 against images seen, from run records.

Layer L4. ``fpn`` and ``s3fd`` trained at 1x, 2x, 4x, 8x and 16x the old full budget (400
steps x 8 images at 384 px = 3,200 images seen), one seed, each with the same schedule
shape (warm-up then cosine over its own length). Every point is a run record
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


def smallest_sufficient(points: dict[int, float], *, share: float = SUFFICIENT) -> int | None:
    """The smallest multiple whose value is >= ``share`` x the value at the largest multiple.

    ``points`` maps a multiple to a metric (one preset). None when the largest is missing.
    """
    if not points:
        return None
    top = max(points)
    target = share * points[top]
    return min(m for m, v in points.items() if v is not None and v >= target)


def run(*, quick: bool = True, progress: bool = False, data_root: str | os.PathLike | None = None,
        presets: Sequence[str] = PRESETS, multiples: Sequence[int] = MULTIPLES,
        out: str | os.PathLike | None = None) -> dict:
    """Record every missing point, then assemble the curve (and write it in full mode)."""
    from tqdm.auto import tqdm

    from sodlab.data import ensure_dataset
    from sodlab.engine.experiment import Technique, run_technique
    from sodlab.files import repo_root, write_json

    root = Path(data_root) if data_root else ensure_dataset("quick" if quick else "full", seed=0)
    mode = "quick" if quick else "full"
    rows = []
    for preset, m in tqdm(curve_points(presets, multiples), disable=not progress,
                          desc="budget curve"):
        budget = budget_at(m, quick=quick)
        rec = run_technique(Technique(preset, preset), root, seed=0, mode=mode, budget=budget,
                            progress=progress)
        rows.append({"preset": preset, "multiple": m,
                     "images_seen": rec["budget"]["images_seen"],
                     "train_seconds": rec.get("train_seconds"), "key": rec["key"],
                     **{k: rec["metrics"][k] for k in KEYS}})
    result = assemble_curve(rows, quick=quick)
    if not quick:
        write_json(Path(out) if out else repo_root() / "results" / "budget_curve.json", result)
    return result


def assemble_curve(rows: list[dict], *, quick: bool) -> dict:
    """The curve's JSON: rows, the old full and quick budgets, and the sufficient multiple."""
    from sodlab.engine.budgets import QUICK_DEFAULT

    by = {}
    for r in rows:
        by.setdefault(r["preset"], {})[r["multiple"]] = r["AP_small"]
    return {"rows": rows, "keys": list(KEYS), "old_full": {**OLD_FULL, "images_seen":
                                                          OLD_FULL["max_steps"] * 8},
            "quick_images_seen": QUICK_DEFAULT["max_steps"] * QUICK_DEFAULT["batch_size"],
            "sufficient_share": SUFFICIENT,
            "sufficient_multiple": {p: smallest_sufficient(v) for p, v in by.items()
                                    if max(v) == max(MULTIPLES)},
            "mode": "quick" if quick else "full"}


__all__ = ["OLD_FULL", "MULTIPLES", "PRESETS", "KEYS", "budget_at", "curve_points",
           "smallest_sufficient", "run", "assemble_curve"]

"""A study's committed result, shown the same way for every notebook: two tables and the papers beside us.

Layer L4. ``sodlab study run NAME --full`` writes ``results/studies/<name>.json``
(``save_study``), assembled from the run records (``sodlab.engine.study``); notebooks read it
back with ``show_study(name)``: the techniques (mean over seeds, the 95 % interval over the
validation resamples, images seen), then every comparison "B against A" with its paired
difference, interval, per-seed values and verdict, and where a paper reported the same
change (``sodlab.bench.papers``), the paper's figure and whether our verdict goes its way.
``side_by_side`` puts the verdicts of the same comparisons from two results (two budgets)
next to each other. Taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sodlab.errors import InputError


def studies_dir() -> Path:
    """``results/studies`` under the repository root (``SODLAB_STUDIES`` overrides it)."""
    from sodlab.files import repo_root

    env = os.environ.get("SODLAB_STUDIES")
    return Path(env) if env else repo_root() / "results" / "studies"


def _study_path(name: str, images: int | None) -> Path:
    return studies_dir() / (f"{name}.json" if images is None else f"{name}-{images}.json")


def save_study(result: Mapping, path: str | os.PathLike | None = None, *,
               images: int | None = None) -> Path:
    """Write a study's result (``run_study``'s dict) as JSON; return the path.

    ``images``: the images seen of a budget other than the full one (the learning curve's
    multiples), kept as ``NAME-<images>.json`` beside ``NAME.json``.
    """
    from sodlab.files import write_json

    p = Path(path) if path else _study_path(result["study"], images)
    write_json(p, dict(result))
    return p


def load_study(name: str, path: str | os.PathLike | None = None, *,
               images: int | None = None) -> dict | None:
    """The committed result of study ``name`` (None when it has not been run in full);
    ``images``: at another budget than the full one (``save_study``)."""
    p = Path(path) if path else _study_path(name, images)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None


def _paper_for(a: str, b: str, metric: str):
    from sodlab.bench.papers import PAPER_CHANGES

    for change in PAPER_CHANGES:
        if change.ours == (a, b, metric):
            return change
    return None


def study_comparisons(result: Mapping, *, metrics: Sequence[str] | None = None):
    """One row per comparison and metric: B - A, paired interval, seeds, verdict, paper."""
    import pandas as pd

    from sodlab.bench.suite import outcome

    rows = []
    for c in result["comparisons"]:
        if metrics and c["metric"] not in metrics:
            continue
        paper = _paper_for(c["a"], c["b"], c["metric"])
        iv = c.get("interval")
        rows.append({
            "B against A": f"{c['b']} vs {c['a']}", "metric": c["metric"],
            "B − A": c["mean"],
            "paired 95 %": "" if iv is None else f"{iv[0]:+.3f} to {iv[1]:+.3f}",
            "per seed": " / ".join(f"{v:+.3f}" for v in c["per_seed"].values()),
            "verdict": c["verdict"],
            "paper": "" if paper is None else f"{paper.baseline} → {paper.result} "
                                              f"({paper.metric}, {paper.paper})",
            "vs paper": "" if paper is None else outcome(paper.direction, c["verdict"])})
    return pd.DataFrame(rows)


def study_techniques(result: Mapping):
    """The techniques table of a study result (``sodlab.engine.study.tables``)."""
    from sodlab.engine.study import tables

    return tables(result)[0]


def side_by_side(results: Mapping[str, Mapping], *, metric: str = "AP_small"):
    """The same comparisons' difference and verdict under each labelled result (budgets)."""
    import pandas as pd

    rows: dict[tuple[str, str], dict] = {}
    for label, res in results.items():
        for c in res["comparisons"]:
            if c["metric"] != metric:
                continue
            row = rows.setdefault((c["b"], c["a"]), {"B": c["b"], "against A": c["a"]})
            row[f"B − A ({label})"] = c["mean"]
            row[f"verdict ({label})"] = c["verdict"]
    out = pd.DataFrame(list(rows.values()))
    labels = list(results)
    if len(labels) >= 2 and len(out):
        a, b = (f"verdict ({lab})" for lab in labels[:2])
        out["changed with the budget"] = [
            "" if (x != x or y != y) else ("yes" if x != y else "")
            for x, y in zip(out.get(a, []), out.get(b, []))]
    return out


def show_study(name: str, *, metrics: Sequence[str] = ("AP_small", "AP_tiny"),
               result: Mapping | None = None) -> dict | None:
    """Display a study's committed full-mode result (or say that there is none yet)."""
    import pandas as pd
    from IPython.display import display

    res = result if result is not None else load_study(name)
    if res is None:
        print(f"study {name!r} has no committed full-mode result yet "
              f"(sodlab study run {name} --full)")
        return None
    seen = sorted({t["images_seen"] for t in res["techniques"].values()
                   if t.get("images_seen")})
    seeds = sorted({len(t["seeds"]) for t in res["techniques"].values()})
    print(f"study {name}: {res['mode']} mode, {'/'.join(map(str, seeds))} seeds, "
          f"{', '.join(f'{s:,}' for s in seen)} images seen per model")
    with pd.option_context("display.max_rows", 500, "display.float_format", "{:.3f}".format):
        display(study_techniques(res))
        display(study_comparisons(res, metrics=metrics))
    for c in res["comparisons"]:
        if c["metric"] == metrics[0]:
            print(c["sentence"])
    return dict(res)


__all__ = ["studies_dir", "save_study", "load_study", "study_comparisons", "study_techniques",
           "side_by_side", "show_study"]

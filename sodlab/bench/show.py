"""The live per-seed tables of the notebooks, and the earlier budget's comparisons by their own labels.

Layer L4. ``per_seed_table`` and ``mean_table`` turn ``{name: {seed: {metric: value}}}`` into
pandas tables (one row per (name, seed), or one per name with the mean over seeds and the
number of seeds, S seeds); notebooks 02, 08 and 09 build their live tables with them.

Committed results have one format, the study (``sodlab.engine.study``), read by
``sodlab.bench.study_view``: ``results/studies/NAME.json`` at the full budget and
``NAME-3200.json`` at the earlier one (the converted ``results/NN_*.json``, decided by the
older unpaired rule; ``"rule"`` says so). ``comparisons(stem)`` lists the earlier budget's
comparisons of notebook ``stem`` under the labels the earlier files gave their rows (each
converted comparison keeps them in ``"earlier"``), for the tables of ``docs/methods.md``
that still quote those labels (``sodlab.bench.readme``) and for ``reports/index.html``
(``sodlab.bench.report``). Nothing here decides a verdict: each is the one stored.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _seed_label(s) -> str:
    return str(s)


@dataclass
class Table:
    """Plain rows for a pandas table (built only when shown)."""

    rows: list[dict]
    index: list[str]

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if not len(df):
            return df
        for c in df.columns:  # None (not measured) as NaN, so numeric columns stay numeric
            vals = [v for v in df[c] if v is not None]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                df[c] = [math.nan if v is None else v for v in df[c]]
        keep = [c for c in self.index if c in df.columns]
        return df.set_index(keep) if keep else df


def _seed_rows(per_seed: dict, keys, name: str) -> list[dict]:
    rows = []
    for n, seeds in per_seed.items():
        for s, m in (seeds or {}).items():
            rows.append({name: n, "seed": _seed_label(s),
                         **{k: _finite(m.get(k)) for k in keys}})
    return rows


def _mean_rows(per_seed: dict, keys, name: str) -> list[dict]:
    rows = []
    for n, seeds in per_seed.items():
        vals = list((seeds or {}).values())
        row = {name: n}
        for k in keys:
            xs = [_finite(v.get(k)) for v in vals]
            xs = [x for x in xs if x is not None and x != -1.0]
            row[k] = sum(xs) / len(xs) if xs else None
        row["seeds"] = len(vals)
        rows.append(row)
    return rows


def per_seed_table(per_seed: dict, keys, *, name: str = "name"):
    """``per_seed`` ``{name: {seed: {metric: value}}}`` as a DataFrame, one row per (name, seed).

    The notebooks build their live per-seed tables with it.
    """
    return Table(_seed_rows(per_seed, keys, name), [name, "seed"]).frame()


def mean_table(per_seed: dict, keys, *, name: str = "name"):
    """The mean over seeds of each metric per name (-1, an empty bucket, left out), and
    ``seeds``, the number of seeds: one row per name."""
    return Table(_mean_rows(per_seed, keys, name), [name]).frame()


@dataclass(frozen=True)
class EarlierComparison:
    """One comparison of the earlier budget, under the earlier file's labels."""

    a: str
    b: str
    metric: str
    per_seed: dict = field(default_factory=dict)   # seed -> (A, B), or B - A without values
    mean_a: float | None = None                    # the techniques' means over seeds
    mean_b: float | None = None
    verdict: str = ""
    sentence: str = ""

    @property
    def label(self) -> str:
        return f"{self.b} vs {self.a}, {self.metric}"


def _earlier_path(stem: str, results_dir: str | os.PathLike | None) -> Path | None:
    """``<results>/studies/<study>-<earlier images>.json`` of notebook ``stem`` (None: none)."""
    from sodlab.bench.budget_curve import OLD_FULL
    from sodlab.bench.studies import STUDIES
    from sodlab.engine.budgets import images_seen
    from sodlab.files import repo_root

    folder = Path(results_dir) if results_dir is not None else repo_root() / "results"
    for name, st in STUDIES.items():
        if st.notebook == stem:
            return folder / "studies" / f"{name}-{images_seen(OLD_FULL)}.json"
    return None


def _earlier_comparison(c: dict, techniques: dict) -> EarlierComparison:
    ta, tb = techniques.get(c["a"]) or {}, techniques.get(c["b"]) or {}
    sa, sb, k = ta.get("seeds") or {}, tb.get("seeds") or {}, c["metric"]
    per_seed = {s: ((sa[s][k], sb[s][k]) if k in sa.get(s, {}) and k in sb.get(s, {}) else d)
                for s, d in c["per_seed"].items()}
    earlier = c.get("earlier") or {}
    return EarlierComparison(earlier.get("a", c["a"]), earlier.get("b", c["b"]), k, per_seed,
                             (ta.get("mean") or {}).get(k), (tb.get("mean") or {}).get(k),
                             c["verdict"], earlier.get("sentence", c["sentence"]))


def comparisons(stem: str, results_dir: str | os.PathLike | None = None
                ) -> list[EarlierComparison]:
    """The earlier budget's comparisons of notebook ``stem`` ([] when none is committed).

    ``results_dir``: the folder holding ``studies/`` (the repository's ``results/``
    by default). InputError when the file is not valid JSON.
    """
    from sodlab.bench.study_view import load_study

    path = _earlier_path(stem, results_dir)
    res = load_study(path.stem, path) if path is not None else None
    if res is None:
        return []
    return [_earlier_comparison(c, res["techniques"]) for c in res["comparisons"]]


__all__ = ["per_seed_table", "mean_table", "comparisons", "EarlierComparison"]

"""The live per-seed tables of the notebooks.

Layer L4. ``per_seed_table`` and ``mean_table`` turn ``{name: {seed: {metric: value}}}`` into
pandas tables (one row per (name, seed), or one per name with the mean over seeds and the
number of seeds, S seeds); notebooks 02, 08 and 09 build their live tables with them.

Committed results have one format, the study (``sodlab.engine.study``), read and shown by
``sodlab.bench.study_view``: ``results/studies/NAME.json`` at the full budget and
``NAME-3200.json`` at the earlier one (the notebooks' earlier runs, converted once, decided
by the older unpaired rule; ``"rule"`` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


__all__ = ["per_seed_table", "mean_table"]

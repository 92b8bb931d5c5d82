"""The full budget is the one the committed learning curve justifies."""

from __future__ import annotations

import re

import pytest

from sodlab.bench.budget_curve import OLD_FULL, load_curve, smallest_sufficient
from sodlab.engine import budgets


def test_the_full_budget_is_the_curves_sufficient_multiple():
    curve = load_curve()
    if curve is None:
        pytest.skip("no learning curve committed (results/budget_curve.json)")
    rows = [r for r in curve["rows"] if r["preset"] == "fpn"]
    fpn = {r["multiple"]: r["AP_small"] for r in rows}
    lower = {r["multiple"]: r["share_of_top_lower"] for r in rows}
    m = smallest_sufficient(fpn, share=curve["sufficient_share"], lower=lower)
    assert m == curve["sufficient_multiple"]["fpn"]
    assert budgets.FULL["max_steps"] == m * OLD_FULL["max_steps"]
    assert budgets.FULL["batch_size"] == OLD_FULL["batch_size"]


def test_the_docstring_quotes_the_committed_curve():
    curve = load_curve()
    if curve is None:
        pytest.skip("no learning curve committed (results/budget_curve.json)")
    quoted = dict(re.findall(r"(\d+)x: AP_small (0\.\d{3})", budgets.__doc__))
    fpn = {str(r["multiple"]): f"{r['AP_small']:.3f}" for r in curve["rows"]
           if r["preset"] == "fpn"}
    assert quoted and quoted == fpn

"""The learning curve's pieces: budgets by multiple, the sufficient multiple, the table and plot."""

from __future__ import annotations

import pytest

from sodlab.bench.budget_curve import (
    assemble_curve,
    budget_at,
    curve_table,
    plot_curve,
    smallest_sufficient,
    sufficiency_sentences,
)
from sodlab.errors import InputError


def test_budget_at_scales_the_old_full_budget():
    assert budget_at(1, quick=False) == {"max_steps": 400, "batch_size": 8}
    assert budget_at(16, quick=False)["max_steps"] == 6400
    assert budget_at(2, quick=True)["max_steps"] == 50
    for bad in (0, 1.5, -2):
        with pytest.raises(InputError):
            budget_at(bad, quick=False)


def test_smallest_sufficient_is_the_first_multiple_within_the_share_of_the_top():
    pts = {1: 0.40, 2: 0.55, 4: 0.62, 8: 0.66, 16: 0.68}
    assert smallest_sufficient(pts) == 4          # 0.62 >= 0.9 * 0.68 = 0.612
    assert smallest_sufficient(pts, share=0.95) == 8
    assert smallest_sufficient({1: 0.5}) == 1
    assert smallest_sufficient({}) is None
    # 4x reaches 90 % on the whole set but not on the lowest resamples: 8x is sufficient
    lower = {1: 0.55, 2: 0.78, 4: 0.88, 8: 0.96, 16: 1.0}
    assert smallest_sufficient(pts, lower=lower) == 8


def _rows():
    out = []
    for preset, vals in (("fpn", (0.40, 0.55, 0.62, 0.66, 0.68)), ("s3fd", (0.3, 0.4, 0.5))):
        for m, v in zip((1, 2, 4, 8, 16), vals):
            out.append({"preset": preset, "multiple": m, "images_seen": 3200 * m,
                        "AP_small": v, "AP_tiny": v - 0.1, "AP50": v + 0.3})
    return out


def test_assemble_table_sentences_and_plot():
    curve = assemble_curve(_rows(), quick=False)
    assert curve["sufficient_multiple"] == {"fpn": 4}   # s3fd's curve stops before 16x
    table = curve_table(curve)
    assert table.loc[(4, 12800), ("fpn", "AP_small")] == pytest.approx(0.62)
    (line,) = sufficiency_sentences(curve)
    assert line.startswith("fpn: 4x") and "12,800 images" in line and "0.680" in line
    fig = plot_curve(curve, full_images=12800)
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) >= 2

"""sodlab.metrics.verdict: every branch of the rule, its input forms, and a plain reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sodlab.errors import InputError
from sodlab.metrics import verdict, verdict_sentence
from sodlab.metrics.verdict import UNCLEAR, decide

A_LOW, B_HIGH = (0.10, 0.12), (0.14, 0.16)   # apart, B above
OVERLAP = ((0.10, 0.15), (0.14, 0.16))


def reference(diffs, a=None, b=None, d=None, min_seeds=3):
    """The rule written out the long way, for random cross-checks."""
    if not diffs or any(math.isnan(x) for x in diffs):
        return UNCLEAR
    pos = sum(1 for x in diffs if x > 0)
    neg = sum(1 for x in diffs if x < 0)
    if pos == len(diffs):
        sign = "up"
    elif neg == len(diffs):
        sign = "down"
    else:
        return UNCLEAR
    if a is not None and b is not None:
        if b[0] > a[1]:
            apart = "up"
        elif b[1] < a[0]:
            apart = "down"
        else:
            return UNCLEAR
        return sign if apart == sign else UNCLEAR
    if d is not None:
        if d[0] > 0:
            apart = "up"
        elif d[1] < 0:
            apart = "down"
        else:
            return UNCLEAR
        return sign if apart == sign else UNCLEAR
    return UNCLEAR  # no intervals: no direction


# -- seeds only ---------------------------------------------------------------------------

def test_seeds_alone_never_decide_a_direction():
    # intervals apart AND every seed agreeing: agreement alone (1 time in 4 by chance for
    # three seeds with no effect) is not enough
    assert verdict([0.01, 0.02, 0.03]) == UNCLEAR
    assert verdict([-0.01, -0.02, -0.03, -0.04, -0.05]) == UNCLEAR
    assert "no intervals" in decide([0.01, 0.02, 0.03]).reason


def test_min_seeds_is_a_floor_beside_the_intervals():
    assert verdict([0.02], ((0.10, 0.12), (0.13, 0.15))) == "up"
    assert verdict([0.02], ((0.10, 0.12), (0.13, 0.15)), min_seeds=3) == UNCLEAR
    assert verdict([0.02, 0.01, 0.03], ((0.10, 0.12), (0.13, 0.15)), min_seeds=3) == "up"
    with pytest.raises(InputError):
        verdict([0.1], min_seeds=0)


def test_seeds_disagree_or_zero():
    assert verdict([0.01, -0.02, 0.03]) == UNCLEAR
    assert verdict([0.01, 0.0, 0.03]) == UNCLEAR
    assert verdict([0.0], (A_LOW, B_HIGH)) == UNCLEAR
    assert "disagree" in decide([0.01, -0.02, 0.03]).reason


def test_no_seeds():
    assert verdict([]) == UNCLEAR
    assert verdict([], (A_LOW, B_HIGH)) == UNCLEAR
    assert decide({}).reason == "no per-seed values"


# -- with intervals -----------------------------------------------------------------------

def test_intervals_apart_and_seeds_agree():
    assert verdict([0.03, 0.04, 0.02], (A_LOW, B_HIGH)) == "up"
    assert verdict([-0.03, -0.04, -0.02], (B_HIGH, A_LOW)) == "down"


def test_one_seed_needs_intervals_apart_and_the_seed_agreeing():
    assert verdict([0.03], (A_LOW, B_HIGH)) == "up"
    assert verdict([-0.03], (A_LOW, B_HIGH)) == UNCLEAR      # intervals say up, seed down
    assert verdict([0.03], OVERLAP) == UNCLEAR
    assert verdict([0.03]) == UNCLEAR                        # no intervals


def test_intervals_overlap_or_disagree_with_seeds():
    assert verdict([0.01, 0.02, 0.03], OVERLAP) == UNCLEAR
    assert decide([0.01, 0.02, 0.03], OVERLAP).reason == "the intervals overlap"
    assert verdict([-0.01, -0.02, -0.03], (A_LOW, B_HIGH)) == UNCLEAR
    assert "opposite" in decide([-0.01, -0.02, -0.03], (A_LOW, B_HIGH)).reason


def test_interval_of_the_difference():
    assert verdict([0.02, 0.01], (0.005, 0.03)) == "up"
    assert verdict([-0.02, -0.01], (-0.03, -0.005)) == "down"
    assert verdict([0.02, 0.01], (-0.01, 0.03)) == UNCLEAR   # contains zero
    assert verdict([0.02, 0.01], {"diff": (0.005, 0.03)}) == "up"


def test_missing_intervals_decide_nothing():
    for missing in (None, (None, B_HIGH), (A_LOW, None), (A_LOW, (math.nan, 0.2)),
                    {"a": A_LOW}, (math.nan, math.nan)):
        assert verdict([0.01, 0.02, 0.03], missing) == UNCLEAR, missing
        assert verdict([0.01, 0.02, 0.03], (A_LOW, B_HIGH)) == "up"


def test_empty_bucket_interval_and_seed_decide_nothing():
    assert verdict([0.01, 0.02, 0.03], ((-1.0, -1.0), B_HIGH)) == UNCLEAR
    assert verdict([(-1.0, 0.3), (0.1, 0.2), (0.1, 0.2)]) == UNCLEAR
    assert verdict([0.01, math.nan, 0.03]) == UNCLEAR
    assert "seed 1" in decide([0.01, math.nan, 0.03]).reason


# -- input forms ----------------------------------------------------------------------------

def test_pairs_and_mappings_and_arrays():
    pairs = [(0.10, 0.13), (0.11, 0.15), (0.12, 0.14)]
    apart = (A_LOW, B_HIGH)
    assert verdict(pairs, apart) == "up" == verdict({0: 0.03, 1: 0.04, 2: 0.02}, apart)
    assert verdict({"s0": (0.2, 0.1), "s1": (0.2, 0.15), "s2": (0.3, 0.1)},
                   (B_HIGH, A_LOW)) == "down"
    assert verdict(np.array([0.01, 0.02, 0.03]), np.array([A_LOW, B_HIGH])) == "up"
    d = decide(pairs)
    assert d.pairs == tuple(pairs) and d.diffs == pytest.approx((0.03, 0.04, 0.02))
    assert d.mean == pytest.approx(0.03)


@pytest.mark.parametrize("bad", ["up", 3.0, [(0.1, 0.2, 0.3)], [object()]])
def test_bad_per_seed_raises(bad):
    with pytest.raises(InputError):
        verdict(bad)


@pytest.mark.parametrize("bad", [(0.2, 0.1), ((0.2, 0.1), B_HIGH), (A_LOW, 0.3), "ab",
                                 (0.1, 0.2, 0.3), {"x": A_LOW}])
def test_bad_intervals_raise(bad):
    with pytest.raises(InputError):
        verdict([0.1, 0.1, 0.1], bad)


def test_against_the_reference_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(0, 5))
        diffs = [float(x) for x in rng.normal(0.01, 0.02, n).round(2)]
        form = int(rng.integers(0, 3))
        lo = rng.uniform(0, 0.5, 2)
        a = (float(lo[0]), float(lo[0] + rng.uniform(0, 0.1)))
        b = (float(lo[1]), float(lo[1] + rng.uniform(0, 0.1)))
        c = float(rng.normal(0, 0.05))
        dd = (c, c + float(rng.uniform(0, 0.1)))
        if form == 0:
            got, want = verdict(diffs), reference(diffs)
        elif form == 1:
            got, want = verdict(diffs, (a, b)), reference(diffs, a=a, b=b)
        else:
            got, want = verdict(diffs, dd), reference(diffs, d=dd)
        assert got == want, (diffs, form, a, b, dd)


# -- the sentence ---------------------------------------------------------------------------

def test_sentence_has_the_numbers():
    s = verdict_sentence({0: 0.327, 1: 0.305, 2: 0.280}, ((0.100, 0.124), (0.421, 0.453)),
                         metric="AP_small", a="baseline", b="fpn")
    assert s.startswith("fpn against baseline on AP_small: up (better).")
    assert "+0.304" in s and "seed 0 +0.327" in s and "seed 2 +0.280" in s
    assert "baseline 0.100-0.124" in s and "fpn 0.421-0.453" in s and "apart" in s


def test_sentence_lower_is_better_and_no_intervals():
    s = verdict_sentence([0.01, 0.02, 0.03], (A_LOW, B_HIGH), metric="ms/img",
                         higher_is_better=False)
    assert ": up (worse)." in s
    s = verdict_sentence([-0.01, -0.02, -0.03, -0.01], (B_HIGH, A_LOW), metric="loss",
                         higher_is_better=False)
    assert ": down (better)." in s
    s = verdict_sentence([0.01, 0.02, 0.03], metric="AP")
    assert ": no clear difference." in s and "no intervals" in s and "point up" in s


def test_sentence_unclear_and_difference_interval():
    s = verdict_sentence([0.02, -0.01], (-0.01, 0.03), metric="AP")
    assert ": no clear difference." in s and "(better)" not in s
    assert "interval of the difference -0.010 to +0.030" in s and "disagree" in s
    assert verdict_sentence([]).startswith("B against A on the metric: no clear difference. "
                                           "No per-seed values")
    assert "n/a" in verdict_sentence([math.nan, 0.1])

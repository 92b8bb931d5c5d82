"""The paired verdict rule on simulated runs: its false-direction rate and its power.

The simulated validation set has N images with a shared difficulty u_i; a run of technique T
with seed s scores image i as u_i + effect_T + a_s + b_{T,s} + e_{T,s,i}: a_s is the seed's
luck shared by A and B (same initialisation and data order), b_{T,s} a technique's own luck
with that seed (which no resampling of images can see) and e per-image noise. A run's metric
is the mean over images; its standard deviation (over validation sets, seeds and noise) is
``sd_run``. Every run is scored on the same fixed resamples of the images, as records are.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sodlab.metrics.verdict import DOWN, UNCLEAR, UP, paired_decide, paired_sentence

N, SEEDS, R = 500, 3, 200
SU, SA, SE = 0.25, 0.01, 0.05   # image difficulty, shared seed luck, per-image noise


def sd_run(sb: float) -> float:
    return math.sqrt(SU ** 2 / N + SA ** 2 + sb ** 2 + SE ** 2 / N)


def simulate(rng: np.random.Generator, effect: float, sb: float):
    u = rng.normal(0.5, SU, N)
    draws = rng.integers(0, N, size=(R, N))
    diffs, samples = {}, {}
    for s in range(SEEDS):
        shared = u + rng.normal(0, SA)
        va = shared + rng.normal(0, sb) + rng.normal(0, SE, N)
        vb = shared + effect + rng.normal(0, sb) + rng.normal(0, SE, N)
        d = vb - va
        diffs[s], samples[s] = float(d.mean()), d[draws].mean(1)
    return paired_decide(diffs, samples)


def rate(decisions: list, which: tuple[str, ...]) -> float:
    return float(np.mean([d.verdict in which for d in decisions]))


TRIALS = 1000
# The rule's third condition alone is a two-sided t-test at 5 %, so the false-direction rate
# is at most 5 % in truth; the margin is two binomial standard deviations of 1000 trials.
FPR_BOUND = 0.05 + 2 * math.sqrt(0.05 * 0.95 / TRIALS)


@pytest.mark.parametrize("sb", [0.0, 0.01])
def test_no_effect_gives_a_direction_at_most_five_percent_of_the_time(sb):
    rng = np.random.default_rng(11)
    verdicts = [simulate(rng, 0.0, sb) for _ in range(TRIALS)]
    assert rate(verdicts, (UP, DOWN)) <= FPR_BOUND


def test_half_a_run_sd_is_found_in_most_trials():
    rng = np.random.default_rng(12)
    verdicts = [simulate(rng, 0.5 * sd_run(0.0), 0.0) for _ in range(TRIALS)]
    assert rate(verdicts, (UP,)) > 0.5
    assert rate(verdicts, (DOWN,)) == 0.0


def test_the_seed_condition_is_what_keeps_technique_luck_out():
    """With technique-specific seed luck, the resamples alone would call a direction in about
    one trial of five (all seeds agree in sign one time in four, and the images cannot see
    the luck); the seeds' t-interval is what stops those."""
    rng = np.random.default_rng(13)
    decisions = [simulate(rng, 0.0, 0.01) for _ in range(300)]
    stopped = np.mean([d.reason.startswith("the seeds spread") for d in decisions])
    assert stopped > 0.1
    assert rate(decisions, (UP, DOWN)) + stopped > 0.15


def test_one_seed_gives_no_direction_however_large():
    dec = paired_decide({0: 0.3}, {0: np.full(50, 0.3)})
    assert dec.verdict == UNCLEAR and "at least 2" in dec.reason


def test_clear_effect_with_tight_seeds_is_up_and_the_sentence_says_why():
    rng = np.random.default_rng(0)
    samples = {s: 0.05 + rng.normal(0, 0.005, 300) for s in range(3)}
    diffs = {0: 0.050, 1: 0.052, 2: 0.049}
    assert paired_decide(diffs, samples).verdict == UP
    text = paired_sentence(diffs, samples, metric="AP_small", a="fpn", b="s3fd")
    assert text.startswith("s3fd against fpn on AP_small: up (better)")
    assert "+0.050" in text and "paired 95 % interval" in text


def test_a_seed_of_the_other_sign_or_an_interval_over_zero_is_no_clear_difference():
    rng = np.random.default_rng(1)
    tight = {s: 0.05 + rng.normal(0, 0.005, 300) for s in range(3)}
    assert paired_decide({0: 0.05, 1: 0.05, 2: -0.01}, tight).reason == \
        "the seeds disagree in sign"
    wide = {s: 0.01 + rng.normal(0, 0.05, 300) for s in range(3)}
    assert "includes zero" in paired_decide({0: 0.01, 1: 0.012, 2: 0.011}, wide).reason


def test_nan_resamples_are_left_out_and_missing_seed_values_are_reported():
    v = np.full(100, 0.05)
    v[:10] = np.nan
    dec = paired_decide([0.05, 0.051, 0.049], [v, v, v])
    assert dec.verdict == UP and dec.interval_diff == pytest.approx((0.05, 0.05))
    assert paired_decide([0.05, math.nan], [v, v]).verdict == UNCLEAR


def test_bad_inputs_are_errors():
    from sodlab.errors import InputError

    with pytest.raises(InputError):
        paired_decide([0.1, 0.2], [np.zeros(5)])
    with pytest.raises(InputError):
        paired_decide([0.1, 0.2], [np.zeros(5), np.zeros(6)])

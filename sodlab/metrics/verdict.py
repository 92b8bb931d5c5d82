"""One rule for "did technique B move metric M against A": ``"up"``, ``"down"`` or no clear difference.

Layer L1. The notebooks' live comparisons and ``sodlab.bench.quality`` call it, and it
decided the earlier budget's committed verdicts (``results/studies/NAME-3200.json``), so one
verdict means one thing everywhere; notebook 10 (benchmark report) teaches it. The intervals are Efron's percentile
bootstrap over images (``sodlab.metrics.bootstrap_ci``; Efron & Tibshirani 1993, "An
Introduction to the Bootstrap"); the seed condition is the all-agree corner of a sign test.

Inputs, per seed (``S`` seeds, paired: the same seed and data for A and B):

- ``per_seed``: the paired differences ``B - A``, one number per seed, or pairs ``(a, b)``
  per seed (the difference is ``b - a``); a mapping ``{seed: value or (a, b)}`` names the
  seeds in the sentence. A seed without a value (NaN, or an ``a``/``b`` of -1, which is how
  ``evaluate`` marks an empty bucket) is a seed that does not agree.
- ``intervals``: the 95 % bootstrap intervals where known, either ``((a_lo, a_hi), (b_lo,
  b_hi))`` of A and B, or ``(lo, hi)`` of the difference ``B - A``; ``None`` (or any bound
  missing / NaN) when not measured. An A or B interval of ``(-1, -1)`` (``bootstrap_ci``'s
  mark of a bucket empty in every resample) measures nothing.

The rule, with the signs of the ``S`` differences:

1. ``"up"`` (``"down"``) needs every seed's difference above (below) zero; a zero, a missing
   seed or a sign that differs gives ``"no clear difference"``;
2. with intervals: they must also be apart in that same direction (B's interval wholly above
   A's, or the difference's interval wholly above zero), however many seeds there are; with
   one seed it is the intervals that decide, and only if that seed agrees;
3. without intervals there is no direction, however many seeds agree: with no effect at
   all, three seeds agree in sign by chance one time in four, so agreement alone is weak
   evidence. ``min_seeds`` (default 1) is the fewest seeds a direction needs besides the
   intervals.

``"up"``/``"down"`` name the direction of the metric's *value* (B's minus A's), whatever the
metric; whether up is better is for ``verdict_sentence(higher_is_better=...)`` to say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sodlab.errors import InputError

UP, DOWN, UNCLEAR = "up", "down", "no clear difference"
VERDICTS = (UP, DOWN, UNCLEAR)
MIN_SEEDS = 1
EMPTY = -1.0  # evaluate's value for a bucket without objects; bootstrap_ci's (-1, -1)


@dataclass(frozen=True)
class Decision:
    """A verdict with what it rests on (``verdict_sentence`` writes it out)."""

    verdict: str                               # "up", "down" or "no clear difference"
    reason: str                                # why, in a few words
    seeds: tuple[str, ...]                     # seed labels, in order
    diffs: tuple[float, ...]                   # [S] B - A per seed (NaN: no value)
    pairs: tuple[tuple[float, float], ...] | None  # [S] (a, b) per seed when given as pairs
    interval_a: tuple[float, float] | None     # A's interval (None: not given)
    interval_b: tuple[float, float] | None     # B's interval
    interval_diff: tuple[float, float] | None  # the difference's interval
    interval_seeds: tuple[float, float] | None = None  # t-interval of the seeds' differences

    @property
    def mean(self) -> float:
        """The mean difference over the seeds that have one (NaN if none)."""
        vals = [d for d in self.diffs if not math.isnan(d)]
        return sum(vals) / len(vals) if vals else math.nan


def _num(x, what: str) -> float:
    if x is None:
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        raise InputError(f"verdict: {what} must be a number, got {x!r}") from None


def _parse_seeds(per_seed) -> tuple[tuple[str, ...], list[float], list | None]:
    if isinstance(per_seed, Mapping):
        labels, items = [str(k) for k in per_seed], list(per_seed.values())
    elif not _is_seq(per_seed):
        raise InputError(f"verdict: per_seed must be a list of differences or (a, b) pairs "
                         f"(or a mapping seed -> either), got {type(per_seed).__name__}")
    else:
        items = list(per_seed)
        labels = [str(i) for i in range(len(items))]
    diffs: list[float] = []
    pairs: list[tuple[float, float]] = []
    for label, item in zip(labels, items):
        if _is_seq(item):
            item = list(item)
            if len(item) != 2:
                raise InputError(f"verdict: seed {label}: a pair (a, b) has two values, "
                                 f"got {len(item)}")
            a, b = _num(item[0], f"seed {label} a"), _num(item[1], f"seed {label} b")
            pairs.append((a, b))
            empty = a == EMPTY or b == EMPTY
            diffs.append(math.nan if empty else b - a)
        else:
            diffs.append(_num(item, f"seed {label}"))
    return tuple(labels), diffs, (pairs if len(pairs) == len(items) and items else None)


def _interval(x, what: str) -> tuple[float, float] | None:
    """``(lo, hi)`` or None when missing; raises for a malformed or inverted interval."""
    if x is None:
        return None
    if not _is_seq(x) or len(x) != 2:
        raise InputError(f"verdict: {what} must be (lo, hi), got {x!r}")
    x = list(x)
    lo, hi = _num(x[0], f"{what} lo"), _num(x[1], f"{what} hi")
    if math.isnan(lo) or math.isnan(hi):
        return None
    if lo > hi:
        raise InputError(f"verdict: {what} ({lo:g}, {hi:g}) has lo > hi")
    return (lo, hi)


def _parse_intervals(intervals):
    """(interval_a, interval_b, interval_diff); the unused form is None."""
    if intervals is None:
        return None, None, None
    if isinstance(intervals, Mapping):
        unknown = set(intervals) - {"a", "b", "diff"}
        if unknown:
            raise InputError(f"verdict: intervals keys are 'a', 'b' or 'diff', got "
                             f"{sorted(map(str, unknown))}")
        if "diff" in intervals:
            return None, None, _interval(intervals["diff"], "interval of the difference")
        return (_interval(intervals.get("a"), "interval of A"),
                _interval(intervals.get("b"), "interval of B"), None)
    if not _is_seq(intervals) or len(intervals) != 2:
        raise InputError(f"verdict: intervals must be ((a_lo, a_hi), (b_lo, b_hi)) or "
                         f"(lo, hi) of the difference, got {intervals!r}")
    first, second = list(intervals)
    if _is_seq(first) or _is_seq(second):  # ((a_lo, a_hi), (b_lo, b_hi)); either may be None
        if (first is not None and not _is_seq(first)) or \
                (second is not None and not _is_seq(second)):
            raise InputError(f"verdict: intervals mixes a bound with an interval: {intervals!r}")
        return _interval(first, "interval of A"), _interval(second, "interval of B"), None
    return None, None, _interval(intervals, "interval of the difference")


def _is_seq(x) -> bool:
    """A list, tuple, array or Series (not a string, not a mapping, not a 0-d array)."""
    if isinstance(x, (str, bytes, Mapping)) or not hasattr(x, "__len__"):
        return False
    try:
        len(x)
    except TypeError:  # a 0-d array
        return False
    return True


def _no_values(labels, diffs) -> str | None:
    """Why the seeds give no comparison (no values, or a seed without one), else None."""
    if not diffs:
        return "no per-seed values"
    missing = [lab for lab, d in zip(labels, diffs) if math.isnan(d)]
    if missing:
        return f"seed {', '.join(missing)} has no value (an empty bucket or not measured)"
    return None


def decide(per_seed, intervals=None, *, min_seeds: int = MIN_SEEDS) -> Decision:
    """The verdict and its reason (see the module docstring for the rule and the inputs)."""
    if min_seeds < 1:
        raise InputError(f"verdict: min_seeds must be at least 1, got {min_seeds}")
    labels, diffs, pairs = _parse_seeds(per_seed)
    ia, ib, idiff = _parse_intervals(intervals)

    def out(word: str, reason: str) -> Decision:
        return Decision(word, reason, labels, tuple(diffs),
                        tuple(pairs) if pairs is not None else None, ia, ib, idiff)

    why = _no_values(labels, diffs)
    if why:
        return out(UNCLEAR, why)
    if all(d > 0 for d in diffs):
        sign = 1
    elif all(d < 0 for d in diffs):
        sign = -1
    else:
        return out(UNCLEAR, "the seeds disagree in sign" if len(diffs) > 1 else
                   "the seed shows no difference")
    word = UP if sign > 0 else DOWN
    if ia is not None and ib is not None:
        if ia == (EMPTY, EMPTY) or ib == (EMPTY, EMPTY):
            return out(UNCLEAR, "an interval is empty (no objects of this bucket)")
        apart = 1 if ib[0] > ia[1] else -1 if ib[1] < ia[0] else 0
    elif idiff is not None:
        apart = 1 if idiff[0] > 0 else -1 if idiff[1] < 0 else 0
    else:
        agree = "the seed points" if len(diffs) == 1 else f"all {len(diffs)} seeds point"
        return out(UNCLEAR, f"{agree} {word} but there are no intervals: a direction needs "
                            "intervals apart as well")
    if len(diffs) < min_seeds:
        return out(UNCLEAR, f"{len(diffs)} seed{'s' if len(diffs) > 1 else ''}: a direction "
                            f"needs at least {min_seeds}")
    if apart == 0:
        return out(UNCLEAR, "the intervals overlap")
    if apart != sign:
        return out(UNCLEAR, "the intervals and the seeds point opposite ways")
    agree = "the seed agrees" if len(diffs) == 1 else f"all {len(diffs)} seeds agree"
    return out(word, f"the intervals are apart and {agree}")


def verdict(per_seed, intervals=None, *, min_seeds: int = MIN_SEEDS) -> str:
    """``"up"``, ``"down"`` or ``"no clear difference"`` for B against A (module docstring).

    >>> verdict([0.02, 0.01, 0.03])                        # three seeds agree, no intervals
    'no clear difference'
    >>> verdict([0.02], ((0.10, 0.12), (0.13, 0.15)))      # one seed, intervals apart
    'up'
    >>> verdict([(0.30, 0.28), (0.31, 0.33), (0.29, 0.27)])  # pairs (a, b): signs differ
    'no clear difference'
    """
    return decide(per_seed, intervals, min_seeds=min_seeds).verdict


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    """``digits`` decimals; two significant digits for a value that would print as zero."""
    if math.isnan(x):
        return "n/a"
    plus = "+" if sign else ""
    if x != 0 and abs(x) < 0.5 * 10 ** -digits:
        return f"{x:{plus}.2g}"
    return f"{x:{plus}.{digits}f}"


def verdict_sentence(per_seed, intervals=None, *, metric: str = "the metric", a: str = "A",
                     b: str = "B", higher_is_better: bool = True, min_seeds: int = MIN_SEEDS,
                     digits: int = 3) -> str:
    """The verdict as one plain sentence with its numbers: the mean difference, the value
    per seed, the intervals and the reason, e.g. ``"fpn against baseline on AP_small: up
    (better). Mean difference +0.304 over 3 seeds (seed 0 +0.327, ...); 95 % intervals
    baseline 0.100-0.124, fpn 0.421-0.453; the intervals are apart and all 3 seeds agree."``
    """
    d = decide(per_seed, intervals, min_seeds=min_seeds)
    head = f"{b} against {a} on {metric}: {d.verdict}"
    if d.verdict != UNCLEAR:
        better = (d.verdict == UP) == bool(higher_is_better)
        head += f" ({'better' if better else 'worse'})"
    n = len(d.diffs)
    if n:
        per = ", ".join(f"seed {lab} {_fmt(x, digits, sign=True)}"
                        for lab, x in zip(d.seeds, d.diffs))
        body = (f"Mean difference {_fmt(d.mean, digits, sign=True)} over {n} "
                f"seed{'s' if n != 1 else ''} ({per})")
    else:
        body = "No per-seed values"
    if d.interval_a is not None and d.interval_b is not None:
        body += (f"; 95 % intervals {a} {_fmt(d.interval_a[0], digits)}-"
                 f"{_fmt(d.interval_a[1], digits)}, {b} {_fmt(d.interval_b[0], digits)}-"
                 f"{_fmt(d.interval_b[1], digits)}")
    elif d.interval_diff is not None:
        body += (f"; 95 % interval of the difference {_fmt(d.interval_diff[0], digits, True)}"
                 f" to {_fmt(d.interval_diff[1], digits, True)}")
    else:
        body += "; no intervals"
    tail = "" if not n else d.reason
    return f"{head}. {body}; {tail}." if tail else f"{head}. {body}."


# ----------------------------------------------------------------------------- paired rule
PAIRED_MIN_SEEDS = 2   # one seed (quick mode) gives no direction at all


def _t_quantile(df: int, q: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired_decide(diffs, samples, *, alpha: float = 0.05,
                  min_seeds: int = PAIRED_MIN_SEEDS) -> Decision:
    """B against A from PAIRED runs: the rule every full-mode comparison uses.

    ``diffs``: ``{seed: B - A}`` on the whole validation set (or a list). ``samples``:
    ``{seed: [R] B - A}`` on the same R fixed resamples of the validation images for both
    runs (``sodlab.engine.records.paired_samples``; NaN where a resample drew no object of
    the bucket). ``"up"`` (``"down"``) needs, at once:

    1. at least ``min_seeds`` seeds, every one with a difference of that sign;
    2. the paired bootstrap interval of the mean over the seeds (per resample, the mean of
       the seeds' differences; its ``alpha/2`` and ``1 - alpha/2`` quantiles) wholly on that
       side of zero: the validation set's noise;
    3. the t-interval of the seeds' differences (mean +- t(S-1) sd / sqrt(S)) wholly on that
       side too: the seeds' own spread, which no resampling of images can see (a
       technique-specific luck of initialisation or data order).

    Otherwise "no clear difference", with the first condition that failed as the reason.
    With three seeds, condition 3 asks the mean difference to exceed about 2.5 times the
    seeds' standard deviation; ``tests/test_verdict_paired.py`` measures the rule's false
    direction rate and power on simulated runs.
    """
    labels, vals, _ = _parse_seeds(diffs)
    mat = _resample_matrix(diffs, samples, len(vals))        # [S, R]

    def out(word: str, reason: str, idiff=None, iseeds=None) -> Decision:
        return Decision(word, reason, labels, tuple(vals), None, None, None, idiff, iseeds)

    why = _no_values(labels, vals)
    if why:
        return out(UNCLEAR, why)
    idiff, iseeds = _paired_interval(mat, alpha), _seeds_interval(vals, alpha)
    S = len(vals)
    sign = 1 if all(d > 0 for d in vals) else -1 if all(d < 0 for d in vals) else 0
    if S < min_seeds:
        return out(UNCLEAR, f"{S} seed{'s' if S != 1 else ''}: a direction needs at least "
                            f"{min_seeds}", idiff, iseeds)
    if sign == 0:
        return out(UNCLEAR, "the seeds disagree in sign", idiff, iseeds)
    if idiff is None:
        return out(UNCLEAR, "no resample has objects of this bucket", idiff, iseeds)
    if not (idiff[0] > 0 if sign > 0 else idiff[1] < 0):
        return out(UNCLEAR, "the paired interval of the difference includes zero", idiff,
                   iseeds)
    if not (iseeds[0] > 0 if sign > 0 else iseeds[1] < 0):
        return out(UNCLEAR, "the seeds spread more than the difference (their t-interval "
                            "includes zero)", idiff, iseeds)
    return out(UP if sign > 0 else DOWN, f"the paired interval excludes zero, all {S} seeds "
               "agree and their spread is small beside the difference", idiff, iseeds)


def _resample_matrix(diffs, samples, n_seeds: int):
    """``[S, R]``: one seed's resample vector per row, in the order of ``diffs``."""
    import numpy as np

    if isinstance(samples, Mapping):
        order = diffs if isinstance(diffs, Mapping) else range(n_seeds)
        vecs = [np.asarray(samples[k] if k in samples else samples[int(k)], dtype=float)
                for k in order]
    else:
        vecs = [np.asarray(v, dtype=float) for v in samples]
    if len(vecs) != n_seeds or len({v.shape for v in vecs}) > 1:
        raise InputError("paired_decide: one resample vector per seed, all of one length")
    return np.stack(vecs) if vecs else np.zeros((0, 0))


def _paired_interval(mat, alpha: float) -> tuple[float, float] | None:
    """Percentile interval over the resamples of the mean over the seeds (NaN left out)."""
    import numpy as np

    if not mat.size:
        return None
    mean_r = mat.mean(0)                                      # [R]
    mean_r = mean_r[np.isfinite(mean_r)]
    if not mean_r.size:
        return None
    lo, hi = np.quantile(mean_r, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _seeds_interval(vals: list[float], alpha: float) -> tuple[float, float] | None:
    """mean +- t(S-1) sd / sqrt(S) of the seeds' differences (None for one seed)."""
    S = len(vals)
    if S < 2:
        return None
    m = sum(vals) / S
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (S - 1))
    half = _t_quantile(S - 1, 1 - alpha / 2) * sd / math.sqrt(S)
    return (m - half, m + half)


def paired_sentence(diffs, samples, *, metric: str = "the metric", a: str = "A",
                    b: str = "B", higher_is_better: bool = True, digits: int = 3,
                    min_seeds: int = PAIRED_MIN_SEEDS) -> str:
    """``paired_decide`` as one plain sentence with its numbers (as ``verdict_sentence``)."""
    d = paired_decide(diffs, samples, min_seeds=min_seeds)
    head = f"{b} against {a} on {metric}: {d.verdict}"
    if d.verdict != UNCLEAR:
        head += f" ({'better' if (d.verdict == UP) == bool(higher_is_better) else 'worse'})"
    n = len(d.diffs)
    per = ", ".join(f"seed {lab} {_fmt(x, digits, sign=True)}" for lab, x in zip(d.seeds, d.diffs))
    body = f"Mean difference {_fmt(d.mean, digits, sign=True)} over {n} seed{'s' if n != 1 else ''} ({per})"
    if d.interval_diff is not None:
        body += (f"; paired 95 % interval {_fmt(d.interval_diff[0], digits, True)} to "
                 f"{_fmt(d.interval_diff[1], digits, True)}")
    return f"{head}. {body}; {d.reason}."


__all__ = ["verdict", "verdict_sentence", "decide", "Decision", "VERDICTS", "MIN_SEEDS",
           "UP", "DOWN", "UNCLEAR", "PAIRED_MIN_SEEDS", "paired_decide", "paired_sentence"]

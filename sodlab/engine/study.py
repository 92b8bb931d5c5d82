"""Studies as data: techniques, the comparisons "B against A", the metrics; run and compared from records.

Layer L4. A ``Study`` names its techniques (``sodlab.engine.experiment.Technique``), the
comparisons it makes and the metrics it compares. ``run_study(study, mode=...)`` gets each
technique's record for every seed of the mode (``run_technique``: trained only when it has
no record), then compares each pair on the SAME fixed resamples with the paired rule
(``sodlab.metrics.verdict.paired_decide``). The result is one format for every study:

- ``techniques[name]``: ``{"seeds": {seed: {metric: value}}, "mean": {metric: value},
  "interval": {metric: [lo, hi]}, "keys": {seed: run key}, "images_seen"}``; the interval is
  the percentile interval, over the resamples, of the mean over the seeds;
- ``comparisons``: one row per (comparison, metric): the per-seed differences, their mean,
  the paired interval, the seeds' t-interval, the verdict, its reason and sentence.

``missing(study, ...)`` lists what has no record yet; ``ready(study, ...)`` what needs no
training (a record or a cached model); ``tables(result)`` gives the two
tables a notebook shows. Quick mode has one seed, so its comparisons carry numbers and no
direction. Taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sodlab.engine.experiment import Mode, Technique, has_record, mode_of, run_technique
from sodlab.errors import InputError

DEFAULT_METRICS = ("AP_small", "AP_tiny", "AP50", "AP")


@dataclass(frozen=True)
class Study:
    """A set of techniques and the comparisons between them, declared once."""

    name: str
    notebook: str
    techniques: tuple[Technique, ...]
    comparisons: tuple[tuple[str, str], ...]          # (A, B): "B against A"
    metrics: tuple[str, ...] = DEFAULT_METRICS

    def __post_init__(self) -> None:
        names = [t.name for t in self.techniques]
        if len(set(names)) != len(names):
            raise InputError(f"study {self.name!r}: technique names repeat: {names}")
        for a, b in self.comparisons:
            if a not in names or b not in names:
                raise InputError(f"study {self.name!r}: comparison {b!r} against {a!r} names "
                                 f"a technique it does not have ({names})")

    def technique(self, name: str) -> Technique:
        for t in self.techniques:
            if t.name == name:
                return t
        raise InputError(f"study {self.name!r} has no technique {name!r}")


def _root(root, m: Mode) -> Path:
    if root is not None:
        return Path(root)
    from sodlab.data import ensure_dataset

    return ensure_dataset(m.data, 0)


def missing(study: Study, root: str | os.PathLike | None = None, *,
            mode: str | Mode = "full", seeds: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """(technique, seed) pairs of ``study`` that have no record yet (nothing trains)."""
    from sodlab.engine.experiment import _facts

    m = mode_of(mode)
    r = _root(root, m)
    facts = _facts(r)
    return [(t.name, s) for t in study.techniques for s in (seeds or m.seeds)
            if not has_record(t, r, seed=s, mode=m, facts=facts)]


def ready(study: Study, root: str | os.PathLike | None = None, *, mode: str | Mode = "quick",
          seed: int = 0) -> list[str]:
    """Names of ``study``'s techniques that need no training at ``seed``: each has a record,
    or its model (and a second stage's base) is in the run cache. A notebook passes them to
    ``run_study(..., only=...)`` to hold its own quick models against the full study without
    training the ones it never trained."""
    from sodlab.engine.experiment import _facts, is_cached_plan, plan

    m = mode_of(mode)
    r = _root(root, m)
    facts = _facts(r)
    out = []
    for t in study.techniques:
        if has_record(t, r, seed=seed, mode=m, facts=facts):
            out.append(t.name)
            continue
        p = plan(t, r, seed=seed, budget=m.budget(t.preset), stage_budget=m.stage_budget(),
                 facts=facts)
        if is_cached_plan(p):
            out.append(t.name)
    return out


def run_study(study: Study, root: str | os.PathLike | None = None, *,
              mode: str | Mode = "quick", seeds: Sequence[int] | None = None,
              progress: bool = False, only: Sequence[str] | None = None,
              budget: dict | None = None, log=None, on_technique=None) -> dict:
    """Every technique's records (trained where missing), then every comparison.

    ``budget`` replaces the mode's budget for every technique (tests use a tiny one).
    ``log``: called with one line per run as it ends (``job_line``), so a long run in the
    background says how far it is. ``on_technique``: called, each time a technique has all
    its seeds, with the study so far (``partial_result``), so a study that spans sessions
    can keep what it has.
    """
    from tqdm.auto import tqdm

    m = mode_of(mode)
    r = _root(root, m)
    seeds = tuple(seeds or m.seeds)
    techs = [t for t in study.techniques if only is None or t.name in only]
    recs: dict[str, dict[int, dict]] = {t.name: {} for t in techs}
    jobs = [(t, s) for t in techs for s in seeds]
    for k, (t, s) in enumerate(tqdm(jobs, disable=not progress, desc=study.name)):
        t0 = time.perf_counter()
        recs[t.name][s] = run_technique(t, r, seed=s, mode=m, budget=budget,
                                        progress=progress)
        if log is not None:
            log(job_line(study.name, k, len(jobs), t.name, s, recs[t.name][s],
                         time.perf_counter() - t0))
        if on_technique is not None and len(recs[t.name]) == len(seeds):
            on_technique(partial_result(study, recs, seeds, mode=m.name))
    return assemble(study, recs, mode=m.name)


def partial_result(study: Study, recs: dict[str, dict[int, dict]], seeds: Sequence[int], *,
                   mode: str) -> dict:
    """The study over the techniques with a record for every seed, and ``"missing"``: the
    (technique, seed) runs still without one (empty when the study is complete)."""
    done = {n: r for n, r in recs.items() if all(s in r for s in seeds)}
    missing = [[t.name, s] for t in study.techniques for s in seeds
               if s not in recs.get(t.name, {})]
    return {**assemble(study, done, mode=mode), "missing": missing}


def job_line(study: str, k: int, n: int, name: str, seed: int, rec: dict,
             seconds: float) -> str:
    """``study [k+1/n] technique, seed s: ...`` with where the record came from and AP_small."""
    how = "from its record" if rec.get("from_record") else f"trained and recorded in {seconds:.0f} s"
    ap = (rec.get("metrics") or {}).get("AP_small")
    tail = "" if ap is None else f", AP_small {ap:.3f}"
    return f"{study} [{k + 1}/{n}] {name}, seed {seed}: {how}{tail}"


def _interval(vectors: list[np.ndarray]) -> list[float] | None:
    mean = np.mean(np.stack(vectors), axis=0)
    mean = mean[np.isfinite(mean)]
    if not mean.size:
        return None
    lo, hi = np.quantile(mean, [0.025, 0.975])
    return [float(lo), float(hi)]


def _technique_row(study: Study, by_seed: dict[int, dict]) -> dict:
    from sodlab.engine.records import samples_of

    seeds = sorted(by_seed)
    row = {"seeds": {s: {k: by_seed[s]["metrics"].get(k) for k in study.metrics}
                     for s in seeds},
           "keys": {s: by_seed[s]["key"] for s in seeds},
           "images_seen": by_seed[seeds[0]]["budget"]["images_seen"] if seeds else None,
           "mean": {}, "interval": {}}
    base = by_seed[seeds[0]].get("base_budget") if seeds else None
    if base:  # a second stage: its budget above, the frozen base's here
        row["base_images_seen"] = int(base["max_steps"]) * int(base["batch_size"])
    for k in study.metrics:
        vals = [v for v in (row["seeds"][s][k] for s in seeds) if v is not None and v > -1]
        row["mean"][k] = float(np.mean(vals)) if vals else None
        row["interval"][k] = _interval([samples_of(by_seed[s], k) for s in seeds])
    return row


def paired_comparison(ra: dict, rb: dict, key: str, *, a: str = "A", b: str = "B"):
    """B against A on ``key`` from their records per seed (``{seed: record}``):
    ``(diffs {str(seed): B - A}, Decision, sentence)`` by the paired rule."""
    from sodlab.engine.records import paired_samples
    from sodlab.metrics.verdict import paired_decide, paired_sentence

    diffs, samples = {}, {}
    for s in sorted(set(ra) & set(rb), key=str):
        va, vb = ra[s]["metrics"].get(key), rb[s]["metrics"].get(key)
        ok = va is not None and vb is not None and va > -1 and vb > -1
        diffs[str(s)] = (vb - va) if ok else math.nan
        samples[str(s)] = paired_samples(ra[s], rb[s], key)
    return (diffs, paired_decide(diffs, samples),
            paired_sentence(diffs, samples, metric=key, a=a, b=b))


def _comparison_rows(study: Study, a: str, b: str, ra: dict, rb: dict) -> list[dict]:
    rows = []
    for k in study.metrics:
        diffs, d, sentence = paired_comparison(ra, rb, k, a=a, b=b)
        rows.append({"a": a, "b": b, "metric": k, "per_seed": diffs,
                     "mean": None if math.isnan(d.mean) else d.mean,
                     "interval": None if d.interval_diff is None else list(d.interval_diff),
                     "seeds_interval": None if d.interval_seeds is None
                     else list(d.interval_seeds),
                     "verdict": d.verdict, "reason": d.reason, "sentence": sentence})
    return rows


def assemble(study: Study, recs: dict[str, dict[int, dict]], *, mode: str) -> dict:
    """The study's result (see the module docstring) from ``{technique: {seed: record}}``."""
    techniques = {name: _technique_row(study, by_seed) for name, by_seed in recs.items()}
    comparisons = []
    for a, b in study.comparisons:
        if a in recs and b in recs:
            comparisons += _comparison_rows(study, a, b, recs[a], recs[b])
    return {"study": study.name, "notebook": study.notebook, "mode": mode,
            "metrics": list(study.metrics), "techniques": techniques,
            "comparisons": comparisons}


def tables(result: dict):
    """(techniques table, comparisons table) as pandas DataFrames, 3 significant digits."""
    import pandas as pd

    rows = []
    for name, t in result["techniques"].items():
        row = {"technique": name, "images seen": t["images_seen"], "seeds": len(t["seeds"])}
        for k in result["metrics"]:
            row[k] = t["mean"][k]
            iv = t["interval"][k]
            row[f"{k} 95 %"] = "" if iv is None else f"{iv[0]:.3f}–{iv[1]:.3f}"
        rows.append(row)
    comp = [{"B against A": f"{c['b']} vs {c['a']}", "metric": c["metric"],
             "mean B − A": c["mean"],
             "paired 95 %": "" if c["interval"] is None
             else f"{c['interval'][0]:+.3f} to {c['interval'][1]:+.3f}",
             "per seed": " / ".join(f"{v:+.3f}" for v in c["per_seed"].values()),
             "verdict": c["verdict"]} for c in result["comparisons"]]
    return pd.DataFrame(rows).set_index("technique"), pd.DataFrame(comp)


__all__ = ["Study", "DEFAULT_METRICS", "missing", "ready", "run_study", "job_line",
           "paired_comparison", "assemble", "tables"]

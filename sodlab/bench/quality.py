"""Benchmark: AP by size of the anchor presets on one budget, with seeds and bootstrap intervals.

Layer L4. The question notebooks 03, 04 and 06 ask — does a technique beat the one-level
``baseline`` on small objects? — answered with its noise: each preset trains on the same
images (``sodlab.engine.standard_budget``, the notebooks' budgets, shared through the run
cache) for several seeds; each model is evaluated on ``val``; the first seed's detections
get a percentile bootstrap interval over images (``sodlab.metrics.bootstrap_ci``). A
preset's direction against the baseline on a key is ``sodlab.metrics.verdict`` of the
paired per-seed differences (seed i of the preset minus seed i of the baseline) and the
two intervals: ``"up"`` / ``"down"`` only when the intervals are apart and every seed
agrees, else ``"no clear difference"``. Quick mode trains a few steps and decides nothing;
full mode is the verdict the notebooks quote (``results/quality.json``).

Shapes: ``seeds`` is a list [S] of ``{key: value}`` dicts, one per seed; ``ci`` is
``{key: [lo, hi]}``. ``evaluate_checkpoints`` does the evaluation part for any set of
trained checkpoints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

KEYS = ("AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "R50_tiny")
CI_KEYS = ("AP", "AP_tiny", "AP_small")


def evaluate_checkpoints(checkpoints: Mapping[str, Sequence[str | os.PathLike]],
                         split_dir: str | os.PathLike, *, n_boot: int = 200, seed: int = 0,
                         progress: bool = False) -> dict:
    """``{preset: {"seeds": [metrics per checkpoint], "ci": {key: (lo, hi)}}}``.

    ``checkpoints`` maps a name to its checkpoints, one per seed, first seed first; the
    interval is over the first checkpoint's detections (``n_boot`` resamples).
    """
    from sodlab.data.coco import load_coco
    from sodlab.engine import load_detector
    from sodlab.engine.predict import predict_split
    from sodlab.metrics import bootstrap_ci, evaluate

    gt = load_coco(split_dir)
    out = {}
    for name, paths in checkpoints.items():
        per_seed, first = [], None
        for path in paths:
            pred = load_detector(path)
            dets = predict_split(pred.model, split_dir, input_size=pred.input_size,
                                 cat_ids=pred.cat_ids, progress=progress)
            m = evaluate(gt, dets)
            per_seed.append({k: float(m[k]) for k in KEYS})
            first = dets if first is None else first
        ci = bootstrap_ci(gt, first, keys=CI_KEYS, n=n_boot, seed=seed) if n_boot else {}
        out[name] = {"seeds": per_seed, "ci": {k: list(v) for k, v in ci.items()},
                     "mean": {k: sum(s[k] for s in per_seed) / len(per_seed) for k in KEYS}}
    return out


def direction(a: dict, b: dict, key: str) -> str:
    """``sodlab.metrics.verdict`` of ``b`` against ``a`` on ``key``: seeds paired by index."""
    from sodlab.metrics.verdict import verdict

    pairs = [(sa[key], sb[key]) for sa, sb in zip(a["seeds"], b["seeds"])]  # [S] (a, b)
    ca, cb = a.get("ci", {}).get(key), b.get("ci", {}).get(key)
    return verdict(pairs, (ca, cb))


def run(*, quick: bool = True, progress: bool = False,
        data_root: str | os.PathLike | None = None,
        presets: Sequence[str] = ("baseline", "fpn", "ssh"), seeds: Sequence[int] | None = None,
        n_boot: int | None = None) -> dict:
    """Train (or take from the run cache) and evaluate ``presets`` on one budget."""
    from sodlab.data.coco import dataset_hash
    from sodlab.engine import cached_train, standard_budget
    from sodlab.provenance import provenance

    t0 = time.perf_counter()
    if data_root is None:
        from sodlab.data import ensure_dataset

        data_root = ensure_dataset("quick" if quick else "full", 0, progress=progress)
    root = Path(data_root)
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    n_boot = n_boot if n_boot is not None else (20 if quick else 200)
    budgets = {p: standard_budget(p, quick=quick) for p in presets}
    ckpts = {p: [cached_train(p, root, seed=s, quick=quick, progress=progress, **budgets[p])[0]
                 for s in seeds] for p in presets}
    res = evaluate_checkpoints(ckpts, root / "val", n_boot=n_boot, progress=progress)
    base = presets[0]
    first = budgets[base]
    directions = {p: {k: direction(res[base], res[p], k) for k in CI_KEYS}
               for p in presets[1:]}
    return {"presets": res, "against": base, "direction": directions,
            "budget": {"max_steps": first["max_steps"], "batch_size": first["batch_size"],
                       **first["overrides"], "seeds": seeds, "n_boot": n_boot,
                       **({"per_preset": budgets} if any(v != first for v in budgets.values())
                          else {})},
            "provenance": provenance(seed=seeds[0], data_hash=dataset_hash(root), quick=quick,
                                     seconds=time.perf_counter() - t0)}

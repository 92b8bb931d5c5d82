"""Benchmark: AP by size of the anchor presets on one budget, with seeds and bootstrap intervals.

Layer L4. The question notebooks 03, 04 and 06 ask — does a technique beat the one-level
``baseline`` on small objects? — answered with its noise: each preset trains on the same
images (steps x batch at one input size, the notebooks' budgets, shared through the run
cache) for several seeds; each model is evaluated on ``val``; the first seed's detections
get a percentile bootstrap interval over images (``sodlab.metrics.bootstrap_ci``). A
preset's direction against the baseline on a key is ``"up"`` only when its interval lies
wholly above the baseline's AND every one of its seeds beats every baseline seed;
``"down"`` the mirror image; otherwise ``"undecided"``. Quick mode trains a few steps and
decides nothing; full mode is the verdict the notebooks quote.

``evaluate_checkpoints`` does the evaluation part for any set of trained checkpoints.
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
    """``"up"`` / ``"down"`` / ``"undecided"`` for ``b`` against ``a`` (see the module doc)."""
    va, vb = [s[key] for s in a["seeds"]], [s[key] for s in b["seeds"]]
    ca, cb = a.get("ci", {}).get(key), b.get("ci", {}).get(key)
    if ca is None or cb is None or min(va + vb) < 0:
        return "undecided"
    if cb[0] > ca[1] and min(vb) > max(va):
        return "up"
    if cb[1] < ca[0] and max(vb) < min(va):
        return "down"
    return "undecided"


def run(*, quick: bool = True, progress: bool = False,
        data_root: str | os.PathLike | None = None,
        presets: Sequence[str] = ("baseline", "fpn", "ssh"), seeds: Sequence[int] | None = None,
        n_boot: int | None = None) -> dict:
    """Train (or take from the run cache) and evaluate ``presets`` on one budget."""
    from sodlab.data.coco import dataset_hash
    from sodlab.engine import cached_train
    from sodlab.provenance import provenance

    t0 = time.perf_counter()
    if data_root is None:
        from sodlab.data import ensure_dataset

        data_root = ensure_dataset("quick" if quick else "full", 0, progress=progress)
    root = Path(data_root)
    budget = dict(max_steps=25, batch_size=4) if quick else dict(max_steps=400, batch_size=8)
    overrides = {"input_size": 256} if quick else {}
    seeds = list(seeds) if seeds is not None else ([0] if quick else [0, 1, 2])
    n_boot = n_boot if n_boot is not None else (20 if quick else 200)
    ckpts = {p: [cached_train(p, root, overrides=overrides, seed=s, quick=quick,
                              progress=progress, **budget)[0] for s in seeds] for p in presets}
    res = evaluate_checkpoints(ckpts, root / "val", n_boot=n_boot, progress=progress)
    base = presets[0]
    verdict = {p: {k: direction(res[base], res[p], k) for k in CI_KEYS}
               for p in presets[1:]}
    return {"presets": res, "against": base, "direction": verdict,
            "budget": {**budget, **overrides, "seeds": seeds, "n_boot": n_boot},
            "provenance": provenance(seed=seeds[0], data_hash=dataset_hash(root), quick=quick,
                                     seconds=time.perf_counter() - t0)}

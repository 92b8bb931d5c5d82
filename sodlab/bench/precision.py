"""Benchmark: does the fast path (bf16 autocast + channels-last) train as well as fp32?

Layer L4. The same preset, data, budget and seeds trained once in each precision through
the run cache (``cached_train(..., precision=...)``), each model evaluated on ``val`` with
bootstrap 95 % intervals over images, and the verdict (``sodlab.metrics.verdict``) of
bf16 against fp32 on AP_small: a speed-up that cost accuracy would show as "down" with
every seed agreeing. Quick: one seed; full: three. Run it with
``sodlab bench --only precision`` (``--full`` for three seeds); on a CPU without fast bf16
the "fast" precision is fp32 itself and the benchmark says so instead of comparing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def run(*, quick: bool = True, progress: bool = False, data_root: str | os.PathLike | None = None,
        preset: str = "fpn", seeds: tuple[int, ...] | None = None, n_boot: int = 200) -> dict:
    """AP_small (and AP50, AP) per precision and seed, intervals, and the verdict."""
    from sodlab.data import ensure_dataset
    from sodlab.data.coco import dataset_hash, load_coco
    from sodlab.engine import cached_train, load_detector, standard_budget
    from sodlab.engine.precision import resolve_precision
    from sodlab.engine.predict import predict_split
    from sodlab.metrics import bootstrap_ci, evaluate, verdict, verdict_sentence
    from sodlab.provenance import provenance

    t0 = time.perf_counter()
    root = Path(data_root) if data_root else ensure_dataset("quick", 0, progress=progress)
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else (0, 1, 2))
    fast = resolve_precision("auto")
    budget = standard_budget(preset, quick=True)
    out: dict = {"preset": preset, "budget": budget, "seeds": list(seeds), "fast": fast,
                 "runs": {}}
    if fast == "fp32":
        out["note"] = "this CPU has no fast bf16: the fast path is fp32, nothing to compare"
        return out
    gt = load_coco(root / "val")
    for prec in ("fp32", fast):
        for s in seeds:
            ckpt, summary = cached_train(preset, root, seed=s, quick=quick, precision=prec,
                                         progress=progress, **budget)
            pred = load_detector(ckpt)
            dets = predict_split(pred.model, root / "val", input_size=pred.input_size,
                                 cat_ids=pred.cat_ids)
            m = evaluate(gt, dets)
            ci = bootstrap_ci(gt, dets, keys=("AP_small",), n=n_boot, seed=0)
            out["runs"][f"{prec}/{s}"] = {
                "AP_small": m["AP_small"], "AP50": m["AP50"], "AP": m["AP"],
                "AP_small_ci95": list(ci["AP_small"]), "train_seconds": summary.get("seconds"),
                "train_images_per_s": summary.get("images_per_s")}
    pairs = [(out["runs"][f"fp32/{s}"]["AP_small"], out["runs"][f"{fast}/{s}"]["AP_small"])
             for s in seeds]
    first = seeds[0]
    intervals = (tuple(out["runs"][f"fp32/{first}"]["AP_small_ci95"]),
                 tuple(out["runs"][f"{fast}/{first}"]["AP_small_ci95"]))
    out["verdict_AP_small"] = verdict(pairs, intervals)
    out["sentence"] = verdict_sentence(pairs, intervals, metric="AP_small", a="fp32", b=fast)
    out["provenance"] = provenance(seed=first, data_hash=dataset_hash(root), quick=quick,
                                   seconds=time.perf_counter() - t0)
    return out

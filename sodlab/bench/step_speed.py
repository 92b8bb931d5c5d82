"""Benchmark: where a training step's time goes, per preset, against a fixed yardstick.

Layer L4. Speeds differ threefold between machines, so a rate is only quotable as a ratio
to something timed in the same process. For every preset named (default ``fpn``, ``s3fd``,
``pyramidbox``), one after another in one process, on the same in-memory batches of the
embedded dataset (data loading not timed):

- ``yardstick_images_per_s``: torchvision's ``resnet18`` (no weights), one training step
  (cross-entropy on 1,000 random labels, SGD) on ``[8, 3, 384, 384]`` in the same precision
  and memory format as the detectors; every preset's ``vs_yardstick`` divides by it;
- ``images_per_s``: ``sodlab.engine.train.train_step`` in eager mode, the engine's path;
  ``dense_matching_images_per_s`` the same steps with the anchor matching on its dense
  reference path (``sodlab.matching.dense_reference``, bit-identical), alternating with it,
  and ``vs_dense_matching`` their ratio: what the overlap-pairs matching saves;
- ``operators``: the profiler's table of one timed stretch of steps: the operators with the
  largest self CPU time, their share of the total, and whether they ran in backward
  (``torch.profiler``; autograd's backward nodes are named ``...Backward``);
- ``phases_ms``: ``train_step``'s own phase clock (forward with loss, finite-loss check,
  backward, clipping, optimizer) per batch;
- ``compiled``: the same steps with the model wrapped in ``torch.compile`` (inductor on the
  CPU), only when asked (``compile=True``): seconds to compile (the first steps), the steady
  rate, its ratio to eager, and the largest relative difference of the losses of the first
  steps from the same initial weights (compiled kernels round differently, so a cache entry
  trained one way is not bit-identical to the other). Off by default: on the whole detector
  it was measured far slower than eager, because the matching's data-dependent shapes break
  the graph and every padded batch shape compiles again; the engine does not compile.

``sodlab bench --only step_speed`` writes it; quick mode times a few steps of ``fpn`` only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

PRESETS = ("fpn", "s3fd", "pyramidbox")
YARDSTICK_SHAPE = (8, 3, 384, 384)  # [B, 3, H, W]


def yardstick_rate(precision: str, *, steps: int = 6, warmup: int = 2, seed: int = 0) -> float:
    """Images/s of one ``resnet18`` training step on ``YARDSTICK_SHAPE`` in ``precision``."""
    import torchvision

    from sodlab.engine.precision import autocast, prepare_images, prepare_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = prepare_model(torchvision.models.resnet18(num_classes=1000), precision).train()
        x = torch.rand(YARDSTICK_SHAPE)  # [8, 3, 384, 384]
        y = torch.randint(1000, (YARDSTICK_SHAPE[0],))  # [8]
    x = prepare_images(x, precision)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(precision, torch.device("cpu")):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * YARDSTICK_SHAPE[0] / (time.perf_counter() - t0)


def _model_and_batches(preset: str, root: Path, *, precision: str, n: int, batch_size: int,
                       seed: int):
    from sodlab.bench.train_speed import _train_batches, _train_dataset
    from sodlab.data.dataset import DetectionDataset
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.precision import prepare_model
    from sodlab.engine.train import TrainConfig, build_optimizer

    cfg = make_config(preset, num_classes=DetectionDataset(root / "train").num_classes)
    batches = _train_batches(_train_dataset(root, cfg.input_size, seed), batch_size, n, seed)

    def fresh():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = prepare_model(build_detector(cfg), precision).train()
        return model, build_optimizer(model, TrainConfig(lr=1e-4))

    return fresh, batches, cfg


def _steps(model, opt, batches, precision: str, timings: dict | None = None) -> list[float]:
    from sodlab.engine.train import train_step

    return [train_step(model, b, opt, precision=precision, timings=timings)["loss"]
            for b in batches]


def operator_table(model, opt, batches, precision: str, *, top: int = 12) -> list[dict]:
    """The ``top`` operators by self CPU time over ``batches``: name, ms per step, share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _steps(model, opt, batches, precision)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"operator": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / len(batches),
             "share": e.self_cpu_time_total / total, "calls_per_step": e.count / len(batches),
             "backward": "Backward" in e.key or "backward" in e.key}
            for e in events[:top]]


def _rate(model, opt, batches, precision: str, timings: dict | None = None) -> float:
    t0 = time.perf_counter()
    _steps(model, opt, batches, precision, timings)
    return len(batches) * batches[0][0].shape[0] / (time.perf_counter() - t0)


def _rate_beside_dense(model, opt, batches, precision: str, timings: dict):
    """(images/s of the engine's matching, images/s with the dense reference matching):
    the same batches, alternating halves, so a passing load hits both alike. The two give
    the same numbers bit for bit (``sodlab.matching.dense_reference``)."""
    from sodlab.matching import dense_reference

    half = max(1, len(batches) // 2)
    seconds = {"pairs": 0.0, "dense": 0.0}
    for chunk in (batches[:half], batches[half:]):
        if not chunk:
            continue
        t0 = time.perf_counter()
        _steps(model, opt, chunk, precision, timings)
        seconds["pairs"] += time.perf_counter() - t0
        with dense_reference():
            t0 = time.perf_counter()
            _steps(model, opt, chunk, precision)
            seconds["dense"] += time.perf_counter() - t0
    images = sum(b[0].shape[0] for b in batches)  # both ways train on every batch
    return images / seconds["pairs"], images / seconds["dense"]


def compiled_speed(fresh, batches, precision: str, *, warmup: int, eager_losses) -> dict:
    """``torch.compile`` of a freshly initialised model: compile seconds, steady rate, and
    the largest relative loss difference from the eager run of the same first steps."""
    model, opt = fresh()
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    losses = _steps(compiled, opt, batches[:warmup], precision)
    compile_s = time.perf_counter() - t0
    rate = _rate(compiled, opt, batches[warmup:], precision)
    diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, eager_losses)]
    return {"compile_seconds": compile_s, "images_per_s": rate,
            "max_rel_loss_diff_first_steps": max(diffs) if diffs else None}


def measure(preset: str, root: Path, *, precision: str, steps: int, warmup: int,
            batch_size: int = 8, seed: int = 0, compile: bool = False) -> dict:
    """One preset's eager rate, phase clock, operator table and (optionally) compiled rate."""
    fresh, batches, cfg = _model_and_batches(preset, root, precision=precision,
                                             n=warmup + steps, batch_size=batch_size, seed=seed)
    model, opt = fresh()
    eager_first = _steps(model, opt, batches[:warmup], precision)
    timings: dict[str, float] = {}
    rate, dense = _rate_beside_dense(model, opt, batches[warmup:], precision, timings)
    ops = operator_table(model, opt, batches[warmup:warmup + min(steps, 3)], precision)
    out = {"preset": preset, "input_size": int(cfg.input_size), "batch_size": batch_size,
           "steps_timed": steps, "images_per_s": rate,
           "dense_matching_images_per_s": dense, "vs_dense_matching": rate / dense,
           "phases_ms": {k: 1e3 * v / steps for k, v in timings.items()}, "operators": ops}
    if compile:
        out["compiled"] = compiled_speed(fresh, batches, precision, warmup=warmup,
                                         eager_losses=eager_first)
        out["compiled"]["vs_eager"] = out["compiled"]["images_per_s"] / rate
    return out


def run(*, quick: bool = True, progress: bool = False, data_root: str | Path | None = None,
        presets: Sequence[str] | None = None, precision: str = "auto",
        compile: bool | None = None, steps: int | None = None) -> dict:
    """Every preset's step profile beside the yardstick, in one process (module docstring).

    Quick: ``fpn`` only, 3 timed steps. Full: ``PRESETS``, 12 timed steps. ``compile``:
    measure ``torch.compile`` too (minutes of compiling per preset).
    """
    from sodlab.data import ensure_dataset
    from sodlab.engine.precision import resolve_precision

    root = Path(data_root) if data_root else ensure_dataset("quick", 0, progress=progress)
    prec = resolve_precision(precision)
    presets = list(presets or (("fpn",) if quick else PRESETS))
    steps = int(steps or (3 if quick else 12))
    compile = bool(compile)
    yard = yardstick_rate(prec, steps=2 if quick else 6)
    rows = {}
    for p in presets:
        rows[p] = measure(p, root, precision=prec, steps=steps, warmup=2 if quick else 3,
                          compile=compile)
        rows[p]["vs_yardstick"] = rows[p]["images_per_s"] / yard
    return {"precision": prec, "threads": torch.get_num_threads(),
            "yardstick": "torchvision resnet18, one train step on [8, 3, 384, 384]",
            "yardstick_images_per_s": yard, "presets": rows}


__all__ = ["PRESETS", "yardstick_rate", "operator_table", "compiled_speed", "measure", "run"]

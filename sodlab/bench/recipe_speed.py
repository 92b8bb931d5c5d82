"""Benchmark: what single-scale, MST, SNIP and SNIPER training and testing cost per step.

Layer L4. Notebook 05_snip_sniper trains the four recipes on one budget of *images seen*;
this benchmark says what that budget costs in time. Measured side by side in one run, in
this process: training steps of the ``fpn`` preset on batches drawn through each recipe's
own transforms (``sodlab.engine.train.build_dataset``), timed round-robin (recipe 1, 2,
3, 4, 1, 2, ...) so that a change in the machine's load hits every recipe alike, and the
mean step per recipe reported (MST and SNIP draw one scale per batch; here their batches
take the scales in turn, so a mean over a multiple of three rounds is the expected cost); then inference per validation image at one scale and
with SNIP's three scales (``sodlab.snip.multiscale_predict``). Ratios against single
scale are the result; absolute times depend on the machine and on who else uses it.
A batch is padded to its largest image: when MST and SNIP drew a scale per image (recipe
``"group": "image"``), one image at scale 2 made the whole batch pay for it (70 % of their
batch pixels were padding); ``train_padding_share`` is the share of each recipe's batch
pixels that is padding.

Shapes: batches ``[B, 3, Hp, Wp]`` (padded to a multiple of 32); images ``[3, H, W]``.
Dimension legend: B images per step, Hp x Wp padded batch size.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch


def snip_recipes(chip: int, stride: int = 32) -> dict[str, dict | None]:
    """Notebook 05's four recipes: single scale, MST (no ranges), SNIP, SNIPER (``chip`` px)."""
    from sodlab.snip import DEFAULT_RANGES, DEFAULT_SCALES

    ranges = [[lo, None if math.isinf(hi) else hi] for lo, hi in DEFAULT_RANGES]
    scales = list(DEFAULT_SCALES)
    return {"single scale": None,
            "MST (no ranges)": {"snip": {"scales": scales, "ranges": [[0, None]] * len(scales)}},
            "SNIP": {"snip": {"scales": scales, "ranges": ranges}},
            "SNIPER": {"sniper": {"scales": scales, "ranges": ranges, "chip": chip,
                                  "stride": stride}}}


def _batches(split: Path, recipe: dict | None, *, input_size: int, batch_size: int,
             steps: int) -> list[tuple[torch.Tensor, list[dict]]]:
    """``steps`` batches of ``batch_size`` training items, transformed as ``recipe`` trains."""
    from sodlab.data.dataset import collate
    from sodlab.engine.train import ScaleGrouped, TrainConfig, build_dataset

    ds = build_dataset(split, TrainConfig(recipe=recipe, batch_size=batch_size, seed=0),
                       input_size=input_size)
    n = len(ds)
    batches = [[(b * batch_size + j) % n for j in range(batch_size)] for b in range(steps)]
    if isinstance(ds, ScaleGrouped):  # one scale per batch as the engine trains, here in
        batches = [[(i, b % ds.n_scales) for i in idx]  # turn, so a mean over a multiple
                   for b, idx in enumerate(batches)]  # of the scale count is the expectation
    return [collate([ds[i] for i in b]) for b in batches]


def _train_step_seconds(model, opt, batches: dict[str, list], precision: str, *, warm: int,
                        rounds: int) -> dict[str, float]:
    """Mean seconds of one ``train_step`` per recipe, timed round-robin after ``warm`` rounds."""
    from sodlab.engine.train import train_step

    def step(images: torch.Tensor, targets: list[dict]) -> float:
        model.train()
        t0 = time.perf_counter()
        train_step(model, (images, targets), opt, precision=precision)
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in batches}
    for r in range(warm + rounds):  # the first rounds warm up every shape's first call
        for name in batches:
            s = step(*batches[name][r])
            if r >= warm:
                times[name].append(s)
    return {name: statistics.fmean(ts) for name, ts in times.items()}


def _test_ms(model, images: list[torch.Tensor], size: int) -> dict[str, float]:
    """Median ms per image of single-scale and SNIP's three-scale inference, alternating."""
    from sodlab.engine.predict import as_given_predict_fn
    from sodlab.snip import DEFAULT_RANGES, DEFAULT_SCALES, multiscale_predict

    model.eval()
    raw = as_given_predict_fn(model)

    def single(img: torch.Tensor) -> dict:
        f = size / max(img.shape[1:])
        return multiscale_predict(raw, img, factors=(f,), ranges=((0.0, math.inf),))

    def multi(img: torch.Tensor) -> dict:
        f = size / max(img.shape[1:])
        return multiscale_predict(raw, img, factors=tuple(s * f for s in DEFAULT_SCALES),
                                  ranges=DEFAULT_RANGES)

    test_s: dict[str, list[float]] = {"single-scale test": [], "multi-scale test": []}
    with torch.inference_mode():
        single(images[0]), multi(images[0])  # warm-up
        for img in images:  # alternate, for the same reason as training
            for name, fn in (("single-scale test", single), ("multi-scale test", multi)):
                t0 = time.perf_counter()
                fn(img)
                test_s[name].append(time.perf_counter() - t0)
    return {name: 1000.0 * statistics.median(ts) for name, ts in test_s.items()}


def run(*, quick: bool = True, progress: bool = False, data_root: str | Path | None = None,
        preset: str = "fpn", overrides: Sequence[str] | dict = (), batch_size: int = 8,
        rounds: int | None = None, n_test: int | None = None, precision: str = "auto") -> dict:
    """Median training step per recipe and inference per image, with ratios to single scale.

    ``data_root``: a dataset root (default: the embedded quick dataset). ``rounds``: timed
    round-robin rounds after one warm-up round (quick 1, full 5); each round trains one
    batch of ``batch_size`` per recipe. ``n_test``: validation images timed per test mode
    (quick 2, full 20).
    """
    from sodlab.data import ensure_dataset
    from sodlab.data.dataset import DetectionDataset
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.precision import prepare_model, resolve_precision
    from sodlab.engine.train import TrainConfig, build_optimizer

    root = Path(data_root) if data_root else ensure_dataset("quick", 0, progress=progress)
    split = root / "train"
    cfg = make_config(preset, num_classes=DetectionDataset(split).num_classes,
                      overrides=overrides)
    size = int(cfg.input_size)
    prec = resolve_precision(precision)
    recipes = snip_recipes(chip=size // 2)
    rounds = rounds or (1 if quick else 6)
    warm = 1 if quick else 3  # full: one warm-up round per scale (each shape's first call)
    batches = {name: _batches(split, r, input_size=size, batch_size=batch_size,
                              steps=warm + rounds) for name, r in recipes.items()}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = prepare_model(build_detector(cfg), prec)
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    step_s = _train_step_seconds(model, opt, batches, prec, warm=warm, rounds=rounds)
    pixels = {name: sum(float(b[0][:, 0].numel()) for b in bs) / len(bs)
              for name, bs in batches.items()}  # padded pixels per batch
    image_px = {name: sum(float(t["size"][0] * t["size"][1]) for b in bs for t in b[1]) / len(bs)
                for name, bs in batches.items()}  # the images' own pixels per batch

    val = DetectionDataset(root / "val")
    n = min(len(val), n_test or (2 if quick else 20))
    test_ms = _test_ms(model, [val[i][0] for i in range(n)], size)
    base = step_s["single scale"]
    return {
        "train_step_vs_single": {name: s / base for name, s in step_s.items()},
        "train_pixels_vs_single": {name: p / pixels["single scale"]
                                   for name, p in pixels.items()},
        "train_padding_share": {name: 1.0 - image_px[name] / pixels[name] for name in pixels},
        "test_multi_vs_single": test_ms["multi-scale test"] / test_ms["single-scale test"],
        "train_step_ms": {name: 1000.0 * s for name, s in step_s.items()},
        "train_images_per_s": {name: batch_size / s for name, s in step_s.items()},
        "test_ms_per_image": test_ms,
        "preset": preset,
        "input_size": size,
        "chip": size // 2,
        "batch_size": batch_size,
        "rounds": rounds,
        "test_images": n,
        "threads": torch.get_num_threads(),
        "precision": prec,
    }

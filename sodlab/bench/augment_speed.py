"""Benchmark: augmentation throughput, and copy-paste's cost against one training step.

Layer L4. Measured side by side in one run, in this process, on the same training images
resized to the preset's input size (as the engine feeds them): loading an item (decode +
resize + flip), the same item with its masks decoded (copy-paste needs them), copy-paste on
it (``strategy="all_once"``, the object alone and with its context region), and one
optimizer step of the ``fpn`` preset (the detector notebook 02_augmentation trains, on the
default precision path) divided by the batch size; the ``baseline`` preset's step is timed
beside it, as the smallest step a user could pair copy-paste with. Target (issue: augmentation for small objects): copy-paste
costs under 10 % of a training step per image at default sizes, so augmenting on the fly
does not make data loading the bottleneck. Shares are ratios of times measured in the same
run; the absolute rates depend on the machine and on whoever else uses its cores.

Shapes: images ``[3, H, W]`` float in [0, 1] with max(H, W) = input size; batches
``[B, 3, Hp, Wp]``. Dimension legend: B images per step, H x W resized image, Hp x Wp padded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

TARGET_SHARE = 0.10  # copy-paste per image / training step per image


def _seconds_per_call(fn: Callable[[int], object], n: int) -> float:
    """Mean seconds per call of ``fn(i)`` for i = 0..n-1."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / max(n, 1)


def _paste_seconds(items: list, n: int) -> tuple[dict[str, float], dict[str, int]]:
    """Mean seconds of ``copy_paste`` (all_once) per item, the object alone and with its
    context, and how many objects each pasted over the ``n`` items."""
    from sodlab.augment import copy_paste

    paste: dict[str, float] = {}
    pasted: dict[str, int] = {}
    for name, kw in (("alone", {"with_context": False}), ("context", {"with_context": True})):
        g = torch.Generator().manual_seed(0)
        copy_paste(*items[0], g=g, **kw)  # warm-up (grid_sample's first call)
        count = [0]

        def one(i: int, kw=kw, g=g, count=count) -> None:
            _, t = copy_paste(items[i][0], items[i][1], g=g, strategy="all_once", **kw)
            count[0] += t["pasted"]

        paste[name] = _seconds_per_call(one, n)
        pasted[name] = count[0]
    return paste, pasted


def _step_seconds_per_image(step_cfg, batches: list, precision: str, steps: int,
                            batch_size: int) -> float:
    """Seconds per image of one optimizer step of ``step_cfg``'s detector on ``batches``."""
    from sodlab.detector import build_detector
    from sodlab.engine.precision import prepare_model
    from sodlab.engine.train import TrainConfig, build_optimizer, train_step

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = prepare_model(build_detector(step_cfg), precision)
    model.train()
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    train_step(model, batches[0], opt, precision=precision)  # warm-up
    return _seconds_per_call(
        lambda i: train_step(model, batches[i % len(batches)], opt, precision=precision),
        steps) / batch_size


def _shares(paste: dict[str, float], step_s: float, base_s: float, load_s: float,
            load_masks_s: float) -> dict:
    """Copy-paste's and the masks' shares of a training step per image, and the rates."""
    masks_s = max(load_masks_s - load_s, 0.0)
    return {
        "copy_paste_share_of_step": paste["alone"] / step_s,
        "copy_paste_context_share_of_step": paste["context"] / step_s,
        "meets_target": bool(max(paste.values()) / step_s < TARGET_SHARE),
        "target_share": TARGET_SHARE,
        "masks_share_of_step": masks_s / step_s,
        "copy_paste_share_of_baseline_step": paste["alone"] / base_s,
        "copy_paste_context_share_of_baseline_step": paste["context"] / base_s,
        "baseline_step_ms_per_image": 1000.0 * base_s,
        "copy_paste_images_per_s": 1.0 / paste["alone"],
        "copy_paste_context_images_per_s": 1.0 / paste["context"],
        "load_images_per_s": 1.0 / load_s,
        "load_with_masks_images_per_s": 1.0 / load_masks_s,
        "train_images_per_s": 1.0 / step_s,
        "copy_paste_ms_per_image": 1000.0 * paste["alone"],
        "copy_paste_context_ms_per_image": 1000.0 * paste["context"],
        "train_step_ms_per_image": 1000.0 * step_s,
    }


def run(*, quick: bool = True, progress: bool = False, data_root: str | Path | None = None,
        preset: str = "fpn", overrides: Sequence[str] | dict = (),
        n_images: int | None = None, batch_size: int = 8, steps: int | None = None,
        precision: str = "auto") -> dict:
    """Images/s of loading and copy-paste, and copy-paste's share of a training step per image.

    ``data_root``: a dataset root (default: the embedded quick dataset). ``n_images`` items
    are loaded and pasted (quick 24, full 120); ``steps`` timed training steps of
    ``batch_size`` images after one warm-up step (quick 2, full 5).
    """
    from sodlab.data import ensure_dataset
    from sodlab.data.dataset import DetectionDataset, collate
    from sodlab.data.transforms import Compose, RandomHFlip, ResizeLongest
    from sodlab.detector import make_config
    from sodlab.engine.precision import resolve_precision

    root = Path(data_root) if data_root else ensure_dataset("quick", 0, progress=progress)
    split = root / "train"
    plain = DetectionDataset(split)
    cfg = make_config(preset, num_classes=plain.num_classes, overrides=overrides)
    tf = Compose([ResizeLongest(cfg.input_size), RandomHFlip()])
    plain.transforms = tf
    masked = DetectionDataset(split, transforms=tf, with_masks=True)
    n = min(len(plain), n_images or (24 if quick else 120))
    steps = steps or (2 if quick else 5)

    plain[0], masked[0]  # warm-up: first decode, allocator
    load_s = _seconds_per_call(lambda i: plain[i], n)
    load_masks_s = _seconds_per_call(lambda i: masked[i], n)
    items = [masked[i] for i in range(n)]
    small = sum(int(((~t["iscrowd"]) & (t["area"] <= 32.0**2)).sum()) for _, t in items)
    paste, pasted = _paste_seconds(items, n)

    prec = resolve_precision(precision)
    batches = [collate([plain[(b * batch_size + j) % len(plain)] for j in range(batch_size)])
               for b in range(steps)]
    step_s = _step_seconds_per_image(cfg, batches, prec, steps, batch_size)
    base_s = (step_s if preset == "baseline" else _step_seconds_per_image(
        make_config("baseline", num_classes=plain.num_classes), batches, prec, steps,
        batch_size))
    return {
        **_shares(paste, step_s, base_s, load_s, load_masks_s),
        "small_objects_per_image": small / n,
        "pasted_per_image": pasted["alone"] / n,
        "pasted_context_per_image": pasted["context"] / n,
        "images": n,
        "batch_size": batch_size,
        "steps": steps,
        "preset": preset,
        "input_size": int(cfg.input_size),
        "threads": torch.get_num_threads(),
        "precision": prec,
    }

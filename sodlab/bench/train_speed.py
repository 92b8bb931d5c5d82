"""Benchmark: training speed, VGA latency and memory per preset, and ours vs torchvision SSDlite.

Layer L4. For every preset in ``sodlab.detector.PRESETS``, measured one after another in
the same run, each in a fresh subprocess (so its memory peak is its own):

- ``train_images_per_s``: ``sodlab.engine.train.train_step`` on batches of 8 images at the
  preset's input size, batches prepared in memory beforehand (data loading not timed), after
  warm-up steps, in the fast precision (``sodlab.engine.precision``: bf16 autocast +
  channels-last where the CPU has AVX-512-BF16/AMX); ``*_fp32`` the fp32 NCHW path,
  alternating with it in chunks of steps; ``*_e2e`` the same with the engine's data
  loading included; ``fast_vs_fp32(_e2e)`` their ratios (the target: >= 2x for ``fpn``);
- ``step_breakdown_ms``: one fast-path ``train_step`` taken apart (backbone, neck, head
  forward; the loss with matching; the rest of the forward; the finite-loss check;
  backward; gradient clipping; optimizer; loading a batch) — the profile of what is left;
- ``macs_per_image`` (one eval forward) and ``train_gflops_per_s`` (forward + backward
  FLOPs per image x images/s), so the distance to the CPU's peak is on the page;
- ``vga_ms_1t`` / ``vga_ms_2t``: median eval-mode forward + post-processing time of one
  640 x 480 image with ``torch.set_num_threads(1)`` and ``(2)``;
- ``peak_rss_*_mb``: the process's peak resident memory (``resource.getrusage`` maxrss)
  after importing and building the model, after inference, and after training; the
  ``*_delta_mb`` values subtract the first, so they are what the phase added (torch's
  allocator may keep freed memory, so they are upper bounds on live tensors).

``data_path_speed(root, preset)`` (on its own, not part of ``run``): training images/s
with the engine's data path set each way (decoding every time or reading the pixel cache;
no prefetch, a prefetch thread, one DataLoader worker) beside compute alone, on the same
batches, round-robin in one process, with the pixel cache's one-off build time.

Then "what a user would pick instead": torchvision's ``ssdlite320_mobilenet_v3_large``
(no pretrained weights, ``num_classes = C + 1``) trained from scratch with the SAME
wall-clock budget as our ``fpn`` and ``faceboxes`` (``compare_presets`` names others) on
the same dataset root (AdamW, warm-up + cosine over the budget, batch 8, horizontal flips;
SSDlite resizes to 320 x 320 itself), all evaluated with ``sodlab.metrics.evaluate`` on
``val``, then each trained model timed at VGA on one thread (``vga_fps_1t``; the FaceBoxes
paper reports 20 FPS on one CPU core), in fp32 (``vga_fps_1t``) and in the fast precision
(``vga_fps_1t_fast``: bf16 autocast where the CPU has it, SSDlite included, so the race is
fair both ways). Full: 300 s each; quick: 20 s each. ``compare_presets`` defaults to
``fpn``, ``faceboxes`` and ``fast``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _train_dataset(root: Path, input_size: int, seed: int):
    from sodlab.engine.train import TrainConfig, build_dataset

    return build_dataset(root / "train", TrainConfig(seed=seed), input_size=input_size)


def _batch_indices(size: int, batch_size: int, n: int, seed: int) -> list[list[int]]:
    """The first ``n`` batches (index lists) in the engine's data order, epoch 0 on."""
    from sodlab.engine.train import epoch_batches

    order: list[int] = []
    e = 0
    while len(order) < n * batch_size:
        order += [i for b in epoch_batches(size, batch_size=batch_size, world_size=1,
                                           seed=seed, epoch=e) for i in b]
        e += 1
    return [order[k * batch_size:(k + 1) * batch_size] for k in range(n)]


def _train_batches(ds, batch_size: int, n: int, seed: int, start: int = 0) -> list:
    """``n`` collated batches in the engine's data order, from global batch ``start`` on."""
    from sodlab.data.dataset import collate

    return [collate([ds[i] for i in b])
            for b in _batch_indices(len(ds), batch_size, start + n, seed)[start:]]


def count_flops(model: torch.nn.Module, batch, *, train: bool) -> float:
    """FLOPs of one forward (``train=False``, eval) or forward + backward (``train=True``)."""
    from torch.utils.flop_counter import FlopCounterMode

    images, targets = batch
    counter = FlopCounterMode(display=False)
    if train:
        model.train()
        with counter:
            model(images, targets)["loss"].backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with counter, torch.inference_mode():
            model(images)
    return float(counter.get_total_flops())


FORWARD_PARTS = ("backbone", "neck", "head", "loss")


def _time_forward_parts(model: torch.nn.Module, acc: dict[str, float]) -> Callable[[], None]:
    """Add the seconds of the detector's ``backbone``, ``neck`` and ``head`` forwards (hooks)
    and of its ``loss`` (a wrapper) to ``acc``; returns the function that undoes it."""
    starts: dict[str, float] = {}
    handles = []
    for name in FORWARD_PARTS[:3]:
        mod = getattr(model, name, None)
        if mod is None:
            continue
        handles.append(mod.register_forward_pre_hook(
            lambda m, a, name=name: starts.__setitem__(name, time.perf_counter())))
        handles.append(mod.register_forward_hook(
            lambda m, a, o, name=name: acc.__setitem__(
                name, acc[name] + time.perf_counter() - starts[name])))
    inner = model.loss

    def timed_loss(*a, **k):
        t0 = time.perf_counter()
        out = inner(*a, **k)
        acc["loss"] += time.perf_counter() - t0
        return out

    model.loss = timed_loss

    def undo() -> None:
        del model.loss
        for h in handles:
            h.remove()

    return undo


def step_breakdown(model: torch.nn.Module, batches: list, optimizer, *, precision: str,
                   ds=None, batch_size: int = 8) -> dict[str, float]:
    """Where one training step's time goes, in ms per step (mean over ``batches``).

    Each step is ``sodlab.engine.train.train_step`` itself, which reports its phases
    (``timings``): ``check`` (the finite-loss check), ``backward``, ``clip`` (gradient
    clipping at its default norm) and ``optimizer``. Its forward phase is taken apart:
    forward hooks time the detector's ``backbone``, ``neck`` and ``head``, a wrapper its
    ``loss`` (matching and the losses), and ``forward_other`` is the rest (inputs to the
    precision, anchors, the model's own glue); the parts add up to the whole step.
    ``data`` (when ``ds`` is given): loading and collating one batch as the engine does.
    """
    from sodlab.engine.train import train_step

    acc = dict.fromkeys(FORWARD_PARTS, 0.0)
    phases: dict[str, float] = {}
    undo = _time_forward_parts(model, acc)
    model.train()
    try:
        for batch in batches:
            train_step(model, batch, optimizer, precision=precision, timings=phases)
    finally:
        undo()
    acc["forward_other"] = phases["forward"] - sum(acc[k] for k in FORWARD_PARTS)
    acc.update((k, phases[k]) for k in ("check", "backward", "clip", "optimizer"))
    out = {k: 1000.0 * v / len(batches) for k, v in acc.items()}
    if ds is not None:
        t0 = time.perf_counter()
        _train_batches(ds, batch_size, len(batches), seed=0, start=len(batches))
        out["data"] = 1000.0 * (time.perf_counter() - t0) / len(batches)
    return out


def _vga_latencies(models: dict, fast: str, seed: int, repeats: int):
    """VGA latency (ms) on 1 and 2 threads of the fp32 model and of the ``fast`` one."""
    model = models["fp32"]
    model.eval()
    vga = torch.rand(1, 3, 480, 640, generator=torch.Generator().manual_seed(seed))
    lat = {t: vga_latency_ms(model, vga, threads=t, repeats=repeats) for t in (1, 2)}
    lat_fast = lat
    if fast != "fp32":
        models[fast].eval()
        lat_fast = {t: vga_latency_ms(in_precision(models[fast], fast), vga, threads=t,
                                      repeats=repeats) for t in (1, 2)}
    return lat, lat_fast


def _timed_training(models: dict, opts: dict, batches: list, ds, *, warmup: int, steps: int,
                    batch_size: int, seed: int) -> tuple[dict, dict]:
    """Seconds of ``steps`` ``train_step`` calls per precision, alternating chunks of steps:
    on the in-memory ``batches`` (compute only) and end to end (batches loaded and collated
    from ``ds`` as the engine does), after ``warmup`` steps on each model."""
    from sodlab.engine.train import train_step

    for m in models.values():
        m.train()
    compute = {p: 0.0 for p in models}
    e2e = {p: 0.0 for p in models}
    chunk = max(1, steps // 2)
    for b in batches[:warmup]:  # warm-up: first calls of every shape
        for p in models:
            train_step(models[p], b, opts[p], precision=p)
    for c0 in range(warmup, warmup + steps, chunk):
        for p in models:  # compute only: the same in-memory batches for both paths
            t0 = time.perf_counter()
            for b in batches[c0:c0 + chunk]:
                train_step(models[p], b, opts[p], precision=p)
            compute[p] += time.perf_counter() - t0
        for p in models:  # end to end: load and collate as the engine does, then step
            t0 = time.perf_counter()
            for b in _train_batches(ds, batch_size, min(chunk, warmup + steps - c0), seed,
                                    start=c0):
                train_step(models[p], b, opts[p], precision=p)
            e2e[p] += time.perf_counter() - t0
    return compute, e2e


def measure_preset(preset: str, data_root: str | os.PathLike, *, steps: int = 10,
                   warmup: int = 2, repeats: int = 5, batch_size: int = 8,
                   seed: int = 0, precision: str = "auto") -> dict:
    """Speed and memory of one preset in THIS process (run it in a fresh one).

    Training is timed for the fp32 NCHW reference path and for ``precision`` (``auto``: the
    fast path where the CPU has it) side by side, alternating chunks of steps, twice: on
    batches prepared in memory (compute only) and end to end through the engine's dataset
    (decoding, resizing, flips and collation included, as ``sodlab train`` runs).
    """
    from sodlab.data.dataset import DetectionDataset
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.precision import prepare_model, resolve_precision
    from sodlab.engine.train import TrainConfig, build_optimizer

    root = Path(data_root)
    threads = torch.get_num_threads()
    fast = resolve_precision(precision)
    cfg = make_config(preset, num_classes=DetectionDataset(root / "train").num_classes)
    ds = _train_dataset(root, cfg.input_size, seed)
    models = {}
    for prec in dict.fromkeys(["fp32", fast]):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models[prec] = prepare_model(build_detector(cfg), prec)
    model = models["fp32"]
    n_params = sum(p.numel() for p in model.parameters())
    rss0 = _maxrss_mb()
    lat, lat_fast = _vga_latencies(models, fast, seed, repeats)
    rss_infer = _maxrss_mb()
    batches = _train_batches(ds, batch_size, warmup + steps, seed)
    macs_img = count_flops(model, (batches[0][0][:1], batches[0][1][:1]), train=False) / 2
    train_flops_img = count_flops(model, batches[0], train=True) / batch_size
    opts = {p: build_optimizer(m, TrainConfig(lr=1e-4)) for p, m in models.items()}
    compute, e2e = _timed_training(models, opts, batches, ds, warmup=warmup, steps=steps,
                                   batch_size=batch_size, seed=seed)
    breakdown = step_breakdown(models[fast], batches[warmup:warmup + min(steps, 3)], opts[fast],
                               precision=fast, ds=ds, batch_size=batch_size)
    rss_train = _maxrss_mb()
    ips = {p: steps * batch_size / compute[p] for p in models}
    ips_e2e = {p: steps * batch_size / e2e[p] for p in models}
    return {"preset": preset, "input_size": cfg.input_size, "params": n_params,
            "threads": threads, "batch_size": batch_size, "steps_timed": steps,
            "fast_precision": fast,
            "train_images_per_s": ips[fast], "train_images_per_s_fp32": ips["fp32"],
            "train_images_per_s_e2e": ips_e2e[fast],
            "train_images_per_s_e2e_fp32": ips_e2e["fp32"],
            "fast_vs_fp32": ips[fast] / ips["fp32"],
            "fast_vs_fp32_e2e": ips_e2e[fast] / ips_e2e["fp32"],
            "data_share_e2e": 1.0 - ips_e2e[fast] / ips[fast],
            "step_breakdown_ms": breakdown,
            "macs_per_image": macs_img, "train_flops_per_image": train_flops_img,
            "train_gflops_per_s": train_flops_img * ips[fast] / 1e9,
            "train_gflops_per_s_fp32": train_flops_img * ips["fp32"] / 1e9,
            "vga_ms_1t": lat[1], "vga_ms_2t": lat[2],
            "vga_ms_1t_fast": lat_fast[1], "vga_ms_2t_fast": lat_fast[2],
            "peak_rss_model_mb": rss0, "peak_rss_infer_mb": rss_infer,
            "peak_rss_train_mb": rss_train, "infer_delta_mb": rss_infer - rss0,
            "train_delta_mb": rss_train - rss0}


# ---------------------------------------------------------------- the data path
DATA_PATH_MODES = {  # name: (pixels from, DataLoader workers, prefetch)
    "decode": ("decode", 0, 0), "decode_prefetch": ("decode", 0, 1),
    "decode_worker": ("decode", 1, 1), "pixels": ("pixels", 0, 0),
    "pixels_prefetch": ("pixels", 0, 1), "pixels_worker": ("pixels", 1, 1),
}


def _pixels_in(folder: str):
    """Inside the block the pixel cache lives in ``folder`` (``SODLAB_PIXELS``)."""
    from sodlab.files import env_set

    return env_set("SODLAB_PIXELS", folder)


def _engine_epoch(model, opt, ds, batches: list[list[int]], *, precision: str, workers: int,
                  prefetch: int) -> float:
    """Seconds of ``train_step`` over ``batches`` (index lists) loaded as the engine loads an
    epoch: a fresh DataLoader (``sodlab.engine.train._epoch_loader``) read through
    ``prefetched``, so worker start-up counts as it does in every epoch of a run."""
    from sodlab.data.dataset import collate
    from sodlab.engine.train import prefetched, train_step

    t0 = time.perf_counter()
    ahead = {"prefetch_factor": max(1, prefetch)} if workers else {}
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate,
                                         num_workers=workers, **ahead)
    with prefetched(loader, prefetch) as loaded:
        for batch in loaded:
            train_step(model, batch, opt, precision=precision)
    return time.perf_counter() - t0


def _data_path_datasets(root: Path, input_size: int, seed: int) -> tuple[dict, float]:
    """The training dataset decoding every image (no caches at all) and reading the pixel
    cache, and the seconds building that cache took (cold: call inside ``_pixels_in``)."""
    from sodlab.engine.train import TrainConfig, build_dataset

    decode = build_dataset(root / "train", TrainConfig(seed=seed, pixel_cache=False,
                                                       image_cache_mb=0), input_size=input_size)
    t0 = time.perf_counter()
    pixels = build_dataset(root / "train", TrainConfig(seed=seed, pixel_cache=True),
                           input_size=input_size)
    return {"decode": decode, "pixels": pixels}, time.perf_counter() - t0


def data_path_speed(root: str | os.PathLike, preset: str = "fpn", *, steps: int = 10,
                    batch_size: int = 8, rounds: int = 2, seed: int = 0,
                    precision: str = "auto", overrides=()) -> dict:
    """Training images/s with the engine's data path set each way, side by side in THIS process.

    The same ``steps`` batches (the engine's order from epoch 0 on) are trained on
    ``rounds`` times in every mode, round-robin, so a load that comes and goes hits all of
    them alike: ``compute`` (the batches collated in memory beforehand, data loading not
    timed: the ceiling), then per ``DATA_PATH_MODES`` entry the engine's loading with the
    pixels decoded from the files every time (``decode*``: a first epoch without the pixel
    cache, and every epoch with workers, whose in-memory caches die with them) or read from
    a warm pixel cache (``pixels*``), with no prefetch, a prefetch thread, or one DataLoader
    worker. ``vs_compute``: each mode's images/s over ``compute``'s (1.0 = loading fully
    hidden). The cold cost is separate: ``pixel_cache_build_s``, building the cache of the
    whole training split once (in a temporary folder, removed after). The operating
    system's file cache is not controlled: the files and the cache are read warm.
    """
    from sodlab.data.dataset import DetectionDataset, collate
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.precision import prepare_model, resolve_precision
    from sodlab.engine.train import TrainConfig, build_optimizer

    root, prec = Path(root), resolve_precision(precision)
    with tempfile.TemporaryDirectory() as tmp, _pixels_in(tmp):
        cfg = make_config(preset, num_classes=DetectionDataset(root / "train").num_classes,
                          overrides=overrides)
        dsets, build_s = _data_path_datasets(root, cfg.input_size, seed)
        n_images = len(dsets["decode"])
        batches = _batch_indices(n_images, batch_size, steps, seed)
        in_memory = [collate([dsets["decode"][i] for i in b]) for b in batches]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = prepare_model(build_detector(cfg), prec).train()
        opt = build_optimizer(model, TrainConfig(lr=1e-4))
        seconds = _data_path_rounds(model, opt, dsets, batches, in_memory, prec, rounds)
    ips = {m: rounds * steps * batch_size / s for m, s in seconds.items()}
    return {"preset": preset, "input_size": cfg.input_size, "batch_size": batch_size,
            "steps": steps, "rounds": rounds, "threads": torch.get_num_threads(),
            "precision": prec, "train_images": n_images, "images_per_s": ips,
            "vs_compute": {m: v / ips["compute"] for m, v in ips.items()},
            "pixel_cache_build_s": build_s,
            "pixel_cache_build_images_per_s": n_images / max(build_s, 1e-9)}


def _data_path_rounds(model, opt, dsets: dict, batches: list, in_memory: list, precision: str,
                      rounds: int) -> dict[str, float]:
    """Seconds per mode, summed over ``rounds`` round-robin passes (one warm-up step first)."""
    from sodlab.engine.train import train_step

    train_step(model, in_memory[0], opt, precision=precision)  # first call of every shape
    seconds = dict.fromkeys(["compute", *DATA_PATH_MODES], 0.0)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for batch in in_memory:
            train_step(model, batch, opt, precision=precision)
        seconds["compute"] += time.perf_counter() - t0
        for mode, (source, workers, prefetch) in DATA_PATH_MODES.items():
            seconds[mode] += _engine_epoch(model, opt, dsets[source], batches,
                                           precision=precision, workers=workers,
                                           prefetch=prefetch)
    return seconds


def _shown_path(root: Path) -> str:
    """``root`` as a result file records it: relative to the repository when inside it, else
    its folder name (a result must not carry this machine's paths)."""
    from sodlab.files import repo_root

    try:
        return str(root.resolve().relative_to(repo_root().resolve()))
    except ValueError:
        return root.name


def _measure_in_subprocess(preset: str, root: Path, **kw) -> dict:
    code = ("import json, sys; from sodlab.bench.train_speed import measure_preset; "
            "a = json.loads(sys.argv[1]); print(json.dumps(measure_preset(**a)))")
    args = json.dumps({"preset": preset, "data_root": str(root), **kw})
    res = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True)
    if res.returncode != 0:
        return {"preset": preset, "error": res.stderr.strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- torchvision SSDlite baseline
def train_ssdlite(data_root: str | os.PathLike, *, max_seconds: float, batch_size: int = 8,
                  lr: float = 1e-3, seed: int = 0, progress: bool = False) -> tuple:
    """torchvision SSDlite320-MobileNetV3 from scratch for ``max_seconds``; (model, stats)."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from tqdm.auto import tqdm

    from sodlab.data.dataset import DetectionDataset
    from sodlab.data.transforms import Compose, RandomHFlip
    from sodlab.engine.train import epoch_batches, lr_factor

    root = Path(data_root)
    ds = DetectionDataset(root / "train", seed=seed, transforms=Compose([RandomHFlip()]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                              num_classes=ds.num_classes + 1)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        step, epoch, t0, losses = 0, 0, time.perf_counter(), []
        bar = tqdm(disable=not progress, desc="ssdlite", unit="step")
        done = False
        while not done:
            ds.set_epoch(epoch)
            for batch in epoch_batches(len(ds), batch_size=batch_size, world_size=1, seed=seed,
                                       epoch=epoch):
                images, targets = [], []
                for i in batch:
                    img, t = ds[i]
                    keep = ~t["iscrowd"]
                    images.append(img)
                    targets.append({"boxes": t["boxes"][keep], "labels": t["labels"][keep] + 1})
                elapsed = time.perf_counter() - t0
                for g in opt.param_groups:
                    g["lr"] = lr * lr_factor(step, warmup=20, warmup_frac=0.05,
                                             progress=elapsed / max_seconds)
                loss = sum(model(images, targets).values())
                if not math.isfinite(float(loss.detach())):
                    raise RuntimeError(f"ssdlite loss became {float(loss.detach())} at step {step + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
                if time.perf_counter() - t0 >= max_seconds:
                    done = True
                    break
            epoch += 1
        bar.close()
    seconds = time.perf_counter() - t0
    return model.eval(), {"steps": step, "images_seen": step * batch_size,
                          "seconds": seconds, "first_loss": losses[0], "final_loss": losses[-1]}


@torch.inference_mode()
def evaluate_ssdlite(model, split_dir: str | os.PathLike) -> dict:
    """Size-wise metrics of a torchvision detector (labels 1..C) on a split folder."""
    from sodlab.data.coco import to_coco_results
    from sodlab.data.dataset import DetectionDataset
    from sodlab.metrics import evaluate

    ds = DetectionDataset(split_dir)
    dets, t_model = [], 0.0
    for i in range(len(ds)):
        img, t = ds[i]
        t0 = time.perf_counter()
        out = model([img])[0]  # boxes in the original image's pixels
        t_model += time.perf_counter() - t0
        top = out["scores"].argsort(descending=True)[:100]
        dets += to_coco_results([t["image_id"]], [{
            "boxes": out["boxes"][top], "scores": out["scores"][top],
            "labels": out["labels"][top] - 1}], cat_ids=ds.cat_ids)  # labels 1..C -> 0..C-1
    m = dict(evaluate(ds.coco, dets))
    m["images_per_s"] = len(ds) / max(t_model, 1e-9)
    return m


def in_precision(model: torch.nn.Module, precision: str):
    """``fn(x)``: the model's forward under the precision's autocast and memory format."""
    from sodlab.engine.precision import autocast, prepare_images

    def fn(x: torch.Tensor):
        with autocast(precision):
            return model(prepare_images(x, precision))
    return fn


def vga_latency_ms(forward, image: torch.Tensor, *, threads: int = 1, repeats: int = 10) -> float:
    """Median wall time of ``forward(image)`` (one warm-up call first) on ``threads`` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            forward(image)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(image)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 1000.0 * statistics.median(times)


def _vga_image(root: Path) -> torch.Tensor:
    """The first validation image stretched to 640 x 480, ``[3, 480, 640]`` in [0, 1]."""
    from sodlab.data.dataset import DetectionDataset
    from sodlab.tiling import resize_image

    img, _ = DetectionDataset(root / "val")[0]
    return resize_image(img, (480, 640), antialias=True).clamp(0, 1)


def compare_with_ssdlite(data_root: str | os.PathLike, *, max_seconds: float, seed: int = 0,
                         presets: tuple[str, ...] = ("fpn", "faceboxes", "fast"),
                         progress: bool = False) -> dict:
    """Our presets vs SSDlite320: same data root, same wall-clock budget, same evaluation.

    Each model is trained from scratch for ``max_seconds``, evaluated on ``val``, then timed
    on one real validation image at VGA (640 x 480) on one thread, trained weights and
    post-processing included (SSDlite resizes it to 320 x 320 itself), one after another in
    this process, so the frame rates are side by side.
    """
    import copy

    from sodlab.engine import evaluate_model, load_detector, train
    from sodlab.engine.precision import prepare_model, resolve_precision

    root = Path(data_root)
    keys = ("AP", "AP50", "AP_small", "AP_tiny", "AR_small", "images_per_s")
    vga = _vga_image(root)
    out: dict = {"budget_s": max_seconds}
    for name in presets:
        with tempfile.TemporaryDirectory() as tmp:
            s = train(name, root, Path(tmp) / name, max_seconds=max_seconds, batch_size=8,
                      seed=seed, device="cpu", progress=progress, val_every=0)
            pred = load_detector(Path(tmp) / name / "last.pt")
        model = pred.model.eval()
        m = evaluate_model(model, root / "val", input_size=pred.input_size, cat_ids=pred.cat_ids)
        ms = vga_latency_ms(lambda x, model=model: model(x[None]), vga)
        fast = resolve_precision("auto")
        fast_model = prepare_model(copy.deepcopy(model), fast).eval()
        ms_fast = vga_latency_ms(lambda x, f=in_precision(fast_model, fast): f(x[None]), vga)
        out[name] = {"steps": s["steps"], "images_seen": s["images_seen"],
                     "seconds": s["seconds"], "final_loss": s["final_loss"],
                     "input_size": pred.input_size,
                     "params": sum(p.numel() for p in model.parameters()),
                     **{k: m[k] for k in keys}, "vga_ms_1t": ms, "vga_fps_1t": 1000.0 / ms,
                     "vga_fps_1t_fast": 1000.0 / ms_fast, "fast_precision": fast}
    model, stats = train_ssdlite(root, max_seconds=max_seconds, seed=seed, progress=progress)
    m2 = evaluate_ssdlite(model, root / "val")
    ms = vga_latency_ms(lambda x: model([x]), vga)
    from sodlab.engine.precision import autocast

    fast = resolve_precision("auto")
    ssd_fast = prepare_model(copy.deepcopy(model), fast).eval()

    def ssd_forward(x: torch.Tensor):
        with autocast(fast):
            return ssd_fast([x])
    ms_fast = vga_latency_ms(ssd_forward, vga)
    out["ssdlite320_mobilenet_v3"] = {
        **stats, "input_size": 320, "params": sum(p.numel() for p in model.parameters()),
        **{k: m2[k] for k in keys}, "vga_ms_1t": ms, "vga_fps_1t": 1000.0 / ms,
        "vga_fps_1t_fast": 1000.0 / ms_fast, "fast_precision": fast}
    return out


def run(*, quick: bool = True, progress: bool = False, data_root: str | os.PathLike | None = None,
        presets: list[str] | None = None, compare: bool = True, seed: int = 0,
        compare_seconds: float | None = None,
        compare_presets: tuple[str, ...] = ("fpn", "faceboxes", "fast")) -> dict:
    """Per-preset speed and memory, and ours vs SSDlite under one wall-clock budget."""
    from sodlab.data.coco import dataset_hash
    from sodlab.detector import PRESETS
    from sodlab.provenance import provenance

    t_start = time.perf_counter()
    if data_root is None:
        from sodlab.data import ensure_dataset

        data_root = ensure_dataset("quick" if quick else "full", seed, progress=progress)
    root = Path(data_root)
    kw = dict(steps=3, warmup=1, repeats=3) if quick else dict(steps=10, warmup=2, repeats=10)
    names = list(presets) if presets is not None else list(PRESETS)
    per_preset = {}
    for name in names:
        per_preset[name] = _measure_in_subprocess(name, root, seed=seed, **kw)
    out = {"data_root": _shown_path(root), "presets": per_preset,
           "notes": {"train_images_per_s": "batch 8 at the preset's input size, in-memory "
                     "batches, after warm-up, torch's default threads, the fast precision "
                     "(fast_precision); *_fp32: the fp32 NCHW path; *_e2e: data loading "
                     "included; fast and fp32 alternate in chunks of steps in one process",
                     "macs_per_image": "multiply-adds of one eval forward at the input size "
                     "(torch.utils.flop_counter / 2)",
                     "train_gflops_per_s": "forward + backward FLOPs per image x images/s",
                     "vga_ms": "median eval forward + post-processing of one 640x480 image",
                     "peak_rss": "resource.getrusage maxrss of a fresh process per preset"}}
    if compare:
        secs = compare_seconds if compare_seconds is not None else (20.0 if quick else 300.0)
        out["vs_ssdlite"] = compare_with_ssdlite(root, max_seconds=secs, seed=seed,
                                                 presets=tuple(compare_presets),
                                                 progress=progress)
    out["provenance"] = provenance(seed=seed, data_hash=dataset_hash(root), quick=quick,
                                   seconds=time.perf_counter() - t_start)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="training speed / latency / memory per preset")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-compare", action="store_true")
    a = ap.parse_args()
    result = run(quick=not a.full, progress=False, data_root=a.data, compare=not a.no_compare)
    if a.out:
        from sodlab.files import write_json

        write_json(a.out, result)
    json.dump(result, sys.stdout, indent=1)

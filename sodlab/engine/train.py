"""Train a detector on a dataset root: one training step, one epoch loop, resumable, DDP-ready.

Layer L4. The pieces are plain functions that ``train`` composes, and that the benchmarks
call directly so nothing is copied:

- ``TrainConfig``: every training argument (budget, batch, learning rate, optimizer,
  schedule, recipe, workers, precision, seed, validation and save cadence), validated once,
  JSON-serialisable (``to_dict``).
- ``build_dataset(root / "train", tcfg, input_size=...)``: ``DetectionDataset`` with the
  recipe's transform chain (``sodlab.engine.recipes.build_transforms``), oversampled when
  the recipe says so.
- ``build_optimizer(model, tcfg)``: AdamW (or SGD with momentum 0.9) over trainable parameters.
- ``train_step(model, batch, optimizer, ...)``: one optimizer step (device transfer, memory
  format, autocast, finite-loss check, backward, clipping); returns the losses as floats.
- ``train_one_epoch(run, ...)``: the batches of one epoch with the learning-rate schedule
  (linear warm-up then cosine, ``lr_factor``) and budget checks.
- ``train(cfg, data_root, out_dir, tcfg, ...)``: builds the detector of a ``DetectorConfig``
  (or a preset name), trains, validates, and writes ``config.json``, ``log.jsonl`` (one line
  per epoch and one at the end, with validation metrics by size), ``last.pt`` and
  ``best.pt`` (best validation AP_small, else AP), all atomically. Taught in notebook 03_fpn.

The data path. Loading a batch (decoding, transforms, collation) is kept off the step's
critical path in two ways, neither of which changes a number (both are ``UNKEYED`` in the
run cache): ``TrainConfig.pixel_cache`` (default on) reads decoded images from the
on-disk pixel cache (``sodlab.data.pixel_cache``), so a PNG is decoded once per machine
rather than once per epoch; ``TrainConfig.prefetch`` (default 0: off) makes the next batch
while the step runs: a ``Prefetcher`` thread over the DataLoader when ``num_workers`` is
0, else the workers' own ``prefetch_factor``. The batches are the same, in the same
order, since each item's randomness comes from (seed, epoch, index).

The budget is ``max_steps``, ``epochs`` or ``max_seconds`` (wall clock: only for comparisons
with other tools); "images seen" = steps x global batch is recorded beside the seconds.

Reproducibility. The data order of epoch e is a permutation drawn from a generator seeded
by (seed, e); augmentation of item i comes from (seed, e, i) (``DetectionDataset.set_epoch``);
the model is built and trained inside ``torch.random.fork_rng`` seeded by ``seed``, so the
caller's global RNG is untouched. A checkpoint stores the step within the epoch;
``resume=True`` skips the batches already seen, so an interrupted and resumed run ends
with the same weights as an uninterrupted one (same device, thread count and precision).

Scale-out. Under ``torchrun --nproc_per_node=K`` (``WORLD_SIZE`` > 1) the model is wrapped
in DistributedDataParallel (gloo on CPU, nccl on GPU). Every rank draws the same global
batches of K x batch_size indices and takes its slice, so K processes with batch b see
exactly the images of one process with batch K x b. The gradients then agree when the
detector's loss is a mean over images and BatchNorm does not mix images across ranks: on
GPU BatchNorm becomes SyncBatchNorm; on CPU (gloo, where SyncBatchNorm is not supported)
each rank normalises over its own b images, which is a documented difference. Only rank 0
writes files.

Shapes: images ``[B, 3, Hp, Wp]`` float in [0, 1]; targets per the data contract.
Dimension legend: B images per rank and step, K processes, Hp x Wp padded input size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sodlab.data.dataset import DetectionDataset, collate, seeded_generator
from sodlab.data.transforms import Compose
from sodlab.engine.checkpoint import (
    config_dict,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sodlab.engine.precision import (
    PRECISIONS,
    autocast,
    prepare_images,
    prepare_model,
    resolve_precision,
)
from sodlab.errors import InputError
from sodlab.files import write_json

# Bump when a change alters what training computes (losses, matching, data order, schedule,
# initialisation, precision handling, a module's computation under an unchanged config): the
# run cache keys on it, not on the source text. 3: PyramidBox's CPM is gated onto its input.
NUMERICS_VERSION = 3


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


@dataclass
class TrainConfig:
    """Every training argument; ``to_dict()`` is what config.json and the run cache record."""

    max_steps: int | None = None
    epochs: int | None = None
    max_seconds: float | None = None
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    warmup_steps: int | None = None
    grad_clip: float | None = 10.0
    recipe: dict | None = None
    num_workers: int = 0
    precision: str = "auto"
    seed: int = 0
    val_every: int = 1
    val_images: int = 100  # images of val scored by each validation during training (0: all)
    save_every: int = 100
    image_cache_mb: float = 2048.0  # decoded images kept in memory (speed only)
    pixel_cache: bool = True  # decoded images read from the on-disk pixel cache (speed only)
    # batches prepared ahead while a step runs (speed only). Off by default: with two cores
    # and the pixel cache, the thread's transforms competed with the step's own threads and
    # training ran slower (results/bench_data_path.json, `sodlab bench --only data_path`)
    prefetch: int = 0
    extra: dict = field(default_factory=dict)  # recorded, not interpreted (e.g. a base model)

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.epochs is not None:
            raise InputError("give one budget: --max-steps or --epochs (optionally --max-seconds)")
        if self.max_steps is None and self.epochs is None and self.max_seconds is None:
            self.epochs = 1
        for name in ("max_steps", "epochs", "batch_size"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or int(v) < 1):
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise InputError(f"--max-seconds must be > 0, got {self.max_seconds}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise InputError(f"optimizer {self.optimizer!r}: expected adamw or sgd")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision}: expected {', '.join(PRECISIONS)}")
        if min(self.num_workers, self.val_every, self.save_every, self.image_cache_mb,
               self.val_images) < 0:
            raise InputError("num_workers, val_every, save_every, image_cache_mb and val_images "
                             "must be >= 0")
        if not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise InputError(f"--prefetch must be an integer >= 0, got {self.prefetch!r}")
        if not self.recipe:
            self.recipe = None  # {} and None both mean "the default chain": one cache key
        else:
            json.dumps(self.recipe)  # a recipe is part of the cache key: plain JSON only

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def total_steps(self, steps_per_epoch: int) -> int | None:
        if self.max_steps is not None:
            return int(self.max_steps)
        return int(self.epochs) * steps_per_epoch if self.epochs is not None else None


def train_config(tcfg: TrainConfig | dict | None = None, **fields: Any) -> TrainConfig:
    """A ``TrainConfig`` from one, a dict of its fields, or keyword fields (not both)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(fields) - names
    if unknown:
        raise InputError(f"unknown training arguments {sorted(unknown)}; valid: {sorted(names)}")
    if tcfg is not None and fields:
        raise InputError("pass a TrainConfig or its fields as keywords, not both")
    if isinstance(tcfg, TrainConfig):
        return tcfg
    return TrainConfig(**{**(tcfg or {}), **{k: v for k, v in fields.items() if v is not None}})


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; InputError for cuda without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here (use cpu or auto)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise InputError(f"--device {device}: expected auto, cpu or cuda")
    return torch.device(device)


def epoch_batches(n: int, *, batch_size: int, world_size: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """The global batches (``world_size * batch_size`` indices each) of one epoch.

    A permutation from a generator seeded by (seed, epoch); the incomplete last batch is
    dropped; a dataset smaller than one global batch is repeated to fill it.
    """
    g = seeded_generator(seed, epoch, 0x5EED)
    perm = torch.randperm(n, generator=g).tolist()
    gb = batch_size * world_size
    steps = max(1, n // gb)
    while len(perm) < steps * gb:
        perm = perm + perm
    return [perm[s * gb:(s + 1) * gb] for s in range(steps)]


def lr_factor(step: int, *, warmup: int, progress: float, floor: float = 0.05,
              warmup_frac: float | None = None) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` over ``progress`` in [0, 1].

    ``warmup_frac`` (wall-clock budgets, where the number of steps is unknown): the warm-up
    also ends once ``progress`` reaches this fraction, so slow steps do not warm up forever.
    """
    p = min(max(progress, 0.0), 1.0)
    if step < warmup and (warmup_frac is None or p < warmup_frac):
        w = (step + 1) / warmup
        return min(1.0, max(w, p / warmup_frac)) if warmup_frac else w
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_dataset(split_dir: str | os.PathLike, tcfg: TrainConfig, *, input_size: int,
                  context_keys: Sequence[str] = (), anchor_sizes: Sequence | None = None,
                  progress: bool = False) -> torch.utils.data.Dataset:
    """The training dataset of a split with the recipe's transform chain (and oversampling).

    SNIP/MST recipes that group scales by batch come wrapped in ``ScaleGrouped``: give it
    ``(index, scale index)`` items (``scale_grouped`` makes such batches). ``anchor_sizes``:
    the detector's scaled anchor sizes, which the ``das`` recipe draws from. With
    ``tcfg.pixel_cache`` the split's pixel cache is opened, or built first (``progress``:
    a bar while it builds).
    """
    from sodlab.engine.recipes import build_transforms

    split_dir = Path(split_dir)
    spec = build_transforms(tcfg.recipe, input_size=input_size, train_split=split_dir,
                            anchor_sizes=anchor_sizes)
    keys = tuple(dict.fromkeys([*context_keys, *(("head_bbox", "body_bbox")
                                                  if spec["with_masks"] else ())]))
    ds = DetectionDataset(split_dir, seed=tcfg.seed, with_masks=spec["with_masks"],
                          context_keys=keys, transforms=Compose(spec["transforms"]),
                          cache_mb=tcfg.image_cache_mb, pixel_cache=tcfg.pixel_cache,
                          progress=progress)
    if spec["oversample"] is not None:
        from sodlab.augment import RepeatedDataset

        ds = RepeatedDataset(ds, spec["oversample"])
    if spec["batch_scales"]:
        ds = ScaleGrouped(ds, spec["batch_scales"])
    if len(ds) == 0:
        raise InputError(f"{split_dir / 'annotations.json'}: the training split has no images")
    return ds


class ScaleGrouped(torch.utils.data.Dataset):
    """A training dataset whose items are ``(index, scale index)``: SNIP/MST with one scale per batch.

    ``scale_grouped`` makes the batches; each item loads under ``sodlab.snip.fixed_scale``,
    in the worker that loads it. Attributes the engine reads come from the wrapped dataset.
    """

    def __init__(self, base, n_scales: int) -> None:
        self.base, self.n_scales = base, int(n_scales)

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        if name in ("base", "n_scales"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, item):
        from sodlab.snip import fixed_scale

        index, k = item if isinstance(item, tuple) else (item, None)
        with fixed_scale(k):
            return self.base[index]


def scale_grouped(batches: list[list[int]], n_scales: int, *, seed: int,
                  epoch: int) -> list[list[tuple[int, int]]]:
    """One scale index per global batch, from a generator seeded by (seed, epoch)."""
    g = seeded_generator(seed, epoch, 0x5CA1E)
    ks = torch.randint(n_scales, (len(batches),), generator=g).tolist()
    return [[(i, k) for i in b] for b, k in zip(batches, ks)]


def build_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (or SGD, momentum 0.9) over the model's trainable parameters at ``tcfg.lr``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("the model has no trainable parameters")
    if tcfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tcfg.lr, momentum=0.9, weight_decay=tcfg.weight_decay)
    return torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _phase_clock(timings: dict[str, float] | None) -> Callable[[str], None]:
    """``tick(phase)`` adds the seconds since the previous tick to ``timings[phase]``; a
    no-op when ``timings`` is None."""
    if timings is None:
        return lambda phase: None
    last = [time.perf_counter()]

    def tick(phase: str) -> None:
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - last[0]
        last[0] = now

    return tick


def train_step(model: torch.nn.Module, batch: tuple[torch.Tensor, list[dict]],
               optimizer: torch.optim.Optimizer, *, precision: str = "fp32",
               grad_clip: float | None = 10.0, lr: float | None = None,
               device: torch.device | str | None = None, step: int = 0,
               timings: dict[str, float] | None = None) -> dict[str, float]:
    """One optimizer step on ``batch = (images [B, 3, Hp, Wp], targets)``; the losses as floats.

    ``precision``: a resolved precision (``"bf16"`` or ``"fp32"``, see
    ``sodlab.engine.precision``). ``lr``: set on every parameter group first. The model must
    return a dict with a scalar ``"loss"`` in training mode. A non-finite loss raises
    ``TrainingDiverged`` before any weight changes (under DDP, on every rank alike).
    ``timings``: if given, the seconds of each phase are added to it: ``forward`` (inputs
    to the device and precision, the model's forward with its loss), ``check`` (the
    finiteness check), ``backward`` (zeroing the gradients and backward), ``clip`` and
    ``optimizer`` (the profile of ``sodlab.bench.train_speed.step_breakdown``).
    """
    tick = _phase_clock(timings)
    images, targets = batch
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    images = prepare_images(images.to(dev), precision)  # [B, 3, Hp, Wp]
    targets = [_to_device(t, dev) for t in targets]
    if lr is not None:
        for g in optimizer.param_groups:
            g["lr"] = lr
    with autocast(precision, dev):
        losses = model(images, targets)
    loss = losses["loss"]
    tick("forward")
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        raise TrainingDiverged(
            f"loss became {loss.item()} at step {step + 1}; lower the learning rate (now "
            f"{optimizer.param_groups[0]['lr']:g}) or check the data")
    tick("check")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tick("backward")
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                       grad_clip)
    tick("clip")
    optimizer.step()
    tick("optimizer")
    return {k: float(v.detach()) for k, v in losses.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1}


@dataclass
class RunState:
    """What a checkpoint stores of a run's progress (besides weights and optimizer)."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    images_seen: int = 0
    seconds: float = 0.0
    best_score: float | None = None
    metrics: dict | None = None
    best_metrics: dict | None = None


@dataclass
class Run:
    """One training run: model, optimizer, data, schedule, where it writes, and its state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataset: Any
    tcfg: TrainConfig
    precision: str
    device: torch.device
    out_dir: Path
    cfg_dict: dict
    meta: dict
    sched: dict
    provenance: dict
    val_dir: Path | None
    input_size: int
    world: int = 1
    rank: int = 0
    state: RunState = field(default_factory=RunState)
    saved_step: int = 0
    val_step: int = 0
    t_start: float = 0.0
    seconds_before: float = 0.0
    seen_now: int = 0
    last_loss: float | None = None

    @property
    def bare(self) -> torch.nn.Module:
        return self.model.module if hasattr(self.model, "module") else self.model

    @property
    def total(self) -> int | None:
        return self.sched["total"]

    def lr_now(self) -> float:
        s, sch = self.state, self.sched
        if sch["total"]:
            f = lr_factor(s.step, warmup=sch["warmup"],
                          progress=(s.step - sch["warmup"]) / max(1, sch["total"] - sch["warmup"]))
        else:
            f = lr_factor(s.step, warmup=sch["warmup"], warmup_frac=0.05,
                          progress=s.seconds / self.tcfg.max_seconds)
        return self.tcfg.lr * f

    def budget_done(self) -> bool:
        t, s = self.tcfg, self.state
        if (t.max_steps is not None and s.step >= t.max_steps) or (
                t.epochs is not None and s.epoch >= t.epochs):
            return True
        flag = t.max_seconds is not None and s.seconds >= t.max_seconds
        if self.world > 1 and t.max_seconds is not None:
            x = torch.tensor([float(flag)], device=self.device)
            dist.broadcast(x, 0)
            flag = bool(x.item())
        return flag

    def save(self, path: Path) -> None:
        self.saved_step = self.state.step
        if self.rank != 0:
            return
        ds = self.dataset
        save_checkpoint(path, config=self.cfg_dict, model=self.bare.state_dict(),
                        optimizer=self.optimizer.state_dict(), scheduler=self.sched,
                        rng=rng_state(), categories=ds.categories, cat_ids=ds.cat_ids,
                        train=self.meta, provenance=self.prov(), **dataclasses.asdict(self.state))

    def prov(self) -> dict:
        return {**self.provenance, "seconds": round(self.state.seconds, 3)}

    def log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.out_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")


def _score(metrics: dict | None) -> float | None:
    if not metrics:
        return None
    s = metrics.get("AP_small", -1.0)
    return float(s) if s is not None and s >= 0 else float(metrics.get("AP", -1.0))


def validate(run: Run) -> dict | None:
    """Metrics by size on ``val``'s first ``tcfg.val_images`` images (rank 0), kept as the
    run's best when AP_small improves: cheap enough to run during training; the run's final
    metrics are scored on the whole split (``final_metrics``)."""
    metrics = None
    if run.rank == 0 and run.val_dir is not None:
        from sodlab.engine.predict import evaluate_model

        metrics = evaluate_model(run.bare, run.val_dir, input_size=run.input_size,
                                 batch_size=run.tcfg.batch_size, cat_ids=run.dataset.cat_ids,
                                 max_images=run.tcfg.val_images or None)
        run.state.metrics = metrics
        run.val_step = run.state.step
        score = _score(metrics)
        if run.state.best_score is None or score > run.state.best_score:
            run.state.best_score, run.state.best_metrics = score, metrics
            run.save(run.out_dir / "best.pt")
    if run.world > 1:
        dist.barrier()
    return metrics


def final_metrics(run: Run, checked: dict | None) -> dict | None:
    """The final model's metrics on the whole validation split: ``checked`` itself when
    ``validate`` already scored every image, else one more evaluation (rank 0)."""
    from sodlab.data.coco import load_coco

    if run.rank != 0 or checked is None:
        return checked
    n = run.tcfg.val_images
    if not n or n >= len(load_coco(run.val_dir)["images"]):
        return checked
    from sodlab.engine.predict import evaluate_model

    return evaluate_model(run.bare, run.val_dir, input_size=run.input_size,
                          batch_size=run.tcfg.batch_size, cat_ids=run.dataset.cat_ids)


def _epoch_loader(run: Run) -> tuple[torch.utils.data.DataLoader, int]:
    s, t = run.state, run.tcfg
    batches = epoch_batches(len(run.dataset), batch_size=t.batch_size, world_size=run.world,
                            seed=t.seed, epoch=s.epoch)
    if isinstance(run.dataset, ScaleGrouped):
        batches = scale_grouped(batches, run.dataset.n_scales, seed=t.seed, epoch=s.epoch)
    mine = [b[run.rank * t.batch_size:(run.rank + 1) * t.batch_size]
            for b in batches[s.step_in_epoch:]]
    run.dataset.set_epoch(s.epoch)
    ahead = {"prefetch_factor": max(1, t.prefetch)} if t.num_workers > 0 else {}
    loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=mine, collate_fn=collate,
                                         num_workers=t.num_workers, **ahead)
    return loader, len(batches)


class Prefetcher:
    """Iterate ``source`` in a background thread, at most ``depth`` items ahead, in order.

    ``with Prefetcher(loader, 1) as batches: for batch in batches: ...``: while the loop's
    body runs on item k, the thread makes item k + 1 (``depth`` items ahead at most). The
    items are those of ``iter(source)``, in its order, so nothing about them changes. An
    exception raised while making an item is raised again in the loop, at that item's
    place. Leaving the block (the loop ended, broke early, or raised) stops the thread and
    waits for it: no thread outlives the block. Meant for a DataLoader without worker
    processes; its batches are made by the same code, only earlier.
    """

    _ITEM, _END, _ERROR = 0, 1, 2

    def __init__(self, source, depth: int = 1) -> None:
        if depth < 1:
            raise InputError(f"prefetch depth must be >= 1, got {depth}")
        self._source = source
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="sodlab-prefetch", daemon=True)

    def _fill(self) -> None:
        """The thread: take a slot, make the next item, queue it; the end or the error last."""
        try:
            items = iter(self._source)
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    self._queue.put((self._END, None))
                    return
                self._queue.put((self._ITEM, item))
        except BaseException as exc:  # raised again in the consuming thread
            self._queue.put((self._ERROR, exc))

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == self._END:
                return
            if kind == self._ERROR:
                raise value
            self._slots.release()  # the thread may start on the next item now
            yield value

    def close(self) -> None:
        """Stop the thread (after the item it is making, if any) and wait for it."""
        self._stop.set()
        self._slots.release()  # wake it if it waits for a slot
        if self._thread.is_alive():
            self._thread.join()

    def __exit__(self, *exc) -> None:
        self.close()


def prefetched(loader: torch.utils.data.DataLoader, depth: int):
    """``loader``'s batches, ``depth`` of them made ahead while a step runs; a context manager.

    Without worker processes a ``Prefetcher`` thread makes them; with workers (which load
    ahead themselves, ``prefetch_factor``) or ``depth`` 0 the loader is used as it is.
    """
    if depth > 0 and loader.num_workers == 0:
        return Prefetcher(loader, depth)
    return contextlib.nullcontext(loader)


def train_one_epoch(run: Run, *, bar=None, stop_at_step: int | None = None) -> str | None:
    """The remaining batches of the current epoch; ``"stop_at_step"`` if told to stop, else None.

    The batches come through ``prefetched``: ``tcfg.prefetch`` of them are made while a step
    runs. Ends the epoch (validation when due, a log line, ``last.pt``) when all its batches
    ran.
    """
    s, t = run.state, run.tcfg
    loader, n_batches = _epoch_loader(run)
    losses: list[float] = []
    with prefetched(loader, t.prefetch) as batches:
        stopped = _steps(run, batches, losses, bar=bar, stop_at_step=stop_at_step)
    if s.step_in_epoch >= n_batches:
        _end_epoch(run, losses, n_batches)
    return stopped


def _steps(run: Run, batches, losses: list[float], *, bar=None,
           stop_at_step: int | None = None) -> str | None:
    """Train on ``batches`` until they end or a budget stops it; ``"stop_at_step"`` if told to
    stop there, else None. Appends each step's loss to ``losses``."""
    s, t = run.state, run.tcfg
    for batch in batches:
        out = train_step(run.model, batch, run.optimizer, precision=run.precision,
                         grad_clip=t.grad_clip, lr=run.lr_now(), device=run.device, step=s.step)
        losses.append(out["loss"])
        run.last_loss = out["loss"]
        s.step += 1
        s.step_in_epoch += 1
        s.images_seen += t.batch_size * run.world
        run.seen_now += t.batch_size * run.world
        s.seconds = run.seconds_before + time.perf_counter() - run.t_start
        if bar is not None:
            rate = run.seen_now / max(s.seconds - run.seconds_before, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", img_s=f"{rate:.1f}")
        if stop_at_step is not None and s.step >= stop_at_step:
            return "stop_at_step"
        if (t.max_steps is not None and s.step >= t.max_steps) or (
                t.max_seconds is not None and run.budget_done()):
            return None
        if t.save_every and s.step % t.save_every == 0:
            run.save(run.out_dir / "last.pt")
    return None


def _end_epoch(run: Run, losses: list[float], steps_per_epoch: int) -> None:
    s, t = run.state, run.tcfg
    s.epoch += 1
    s.step_in_epoch = 0
    # Validation is skipped when fewer than a tenth of the run's steps passed since the last
    # one, so a small dataset (many short epochs) is not validated hundreds of times.
    gap = max(1, run.total // 10) if run.total else steps_per_epoch
    metrics = None
    if (run.val_dir is not None and t.val_every and s.epoch % t.val_every == 0
            and s.step - run.val_step >= gap and not run.budget_done()):
        metrics = validate(run)
    run.log({"event": "epoch", "epoch": s.epoch, "step": s.step, "images_seen": s.images_seen,
             "seconds": round(s.seconds, 3),
             "loss": float(np.mean(losses)) if losses else None,
             "lr": run.optimizer.param_groups[0]["lr"], "val": metrics})
    if metrics is not None or s.step - run.saved_step >= min(
            t.save_every or steps_per_epoch, steps_per_epoch * 10):
        run.save(run.out_dir / "last.pt")


def _build_config(cfg: Any, num_classes: int, overrides: Sequence[str] | dict) -> Any:
    if isinstance(cfg, str):
        from sodlab.detector import make_config

        return make_config(cfg, num_classes=num_classes, overrides=overrides)
    if overrides:
        from sodlab.detector import config_with_overrides

        cfg = config_with_overrides(cfg, overrides)
    if getattr(cfg, "num_classes", num_classes) != num_classes:
        raise InputError(f"config has num_classes={cfg.num_classes} but the data has "
                         f"{num_classes} categories")
    return cfg


def _default_build(cfg: Any) -> torch.nn.Module:
    from sodlab.detector import build_detector

    return build_detector(cfg)


def _data_hash(root: Path) -> str | None:
    from sodlab.data.coco import dataset_hash

    try:
        return dataset_hash(root)
    except InputError:
        return None


def _resume(run: Run, last: Path) -> None:
    """Weights, optimizer, progress and RNG state from ``last.pt`` (same config only)."""
    ckpt = load_checkpoint(last)
    if ckpt["config"] != run.cfg_dict:
        raise InputError(f"{last}: --resume with a different config than the checkpoint's")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.state = RunState(**{k: ckpt.get(k, v) for k, v in dataclasses.asdict(RunState()).items()})
    set_rng_state(ckpt["rng"])


def setup_run(cfg: Any, root: Path, out_dir: Path, tcfg: TrainConfig, *, dev: torch.device,
              world: int, rank: int, overrides, build_model, resume: bool,
              progress: bool = False) -> Run:
    """Dataset, model, optimizer, schedule and state of a run (resumed from ``last.pt``).

    ``progress``: a bar while the training split's pixel cache is built (the first run on
    a split, with ``tcfg.pixel_cache``)."""
    from sodlab.provenance import provenance

    probe = DetectionDataset(root / "train")
    cfg = _build_config(cfg, probe.num_classes, overrides)
    anchor_sizes = None
    if hasattr(cfg, "anchor_scale"):  # a DetectorConfig (tests and baselines may use others)
        from sodlab.detector import scaled_anchor_sizes

        anchor_sizes = scaled_anchor_sizes(cfg)
    ds = build_dataset(root / "train", tcfg, input_size=cfg.input_size,
                       context_keys=tuple(getattr(cfg, "context_keys", ()) or ()),
                       anchor_sizes=anchor_sizes, progress=progress)
    precision = resolve_precision(tcfg.precision, dev)
    torch.manual_seed(tcfg.seed)
    model = prepare_model(build_model(cfg).to(dev), precision)
    opt = build_optimizer(model, tcfg)
    spe = len(epoch_batches(len(ds), batch_size=tcfg.batch_size, world_size=world,
                            seed=tcfg.seed, epoch=0))
    total = tcfg.total_steps(spe)
    warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else (
        max(1, min(50, total // 10)) if total else 20)
    sched = {"kind": "warmup_cosine", "warmup": warmup, "total": total,
             "max_seconds": tcfg.max_seconds, "base_lr": tcfg.lr}
    cfg_dict, data_hash = config_dict(cfg), _data_hash(root)
    meta = {**tcfg.to_dict(), "precision": precision, "world_size": world,
            "global_batch": tcfg.batch_size * world, "schedule": sched, "device": str(dev),
            "threads": torch.get_num_threads(), "data_root": str(root), "data_hash": data_hash,
            "transforms": [repr(t) for t in getattr(ds, "transforms", None).transforms]
            if hasattr(getattr(ds, "transforms", None), "transforms") else None,
            "steps_per_epoch": spe, "numerics_version": NUMERICS_VERSION}
    val_dir = root / "val"
    run = Run(model=model, optimizer=opt, dataset=ds, tcfg=tcfg, precision=precision,
              device=dev, out_dir=out_dir, cfg_dict=cfg_dict, meta=meta, sched=sched,
              provenance=provenance(seed=tcfg.seed, data_hash=data_hash, device=str(dev),
                                    world_size=world),
              val_dir=val_dir if tcfg.val_every > 0 and (val_dir / "annotations.json").is_file()
              else None, input_size=cfg.input_size, world=world, rank=rank)
    if resume and (out_dir / "last.pt").is_file():
        _resume(run, out_dir / "last.pt")
    elif rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "log.jsonl").unlink(missing_ok=True)
    run.saved_step = run.val_step = run.state.step
    if world > 1:
        if dev.type == "cuda":
            run.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if rank == 0:
        write_json(out_dir / "config.json", {"config": cfg_dict, "train": meta})
    return run


def _summary(run: Run, stopped: str, metrics: dict | None) -> dict:
    s = run.state
    best = run.out_dir / ("best.pt" if stopped == "budget" else "last.pt")
    return {"out_dir": str(run.out_dir), "stopped": stopped, "steps": s.step, "epochs": s.epoch,
            "step_in_epoch": s.step_in_epoch, "images_seen": s.images_seen,
            "seconds": round(s.seconds, 3),
            "images_per_s": run.seen_now / max(s.seconds - run.seconds_before, 1e-9),
            "final_loss": run.last_loss, "metrics": metrics,
            "best_metrics": s.best_metrics, "best_score": s.best_score,
            "checkpoint": str(best), "config": run.cfg_dict, "train": run.meta,
            "precision": run.precision, "provenance": run.prov()}


def run_training(run: Run, *, progress: bool, stop_at_step: int | None,
                 desc: str = "train") -> dict:
    """Epochs until the budget (or ``stop_at_step``); validate and save at the end."""
    run.t_start, run.seconds_before = time.perf_counter(), run.state.seconds
    run.bare.train()
    bar = tqdm(total=run.total, initial=run.state.step, disable=not progress, desc=desc,
               unit="step")
    stopped = None
    try:
        while stopped is None and not run.budget_done():
            stopped = train_one_epoch(run, bar=bar, stop_at_step=stop_at_step)
    except KeyboardInterrupt:
        run.save(run.out_dir / "last.pt")
        raise
    finally:
        bar.close()
    if stopped is not None:
        run.save(run.out_dir / "last.pt")
        return _summary(run, stopped, run.state.metrics)
    metrics = final_metrics(run, validate(run)) if run.val_dir is not None else None
    if run.val_dir is None or not (run.out_dir / "best.pt").is_file():
        run.save(run.out_dir / "best.pt")
    run.save(run.out_dir / "last.pt")
    summary = _summary(run, "budget", metrics)
    run.log({"event": "end", **{k: summary[k] for k in (
        "steps", "epochs", "images_seen", "seconds", "images_per_s", "final_loss", "metrics",
        "best_score")}, "provenance": summary["provenance"]})
    return summary


def train(cfg: Any, data_root: str | os.PathLike, out_dir: str | os.PathLike,
          tcfg: TrainConfig | dict | None = None, *, overrides: Sequence[str] | dict = (),
          device: str = "auto", resume: bool = False, progress: bool = True,
          stop_at_step: int | None = None,
          build_model: Callable[[Any], torch.nn.Module] | None = None,
          progress_desc: str = "train", **fields: Any) -> dict:
    """Train and return a summary (steps, images seen, seconds, final validation metrics).

    ``cfg``: a ``DetectorConfig`` or a preset name; ``overrides``: ``key=value`` strings or a
    dict applied to it. ``tcfg``: a ``TrainConfig`` (or its fields as keywords, e.g.
    ``max_steps=300, batch_size=8, recipe={...}``). ``stop_at_step``: stop after this global
    step as if interrupted (``last.pt`` written; resume later). ``build_model`` replaces
    ``sodlab.detector.build_detector`` (tests, baselines, a second stage on a trained base).
    ``progress_desc``: the progress bar's label.
    """
    tcfg = train_config(tcfg, **fields)
    root, out_dir = Path(data_root), Path(out_dir)
    if not (root / "train" / "annotations.json").is_file():
        raise InputError(f"{root}: not a dataset root (needs train/annotations.json)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    owns_group = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns_group = True
    rank = dist.get_rank() if world > 1 else 0
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            run = setup_run(cfg, root, out_dir, tcfg, dev=dev, world=world, rank=rank,
                            overrides=overrides, build_model=build_model or _default_build,
                            resume=resume, progress=progress and rank == 0)
            return run_training(run, progress=progress and rank == 0, stop_at_step=stop_at_step,
                                desc=progress_desc)
    finally:
        if owns_group:
            dist.destroy_process_group()


def summary_line(summary: dict) -> str:
    """One human line for a training summary (the CLI prints it)."""
    m = summary.get("metrics") or {}
    parts = [f"{summary['steps']} steps", f"{summary['images_seen']} images",
             f"{summary['seconds']:.1f} s", f"{summary['images_per_s']:.1f} img/s"]
    if summary.get("precision"):
        parts.append(summary["precision"])
    if summary.get("final_loss") is not None:
        parts.append(f"loss {summary['final_loss']:.4f}")
    if m:
        parts.append(f"val AP {m.get('AP', -1):.3f} AP50 {m.get('AP50', -1):.3f} "
                     f"AP_small {m.get('AP_small', -1):.3f}")
    return ", ".join(parts)


__all__ = ["NUMERICS_VERSION", "TrainConfig", "TrainingDiverged", "train", "train_config",
           "build_dataset", "build_optimizer", "train_step", "train_one_epoch", "validate",
           "epoch_batches", "scale_grouped", "ScaleGrouped", "lr_factor", "resolve_device", "summary_line", "RunState", "Run",
           "Prefetcher", "prefetched"]

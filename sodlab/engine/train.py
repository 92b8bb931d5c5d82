"""Train a detector on a dataset root: seeded data order, warm-up + cosine, resumable, DDP-ready.

Layer L4. ``train(cfg, data_root, out_dir, ...)`` builds the detector of a
``DetectorConfig`` (or a preset name), reads ``root/train`` through ``DetectionDataset``
with ``ResizeLongest(cfg.input_size)`` and random flips, and optimises with AdamW (or SGD)
under a linear warm-up then cosine learning rate. The budget is ``max_steps``, ``epochs``
or ``max_seconds`` (wall clock: only for comparisons with other tools); "images seen" =
steps x global batch is recorded beside the seconds. Writes ``config.json``, ``log.jsonl``
(one line per epoch and one at the end, with validation metrics by size), ``last.pt`` and
``best.pt`` (best validation AP_small, else AP), all atomically. Taught in notebook 03_fpn.

Reproducibility. The data order of epoch e is a permutation drawn from a
``torch.Generator`` seeded by (seed, e); augmentation of item i comes from (seed, e, i)
(``DetectionDataset.set_epoch``); the model is built and trained inside
``torch.random.fork_rng`` seeded by ``seed``, so the caller's global RNG is untouched. A
checkpoint stores the step within the epoch; ``resume=True`` skips the batches already
seen, so an interrupted and resumed run ends with the same weights as an uninterrupted one
(same device, same thread count).

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

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sodlab.data.dataset import DetectionDataset, collate
from sodlab.data.transforms import Compose, RandomHFlip, ResizeLongest
from sodlab.engine.checkpoint import (
    config_dict,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sodlab.errors import InputError
from sodlab.files import write_json


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to try."""


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
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
    g = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
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


def _to_device(target: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _score(metrics: dict | None) -> float | None:
    if not metrics:
        return None
    s = metrics.get("AP_small", -1.0)
    return float(s) if s is not None and s >= 0 else float(metrics.get("AP", -1.0))


def _build_config(cfg: Any, num_classes: int, overrides: Sequence[str] | dict) -> Any:
    if isinstance(cfg, str):
        from sodlab.detector import make_config

        return make_config(cfg, num_classes=num_classes, overrides=overrides)
    if overrides:
        from sodlab.detector import make_config

        base = config_dict(cfg)
        return make_config(base["preset"], num_classes=num_classes,
                           overrides={**{k: v for k, v in base.items()
                                         if k not in ("preset", "num_classes")},
                                      **_override_dict(overrides)})
    if getattr(cfg, "num_classes", num_classes) != num_classes:
        raise InputError(f"config has num_classes={cfg.num_classes} but the data has "
                         f"{num_classes} categories")
    return cfg


def _override_dict(overrides: Sequence[str] | dict) -> dict:
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def _default_build(cfg: Any) -> torch.nn.Module:
    from sodlab.detector import build_detector

    return build_detector(cfg)


def train(cfg: Any, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
          max_steps: int | None = None, epochs: int | None = None,
          max_seconds: float | None = None, batch_size: int = 8, lr: float | None = None,
          weight_decay: float = 1e-4, optimizer: str = "adamw", warmup_steps: int | None = None,
          grad_clip: float | None = 10.0, seed: int = 0, device: str = "auto",
          resume: bool = False, progress: bool = True, augment: Sequence[Callable] | None = None,
          transforms: Sequence[Callable] | None = None, oversample: Sequence[int] | None = None,
          with_masks: bool = False,
          overrides: Sequence[str] | dict = (), val_every: int = 1, save_every: int = 100,
          num_workers: int = 0, stop_at_step: int | None = None,
          build_model: Callable[[Any], torch.nn.Module] | None = None) -> dict:
    """Train and return a summary (steps, images seen, seconds, final validation metrics).

    ``augment``: transforms after ``ResizeLongest`` (default ``[RandomHFlip()]``; ``[]`` for
    none). ``transforms``: the whole chain instead (for SNIP/SNIPER, which resize themselves).
    ``oversample``: a repeat count per training image (``sodlab.augment.oversample_repeats``).
    ``with_masks``: load object masks (copy-paste needs them). ``val_every``: validate every this many epochs and at the end (0: never).
    ``save_every``: write ``last.pt`` every this many steps (and at an epoch end
    after validation or when as many steps passed since the last save). ``stop_at_step``: stop
    after this global step as if interrupted (``last.pt`` written; resume later).
    ``build_model``: replaces ``sodlab.detector.build_detector`` (tests, baselines).
    """
    if sum(b is not None for b in (max_steps, epochs)) > 1:
        raise InputError("give one budget: --max-steps or --epochs (optionally --max-seconds)")
    if max_steps is None and epochs is None and max_seconds is None:
        epochs = 1
    for name, v in (("max_steps", max_steps), ("epochs", epochs), ("batch_size", batch_size)):
        if v is not None and int(v) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
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
            return _train(cfg, root, out_dir, max_steps=max_steps, epochs=epochs,
                          max_seconds=max_seconds, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, optimizer=optimizer,
                          warmup_steps=warmup_steps, grad_clip=grad_clip, seed=seed, dev=dev,
                          resume=resume, progress=progress and rank == 0, augment=augment,
                          transforms=transforms, oversample=oversample, with_masks=with_masks,
                          overrides=overrides, val_every=val_every, save_every=save_every,
                          num_workers=num_workers, stop_at_step=stop_at_step,
                          build_model=build_model or _default_build, world=world, rank=rank)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(cfg, root: Path, out_dir: Path, *, max_steps, epochs, max_seconds, batch_size, lr,
           weight_decay, optimizer, warmup_steps, grad_clip, seed, dev, resume, progress,
           augment, overrides, val_every, save_every, num_workers, stop_at_step, build_model,
           transforms=None, oversample=None, with_masks=False,
           world, rank) -> dict:
    from sodlab.provenance import provenance

    try:
        from sodlab.data.coco import dataset_hash

        data_hash = dataset_hash(root)
    except (ImportError, InputError):
        data_hash = None
    extra = list(augment) if augment is not None else [RandomHFlip()]
    ds = DetectionDataset(root / "train", seed=seed, with_masks=with_masks,
                          context_keys=("head_bbox", "body_bbox") if with_masks else ())
    cfg = _build_config(cfg, ds.num_classes, overrides)
    if transforms is not None:
        extra = list(transforms)
        ds.transforms = Compose(extra)
    else:
        ds.transforms = Compose([ResizeLongest(cfg.input_size), *extra])
    if oversample is not None:
        from sodlab.augment import RepeatedDataset

        ds = RepeatedDataset(ds, oversample)
    if len(ds) == 0:
        raise InputError(f"{ds.ann_path}: the training split has no images")
    val_dir = root / "val"
    do_val = val_every > 0 and (val_dir / "annotations.json").is_file()
    torch.manual_seed(seed)
    model = build_model(cfg).to(dev)
    lr = float(lr if lr is not None else getattr(cfg, "lr", 1e-3))
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise InputError(f"optimizer {optimizer!r}: expected adamw or sgd")
    steps_per_epoch = len(epoch_batches(len(ds), batch_size=batch_size, world_size=world,
                                        seed=seed, epoch=0))
    total = max_steps if max_steps is not None else (
        epochs * steps_per_epoch if epochs is not None else None)
    warmup = warmup_steps if warmup_steps is not None else (
        max(1, min(50, total // 10)) if total else 20)
    sched = {"kind": "warmup_cosine", "warmup": warmup, "total": total,
             "max_seconds": max_seconds, "base_lr": lr}
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "images_seen": 0, "seconds": 0.0,
             "best_score": None, "metrics": None, "best_metrics": None}
    last, best = out_dir / "last.pt", out_dir / "best.pt"
    cfg_dict = config_dict(cfg)
    if resume and last.is_file():
        ckpt = load_checkpoint(last)
        if ckpt["config"] != cfg_dict:
            raise InputError(f"{last}: --resume with a different config than the checkpoint's")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for k in state:
            state[k] = ckpt.get(k, state[k])
        set_rng_state(ckpt["rng"])
    elif rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "log.jsonl").unlink(missing_ok=True)
    if world > 1:
        if dev.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    meta = {"seed": seed, "batch_size": batch_size, "world_size": world,
            "global_batch": batch_size * world, "lr": lr, "optimizer": optimizer,
            "weight_decay": weight_decay, "schedule": sched, "device": str(dev),
            "threads": torch.get_num_threads(), "data_root": str(root), "data_hash": data_hash,
            "augment": [repr(t) for t in extra],
            "oversample": None if oversample is None else sum(oversample), "steps_per_epoch": steps_per_epoch,
            "budget": {"max_steps": max_steps, "epochs": epochs, "max_seconds": max_seconds}}
    if rank == 0:
        write_json(out_dir / "config.json", {"config": cfg_dict, "train": meta})

    base_prov = provenance(seed=seed, data_hash=data_hash, device=str(dev), world_size=world)

    def prov() -> dict:
        return {**base_prov, "seconds": round(state["seconds"], 3)}

    def save(path: Path) -> None:
        saved["step"] = state["step"]
        if rank != 0:
            return
        save_checkpoint(path, config=cfg_dict, model=_unwrap(model).state_dict(),
                        optimizer=opt.state_dict(), scheduler=sched, rng=rng_state(),
                        categories=ds.categories, cat_ids=ds.cat_ids, train=meta,
                        provenance=prov(), **state)

    def log(record: dict) -> None:
        if rank == 0:
            with open(out_dir / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def validate() -> dict | None:
        metrics = None
        if rank == 0:
            from sodlab.engine.predict import evaluate_model

            metrics = evaluate_model(_unwrap(model), val_dir, input_size=cfg.input_size,
                                     batch_size=batch_size, cat_ids=ds.cat_ids)
            _unwrap(model).train()
            state["metrics"] = metrics
            saved["val_step"] = state["step"]
            score = _score(metrics)
            if state["best_score"] is None or score > state["best_score"]:
                state["best_score"], state["best_metrics"] = score, metrics
                save(best)
        if world > 1:
            dist.barrier()
        return metrics

    def budget_done() -> bool:
        if max_steps is not None and state["step"] >= max_steps:
            return True
        if epochs is not None and state["epoch"] >= epochs:
            return True
        flag = max_seconds is not None and state["seconds"] >= max_seconds
        if world > 1 and max_seconds is not None:
            t = torch.tensor([float(flag)], device=dev)
            dist.broadcast(t, 0)
            flag = bool(t.item())
        return flag

    # Epoch-end validation is skipped when fewer than a tenth of the run's steps passed since
    # the last one, so a small dataset (many short epochs) is not validated hundreds of times.
    val_gap = max(1, total // 10) if total else steps_per_epoch
    saved = {"step": state["step"], "val_step": state["step"]}
    model.train()
    t_call, seen_call = time.perf_counter(), 0
    t_prev = state["seconds"]
    bar = tqdm(total=total, initial=state["step"], disable=not progress, desc="train",
               unit="step")
    epoch_losses: list[float] = []
    stopped, last_loss = None, None
    try:
        while stopped is None and not budget_done():
            batches = epoch_batches(len(ds), batch_size=batch_size, world_size=world,
                                    seed=seed, epoch=state["epoch"])
            mine = [b[rank * batch_size:(rank + 1) * batch_size]
                    for b in batches[state["step_in_epoch"]:]]
            ds.set_epoch(state["epoch"])
            loader = torch.utils.data.DataLoader(ds, batch_sampler=mine, collate_fn=collate,
                                                 num_workers=num_workers)
            for images, targets in loader:
                images = images.to(dev)  # [B, 3, Hp, Wp]
                targets = [_to_device(t, dev) for t in targets]
                factor = (lr_factor(state["step"], warmup=warmup, progress=(
                    (state["step"] - warmup) / max(1, total - warmup)))
                          if total else lr_factor(state["step"], warmup=warmup, warmup_frac=0.05,
                                                  progress=state["seconds"] / max_seconds))
                for g in opt.param_groups:
                    g["lr"] = lr * factor
                losses = model(images, targets)
                loss = losses["loss"]
                ok = torch.isfinite(loss.detach()).float().reshape(1)
                if world > 1:
                    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
                if ok.item() < 1:
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {state['step'] + 1} (epoch "
                        f"{state['epoch']}); lower the learning rate (now {lr:g}) or check the data")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                last_loss = float(loss.detach())
                epoch_losses.append(last_loss)
                state["step"] += 1
                state["step_in_epoch"] += 1
                state["images_seen"] += batch_size * world
                seen_call += batch_size * world
                state["seconds"] = t_prev + time.perf_counter() - t_call
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", img_s=f"{seen_call / max(state['seconds'] - t_prev, 1e-9):.1f}")
                if stop_at_step is not None and state["step"] >= stop_at_step:
                    stopped = "stop_at_step"
                    break
                if (max_steps is not None and state["step"] >= max_steps) or (
                        max_seconds is not None and budget_done()):
                    break
                if save_every and state["step"] % save_every == 0:
                    save(last)
            if state["step_in_epoch"] >= len(batches):
                state["epoch"] += 1
                state["step_in_epoch"] = 0
                metrics = None
                if (do_val and state["epoch"] % val_every == 0
                        and state["step"] - saved["val_step"] >= val_gap and not budget_done()):
                    metrics = validate()
                log({"event": "epoch", "epoch": state["epoch"], "step": state["step"],
                     "images_seen": state["images_seen"], "seconds": round(state["seconds"], 3),
                     "loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                     "lr": opt.param_groups[0]["lr"], "val": metrics})
                epoch_losses = []
                if metrics is not None or state["step"] - saved["step"] >= min(
                        save_every or steps_per_epoch, steps_per_epoch * 10):
                    save(last)
    except KeyboardInterrupt:
        save(last)
        raise
    finally:
        bar.close()
    if stopped is None:
        stopped = "budget"
        metrics = validate() if do_val else None
        if not do_val or not best.is_file():
            save(best)
        save(last)
    else:
        save(last)
        metrics = state["metrics"]
    images_per_s = seen_call / max(state["seconds"] - t_prev, 1e-9)
    summary = {"out_dir": str(out_dir), "stopped": stopped, "steps": state["step"],
               "epochs": state["epoch"], "step_in_epoch": state["step_in_epoch"],
               "images_seen": state["images_seen"], "seconds": round(state["seconds"], 3),
               "images_per_s": images_per_s, "final_loss": last_loss, "metrics": metrics,
               "best_metrics": state["best_metrics"], "best_score": state["best_score"],
               "checkpoint": str(best if stopped == "budget" else last),
               "config": cfg_dict, "train": meta, "provenance": prov()}
    if stopped == "budget":
        log({"event": "end", **{k: summary[k] for k in (
            "steps", "epochs", "images_seen", "seconds", "images_per_s", "final_loss",
            "metrics", "best_score")}, "provenance": summary["provenance"]})
    return summary


def summary_line(summary: dict) -> str:
    """One human line for a training summary (the CLI prints it)."""
    m = summary.get("metrics") or {}
    parts = [f"{summary['steps']} steps", f"{summary['images_seen']} images",
             f"{summary['seconds']:.1f} s", f"{summary['images_per_s']:.1f} img/s"]
    if summary.get("final_loss") is not None:
        parts.append(f"loss {summary['final_loss']:.4f}")
    if m:
        parts.append(f"val AP {m.get('AP', -1):.3f} AP50 {m.get('AP50', -1):.3f} "
                     f"AP_small {m.get('AP_small', -1):.3f}")
    return ", ".join(parts)


__all__ = ["TrainingDiverged", "train", "epoch_batches", "lr_factor", "resolve_device",
           "summary_line"]

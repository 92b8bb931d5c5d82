"""The run cache: a model that several notebooks and the benchmark need trains once.

Layer L4. ``cached_train(preset, data_root, ...)`` trains into
``<repository root>/runs/cache/<key>/`` unless ``summary.json`` is already there; a second
call returns at once. The key is a hash of what the run USES: the full detector config
(preset plus overrides), the training config (budget, batch, learning rate, optimizer,
recipe, seed, the REQUESTED precision, ``auto`` by default), the data hash and ``NUMERICS_VERSION`` of
``sodlab.engine.train``, which the training code bumps when its numerics change. Editing a
docstring or a notebook retrains nothing. The repository root is the folder holding
``pyproject.toml`` above the package, else the current directory (``SODLAB_CACHE``
overrides the whole path). Taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sodlab.files import repo_root, sha256_json, write_json

if TYPE_CHECKING:
    import torch

SUMMARY = "summary.json"



def cache_root() -> Path:
    """``runs/cache`` under the repository root (``SODLAB_CACHE`` overrides it)."""
    env = os.environ.get("SODLAB_CACHE")
    return Path(env) if env else repo_root() / "runs" / "cache"


def data_hash_of(root: str | os.PathLike) -> str:
    """``sodlab.data.coco.dataset_hash(root)``: the hash of the dataset's annotations and images."""
    from sodlab.data.coco import dataset_hash

    return dataset_hash(root)


def run_key(cfg: dict, tcfg: dict, data_hash: str) -> str:
    """The cache key (hex SHA-256) of a training run: its configs, data and numerics version."""
    from sodlab.engine.train import NUMERICS_VERSION

    return sha256_json({"config": cfg, "train": tcfg, "data": data_hash,
                        "numerics": NUMERICS_VERSION})


# TrainConfig fields that change how fast a run goes, never what it computes: not in the key.
UNKEYED = ("val_every", "val_images", "num_workers", "save_every", "image_cache_mb",
           "pixel_cache", "prefetch")


def train_key(preset: str, data_root: str | os.PathLike, *,
              overrides: Sequence[str] | dict = (), seed: int = 0, max_steps: int = 300,
              batch_size: int = 8, recipe: dict | None = None, precision: str = "auto",
              extra: dict | None = None, num_classes: int | None = None,
              data_hash: str | None = None) -> tuple[str, object, object]:
    """The ONE function that keys a training run: ``(key, DetectorConfig, TrainConfig)``.

    ``cached_train`` trains under this key and every "is it cached / recorded" question asks
    it, so the two cannot disagree. The key holds the REQUESTED precision (``"auto"``, the
    default, or an explicit ``"fp32"``/``"bf16"``), not the one a machine resolves it to: a
    model trained on the fast path is the same run as one trained in fp32 on a laptop
    without it (the summary records which it was), while a study that asks for fp32 and bf16
    explicitly still gets two runs. ``num_classes``/``data_hash`` skip re-reading the data.
    """
    from sodlab.detector import make_config
    from sodlab.engine.train import TrainConfig

    root = Path(data_root)
    if num_classes is None:
        from sodlab.data.coco import load_coco

        num_classes = len(load_coco(root / "train")["categories"])
    cfg = make_config(preset, num_classes=num_classes, overrides=overrides)
    tcfg = TrainConfig(max_steps=max_steps, batch_size=batch_size, seed=seed, recipe=recipe,
                       val_every=0, extra=dict(extra or {}), precision=precision)
    keyed = {k: v for k, v in _beside_defaults(tcfg).items() if k not in UNKEYED}
    key = run_key(_beside_defaults(cfg), keyed, data_hash or data_hash_of(root))
    return key, cfg, tcfg


def _beside_defaults(obj) -> dict:
    """The dataclass's fields whose value differs from the class default.

    So a field added later with a default that keeps the old computation (a new matcher, a
    data-loading option) leaves every existing key, run cache entry and committed record
    valid. A changed DEFAULT that changes what trains must bump ``NUMERICS_VERSION``.
    """
    import dataclasses

    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or v != default:
            out[f.name] = dataclasses.asdict(obj)[f.name] if dataclasses.is_dataclass(v) else v
    return out


def cached_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The run folder of ``key`` when it holds a finished run (summary and best.pt), else None."""
    run_dir = (Path(cache_dir) if cache_dir else cache_root()) / key
    ok = (run_dir / SUMMARY).is_file() and (run_dir / "best.pt").is_file()
    return run_dir if ok else None


def cached_train(preset: str, data_root: str | os.PathLike, *,
                 overrides: Sequence[str] | dict = (), seed: int = 0, max_steps: int = 300,
                 batch_size: int = 8, quick: bool = True, progress: bool = False,
                 device: str = "cpu", val_every: int = 0, precision: str = "auto",
                 cache_dir: str | os.PathLike | None = None, recipe: dict | None = None,
                 build_model=None, extra: dict | None = None) -> tuple[Path, dict]:
    """Train ``preset`` on ``data_root`` once per key; return (checkpoint path, summary).

    ``quick`` is recorded in the summary's provenance (the budget itself is ``max_steps``).
    Validation metrics at the end are part of the summary (evaluated on ``root/val``).
    ``recipe``: how the training data is augmented or rescaled (``sodlab.engine.recipes``).
    ``build_model`` + ``extra``: a model built another way (a second stage on a trained base);
    ``extra`` must name everything that makes it differ, since it is part of the key.
    ``progress``: a bar while a model that is not in the cache trains.
    """
    from sodlab.engine.precision import resolve_precision
    from sodlab.engine.train import resolve_device, train

    root = Path(data_root)
    key, cfg, tcfg = train_key(preset, root, overrides=overrides, seed=seed,
                               max_steps=max_steps, batch_size=batch_size, recipe=recipe,
                               precision=precision, extra=extra)
    tcfg.val_every = val_every
    run_dir = (Path(cache_dir) if cache_dir else cache_root()) / key
    summary_path = run_dir / SUMMARY
    if cached_path(key, cache_dir) is not None:
        summary = json.loads(summary_path.read_text())
        summary["cached"] = True
        summary["precision_note"] = _precision_note(summary, resolve_precision(
            precision, resolve_device(device)))
        return run_dir / "best.pt", summary
    what = f"{preset}{' ' + json.dumps(recipe) if recipe else ''}{' stage two' if extra else ''}"
    summary = train(cfg, root, run_dir, tcfg, device=device, progress=progress, resume=True,
                    build_model=build_model,
                    progress_desc=f"{what}, seed {seed}: not in the run cache, training")
    if summary.get("metrics") is None and (root / "val" / "annotations.json").is_file():
        from sodlab.engine.predict import evaluate_model, load_detector

        pred = load_detector(run_dir / "best.pt", build_model=build_model)
        summary["metrics"] = evaluate_model(pred.model, root / "val", input_size=cfg.input_size,
                                            batch_size=batch_size, cat_ids=pred.cat_ids)
    summary["key"] = key
    summary["preset"] = preset
    summary["recipe"] = recipe
    summary["provenance"]["mode"] = "quick" if quick else "full"
    write_json(summary_path, summary)
    summary["cached"] = False
    summary["precision_note"] = None
    return run_dir / "best.pt", summary


def _precision_note(summary: dict, here: str) -> str | None:
    """A sentence when a cached model was trained in another precision than this machine's."""
    trained = summary.get("precision")
    if not trained or trained == here:
        return None
    return (f"this model was trained in {trained} on another machine (this one would train in "
            f"{here}); it is used as it is rather than retrained")


BACKBONE_PREFIX = "backbone."


def init_backbone(model: torch.nn.Module, key: str, *,
                  cache_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """Copy the ``backbone.*`` weights of the finished run ``key`` (run cache) into ``model``.

    The run's ``best.pt`` must hold exactly the model's backbone entries with the same
    shapes (the same preset family); an InputError names the missing, unexpected or
    mismatched keys, and a key with no finished run. Every other tensor is left as it is.
    Returns ``model``. The stand-in for an ImageNet backbone: see docs/design.md.
    """
    from sodlab.engine.checkpoint import load_checkpoint
    from sodlab.errors import InputError

    run_dir = cached_path(key, cache_dir)
    if run_dir is None:
        raise InputError(f"init_backbone: no finished run {key!r} in the run cache "
                         f"({Path(cache_dir) if cache_dir else cache_root()}); train it first")
    src = {k: v for k, v in load_checkpoint(run_dir / "best.pt")["model"].items()
           if k.startswith(BACKBONE_PREFIX)}
    own = {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE_PREFIX)}
    if not own or not src:
        raise InputError(f"init_backbone: {'the model' if not own else f'run {key!r}'} has "
                         f"no {BACKBONE_PREFIX}* weights")
    missing, unexpected = sorted(set(own) - set(src)), sorted(set(src) - set(own))
    bad = [f"{k} {tuple(src[k].shape)} vs {tuple(own[k].shape)}"
           for k in sorted(set(own) & set(src)) if src[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise InputError(f"init_backbone: run {key!r} does not fit this model's backbone "
                         f"(another preset family?): missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, shape mismatch {bad[:5]}")
    model.load_state_dict(src, strict=False)
    return model


def backbone_init_builder(key: str, build=None):
    """``build_model(cfg)`` for ``train``/``cached_train``: ``build(cfg)`` (the detector by
    default) with its backbone initialised from run ``key`` (``init_backbone``)."""
    def build_model(cfg):
        from sodlab.detector import build_detector

        return init_backbone((build or build_detector)(cfg), key)

    return build_model

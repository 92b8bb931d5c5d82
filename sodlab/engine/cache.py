"""The run cache: a model that several notebooks and the benchmark need trains once.

Layer L4. ``cached_train(preset, data_root, ...)`` hashes (preset, sorted overrides, data
hash, seed, max_steps, batch_size, input_size, sodlab version) into a key and trains into
``<repository root>/runs/cache/<key>/`` unless ``summary.json`` is already there; a second
call returns at once. The repository root is the folder holding ``pyproject.toml`` above
the package, else the current directory. Taught in notebook 09_benchmark_report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sodlab.files import repo_root, sha256_file, sha256_json, write_json

SUMMARY = "summary.json"



def cache_root() -> Path:
    """``runs/cache`` under the repository root (``SODLAB_CACHE`` overrides it)."""
    env = os.environ.get("SODLAB_CACHE")
    return Path(env) if env else repo_root() / "runs" / "cache"


def data_hash_of(root: str | os.PathLike) -> str:
    """``sodlab.data.coco.dataset_hash(root)``, else the hash of the annotations' bytes."""
    try:
        from sodlab.data.coco import dataset_hash

        return dataset_hash(root)
    except ImportError:
        root = Path(root)
        return sha256_json([sha256_file(root / s / "annotations.json") for s in ("train", "val")
                            if (root / s / "annotations.json").is_file()])


def _norm_overrides(overrides: Sequence[str] | dict) -> list[str]:
    if isinstance(overrides, dict):
        import json

        return sorted(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    return sorted(str(o) for o in overrides)


def code_hash() -> str:
    """Hash of the package's source files, so a change to the detector or the engine retrains."""
    pkg = Path(__file__).resolve().parents[1]
    return sha256_json({str(p.relative_to(pkg)): sha256_file(p)
                        for p in sorted(pkg.rglob("*.py"))})


def run_key(preset: str, data_root: str | os.PathLike, *, overrides: Sequence[str] | dict = (),
            seed: int = 0, max_steps: int, batch_size: int, input_size: int | None,
            recipe: dict | None = None) -> str:
    """The cache key (hex SHA-256) of a training run."""
    from sodlab import __version__

    return sha256_json({"preset": preset, "overrides": _norm_overrides(overrides),
                        "data": data_hash_of(data_root), "seed": int(seed),
                        "max_steps": int(max_steps), "batch_size": int(batch_size),
                        "input_size": input_size, "sodlab": __version__, "code": code_hash(),
                        **({"recipe": recipe} if recipe else {})})


def cached_train(preset: str, data_root: str | os.PathLike, *,
                 overrides: Sequence[str] | dict = (), seed: int = 0, max_steps: int = 300,
                 batch_size: int = 8, quick: bool = True, progress: bool = False,
                 device: str = "cpu", val_every: int = 0,
                 cache_dir: str | os.PathLike | None = None, recipe: dict | None = None
                 ) -> tuple[Path, dict]:
    """Train ``preset`` on ``data_root`` once per key; return (checkpoint path, summary).

    ``quick`` is recorded in the summary's provenance (the budget itself is ``max_steps``).
    Validation metrics at the end are part of the summary (evaluated on ``root/val``).
    ``recipe``: how the training data is augmented or rescaled (``sodlab.engine.recipes``).
    """
    from sodlab.data.dataset import DetectionDataset
    from sodlab.detector import make_config
    from sodlab.engine.train import train

    root = Path(data_root)
    num_classes = DetectionDataset(root / "train").num_classes
    cfg = make_config(preset, num_classes=num_classes, overrides=overrides)
    key = run_key(preset, root, overrides=overrides, seed=seed, max_steps=max_steps,
                  batch_size=batch_size, input_size=cfg.input_size, recipe=recipe)
    run_dir = Path(cache_dir) if cache_dir else cache_root()
    run_dir = run_dir / key
    summary_path = run_dir / SUMMARY
    if summary_path.is_file() and (run_dir / "best.pt").is_file():
        import json

        summary = json.loads(summary_path.read_text())
        summary["cached"] = True
        return run_dir / "best.pt", summary
    from sodlab.engine.recipes import train_kwargs

    extra = train_kwargs(recipe, input_size=cfg.input_size, train_split=root / "train")
    summary = train(cfg, root, run_dir, max_steps=max_steps, batch_size=batch_size, seed=seed,
                    device=device, progress=progress, val_every=val_every, resume=True, **extra)
    if summary.get("metrics") is None and (root / "val" / "annotations.json").is_file():
        from sodlab.engine.predict import evaluate_model, load_detector

        pred = load_detector(run_dir / "best.pt")
        summary["metrics"] = evaluate_model(pred.model, root / "val", input_size=cfg.input_size,
                                            batch_size=batch_size, cat_ids=pred.cat_ids)
    summary["key"] = key
    summary["recipe"] = recipe
    summary["provenance"]["mode"] = "quick" if quick else "full"
    write_json(summary_path, summary)
    summary["cached"] = False
    return run_dir / "best.pt", summary

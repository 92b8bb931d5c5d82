"""The engine: train a detector, evaluate and run it, checkpoints and the run cache.

Layer L4. Names are re-exported lazily, except ``train`` (whose submodule has the same name).

- ``train``: ``train``, ``TrainingDiverged``, ``epoch_batches``, ``lr_factor``.
- ``predict``: ``evaluate_model``, ``predict_split``, ``load_detector``, ``Predictor``.
- ``checkpoint``: ``save_checkpoint``, ``load_checkpoint``.
- ``cache``: ``cached_train``, ``run_key``, ``cache_root``.
- ``budgets``: ``standard_budget``, ``images_seen``.
- ``stage_two``: ``cached_stage_two``, ``build_stage_two``, ``load_stage_two``,
  ``train_stage_two``, ``stage_two_budget``, ``parse_stage_two`` (a second stage on a base).
"""

from __future__ import annotations

import importlib

# Eager: the submodule ``train`` would otherwise shadow the function of the same name.
from sodlab.engine.train import train as train

_EXPORTS = {
    "TrainingDiverged": "train", "epoch_batches": "train",
    "lr_factor": "train", "resolve_device": "train", "summary_line": "train",
    "evaluate_model": "predict", "predict_split": "predict", "load_detector": "predict",
    "Predictor": "predict", "detect_batch": "predict", "detect_pyramid": "predict",
    "mean_loss": "predict",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "cached_train": "cache", "run_key": "cache", "cache_root": "cache",
    "standard_budget": "budgets", "images_seen": "budgets",
    "cached_stage_two": "stage_two", "build_stage_two": "stage_two",
    "load_stage_two": "stage_two", "train_stage_two": "stage_two",
    "stage_two_budget": "stage_two", "parse_stage_two": "stage_two",
}

__all__ = sorted([*_EXPORTS, "train"])


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"sodlab.engine.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'sodlab.engine' has no attribute {name!r}")

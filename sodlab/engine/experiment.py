"""Techniques as data, run once: a record when one exists, else train, evaluate and record.

Layer L4. A ``Technique`` is declared once (frozen, typed): its preset, overrides, training
recipe, test path. ``run_technique(tech, root, seed=..., budget=...)`` returns the run's
record (``sodlab.engine.records``): a committed record answers at once and trains nothing;
otherwise the model comes from the run cache (``cached_train``, trained when missing), its
validation detections are evaluated on the fixed resamples, and the record is written. A
study that is cut off loses nothing it recorded. Taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sodlab.errors import InputError

TESTS = ("single",)


@dataclass(frozen=True)
class Technique:
    """One trained-and-tested configuration, declared once."""

    name: str
    preset: str
    overrides: tuple[tuple[str, object], ...] = ()   # (key, value) pairs on the preset
    recipe: Mapping | None = field(default=None, hash=False, compare=False)  # training recipe
    test: str = "single"                              # the test path

    def __post_init__(self) -> None:
        if not self.name or not self.preset:
            raise InputError("a Technique needs a name and a preset")
        if self.test not in TESTS:
            raise InputError(f"technique {self.name!r}: test {self.test!r} is not one of {TESTS}")

    def as_dict(self) -> dict:
        return {"name": self.name, "preset": self.preset, "overrides": dict(self.overrides),
                "recipe": None if self.recipe is None else json.loads(json.dumps(self.recipe)),
                "test": self.test}


def key_of(tech: Technique, root: str | os.PathLike, *, seed: int, budget: Mapping) -> str:
    """The run key of ``tech`` at ``seed`` and ``budget`` (``sodlab.engine.cache.train_key``)."""
    from sodlab.engine.cache import train_key

    return train_key(tech.preset, root, overrides=dict(tech.overrides), seed=seed,
                     max_steps=int(budget["max_steps"]), batch_size=int(budget["batch_size"]),
                     recipe=None if tech.recipe is None else dict(tech.recipe))[0]


def run_technique(tech: Technique, root: str | os.PathLike, *, seed: int, budget: Mapping,
                  mode: str = "full", progress: bool = False) -> dict:
    """The record of ``tech`` trained at ``budget`` with ``seed`` on ``root`` (see module doc)."""
    from sodlab.engine.cache import cached_train, data_hash_of
    from sodlab.engine.predict import load_detector, predict_split
    from sodlab.engine.records import make_record, read_record, write_record
    from sodlab.metrics.coco import load_dets, load_gt

    if mode not in ("quick", "full"):
        raise InputError(f"mode must be 'quick' or 'full', got {mode!r}")
    root = Path(root)
    key = key_of(tech, root, seed=seed, budget=budget)
    rec = read_record(key, test=tech.test, mode=mode)
    if rec is not None:
        return {**rec, "from_record": True}
    t0 = time.perf_counter()
    ckpt, summary = cached_train(tech.preset, root, overrides=dict(tech.overrides), seed=seed,
                                 max_steps=int(budget["max_steps"]),
                                 batch_size=int(budget["batch_size"]),
                                 recipe=None if tech.recipe is None else dict(tech.recipe),
                                 quick=mode == "quick", progress=progress)
    if summary["key"] != key:
        raise RuntimeError("cached_train and key_of disagree on the run key")  # one function
    pred = load_detector(ckpt)
    gt = load_gt(root / "val")
    dets = load_dets(predict_split(pred.model, root / "val", input_size=pred.input_size,
                                   batch_size=int(budget["batch_size"]), cat_ids=pred.cat_ids,
                                   progress=progress), gt)
    rec = make_record(key=key, technique=tech.as_dict(), budget=dict(budget), seed=seed,
                      mode=mode, data_hash=data_hash_of(root), gt=gt, dets=dets,
                      provenance={**summary["provenance"], "precision": summary.get("precision"),
                                  "cached_model": bool(summary.get("cached"))},
                      train_seconds=summary.get("seconds"), progress=progress,
                      extra={"record_seconds": round(time.perf_counter() - t0, 1)})
    write_record(rec)
    return {**rec, "from_record": False}


__all__ = ["TESTS", "Technique", "key_of", "run_technique"]

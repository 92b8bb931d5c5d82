"""Run records: one small JSON per finished full-mode run, committed, so evidence accumulates.

Layer L4. A record holds what a trained-and-evaluated run showed: its technique (preset,
overrides, recipe, second stage, test path), budget, seed, data hash, provenance, the metrics
by size bucket, and the value of each compared metric on each of ``B`` FIXED bootstrap
resamples of the validation images. The resamples are drawn from ``RESAMPLE_SEED`` and the
validation split's hash (``resample_draws``), so every run on the same data uses the same
ones: a paired interval for any two runs is the difference of their stored vectors, without
a checkpoint, detections or retraining (``paired_samples``). Records live in
``results/runs/<name>.json`` (full mode, committed) or beside the run cache (quick mode);
the name is the run key of ``sodlab.engine.cache.train_key`` plus the test path when it is
not the single-scale one. Taught in notebook 10_benchmark_report; ``docs/design.md`` says why.

Shapes: ``draws`` is ``[B, N]`` image indices (N validation images); ``samples[key]`` is a
``[B]`` vector (NaN where a resample drew no object of the key's bucket).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sodlab.errors import InputError
from sodlab.files import repo_root, write_json

RECORD_VERSION = 1
N_RESAMPLES = 500
RESAMPLE_SEED = 0
# The metrics whose resample vectors a record keeps (every comparison may use any of them).
SAMPLED = ("AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "AR_small", "R50_tiny",
           "R50_small")
DIGITS = 4  # stored values are rounded to 1e-4: far below any difference we call


def records_dir(mode: str = "full") -> Path:
    """``results/runs`` (full mode, committed) or ``runs/records`` beside the run cache (quick).

    ``SODLAB_RECORDS`` overrides the folder of either mode (tests point it at a temporary one).
    """
    env = os.environ.get("SODLAB_RECORDS")
    if env:
        return Path(env) / mode
    if mode == "full":
        return repo_root() / "results" / "runs"
    from sodlab.engine.cache import cache_root

    return cache_root().parent / "records"


def record_name(key: str, test: str = "single") -> str:
    """The file stem of a run's record: its run key, plus the test path when not single-scale."""
    if not isinstance(key, str) or not key:
        raise InputError(f"record_name: a run key is needed, got {key!r}")
    return key if test == "single" else f"{key}-{test}"


def split_hash(gt: dict) -> str:
    """Hex SHA-256 of a validation split's images and annotations (what the resamples depend on)."""
    h = hashlib.sha256()
    for img in gt["images"]:
        h.update(f"i{img['id']}\n".encode())
    for a in gt["annotations"]:
        h.update(json.dumps([a["image_id"], a["category_id"], a["bbox"], a.get("area"),
                             a.get("iscrowd", 0)]).encode())
    return h.hexdigest()


def resample_draws(val_hash: str, n_images: int, *, n: int = N_RESAMPLES,
                   seed: int = RESAMPLE_SEED) -> np.ndarray:
    """``[n, n_images]`` image indices drawn with replacement, fixed by ``seed`` and the split.

    Two runs evaluated on the same validation split get the same draws on any machine
    (numpy's PCG64 stream is stable across versions and platforms).
    """
    if n_images < 1 or n < 1:
        raise InputError(f"resample_draws: need images and resamples, got {n_images}, {n}")
    rng = np.random.default_rng([int(seed), int(val_hash[:16], 16)])
    return rng.integers(0, n_images, size=(int(n), int(n_images)), dtype=np.int64)


def resampled_metrics(gt: dict, dets: list[dict], draws: np.ndarray, *,
                      keys: Sequence[str] = SAMPLED, progress: bool = False
                      ) -> dict[str, np.ndarray]:
    """``{key: [B]}``: ``evaluate`` on each resample of the images (NaN for an empty bucket).

    ``gt`` and ``dets`` are clean (``load_gt`` / ``load_dets``). A resample is the set where
    image n appears as often as ``draws[b]`` holds n; each image is matched once and every
    resample reweights the matches (``sodlab.metrics.resampled``), which gives what
    evaluating the renumbered resample (``metrics.bootstrap.resample``) gives, for scores
    without ties across images: a few ms per resample instead of ~150 ms.
    """
    from tqdm.auto import tqdm

    from sodlab.metrics.resampled import match_images, weighted_summary

    draws = np.asarray(draws, dtype=np.int64)
    n_images = len(gt["images"])
    if draws.ndim != 2 or (draws.size and (draws.min() < 0 or draws.max() >= n_images)):
        raise InputError(f"resampled_metrics: draws must be [B, N] indices into the "
                         f"{n_images} images, got shape {draws.shape}")
    table = match_images(gt, dets)
    out = {k: np.full(len(draws), np.nan) for k in keys}
    for b in tqdm(range(len(draws)), disable=not progress, desc="resamples", leave=False):
        m = weighted_summary(table, np.bincount(draws[b], minlength=n_images))
        for k in keys:
            if m[k] > -1:
                out[k][b] = m[k]
    return out


def _rounded(v: float | None) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(float(v), DIGITS) if isinstance(v, float) else v


def make_record(*, key: str, technique: Mapping, budget: Mapping, seed: int, mode: str,
                data_hash: str, gt: dict, dets: list[dict], provenance: Mapping,
                train_seconds: float | None = None, n: int = N_RESAMPLES,
                per_image: Mapping[str, Sequence[float]] | None = None,
                diagnostics: Mapping | None = None, extra: Mapping | None = None,
                progress: bool = False) -> dict:
    """A record for one trained and evaluated run (``gt``/``dets`` clean, see above).

    ``per_image``: more metrics that are means over images, as ``{key: [N] values in the
    order of gt["images"]}`` (notebook 08's false alarms on hard negatives per image); the
    record keeps their mean and their mean on each resample, so they compare like AP.
    ``diagnostics``: what a notebook shows but never compares (TIDE's error breakdown,
    precision-recall curves), kept as given.
    """
    from sodlab.metrics.coco import evaluate_clean

    val_hash = split_hash(gt)
    draws = resample_draws(val_hash, len(gt["images"]), n=n)
    samples = resampled_metrics(gt, dets, draws, progress=progress)
    metrics = evaluate_clean(gt, dets)
    for k, v in (per_image or {}).items():
        v = np.asarray(v, dtype=float)                         # [N]
        if v.shape != (len(gt["images"]),):
            raise InputError(f"make_record: per-image {k!r} has shape {v.shape}, expected "
                             f"({len(gt['images'])},)")
        metrics[k] = float(v.mean()) if v.size else None
        samples[k] = v[draws].mean(1)                          # [B]
    return {
        "record_version": RECORD_VERSION, "key": key, "technique": dict(technique),
        "budget": {**dict(budget),
                   "images_seen": int(budget["max_steps"]) * int(budget["batch_size"])},
        "seed": int(seed), "mode": mode, "data_hash": data_hash, "val_hash": val_hash,
        "resamples": {"n": int(n), "seed": RESAMPLE_SEED},
        "metrics": {k: _rounded(v) for k, v in metrics.items()},
        "samples": {k: [_rounded(x) for x in v.tolist()] for k, v in samples.items()},
        "diagnostics": json.loads(json.dumps(dict(diagnostics or {}), default=float)),
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 1),
        "provenance": dict(provenance), **dict(extra or {})}


def write_record(record: Mapping, *, mode: str | None = None) -> Path:
    """Write ``record`` atomically under ``records_dir(mode)``; return its path."""
    mode = mode or record["mode"]
    path = records_dir(mode) / f"{record_name(record['key'], record['technique'].get('test', 'single'))}.json"
    write_json(path, dict(record), indent=None)
    return path


def read_record(key: str, *, test: str = "single", mode: str = "full") -> dict | None:
    """The record of run ``key`` (and test path), or None when it has none."""
    path = records_dir(mode) / f"{record_name(key, test)}.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not a valid record ({exc}); delete it to rerun") from None
    if rec.get("record_version") != RECORD_VERSION:
        return None
    return rec


def all_records(mode: str = "full") -> list[dict]:
    """Every record of ``mode`` (sorted by file name)."""
    folder = records_dir(mode)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.glob("*.json")):
        rec = json.loads(p.read_text())
        if rec.get("record_version") == RECORD_VERSION:
            out.append(rec)
    return out


def samples_of(record: Mapping, key: str) -> np.ndarray:
    """``[B]`` float vector of ``key`` on the record's resamples (NaN: empty bucket)."""
    if key not in record.get("samples", {}):
        raise InputError(f"record {record.get('key', '?')[:12]}: no resamples of {key!r}; "
                         f"it has {sorted(record.get('samples', {}))}")
    return np.array([np.nan if v is None else v for v in record["samples"][key]], dtype=float)


def paired_samples(a: Mapping, b: Mapping, key: str) -> np.ndarray:
    """``[B]`` resample-wise ``b - a`` of two records on the same validation resamples."""
    for field in ("val_hash", "resamples"):
        if a.get(field) != b.get(field):
            raise InputError(f"records {a['key'][:12]} and {b['key'][:12]} were evaluated on "
                             f"different {field}; no paired difference exists")
    return samples_of(b, key) - samples_of(a, key)


__all__ = ["RECORD_VERSION", "N_RESAMPLES", "RESAMPLE_SEED", "SAMPLED", "records_dir",
           "record_name", "split_hash", "resample_draws", "resampled_metrics", "make_record",
           "write_record", "read_record", "all_records", "samples_of", "paired_samples"]

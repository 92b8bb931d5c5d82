"""Benchmark: how much of a training step the data path costs, and how much prefetching hides.

Layer L4. ``sodlab.bench.train_speed.data_path_speed`` times, side by side in one process on
the same batches, training from batches held in memory (the ceiling) and the engine's
loading with the pixels decoded from the image files or read from the pixel cache
(``sodlab.data.pixel_cache``), each with no prefetch, a prefetch thread, or one DataLoader
worker; ``vs_compute`` is each one's rate over the ceiling's. Quick: the embedded quick
set, 2 steps, 1 round; full: the embedded full set, 10 steps, 2 rounds.
"""

from __future__ import annotations

from pathlib import Path


def run(*, quick: bool = True, progress: bool = False, data_root: str | Path | None = None,
        preset: str = "fpn", steps: int | None = None, rounds: int | None = None) -> dict:
    """``data_path_speed`` on the embedded dataset of the mode (or ``data_root``)."""
    from sodlab.bench.train_speed import data_path_speed
    from sodlab.data import ensure_dataset

    root = Path(data_root) if data_root else ensure_dataset("quick" if quick else "full", 0,
                                                           progress=progress)
    return data_path_speed(root, preset, steps=steps or (2 if quick else 10),
                           rounds=rounds or (1 if quick else 2))


__all__ = ["run"]

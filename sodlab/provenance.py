"""Provenance stamped on every metrics JSON: commit, versions, threads, CPU, seed, data, mode, time.

Layer L0. ``provenance(seed=..., data_hash=..., quick=..., seconds=...)`` returns a plain
dict that notebooks, the engine and the benchmark put under a ``"provenance"`` key.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

_PACKAGES = ("sodlab", "torch", "torchvision", "numpy", "faster-coco-eval", "scikit-image")


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the sodlab checkout (with ``+dirty`` if it has changes), or None."""
    here = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty.strip() else "")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that decide sodlab's numbers."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    """A human name for the CPU (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(*, seed: int | None = None, data_hash: str | None = None,
               quick: bool | None = None, seconds: float | None = None, **extra) -> dict:
    """Everything needed to say where a number came from."""
    import torch

    return {
        "commit": git_commit(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "seed": seed,
        "data_hash": data_hash,
        "mode": None if quick is None else ("quick" if quick else "full"),
        "seconds": None if seconds is None else round(float(seconds), 3),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }

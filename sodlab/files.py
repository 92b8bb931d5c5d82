"""Atomic file writes and content hashes, so an interrupted run leaves nothing half-written.

Layer L0. Every file sodlab writes for a user (annotations, checkpoints, metrics, reports)
goes through ``atomic_write`` or one of its wrappers: the bytes go to a temporary file in
the same folder, are flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def env_set(name: str, value: str) -> Iterator[None]:
    """Inside the block the environment variable ``name`` is ``value``; afterwards it is
    what it was before (unset if it was unset)."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of an object's canonical JSON (sorted keys, no spaces)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def repo_root() -> Path:
    """The sodlab checkout (the folder with ``pyproject.toml`` and ``sodlab/`` above this
    package), else the current directory: where ``data/``, ``runs/`` and ``reports/`` go."""
    here = Path(__file__).resolve().parent
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "sodlab").is_dir():
            return parent
    return Path.cwd()

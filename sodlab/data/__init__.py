"""Data: split folders in COCO format, the dataset and transforms, importers and checks.

Layer L1. The data contract is in ``docs/design.md``: a split folder holds ``annotations.json``
and ``images/``; a dataset root holds ``train/`` and ``val/``. Names are re-exported
lazily, so ``import sodlab.data`` does not import torch until a dataset is used.

- ``coco``: ``load_coco``, ``save_coco``, ``dataset_hash``, ``annotations_by_image``,
  ``to_coco_results``, mask decoding.
- ``dataset``: ``DetectionDataset``, ``collate``.
- ``transforms``: ``Compose``, ``ResizeLongest``, ``RandomHFlip``, ``ColorJitter``.
- ``formats``: ``import_split`` for WIDER FACE, VOC, COCO and YOLO labels.
- ``check``: ``check_split``, ``Problem``.
- ``synth``: the embedded procedural dataset; ``ensure_dataset`` returns it, cached.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

_EXPORTS = {
    "load_coco": "coco", "save_coco": "coco", "dataset_hash": "coco",
    "decode_segmentation": "coco", "split_dirs": "coco",
    "annotations_by_image": "coco", "to_coco_results": "coco",
    "DetectionDataset": "dataset", "collate": "dataset", "read_image": "dataset",
    "Compose": "transforms", "ResizeLongest": "transforms", "RandomHFlip": "transforms",
    "ColorJitter": "transforms",
    "import_split": "formats", "ImportReport": "formats", "FORMATS": "formats",
    "check_split": "check", "check_path": "check", "Problem": "check",
}

__all__ = sorted([*_EXPORTS, "ensure_dataset", "dataset_is_complete"])


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"sodlab.data.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'sodlab.data' has no attribute {name!r}")


def dataset_is_complete(root: Path, generator_version) -> bool:
    """True if ``root`` holds ``train/`` and ``val/`` split folders and a ``meta.json`` whose
    generator version equals ``generator_version``."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    version = meta.get("generator_version", meta.get("version"))
    if version != generator_version:
        return False
    return all((root / s / "annotations.json").is_file() and (root / s / "images").is_dir()
               for s in ("train", "val"))


def ensure_dataset(size: str = "quick", seed: int = 0, progress: bool = False) -> Path:
    """The embedded synthetic dataset root for ``(size, seed)``, generated if not cached.

    The cache lives at ``synth.default_dataset_dir(size, seed)``; it is reused only when
    it is complete and its ``meta.json`` names the current ``synth.GENERATOR_VERSION``.
    """
    from sodlab.data import synth

    root = Path(synth.default_dataset_dir(size, seed))
    if dataset_is_complete(root, synth.GENERATOR_VERSION):
        return root
    return Path(synth.make_dataset(root, size=size, seed=seed, progress=progress))

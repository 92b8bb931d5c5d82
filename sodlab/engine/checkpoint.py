"""Checkpoints: save and load everything a run needs to resume bit-for-bit, atomically.

Layer L4. A checkpoint is one ``torch.save`` dict written through
``sodlab.files.atomic_write`` (temporary file, then rename), so a run killed while saving
leaves the previous ``last.pt`` intact. Keys: ``config`` (``dataclasses.asdict`` of the
``DetectorConfig``), ``model``, ``optimizer``, ``scheduler`` (the warm-up + cosine state),
``step``, ``epoch``, ``step_in_epoch``, ``rng`` (torch CPU/CUDA states; data order and
augmentation are functions of ``(seed, epoch, index)`` and need no state), ``categories``
and ``cat_ids`` (contiguous label -> the dataset's own category id), ``seed``,
``batch_size``, ``images_seen``, ``seconds``, ``metrics``, ``provenance``. Taught in
notebook 03_fpn (the first notebook that trains a detector).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from sodlab.errors import InputError
from sodlab.files import atomic_write

# 2: the config states the paper's anchor sizes (scaled by ``anchor_scale`` when built) and
# has no ``lr`` (training arguments live in ``train``). 1: sizes were stored already scaled.
CHECKPOINT_FORMAT = 2


def rng_state() -> dict:
    """The global torch RNG states (CPU and, where present, CUDA) as a picklable dict."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_dict(cfg: Any) -> dict:
    """A config dataclass (or dict) as a plain dict."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def save_checkpoint(path: str | os.PathLike, **state: Any) -> Path:
    """Write ``state`` (tensors moved to CPU by ``torch.save``'s pickling) atomically."""
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint dict; InputError naming the file when it is missing or not one."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise InputError(f"{path}: not a sodlab checkpoint ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise InputError(f"{path}: not a sodlab checkpoint (no 'model'/'config' entries)")
    return ckpt


def build_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", *,
                          build_model=None) -> torch.nn.Module:
    """Rebuild the detector of a checkpoint dict and load its weights (eval mode).

    A single-shot checkpoint is rebuilt by ``build_detector``; a stage-two one (its
    ``train.extra`` records a spec, ``sodlab.engine.stage_two_spec``) as its base wrapped in
    the second stage the spec describes. ``build_model(config)``: how to rebuild a model
    neither makes (the run was trained with one).
    """
    from sodlab.detector import build_detector, config_from_dict

    cfg = config_from_dict(upgrade_config(ckpt))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = (build_model or _builder_of(ckpt) or build_detector)(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def upgrade_config(ckpt: dict) -> dict:
    """The detector config of a checkpoint in the current format (format 1 is converted).

    A field added to ``DetectorConfig`` after the checkpoint was written takes its default,
    which keeps the old computation (the run-cache key leaves such fields out, too).
    """
    cfg = dict(ckpt["config"])
    if ckpt.get("format", 1) < 2:
        cfg.pop("lr", None)
        scale = float(cfg.get("anchor_scale", 1.0)) or 1.0
        cfg["anchor_sizes"] = [[float(v) / scale for v in sz] for sz in cfg["anchor_sizes"]]
    if "preset" in cfg and "strides" in cfg:  # a detector's config
        from sodlab.detector import DetectorConfig

        for f in dataclasses.fields(DetectorConfig):
            if f.name not in cfg:
                cfg[f.name] = f.default if f.default is not dataclasses.MISSING \
                    else f.default_factory()
    return cfg


def _builder_of(ckpt: dict):
    """``build(config)`` of a stage-two checkpoint's model, or None for a single-shot one."""
    from sodlab.engine.stage_two_spec import build_stage_two, stage_two_of

    spec = stage_two_of(ckpt)
    if spec is None:
        return None

    def build(cfg):
        from sodlab.detector import build_detector

        return build_stage_two(build_detector(cfg), spec, num_classes=cfg.num_classes)

    return build

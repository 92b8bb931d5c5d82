"""A second stage on a trained single-shot detector: spec, build, train through the run cache, load.

Layer L4. A stage two is a ``sodlab.models.roi_head.TwoStageDetector``: the trained base
detector, frozen, proposes its top-k boxes and a RoI head refines them. What the head is
comes from a **spec**, a plain JSON dict that is part of the run-cache key; its keys and
defaults, ``parse_stage_two``, ``build_stage_two`` and ``stage_two_of`` are those of
``sodlab.engine.stage_two_spec`` (re-exported here).

One engine: ``cached_stage_two`` gets the base from ``cached_train(preset, ...)`` with the
shared budget (``standard_budget``), then trains the second stage with the same
``cached_train`` (``build_model`` wraps the cached base, ``extra`` records the spec and the
base's cache key), so the same ``train_step`` trains both and every result lands in one
cache. ``train_stage_two`` does the same from a base checkpoint file (``sodlab train
--base BASE/best.pt --stage-two JSON``). A stage-two checkpoint holds the base's weights
too; ``load_stage_two`` rebuilds the whole detector from it (as ``load_detector`` does for
any checkpoint), and evaluation goes through the one inference path
(``sodlab.engine.predict.detect_batch``). ``roi_features`` gives the pooled features of a
split's small and large objects, and the small ones enhanced, for looking at what a second
stage's generator does (notebook 07).

Shapes: images ``[B, 3, Hp, Wp]``; proposals per image ``[N_b, 4]`` xyxy input pixels.
Dimension legend: B images, N_b proposals of image b, Hp x Wp padded input size.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sodlab.engine.stage_two_spec import (
    SPEC_DEFAULTS,
    build_stage_two,
    parse_stage_two,
    stage_two_of,
)
from sodlab.errors import InputError

# The second stage's own budget (steps x batch at the base's input size), shared by the
# notebooks on two-stage refinement (07, 09) so their common runs hit one cache entry. The
# quick one used to be 20 steps x 4 images: a RoI head that had seen 80 images scored a tenth
# of its base's AP_small, so a class saw "a second stage destroys a detector"; 150 x 8 is
# six epochs of the quick set, enough for the head to learn what its proposals are.
STAGE_TWO_QUICK = {"max_steps": 150, "batch_size": 8}
STAGE_TWO_FULL = {"max_steps": 200, "batch_size": 8}


def stage_two_budget(*, quick: bool) -> dict:
    """``{"max_steps", "batch_size"}`` of a second stage in quick or full mode."""
    return dict(STAGE_TWO_QUICK if quick else STAGE_TWO_FULL)


def _base_checkpoint(path: str | os.PathLike) -> dict:
    from sodlab.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if stage_two_of(ckpt) is not None:
        raise InputError(f"{path}: a stage-two checkpoint; the base must be a single-shot "
                         f"detector's checkpoint (its own best.pt)")
    return ckpt


def stage_two_builder(base_checkpoint: str | os.PathLike | dict, spec: dict | str
                      ) -> Callable[[Any], Any]:
    """``build_model(cfg)`` for ``train``/``cached_train``: the base of a checkpoint, wrapped.

    ``cfg`` must be the base's own config (the checkpoint's); anything else is refused.
    """
    from sodlab.engine.checkpoint import build_from_checkpoint, config_dict, upgrade_config

    ckpt = base_checkpoint if isinstance(base_checkpoint, dict) else \
        _base_checkpoint(base_checkpoint)
    spec = parse_stage_two(spec)
    base_cfg = upgrade_config(ckpt)

    def build(cfg):
        if config_dict(cfg) != base_cfg:
            changed = sorted(k for k in base_cfg if config_dict(cfg).get(k) != base_cfg[k])
            raise InputError(f"the second stage's detector config differs from its base's "
                             f"in {changed}; a stage two keeps the base's config")
        base = build_from_checkpoint(ckpt, "cpu")
        return build_stage_two(base, spec, num_classes=cfg.num_classes)

    return build


def check_stage_two_data(spec: dict | str, data_root: str | os.PathLike, *, input_size: int) -> None:
    """InputError before training when the data cannot train this second stage.

    Perceptual GAN: its discriminator's real examples are large objects, so the training
    split needs at least one box of ``sodlab.models.gan.LARGE_AREA`` px² or more at
    ``input_size``.
    """
    spec = parse_stage_two(spec)
    if spec["kind"] != "pgan":
        return
    from sodlab.data.coco import load_coco
    from sodlab.models.gan import LARGE_AREA, count_large

    split = Path(data_root) / "train"
    n = count_large(load_coco(split), input_size=input_size)
    if n == 0:
        side = LARGE_AREA ** 0.5
        raise InputError(f"{split / 'annotations.json'}: no object is large enough for the "
                         f"Perceptual GAN's discriminator (box area >= {side:g}² px once the "
                         f"image's longer side is {input_size} px); it needs large objects "
                         f"as its real examples")


def _collapse_as_divergence(fn, *args, **kwargs):
    from sodlab.engine.train import TrainingDiverged
    from sodlab.models.gan import GANCollapsed

    try:
        return fn(*args, **kwargs)
    except GANCollapsed as exc:
        raise TrainingDiverged(str(exc)) from exc


def cached_stage_two(preset: str, data_root: str | os.PathLike, spec: dict | str, *,
                     seed: int, quick: bool, progress: bool = False,
                     overrides: Sequence[str] | dict = (), budget: dict | None = None,
                     base_budget: dict | None = None, device: str = "cpu",
                     precision: str = "auto") -> tuple[Path, dict]:
    """Train (once per key) a second stage on the cached base; (checkpoint path, summary).

    The base is ``cached_train(preset, data_root, **(base_budget or
    standard_budget(preset, quick=quick)))`` with ``overrides`` added to the budget's; the
    second stage trains ``budget or stage_two_budget(quick=quick)`` on the same config, keyed
    by ``extra={"stage_two": spec, "base_key": <the base's cache key>}``. The summary gains
    ``"base"``: the base's checkpoint, key and validation metrics. ``TrainingDiverged``
    when the loss turns non-finite or a Perceptual GAN's discriminator collapses.
    """
    from sodlab.detector import parse_overrides
    from sodlab.engine.budgets import standard_budget
    from sodlab.engine.cache import cached_train

    spec = parse_stage_two(spec)
    base_budget = copy.deepcopy(base_budget or standard_budget(preset, quick=quick))
    merged = {**parse_overrides(base_budget.get("overrides") or {}),
              **parse_overrides(overrides)}
    base_budget["overrides"] = merged
    base_ckpt, base_summary = cached_train(preset, data_root, seed=seed, quick=quick,
                                           progress=progress, device=device,
                                           precision=precision, **base_budget)
    budget = dict(budget or stage_two_budget(quick=quick))
    if budget.pop("overrides", None) not in (None, {}, merged):
        raise InputError("the second stage's budget cannot change the detector config "
                         "(its overrides must be the base's)")
    input_size = int(base_summary["config"]["input_size"])
    check_stage_two_data(spec, data_root, input_size=input_size)
    ckpt, summary = _collapse_as_divergence(
        cached_train, preset, data_root, overrides=merged, seed=seed, quick=quick,
        progress=progress, device=device, precision=precision,
        build_model=stage_two_builder(base_ckpt, spec),
        extra={"stage_two": spec, "base_key": base_summary["key"]}, **budget)
    summary["base"] = {"checkpoint": str(base_ckpt), "key": base_summary["key"],
                       "metrics": base_summary.get("metrics")}
    return ckpt, summary


def train_stage_two(base_checkpoint: str | os.PathLike, data_root: str | os.PathLike,
                    out_dir: str | os.PathLike, spec: dict | str, tcfg=None, *,
                    preset: str | None = None, device: str = "auto", resume: bool = False,
                    progress: bool = True, **fields: Any) -> dict:
    """Train a second stage on a base checkpoint file into ``out_dir``; the training summary.

    ``preset``: if given, the base's preset must be this one. ``tcfg`` / ``fields``: the
    training arguments, as for ``sodlab.engine.train.train``; the spec and the base
    checkpoint's path are recorded in ``train.extra``.
    """
    from sodlab.detector import config_from_dict
    from sodlab.engine.checkpoint import upgrade_config
    from sodlab.engine.train import train, train_config

    spec = parse_stage_two(spec)
    ckpt = _base_checkpoint(base_checkpoint)
    cfg = config_from_dict(upgrade_config(ckpt))
    if preset is not None and cfg.preset != preset:
        raise InputError(f"--base {base_checkpoint}: a {cfg.preset!r} detector, but --preset "
                         f"is {preset!r}")
    check_stage_two_data(spec, data_root, input_size=cfg.input_size)
    tcfg = copy.deepcopy(train_config(tcfg, **fields))
    tcfg.extra = {**tcfg.extra, "stage_two": spec, "base_checkpoint": str(base_checkpoint)}
    return _collapse_as_divergence(train, cfg, data_root, out_dir, tcfg, device=device,
                                   resume=resume, progress=progress,
                                   build_model=stage_two_builder(ckpt, spec))


def load_stage_two(checkpoint: str | os.PathLike, device: str = "cpu"):
    """A ``sodlab.engine.predict.Predictor`` of a stage-two checkpoint (file or run folder).

    The base and the head are rebuilt from what the checkpoint records (config, spec,
    weights of both); a single-shot checkpoint is refused (``load_detector`` reads those).
    """
    from sodlab.engine.checkpoint import load_checkpoint
    from sodlab.engine.predict import predictor_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if stage_two_of(ckpt) is None:
        raise InputError(f"{checkpoint}: a single-shot detector's checkpoint, not a stage-two "
                         f"one; load it with sodlab.engine.load_detector")
    return predictor_from_checkpoint(ckpt, device)


def roi_features(model, split_dir: str | os.PathLike, *, input_size: int,
                 max_images: int | None = 32, batch_size: int = 8) -> dict:
    """Pooled features of a split's ground-truth objects, as the second stage sees them.

    ``model``: a ``TwoStageDetector`` (``load_stage_two(...).model``), run in eval mode.
    Each image is resized so its longer side is ``input_size``; non-crowd boxes of area
    <= ``sodlab.models.gan.SMALL_AREA`` are *small*, >= ``LARGE_AREA`` *large* (input
    pixels). Returns ``{"small": [n, F], "large": [m, F], "enhanced": [n, F]}``, flattened
    ``F = C P P`` pooled features (the head's ``pool``, its level rule); ``enhanced`` is the
    small ones after the head's ``enhancer`` (equal to ``small`` when it has none); and
    ``"small_boxes" [n, 4]``, ``"large_boxes" [m, 4]``, the boxes in input pixels.
    """
    import torch

    from sodlab.boxes import box_area
    from sodlab.data.dataset import DetectionDataset, collate
    from sodlab.data.transforms import ResizeLongest
    from sodlab.engine.predict import eval_mode
    from sodlab.models.gan import LARGE_AREA, SMALL_AREA
    from sodlab.models.roi_head import rois_of

    ds = DetectionDataset(split_dir, transforms=ResizeLongest(int(input_size)))
    n = len(ds) if max_images is None else min(len(ds), int(max_images))
    head = model.roi_head
    dev = next(model.parameters()).device
    parts: dict[str, list] = {"small": [], "large": [], "enhanced": [], "small_boxes": [],
                              "large_boxes": []}
    with eval_mode(model), torch.no_grad():
        for start in range(0, n, batch_size):
            images, targets = collate([ds[i] for i in range(start, min(start + batch_size, n))])
            feats = model.base.neck(model.base.backbone(images.to(dev)))  # {s: [B, C, H, W]}
            boxes = [t["boxes"][~t["iscrowd"].bool()].float().to(dev) for t in targets]
            small = [b[box_area(b) <= SMALL_AREA] for b in boxes]
            large = [b[box_area(b) >= LARGE_AREA] for b in boxes]
            pooled = head.pool(feats, small)  # [n_s, C, P, P]
            enhanced = pooled if head.enhancer is None else \
                head.enhancer(pooled, rois_of(small).to(dev), feats)
            parts["small"].append(pooled.flatten(1).float().cpu())
            parts["enhanced"].append(enhanced.flatten(1).float().cpu())
            parts["large"].append(head.pool(feats, large).flatten(1).float().cpu())
            parts["small_boxes"] += [b.cpu() for b in small]
            parts["large_boxes"] += [b.cpu() for b in large]
    return {k: torch.cat(v) for k, v in parts.items()}


__all__ = ["SPEC_DEFAULTS", "STAGE_TWO_QUICK", "STAGE_TWO_FULL", "stage_two_budget",
           "parse_stage_two", "build_stage_two", "stage_two_of", "stage_two_builder", "check_stage_two_data",
           "cached_stage_two", "train_stage_two", "load_stage_two", "roi_features"]

"""The stage-two spec: its keys and defaults, its parsing, and the model it describes.

Layer L4. A stage two is a ``sodlab.models.roi_head.TwoStageDetector``: the trained base
detector, frozen, proposes its top-k boxes and a RoI head refines them. What the head is
comes from a **spec**, a plain JSON dict that is part of the run-cache key (so it must
name everything that makes two second stages differ). Keys, with their defaults:

- every kind: ``proposals`` 100 (the base's top-k boxes per image), ``proposal_thresh``
  0.01 (the base's score threshold while it proposes; its own default 0.05 lets few boxes
  through after a short training), ``fc`` 256 (FC width), ``pool`` 7 (RoI side).
- ``{"kind": "roi"}``: a Fast R-CNN head; ``relation`` 0 (relation modules after each FC
  layer), ``relation_heads`` 16, ``learned_nms`` false (Relation Networks, notebook 09).
- ``{"kind": "pgan"}``: the Perceptual GAN head of ``sodlab.models.gan`` (notebook 07);
  ``adversarial`` true (false: the capacity control, the generator trained by the
  perception loss only), ``blocks`` 3 (residual blocks of the generator),
  ``collapse_patience`` 100 (discriminator steps at accuracy 0 or 1 before training
  stops; 0: never).

``parse_stage_two`` fills the defaults, so ``{"kind": "roi"}`` and ``{"kind": "roi",
"relation": 0}`` are one cache entry; an unknown kind or key, or a value of the wrong
type, is an ``InputError``. ``stage_two_of`` reads the spec a checkpoint was trained with
and ``build_stage_two`` builds the model it describes around a base detector, so
``sodlab.engine.checkpoint`` rebuilds a stage-two checkpoint without the training and
caching code of ``sodlab.engine.stage_two`` (which re-exports these names).

Shapes: no tensors here. Dimension legend: none.
"""

from __future__ import annotations

import dataclasses
import json

from sodlab.errors import InputError

_COMMON = {"proposals": 100, "proposal_thresh": 0.01, "fc": 256, "pool": 7}
SPEC_DEFAULTS: dict[str, dict] = {
    "roi": {**_COMMON, "relation": 0, "relation_heads": 16, "learned_nms": False},
    "pgan": {**_COMMON, "adversarial": True, "blocks": 3, "collapse_patience": 100},
}
# Integers >= 0 unless listed in _POSITIVE; floats in [0, 1); booleans.
_POSITIVE = {"proposals", "fc", "pool", "relation_heads"}
_FLOATS = {"proposal_thresh"}
_BOOLS = {"learned_nms", "adversarial"}


def parse_stage_two(spec: dict | str) -> dict:
    """A validated spec with every default filled in (a JSON string is parsed first)."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise InputError(f"stage-two spec {spec!r}: not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise InputError(f"stage-two spec: expected a JSON object, got {spec!r}")
    kind = spec.get("kind")
    if kind not in SPEC_DEFAULTS:
        raise InputError(f"stage-two spec {spec!r}: 'kind' must be one of "
                         f"{sorted(SPEC_DEFAULTS)}")
    defaults = SPEC_DEFAULTS[kind]
    unknown = set(spec) - set(defaults) - {"kind"}
    if unknown:
        raise InputError(f"stage-two spec: unknown keys {sorted(unknown)} for kind {kind!r}; "
                         f"valid: {sorted(defaults)}")
    out = {"kind": kind, **defaults}
    for key, value in spec.items():
        if key == "kind":
            continue
        if key in _BOOLS:
            ok = isinstance(value, bool)
        elif key in _FLOATS:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                0.0 <= value < 1.0
            value = float(value) if ok else value
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and \
                value >= (1 if key in _POSITIVE else 0)
        if not ok:
            want = ("true or false" if key in _BOOLS else "a number in [0, 1)" if key in _FLOATS
                    else "an integer >= 1" if key in _POSITIVE else "an integer >= 0")
            raise InputError(f"stage-two spec: {key!r} must be {want}, got {value!r}")
        out[key] = value
    return out


def build_stage_two(base_model, spec: dict | str, *, num_classes: int):
    """A ``TwoStageDetector`` around ``base_model`` (frozen) with the head the spec names.

    ``base_model``: a trained single-shot ``sodlab.detector.Detector``; its config is
    replaced by a copy with ``score_thresh = spec["proposal_thresh"]`` (the caller's config
    object is not changed). The head's weights come from the current torch RNG.
    """
    from sodlab.models.roi_head import RoIHead, TwoStageDetector

    spec = parse_stage_two(spec)
    base_model.cfg = dataclasses.replace(base_model.cfg, score_thresh=spec["proposal_thresh"])
    width = int(base_model.cfg.width)
    if spec["kind"] == "roi":
        head = RoIHead(width, num_classes, pool=spec["pool"], fc=spec["fc"],
                       relation=spec["relation"], relation_heads=spec["relation_heads"],
                       learned_nms=spec["learned_nms"])
    else:
        from sodlab.models.gan import PerceptualGANHead

        head = PerceptualGANHead(width, num_classes, pool=spec["pool"], fc=spec["fc"],
                                 blocks=spec["blocks"], adversarial=spec["adversarial"],
                                 collapse_patience=spec["collapse_patience"])
    model = TwoStageDetector(base_model, head, proposals=spec["proposals"], freeze_base=True)
    model.stage_two_spec = spec
    return model


def stage_two_of(ckpt: dict) -> dict | None:
    """The spec a checkpoint dict was trained with, or None for a single-shot checkpoint."""
    extra = (ckpt.get("train") or {}).get("extra") or {}
    spec = extra.get("stage_two")
    return parse_stage_two(spec) if spec is not None else None


__all__ = ["SPEC_DEFAULTS", "parse_stage_two", "build_stage_two", "stage_two_of"]

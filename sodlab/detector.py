"""The one configurable single-shot detector every technique plugs into, assembled by build_detector.

An anchor-based detector of the RetinaNet/SSD family: backbone -> neck (``none`` = one level,
``fpn``, ``ssh``) -> shared head -> anchors per level -> IoU matching -> focal loss (or
softmax with 3:1 hard-negative mining) -> post-processing (score threshold, top-k per level,
decoding, class-wise NMS, ``max_dets``). Named presets keep their paper's structure and state
the paper's anchor sizes in ``anchor_sizes``; ``level_specs`` multiplies them by one factor,
``anchor_scale`` (default 1/4), chosen so the smallest anchor fits the embedded dataset's
smallest faces (about 5 px). ``--set anchor_scale=0.5`` doubles every anchor and nothing
else; ``scaled_anchor_sizes(cfg)`` gives the sizes the detector uses:

- ``baseline``: one level at stride 16 with the FPN paper's five sizes 32…512 all on it,
  x 1/4 -> 8…128, ratios {1:2, 1:1, 2:1} (15 anchors per cell).
- ``fpn``: P2–P6 (strides 4…64), one size per level 32…512 x 1/4 -> 8…128, ratios
  {1:2, 1:1, 2:1}; positive IoU 0.5, negative 0.4 (RetinaNet).
- ``ssh``: M1 stride 8 sizes 16, 32; M2 stride 16 sizes 64, 128; M3 stride 32 sizes 256, 512
  (SSH), x 1/4 -> 4…128, ratio 1; positive 0.5, negative 0.3.
- ``faceboxes``: the FaceBoxes CPU backbone; stride 32 sizes 32 (densified x4), 64 (x2),
  128; stride 64 size 256; stride 128 size 512, x 1/4 -> 8 (x4), 16 (x2), 32, 64, 128;
  ratio 1; matching at 0.35 with each face's best anchor; softmax with 3:1 hard negatives.
- ``faceboxes_s16``: the same backbone with one more level at stride 16 (the RDCL's map
  before its last pool, given the inception layers' semantics by an FPN top-down merge):
  8 (x2) at 16; 16 (x2), 32 at 32; 64 at 64; 128 at 128 — every anchor at tiling density 1,
  as in ``faceboxes``, but the smallest ones on a grid that can resolve them.
- ``fast``: ``fpn`` for real time on a CPU: the same levels, anchor sizes and matching, with
  depthwise-separable strided convs in the backbone (``tiny_dw``) and smoothing convs in the
  neck (``fpn_dw``), no head tower (``head_depth=0``) and square anchors only (faces are
  square): about 0.2x ``fpn``'s multiply-adds at VGA (242 vs 1,240 million; ``sodlab bench
  --only train_speed`` measures them).
- ``s3fd``: strides 4…128 with anchor = 4 x stride (16…512), x 1/4 -> 4…128; ratio 1;
  matching at 0.35 then scale compensation; max-out background (3 scores) on stride 4;
  softmax with 3:1 hard negatives.
- ``pyramidbox`` (Tang et al. 2018): S3FD's levels, anchors, matching and loss with the
  four PyramidBox parts on: ``lfpn`` (the low-level FPN from stride 32 down replaces the
  plain neck), ``cpm`` (a context-sensitive prediction module per level), ``max_in_out``
  (1 face + 3 background scores on stride 4, 3 face + 1 background elsewhere; replaces
  ``maxout_bg``) and ``pyramid_anchors`` (head and body scores, training only).

PyramidAnchors in the loss: every anchor gets a head and a body label by
``sodlab.matching.pyramid_anchor_labels`` (IoU > 0.35) against each face's head / body box.
With ``pyramid_boxes="paper"`` (the default) that box is derived from the face as in the
paper (grown 2x / 4x about its centre). With ``"real"`` it is the target's ``head_boxes`` /
``body_boxes`` where the data has them (``cfg.context_keys`` names the annotation keys the
dataset should load); a target without those keys, or a face whose row is NaN (missing),
falls back to the derived box, never an error, and the loss reports the share of derived
boxes as ``context_derived``. Context boxes are
clipped to the image (``size``) first, so a body that leaves the image is matched by its
visible part (one wholly outside matches nothing); anchors on a crowd face's context are
ignored. Each branch is a two-way softmax with 3:1 hard negatives normalised by its own
positives, added with weights ``CONTEXT_WEIGHTS`` (head 1, body 1: the paper's public code
adds its face and head losses unweighted). The paper also regresses head and body boxes;
here they are classified only. At test time only the face branch runs.

The factor 1/4 keeps each paper's structure (levels, anchors per level, ratios, thresholds)
and shrinks every anchor alike, so tiling densities (size / stride) shrink by 4 too:
FaceBoxes' densified anchors all have density 1 here instead of 4, S3FD's equal-proportion
interval gives density 1 instead of 4. Notebook 06 shows what that does to matching.

Taught in notebooks 03, 04 and 06. Shapes: ``images [B, 3, H, W]`` (zero-padded batches; each
target's ``size`` gives the real image); training returns scalar losses, eval returns per
image ``boxes [N, 4]`` (input pixels), ``scores [N]``, ``labels [N]`` (contiguous).
Dimension legend: B batch, A anchors of the whole image, K classes, N detections.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from sodlab.anchors import LevelSpec, anchors_for_level
from sodlab.boxes import BoxCoder, clip_boxes
from sodlab.errors import InputError
from sodlab.losses import box_loss, focal_loss, softmax_ohem_loss
from sodlab.matching import (
    DOTD_SIZE,
    NWD_CONSTANT,
    SIMILARITIES,
    context_boxes,
    match_anchors_batch,
    pyramid_anchor_labels,
)
from sodlab.models.backbones import build_backbone
from sodlab.models.context import LevelCPM
from sodlab.models.heads import ContextClassifier, Head
from sodlab.models.necks import LFPN, build_neck


@dataclass
class DetectorConfig:
    """Everything that defines a detector; JSON-serialisable with ``dataclasses.asdict``."""

    preset: str = "fpn"
    num_classes: int = 1
    input_size: int = 384
    backbone: str = "tiny"
    neck: str = "fpn"
    width: int = 32
    head_depth: int = 1
    strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    anchor_sizes: list[list[float]] = field(default_factory=lambda: [[32], [64], [128], [256],
                                                                     [512]])  # paper px
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    anchor_offset: float = 0.5
    anchor_scale: float = 0.25
    anchor_densify: list[list[int]] | None = None  # per level, per size (FaceBoxes)
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    low_quality: bool = True  # every object also takes its best anchor(s)
    compensate: bool = False  # S3FD scale compensation after the threshold stage
    # anchor-box similarity of the face matching: iou, nwd or dotd (sodlab.matching.similarity);
    # nwd / dotd use their own thresholds below in place of pos_iou, neg_iou and the S3FD
    # compensation's 0.1, and their normalising size in input px (matching.mean_object_size)
    matcher: str = "iou"
    nwd_constant: float = NWD_CONSTANT  # NWD's C: mean sqrt(w h) of the embedded train faces
    dotd_size: float = DOTD_SIZE  # DotD's S: sqrt of their mean area
    # the NWD paper's RPN thresholds (AI-TOD), not calibrated to these anchors: on the
    # embedded data they make many times IoU's positives; anchor_fit.calibrate_thresholds
    # maps IoU's, and the tiny_objects study trains with those (bench.studies)
    nwd_pos: float = 0.7  # positive at NWD >= 0.7,
    nwd_neg: float = 0.3  # negative below 0.3
    nwd_min: float = 0.1  # S3FD compensation takes anchors with NWD > 0.1
    dotd_pos: float = 0.7  # DotD: the same three thresholds as NWD
    dotd_neg: float = 0.3
    dotd_min: float = 0.1
    maxout_bg: int = 0  # extra background scores on the finest level (S3FD: 2 -> 3 in all)
    loss: str = "focal"
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    topk_per_level: int = 1000
    max_dets: int = 100
    lfpn: bool = False  # PyramidBox's low-level FPN replaces the plain neck
    lfpn_fusion: str = "product"  # how LFPN merges a level with the one above: product or sum
    cpm: bool = False  # a context-sensitive prediction module on every level
    pyramid_anchors: bool = False  # head and body scores trained beside the face's
    max_in_out: bool = False  # finest level 1 face / 3 bg scores, others 3 face / 1 bg
    pyramid_boxes: str = "paper"  # head/body from the face box ("paper") or the data ("real")
    ssh_context: bool = True  # SSH's context modules (False: one plain 3x3 of equal width)

    @property
    def context_keys(self) -> tuple[str, ...]:
        """Per-object context boxes (``head_bbox``, ``body_bbox``) the loss reads from targets."""
        return ("head_bbox", "body_bbox") if self.pyramid_anchors and \
            self.pyramid_boxes == "real" else ()


def _baseline(**kw) -> DetectorConfig:
    return DetectorConfig(preset="baseline", neck="none", strides=[16],
                          anchor_sizes=[[32, 64, 128, 256, 512]], **kw)


def _fpn(**kw) -> DetectorConfig:
    return DetectorConfig(preset="fpn", **kw)


def _ssh(**kw) -> DetectorConfig:
    return DetectorConfig(preset="ssh", neck="ssh", strides=[8, 16, 32],
                          anchor_sizes=[[16, 32], [64, 128], [256, 512]], anchor_ratios=[1.0],
                          pos_iou=0.5, neg_iou=0.3, **kw)


def _faceboxes(**kw) -> DetectorConfig:
    return DetectorConfig(preset="faceboxes", backbone="faceboxes", neck="plain",
                          strides=[32, 64, 128], anchor_sizes=[[32, 64, 128], [256], [512]],
                          anchor_densify=[[4, 2, 1], [1], [1]], anchor_ratios=[1.0],
                          head_depth=0, pos_iou=0.35, neg_iou=0.35, loss="softmax_ohem", **kw)


def _faceboxes_s16(**kw) -> DetectorConfig:
    # faceboxes with one more level: backbone, head, matching and loss stay its own
    return dataclasses.replace(_faceboxes(**kw), preset="faceboxes_s16", neck="fpn",
                               strides=[16, 32, 64, 128],
                               anchor_sizes=[[32], [64, 128], [256], [512]],
                               anchor_densify=[[2], [2, 1], [1], [1]])


def _s3fd(**kw) -> DetectorConfig:
    return DetectorConfig(preset="s3fd", neck="plain", strides=[4, 8, 16, 32, 64, 128],
                          anchor_sizes=[[16], [32], [64], [128], [256], [512]],
                          anchor_ratios=[1.0],
                          pos_iou=0.35, neg_iou=0.35, low_quality=False, compensate=True,
                          maxout_bg=2, loss="softmax_ohem", **kw)


def _pyramidbox(**kw) -> DetectorConfig:
    # S3FD's levels, anchor rule, matching and loss, with PyramidBox's four parts on
    return dataclasses.replace(_s3fd(**kw), preset="pyramidbox", lfpn=True, cpm=True,
                               pyramid_anchors=True, max_in_out=True)


def _fast(**kw) -> DetectorConfig:
    # fpn's levels, anchors and matching on a CPU diet: depthwise-separable strided convs in
    # the backbone and smoothing convs in the neck, no head tower, square anchors only
    return dataclasses.replace(_fpn(**kw), preset="fast", backbone="tiny_dw", neck="fpn_dw",
                               head_depth=0, anchor_ratios=[1.0])


PRESETS: dict[str, Callable[..., DetectorConfig]] = {"baseline": _baseline, "fpn": _fpn,
                                                     "ssh": _ssh, "faceboxes": _faceboxes,
                                                     "faceboxes_s16": _faceboxes_s16,
                                                     "s3fd": _s3fd, "pyramidbox": _pyramidbox,
                                                     "fast": _fast}
CONTEXT_WEIGHTS = {"head": 1.0, "body": 1.0}  # PyramidAnchors' loss weights (k = 1, 2)


def _type_ok(value, annotation: str) -> tuple[bool, object]:
    """Whether ``value`` fits a field's annotation (as written in the source); the coerced value."""
    for option in (a.strip() for a in annotation.split("|")):
        if option == "None" and value is None:
            return True, None
        if option == "bool" and isinstance(value, bool):
            return True, value
        if option == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if option == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if option == "str" and isinstance(value, str):
            return True, value
        if option.startswith("list[") and isinstance(value, list):
            inner = option[5:-1]
            items = [_type_ok(v, inner) for v in value]
            if all(ok for ok, _ in items):
                return True, [v for _, v in items]
    return False, value


def _parse_value(key: str, value, annotation: str):
    """An override's value: JSON when a string parses as JSON, then checked against the field."""
    raw = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = raw
    ok, coerced = _type_ok(value, annotation)
    if not ok and isinstance(raw, str) and value is not raw:
        ok, coerced = _type_ok(raw, annotation)  # e.g. a str field given "1e-3"
    if not ok:
        raise InputError(f"override {key}={raw!r}: expected {annotation}, got "
                         f"{type(value).__name__}")
    return coerced


def parse_overrides(overrides) -> dict:
    """``key=value`` strings (or a dict) as a dict of typed ``DetectorConfig`` field values.

    Values parse as JSON when they do (``--set anchor_scale=0.5``, ``--set strides=[8,16]``)
    and must fit the field's type; an unknown key or a wrong type is an InputError naming it.
    """
    items = overrides.items() if isinstance(overrides, dict) else (
        o.split("=", 1) if "=" in o else (o, None) for o in overrides)
    fields = {f.name: f for f in dataclasses.fields(DetectorConfig)}
    out = {}
    for key, value in items:
        key = str(key).strip()
        if value is None and not isinstance(overrides, dict):
            raise InputError(f"override {key!r} needs the form key=value")
        if key not in fields:
            raise InputError(f"unknown config key {key!r}; valid keys: {sorted(fields)}")
        out[key] = _parse_value(key, value, str(fields[key].type))
    return out


def _check(cfg: DetectorConfig) -> DetectorConfig:
    if len(cfg.anchor_sizes) != len(cfg.strides):
        raise InputError(f"anchor_sizes has {len(cfg.anchor_sizes)} levels but strides has "
                         f"{len(cfg.strides)}")
    if cfg.anchor_densify is not None and [len(d) for d in cfg.anchor_densify] != \
            [len(s) for s in cfg.anchor_sizes]:
        raise InputError("anchor_densify needs one factor per anchor size on every level")
    if not cfg.anchor_scale > 0:
        raise InputError(f"anchor_scale must be > 0, got {cfg.anchor_scale}")
    if cfg.maxout_bg and cfg.loss != "softmax_ohem":
        raise InputError("maxout_bg needs loss=softmax_ohem (a background class to max over)")
    if cfg.max_in_out and cfg.loss != "softmax_ohem":
        raise InputError("max_in_out needs loss=softmax_ohem (a background class to max over)")
    if cfg.lfpn and cfg.neck not in ("plain", "lfpn"):
        raise InputError(f"lfpn replaces the plain neck; got neck={cfg.neck!r}")
    if cfg.lfpn_fusion not in LFPN.FUSIONS:
        raise InputError(f"lfpn_fusion must be one of {', '.join(LFPN.FUSIONS)}, "
                         f"got {cfg.lfpn_fusion!r}")
    if cfg.pyramid_boxes not in ("paper", "real"):
        raise InputError(f"pyramid_boxes must be paper or real, got {cfg.pyramid_boxes!r}")
    if cfg.cpm and cfg.width % 4:
        raise InputError(f"cpm needs a width divisible by 4, got {cfg.width}")
    if cfg.matcher not in SIMILARITIES:
        raise InputError(f"unknown matcher {cfg.matcher!r}; valid values: "
                         f"{', '.join(SIMILARITIES)}")
    if not (cfg.nwd_constant > 0 and cfg.dotd_size > 0):
        raise InputError(f"nwd_constant and dotd_size must be > 0, got {cfg.nwd_constant} "
                         f"and {cfg.dotd_size}")
    pos, neg, _, _ = _matching_options(cfg)
    if cfg.matcher != "iou" and not 0 <= neg <= pos <= 1:
        raise InputError(f"matcher={cfg.matcher} needs 0 <= {cfg.matcher}_neg <= "
                         f"{cfg.matcher}_pos <= 1, got {neg} and {pos}")
    return cfg


def _matching_options(cfg: DetectorConfig) -> tuple[float, float, float, float | None]:
    """``(pos, neg, min, constant)`` of ``cfg.matcher`` for ``match_anchors_batch``: the IoU
    thresholds (``pos_iou``, ``neg_iou``, S3FD's 0.1, no constant) or the measure's own."""
    if cfg.matcher == "nwd":
        return cfg.nwd_pos, cfg.nwd_neg, cfg.nwd_min, cfg.nwd_constant
    if cfg.matcher == "dotd":
        return cfg.dotd_pos, cfg.dotd_neg, cfg.dotd_min, cfg.dotd_size
    return cfg.pos_iou, cfg.neg_iou, 0.1, None


def make_config(preset: str, *, num_classes: int, overrides=()) -> DetectorConfig:
    """A preset's config with ``key=value`` overrides (typed, see ``parse_overrides``)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return _check(dataclasses.replace(PRESETS[preset](num_classes=num_classes),
                                      **parse_overrides(overrides)))


def config_with_overrides(cfg: DetectorConfig, overrides) -> DetectorConfig:
    """``cfg`` with overrides applied (typed and checked as in ``make_config``)."""
    return _check(dataclasses.replace(cfg, **parse_overrides(overrides)))


def config_from_dict(d: dict) -> DetectorConfig:
    """A ``DetectorConfig`` from its dict (config.json, a checkpoint); unknown keys refused."""
    fields = {f.name for f in dataclasses.fields(DetectorConfig)}
    unknown = set(d) - fields
    if unknown:
        raise InputError(f"config has unknown keys {sorted(unknown)}; is it from a newer sodlab?")
    return _check(DetectorConfig(**d))


def scaled_anchor_sizes(cfg: DetectorConfig) -> list[list[float]]:
    """The anchor sizes the detector uses: the preset's paper sizes x ``anchor_scale``."""
    return [[float(v) * cfg.anchor_scale for v in sz] for sz in cfg.anchor_sizes]


def level_specs(cfg: DetectorConfig) -> list[LevelSpec]:
    """The anchor design of a config, one ``LevelSpec`` per stride."""
    dens = cfg.anchor_densify or [None] * len(cfg.strides)
    return [LevelSpec(s, tuple(sz), tuple(cfg.anchor_ratios), cfg.anchor_offset,
                      tuple(d) if d is not None else None)
            for s, sz, d in zip(cfg.strides, scaled_anchor_sizes(cfg), dens)]


class Detector(nn.Module):
    """Backbone, neck, head, anchors, matching, loss and post-processing of one config."""

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.levels = level_specs(cfg)
        self.backbone = build_backbone(cfg.backbone, max_stride=max(cfg.strides))
        self.neck = build_neck("lfpn" if cfg.lfpn else cfg.neck, self.backbone.channels,
                               list(cfg.strides), cfg.width, ssh_context=cfg.ssh_context,
                               lfpn_fusion=cfg.lfpn_fusion)
        self.cpm = LevelCPM(cfg.width, list(cfg.strides)) if cfg.cpm else None
        softmax = cfg.loss == "softmax_ohem"
        if cfg.loss not in ("focal", "softmax_ohem"):
            raise InputError(f"unknown loss {cfg.loss!r}; choose focal or softmax_ohem")
        finest = min(cfg.strides)
        maxout = {finest: cfg.maxout_bg} if cfg.maxout_bg else None
        maxin = None
        if cfg.max_in_out and not softmax:
            raise InputError("max_in_out needs loss=softmax_ohem (a background class to max over)")
        if cfg.max_in_out:  # PyramidBox: c_n = 3 on the finest level, c_p = 3 on the others
            maxout, maxin = {finest: 2}, {s: 2 for s in cfg.strides if s != finest}
        per_level = {lv.stride: lv.num_anchors for lv in self.levels}
        self.head = Head(cfg.width, per_level,
                         cfg.num_classes + (1 if softmax else 0), depth=cfg.head_depth,
                         prior=None if softmax else 0.01,
                         background_prior=0.99 if softmax else None,
                         maxout=maxout, maxin=maxin)
        self.context_head = ContextClassifier(cfg.width, per_level, branches=2) \
            if cfg.pyramid_anchors else None
        self.coder = BoxCoder()
        self._anchor_cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, shapes: dict[int, tuple[int, int]], device) -> dict[int, torch.Tensor]:
        out = {}
        for lv in self.levels:
            key = (lv, shapes[lv.stride], str(device))
            if key not in self._anchor_cache:
                self._anchor_cache[key] = anchors_for_level(*shapes[lv.stride], lv).to(device)
            out[lv.stride] = self._anchor_cache[key]
        return out

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        feats = self.neck(self.backbone(images))
        if self.cpm is not None:
            feats = self.cpm(feats)
        # {stride: (cls [B, A_s, K'], box [B, A_s, 4])}, float32 even under bf16 autocast, so
        # matching, the loss and decoding never run in reduced precision
        outs = {s: (c.float(), b.float()) for s, (c, b) in self.head(feats).items()}
        anchors = self.anchors({s: tuple(f.shape[-2:]) for s, f in feats.items()},
                               images.device)
        strides = [lv.stride for lv in self.levels]
        if self.training and targets is not None:
            cls = torch.cat([outs[s][0] for s in strides], 1)  # [B, A, K']
            box = torch.cat([outs[s][1] for s in strides], 1)  # [B, A, 4]
            all_anchors = torch.cat([anchors[s] for s in strides])  # [A, 4]
            context = None
            if self.context_head is not None:  # training only: test time uses the face branch
                ctx = self.context_head(feats)  # {stride: [B, A_s, 2, 2]}
                context = torch.cat([ctx[s].float() for s in strides], 1)  # [B, A, 2, 2]
            return self.loss(cls, box, all_anchors, targets, context=context,
                             hw=tuple(images.shape[-2:]))
        return self.postprocess(outs, anchors, images.shape[-2:], targets)

    def loss(self, cls: torch.Tensor, box: torch.Tensor, anchors: torch.Tensor,
             targets: list[dict], *, context: torch.Tensor | None = None,
             hw: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Face losses; with ``context [B, A, 2, 2]`` also the head and body terms (module doc).

        All images are matched at once (``match_anchors_batch``); counted anchors and positives
        are then gathered over ``[B, A]`` in row-major order: image by image, anchor order.
        """
        cfg = self.cfg
        gts = [t["boxes"].to(anchors.dtype) for t in targets]  # B x [N_b, 4]
        crowds = [t.get("iscrowd", torch.zeros(len(gt), dtype=torch.bool)).to(gt.device)
                  for t, gt in zip(targets, gts)]  # B x [N_b]
        pos_t, neg_t, min_t, constant = _matching_options(cfg)
        m = match_anchors_batch(anchors, gts, crowds, pos_iou=pos_t, neg_iou=neg_t,
                                allow_low_quality=cfg.low_quality, compensate=cfg.compensate,
                                min_iou=min_t, kind=cfg.matcher, constant=constant)  # [B, A]
        counted, pos = m >= -1, m >= 0  # [B, A] positives and negatives; positives
        b_idx, a_idx = torch.nonzero(pos, as_tuple=True)  # [P]
        obj = m[b_idx, a_idx]  # [P] the object of each positive in its image
        pad_labels = pad_sequence([t["labels"].to(m.device) for t in targets], batch_first=True,
                                  padding_value=-1)  # [B, N]
        pad_gt = pad_sequence([gt.reshape(-1, 4) for gt in gts], batch_first=True)  # [B, N, 4]
        lab = torch.full_like(m, -1)  # [B, A]
        lab[b_idx, a_idx] = pad_labels[b_idx, obj].to(lab.dtype)
        labels = lab[counted]  # [M]
        num_pos = float((labels >= 0).sum())
        logits = cls[counted]  # [M, K']
        if cfg.loss == "focal":
            l_cls = focal_loss(logits, labels, num_pos)
        else:
            l_cls = softmax_ohem_loss(logits, labels, num_pos)
        deltas_tgt = self.coder.encode(pad_gt[b_idx, obj], anchors[a_idx])  # [P, 4]
        l_box = box_loss(box[pos], deltas_tgt, num_pos)
        out = {"loss": l_cls + l_box, "cls": l_cls.detach(), "box": l_box.detach(),
               "num_pos": torch.tensor(num_pos)}
        if context is not None:
            ctx, derived = self._context_losses(context, anchors, targets, gts, crowds, hw)
            for name, l_ctx in ctx.items():
                out["loss"] = out["loss"] + CONTEXT_WEIGHTS[name] * l_ctx
                out[name] = l_ctx.detach()
            out["context_derived"] = torch.tensor(derived)
        return out

    def _context_losses(self, context: torch.Tensor, anchors: torch.Tensor, targets: list[dict],
                        gts: list[torch.Tensor], crowds: list[torch.Tensor],
                        hw: tuple[int, int] | None) -> tuple[dict[str, torch.Tensor], float]:
        """PyramidAnchors' head and body losses, labelled image by image; the share of derived
        context boxes among the trained faces' (module doc)."""
        cfg = self.cfg
        ctx_labels: list[list[torch.Tensor]] = [[], []]
        ctx_logits: list[list[torch.Tensor]] = [[], []]
        n_derived = n_context = 0
        for b, (t, gt, crowd) in enumerate(zip(targets, gts, crowds)):
            h, w = t.get("size", hw)
            for r, (key, k) in enumerate((("head_boxes", 1), ("body_boxes", 2))):
                given = t.get(key) if cfg.pyramid_boxes == "real" else None
                real = torch.zeros(len(gt), dtype=torch.bool, device=gt.device) \
                    if given is None else torch.isfinite(given).all(1).to(gt.device)
                n_context += int((~crowd.bool()).sum())
                n_derived += int((~crowd.bool() & ~real).sum())
                targets_k = clip_boxes(context_boxes(gt, k, given=given), h, w)  # [N, 4]
                mk = pyramid_anchor_labels(anchors, targets_k, crowd)  # [A]
                counted = mk >= -1
                ctx_labels[r].append(torch.where(mk[counted] >= 0, 0, -1))
                ctx_logits[r].append(context[b][counted, r])  # [M, 2]
        losses = {}
        for r, name in enumerate(("head", "body")):
            lab = torch.cat(ctx_labels[r])  # [M]
            losses[name] = softmax_ohem_loss(torch.cat(ctx_logits[r]), lab,
                                             float((lab >= 0).sum()))
        return losses, n_derived / max(n_context, 1)

    @torch.no_grad()
    def postprocess(self, outs, anchors, hw, targets=None) -> list[dict]:
        cfg = self.cfg
        B = next(iter(outs.values()))[0].shape[0]
        results = []
        for b in range(B):
            h, w = targets[b]["size"] if targets and "size" in targets[b] else hw
            boxes_l, scores_l, labels_l = [], [], []
            for lv in self.levels:
                logits, deltas = outs[lv.stride][0][b], outs[lv.stride][1][b]
                if cfg.loss == "focal":
                    prob = logits.sigmoid()  # [A_s, K]
                else:
                    prob = logits.softmax(-1)[:, 1:]  # [A_s, K]
                flat = prob.flatten()
                keep = torch.nonzero(flat > cfg.score_thresh).flatten()
                if len(keep) > cfg.topk_per_level:
                    keep = keep[flat[keep].topk(cfg.topk_per_level).indices]
                a_idx, k_idx = keep // prob.shape[1], keep % prob.shape[1]
                bx = self.coder.decode(deltas[a_idx], anchors[lv.stride][a_idx])
                bx[:, 0::2] = bx[:, 0::2].clamp(0, w)
                bx[:, 1::2] = bx[:, 1::2].clamp(0, h)
                boxes_l.append(bx)
                scores_l.append(flat[keep])
                labels_l.append(k_idx)
            boxes, scores = torch.cat(boxes_l), torch.cat(scores_l)
            labels = torch.cat(labels_l)
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
            keep = torchvision.ops.batched_nms(boxes, scores, labels, cfg.nms_iou)[:cfg.max_dets]
            results.append({"boxes": boxes[keep], "scores": scores[keep],
                            "labels": labels[keep].long()})
        return results


def build_detector(cfg: DetectorConfig) -> Detector:
    """The detector of a config (weights from the current torch RNG; nothing downloaded)."""
    return Detector(cfg)

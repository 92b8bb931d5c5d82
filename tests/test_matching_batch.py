"""Batched anchor matching: equal to the per-image ``match_anchors`` loop for every option, a
hand case, and ``Detector.loss`` bit-identical to the per-image loop it replaced."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision

from sodlab.anchors import LevelSpec, all_anchors
from sodlab.boxes import clip_boxes
from sodlab.detector import CONTEXT_WEIGHTS, build_detector, make_config
from sodlab.losses import box_loss, focal_loss, softmax_ohem_loss
from sodlab.matching import (
    IGNORE,
    NEGATIVE,
    context_boxes,
    ioa,
    match_anchors,
    match_anchors_batch,
    pyramid_anchor_labels,
)


# --------------------------------------------------------------- against the per-image loop
def _match_anchors_loop(anchors, boxes, ignore=None, *, pos_iou=0.5, neg_iou=0.4,
                        allow_low_quality=True, ignore_ioa=0.5, compensate=False,
                        compensate_n=None, min_iou=0.1):
    """The per-image matcher as it was before the batched one (the oracle)."""
    out = torch.full((len(anchors),), NEGATIVE, dtype=torch.int64)
    if len(boxes) == 0:
        return out
    ignore = torch.zeros(len(boxes), dtype=torch.bool) if ignore is None else ignore.bool()
    keep = torch.nonzero(~ignore).flatten()
    if len(keep):
        iou = torchvision.ops.box_iou(anchors, boxes[keep])  # [A, N']
        best, arg = iou.max(1)
        out[(best >= neg_iou) & (best < pos_iou)] = IGNORE
        pos = best >= pos_iou
        out[pos] = keep[arg[pos]]
        if allow_low_quality:
            top = iou.max(0).values
            a_idx, o_idx = torch.nonzero((iou == top[None]) & (top[None] > 0), as_tuple=True)
            out[a_idx] = keep[o_idx]
        if compensate:
            counts = torch.bincount(out[out >= 0], minlength=int(keep.max()) + 1)[keep]
            n = compensate_n if compensate_n is not None else \
                max(1, round(float(counts.float().mean())))
            for j in torch.nonzero(counts < n).flatten().tolist():
                cand = torch.nonzero((out < 0) & (iou[:, j] > min_iou)).flatten()
                if len(cand):
                    take = iou[cand, j].topk(min(n - int(counts[j]), len(cand))).indices
                    out[cand[take]] = keep[j]
    if ignore.any():
        on_crowd = ioa(anchors, boxes[ignore]).max(1).values >= ignore_ioa
        out[on_crowd & (out < 0)] = IGNORE
    return out



LEVELS = [LevelSpec(4, (4.0, 8.0), (1.0,)), LevelSpec(8, (16.0,), (0.5, 1.0, 2.0)),
          LevelSpec(16, (32.0,), (1.0,))]  # 2 x 256 + 3 x 64 + 16 = 720 anchors on 64 x 64


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` boxes from 1 px to 60 px (log-uniform, so many tiny ones) in a 64 x 64 image."""
    size = torch.exp(torch.empty(n, 2).uniform_(0.0, math.log(60.0), generator=g))  # [n, 2]
    x1y1 = torch.rand(n, 2, generator=g) * 64 - size / 2
    return torch.cat([x1y1, x1y1 + size], 1)


def _random_batch(seed: int):
    """4 to 6 images: zero-box images, an all-crowd image, duplicate boxes (tied matches)."""
    g = torch.Generator().manual_seed(seed)
    B = int(torch.randint(4, 7, (1,), generator=g))
    boxes, crowds = [], []
    for b in range(B):
        n = [0, 1, 3, 8, 15][int(torch.randint(0, 5, (1,), generator=g))]
        bx = _random_boxes(n, g)
        if n >= 3 and bool(torch.rand(1, generator=g) < 0.5):
            bx[-1] = bx[0]  # a duplicate: every anchor best for one is best for both
        crowd = torch.rand(n, generator=g) < 0.25
        if b == 1:
            crowd[:] = True  # every box ignored
        boxes.append(bx)
        crowds.append(crowd)
    return boxes, crowds


OPTIONS = [dict(pos_iou=p, neg_iou=q, allow_low_quality=lq, ignore_ioa=ia, **comp)
           for (p, q), lq, ia, comp in itertools.product(
               [(0.5, 0.4), (0.35, 0.35), (0.5, 0.3)], [True, False], [0.5, 0.3],
               [dict(), dict(compensate=True), dict(compensate=True, compensate_n=3),
                dict(compensate=True, compensate_n=1, min_iou=0.05)])]


@pytest.mark.parametrize("opts", OPTIONS, ids=[str(i) for i in range(len(OPTIONS))])
def test_batch_equals_the_per_image_loop(opts):
    anchors = all_anchors(LEVELS, (64, 64))  # [A, 4]
    for seed in range(12):
        boxes, crowds = _random_batch(seed)
        got = match_anchors_batch(anchors, boxes, crowds, **opts)
        want = torch.stack([_match_anchors_loop(anchors, b, c, **opts) for b, c in zip(boxes, crowds)])
        assert torch.equal(got, want), (seed, opts)
        # the single-image entry point is one row of the batched one
        for b, c, row in zip(boxes, crowds, want):
            assert torch.equal(match_anchors(anchors, b, c, **opts), row), (seed, opts)
        # no ignore flags at all, and one image without its own flags
        got = match_anchors_batch(anchors, boxes, None, **opts)
        want = torch.stack([_match_anchors_loop(anchors, b, None, **opts) for b in boxes])
        assert torch.equal(got, want), (seed, opts)
        mixed = [None] + crowds[1:]
        got = match_anchors_batch(anchors, boxes, mixed, **opts)
        want = torch.stack([_match_anchors_loop(anchors, b, c, **opts) for b, c in zip(boxes, mixed)])
        assert torch.equal(got, want), (seed, opts)


def test_compensation_happens_in_the_property_test():
    """The compensated option sets above really move anchors (else they test nothing new)."""
    anchors = all_anchors(LEVELS, (64, 64))
    boxes, crowds = _random_batch(0)
    kw = dict(pos_iou=0.35, neg_iou=0.35, allow_low_quality=False)
    assert not torch.equal(match_anchors_batch(anchors, boxes, crowds, compensate=True, **kw),
                           match_anchors_batch(anchors, boxes, crowds, **kw))


def test_batch_of_images_without_boxes_and_empty_batch():
    anchors = all_anchors(LEVELS, (64, 64))
    got = match_anchors_batch(anchors, [torch.zeros(0, 4), torch.zeros(0, 4)], None)
    assert got.shape == (2, len(anchors)) and bool((got == NEGATIVE).all())
    assert match_anchors_batch(anchors, []).shape == (0, len(anchors))


# ------------------------------------------------------------------------------- by hand

def test_two_images_by_hand():
    anchors = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20],
                            [20, 20, 40, 40]])
    # image 0: a box on anchor 0 (IoU 1), one on anchor 1 (IoU 0.9), a crowd box on anchor 3
    img0 = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 9], [20, 20, 40, 40]])
    crowd0 = torch.tensor([False, False, True])
    # image 1: one box straddling anchors 0 and 2, IoU 50 / 150 = 1/3 with each (a tie)
    img1 = torch.tensor([[0.0, 5, 10, 15]])
    got = match_anchors_batch(anchors, [img0, img1], [crowd0, torch.tensor([False])],
                              pos_iou=0.5, neg_iou=0.4)
    assert got.tolist() == [[0, 1, NEGATIVE, IGNORE],
                            [0, NEGATIVE, 0, NEGATIVE]]  # both tied anchors take the box
    got = match_anchors_batch(anchors, [img0, img1], [crowd0, torch.tensor([False])],
                              pos_iou=0.5, neg_iou=0.3, allow_low_quality=False)
    assert got.tolist() == [[0, 1, NEGATIVE, IGNORE],
                            [IGNORE, NEGATIVE, IGNORE, NEGATIVE]]  # 1/3 lies in [0.3, 0.5)


# -------------------------------------------------------------- Detector.loss, old vs new

def _old_loss(model, cls, box, anchors, targets, *, context=None, hw=None):
    """The per-image loop ``Detector.loss`` ran before batched matching (the oracle)."""
    cfg = model.cfg
    labels_all, logits_all, deltas_pred, deltas_tgt = [], [], [], []
    ctx_labels: list[list[torch.Tensor]] = [[], []]
    ctx_logits: list[list[torch.Tensor]] = [[], []]
    n_derived = n_context = 0
    for b, t in enumerate(targets):
        gt = t["boxes"].to(anchors.dtype)
        crowd = t.get("iscrowd", torch.zeros(len(gt), dtype=torch.bool)).to(gt.device)
        if context is not None:
            h, w = t.get("size", hw)
            for r, (key, k) in enumerate((("head_boxes", 1), ("body_boxes", 2))):
                given = t.get(key) if cfg.pyramid_boxes == "real" else None
                real = torch.zeros(len(gt), dtype=torch.bool, device=gt.device) \
                    if given is None else torch.isfinite(given).all(1).to(gt.device)
                n_context += int((~crowd.bool()).sum())
                n_derived += int((~crowd.bool() & ~real).sum())
                targets_k = clip_boxes(context_boxes(gt, k, given=given), h, w)
                mk = pyramid_anchor_labels(anchors, targets_k, crowd)
                counted = mk >= -1
                ctx_labels[r].append(torch.where(mk[counted] >= 0, 0, -1))
                ctx_logits[r].append(context[b][counted, r])
        m = _match_anchors_loop(anchors, gt, crowd, pos_iou=cfg.pos_iou, neg_iou=cfg.neg_iou,
                          allow_low_quality=cfg.low_quality, compensate=cfg.compensate)
        counted = m >= -1
        lab = torch.full_like(m, -1)
        pos = m >= 0
        lab[pos] = t["labels"].to(m.device)[m[pos]]
        labels_all.append(lab[counted])
        logits_all.append(cls[b][counted])
        deltas_pred.append(box[b][pos])
        deltas_tgt.append(model.coder.encode(gt[m[pos]], anchors[pos]))
    labels = torch.cat(labels_all)
    num_pos = float((labels >= 0).sum())
    logits = torch.cat(logits_all)
    if cfg.loss == "focal":
        l_cls = focal_loss(logits, labels, num_pos)
    else:
        l_cls = softmax_ohem_loss(logits, labels, num_pos)
    l_box = box_loss(torch.cat(deltas_pred), torch.cat(deltas_tgt), num_pos)
    out = {"loss": l_cls + l_box, "cls": l_cls.detach(), "box": l_box.detach(),
           "num_pos": torch.tensor(num_pos)}
    if context is not None:
        for r, name in enumerate(("head", "body")):
            lab = torch.cat(ctx_labels[r])
            l_ctx = softmax_ohem_loss(torch.cat(ctx_logits[r]), lab, float((lab >= 0).sum()))
            out["loss"] = out["loss"] + CONTEXT_WEIGHTS[name] * l_ctx
            out[name] = l_ctx.detach()
        out["context_derived"] = torch.tensor(n_derived / max(n_context, 1))
    return out


def _loss_targets(seed: int, with_context: bool) -> list[dict]:
    """Four 128 x 128 images: boxes 2 to 90 px, crowd flags, one image without boxes."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in (6, 0, 3, 12):
        size = torch.exp(torch.empty(n, 2).uniform_(math.log(2.0), math.log(90.0), generator=g))
        x1y1 = torch.rand(n, 2, generator=g) * (128 - size)
        boxes = torch.cat([x1y1, x1y1 + size], 1)
        t = {"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64),
             "iscrowd": torch.rand(n, generator=g) < 0.2, "size": (128, 128)}
        if with_context:
            t["head_boxes"] = context_boxes(boxes, 1) + torch.rand(n, 4, generator=g)
            body = context_boxes(boxes, 2)
            body[::2] = math.nan  # missing rows fall back to the derived box
            t["body_boxes"] = body
        targets.append(t)
    return targets


@pytest.mark.parametrize("preset,overrides", [
    ("fpn", {}), ("s3fd", {}), ("pyramidbox", {}), ("pyramidbox", {"pyramid_boxes": "real"})])
def test_detector_loss_is_bit_identical_to_the_per_image_loop(preset, overrides):
    torch.manual_seed(0)
    cfg = make_config(preset, num_classes=1, overrides={"input_size": 128, **overrides})
    if preset == "s3fd":
        assert cfg.compensate and cfg.loss == "softmax_ohem"
    model = build_detector(cfg)
    seen = {}
    real_loss = model.loss

    def spy(*args, **kw):
        seen["args"], seen["kw"] = args, kw
        return real_loss(*args, **kw)

    model.loss = spy
    x = torch.rand(4, 3, 128, 128)
    for seed in range(2):
        targets = _loss_targets(seed, with_context=preset == "pyramidbox")
        new = model(x, targets)
        cls, box, anchors, _ = seen["args"]
        old = _old_loss(model, cls, box, anchors, targets, **seen["kw"])
        assert set(new) == set(old) and float(new["num_pos"]) > 0
        for key in old:
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)
            assert torch.equal(new[key], old[key]), key
        grads_new = torch.autograd.grad(new["loss"], [cls, box], retain_graph=True)
        grads_old = torch.autograd.grad(old["loss"], [cls, box])
        assert all(torch.equal(a, b) for a, b in zip(grads_new, grads_old))

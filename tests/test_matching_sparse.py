"""The overlap-pair path of ``match_anchors_batch`` against its dense reference, bit for bit.

IoU and the crowd rule's IoA are computed only where an anchor and a box can intersect
(``sodlab.matching._overlap_pairs``); the dense ``[B, N, A]`` path stays the reference (and
the fallback). Here both run on the same inputs: random boxes of every size, partly or wholly
outside the image, of zero width or height, snapped to the anchor grid (exact ties and
touching edges), crowd boxes, images without objects; and real batches of the embedded quick
dataset for the ``fpn``, ``s3fd`` (compensation) and ``baseline`` presets. Match indices and
the similarity tensor S3FD's compensation sorts by are compared with ``torch.equal``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sodlab import matching
from sodlab.anchors import LevelSpec, all_anchors
from sodlab.matching import match_anchors_batch

# 2 x 400 + 3 x 100 + 25 = 1125 anchors on 80 x 80: not a multiple of the run length
LEVELS = [LevelSpec(4, (4.0, 8.0), (1.0,)), LevelSpec(8, (16.0,), (0.5, 1.0, 2.0)),
          LevelSpec(16, (32.0,), (1.0,))]
SIDE = 80


def _dense(monkeypatch, fn, *args, **kw):
    """``fn(*args, **kw)`` with the overlap index switched off: the dense reference."""
    with monkeypatch.context() as m:
        m.setattr(matching, "_overlap_index", lambda anchors: None)
        return fn(*args, **kw)


def _random_boxes(n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` boxes 0.5 px to 120 px (log-uniform) around an 80 x 80 image, some partly or
    wholly outside it; some of zero width or height, some snapped to a 2 px grid."""
    size = torch.exp(torch.empty(n, 2).uniform_(math.log(0.5), math.log(120.0), generator=g))
    x1y1 = torch.rand(n, 2, generator=g) * (SIDE + 40) - 20 - size / 2  # [n, 2]
    boxes = torch.cat([x1y1, x1y1 + size], 1)  # [n, 4]
    kind = torch.randint(0, 6, (n,), generator=g)  # [n]
    boxes[kind == 0, 2] = boxes[kind == 0, 0]  # zero width
    boxes[kind == 1, 3] = boxes[kind == 1, 1]  # zero height
    boxes[kind == 2] = (boxes[kind == 2] / 2).round() * 2  # on the grid: ties, touching edges
    return boxes


def _random_batch(seed: int):
    """3 to 6 images: images without boxes, an all-crowd image, duplicates, exact anchors."""
    g = torch.Generator().manual_seed(seed)
    anchors = all_anchors(LEVELS, (SIDE, SIDE))
    boxes, crowds = [], []
    for b in range(int(torch.randint(3, 7, (1,), generator=g))):
        n = [0, 1, 4, 9, 20][int(torch.randint(0, 5, (1,), generator=g))]
        bx = _random_boxes(n, g)
        if n >= 4:
            bx[1] = bx[0]  # a duplicate: tied objects
            bx[2] = anchors[int(torch.randint(0, len(anchors), (1,), generator=g))]  # IoU 1
        crowd = torch.rand(n, generator=g) < 0.25
        if b == 1:
            crowd[:] = True
        boxes.append(bx)
        crowds.append(crowd)
    return anchors, boxes, crowds


OPTIONS = [dict(pos_iou=p, neg_iou=q, allow_low_quality=lq, ignore_ioa=ia, **comp)
           for (p, q), lq, ia, comp in itertools.product(
               [(0.5, 0.4), (0.35, 0.35), (0.3, 0.0), (0.0, 0.0)], [True, False], [0.5, 0.0],
               [dict(), dict(compensate=True), dict(compensate=True, compensate_n=2,
                                                    min_iou=0.05)])]


@pytest.mark.parametrize("opts", OPTIONS, ids=[str(i) for i in range(len(OPTIONS))])
def test_overlap_pairs_equal_the_dense_path_on_random_boxes(opts, monkeypatch):
    for seed in range(8):
        anchors, boxes, crowds = _random_batch(seed)
        got = match_anchors_batch(anchors, boxes, crowds, **opts)
        want = _dense(monkeypatch, match_anchors_batch, anchors, boxes, crowds, **opts)
        assert torch.equal(got, want), (seed, opts)
        got = match_anchors_batch(anchors, boxes, None, **opts)
        want = _dense(monkeypatch, match_anchors_batch, anchors, boxes, None, **opts)
        assert torch.equal(got, want), (seed, opts)


def _stage(anchors, boxes, crowds, kw):
    """The trained objects' similarity ``[B, N, A]`` and column indices ``[B, A]``."""
    kept, _, ok = matching._pad_objects(boxes, [~c for c in crowds])
    return matching._trained_similarity_and_stage(
        anchors, matching._overlap_index(anchors), kept, ok, "iou", None, kw["pos_iou"],
        kw["neg_iou"], kw["allow_low_quality"], True)


def test_the_similarity_tensor_equals_the_dense_one(monkeypatch):
    """S3FD's compensation sorts by the similarity: the tensor built from the pairs is the
    dense one, padded objects' -1 included."""
    kw = dict(pos_iou=0.35, neg_iou=0.35, allow_low_quality=True)
    for seed in range(8):
        anchors, boxes, crowds = _random_batch(seed)
        sim, col = _stage(anchors, boxes, crowds, kw)
        want_sim, want_col = _dense(monkeypatch, _stage, anchors, boxes, crowds, kw)
        assert torch.equal(sim, want_sim) and torch.equal(col, want_col), seed


def test_the_pairs_hold_every_intersecting_anchor():
    """Outside the pairs the dense IoU is exactly 0; inside they are a small share."""
    anchors, boxes, crowds = _random_batch(3)
    kept, _, ok = matching._pad_objects(boxes, [~c for c in crowds])
    pairs = matching._overlap_pairs(matching._overlap_index(anchors), kept, ok)
    dense = matching._iou_by_object(anchors, kept).masked_fill(~ok[:, :, None], 0.0)
    inside = torch.zeros_like(dense, dtype=torch.bool)
    inside[pairs.img[:, None], pairs.obj[:, None], pairs.anchor] = True
    assert bool((dense[~inside] == 0).all()) and bool((dense[inside] > 0).any())
    assert inside.sum() < 0.5 * ok.sum() * len(anchors)


def test_arbitrary_anchor_order_and_lengths(monkeypatch):
    """The index assumes no layout: shuffled anchors, and every length modulo the run."""
    anchors, boxes, crowds = _random_batch(5)
    g = torch.Generator().manual_seed(0)
    for drop in range(matching.OVERLAP_RUN + 1):
        a = anchors[torch.randperm(len(anchors), generator=g)][:len(anchors) - drop]
        for kw in (dict(), dict(compensate=True, allow_low_quality=False, pos_iou=0.35,
                                neg_iou=0.35)):
            got = match_anchors_batch(a, boxes, crowds, **kw)
            want = _dense(monkeypatch, match_anchors_batch, a, boxes, crowds, **kw)
            assert torch.equal(got, want), (drop, kw)


def test_the_dense_path_takes_over_where_the_proof_does_not_hold(monkeypatch):
    """Non-finite or inverted boxes, anchors of no area, ``ignore_ioa <= 0``: dense, and
    still the dense result."""
    anchors, boxes, crowds = _random_batch(2)
    used = []
    real_pairs = matching._overlap_pairs
    monkeypatch.setattr(matching, "_overlap_pairs",
                        lambda *a: used.append(1) or real_pairs(*a))
    match_anchors_batch(anchors, boxes, crowds)
    assert used, "the ordinary case runs on the pairs"
    nan = [b.clone() for b in boxes]
    nan[0] = torch.tensor([[1.0, 2.0, math.nan, 9.0], [4.0, 4.0, 30.0, 30.0]])
    inverted = [b.clone() for b in boxes]
    inverted[0] = torch.tensor([[30.0, 2.0, 10.0, 9.0], [4.0, 4.0, 30.0, 30.0]])
    flat = anchors.clone()
    flat[7, 2] = flat[7, 0]  # an anchor of no area
    for a, bx, ia in ((anchors, nan, 0.5), (anchors, inverted, 0.5), (flat, boxes, 0.5),
                      (anchors, boxes, 0.0)):
        crowd = [torch.zeros(len(b), dtype=torch.bool) for b in bx] if ia > 0 else crowds
        used.clear()
        got = match_anchors_batch(a, bx, crowd, ignore_ioa=ia)
        want = _dense(monkeypatch, match_anchors_batch, a, bx, crowd, ignore_ioa=ia)
        assert torch.equal(got, want)
        if ia > 0:
            assert not used, "a broken condition must leave the pairs unused"
    assert matching._overlap_index(torch.zeros(0, 4)) is None


def test_a_batch_without_a_single_pair(monkeypatch):
    """Every box outside the image or of no area: no pair at all, the dense result."""
    anchors = all_anchors(LEVELS, (SIDE, SIDE))
    boxes = [torch.tensor([[500.0, 500, 510, 510], [-40, -40, -30, -30], [5, 5, 5, 20]]),
             torch.zeros(0, 4)]
    for opts in OPTIONS:
        got = match_anchors_batch(anchors, boxes, None, **opts)
        want = _dense(monkeypatch, match_anchors_batch, anchors, boxes, None, **opts)
        assert torch.equal(got, want), opts


def test_no_anchor_at_all_gives_an_empty_match_with_crowds_and_every_measure():
    """A second stage matches its RoIs as anchors; a batch can hold none of a kind (no large
    RoI for the Perceptual GAN's perception branch) while the image has crowd boxes."""
    from sodlab.matching import match_anchors

    none = torch.zeros(0, 4)
    boxes = [torch.tensor([[5.0, 5, 20, 20], [30, 30, 60, 60]]), torch.zeros(0, 4)]
    crowd = [torch.tensor([False, True]), None]
    for kind in ("iou", "nwd", "dotd"):
        for opts in OPTIONS:
            out = match_anchors_batch(none, boxes, crowd, **{**opts, "kind": kind})
            assert out.shape == (2, 0) and out.dtype == torch.int64, (kind, opts)
        assert match_anchors(none, boxes[0], crowd[0], kind=kind).shape == (0,)


# ------------------------------------------------------------------ the quick dataset
def _real_batches(root, preset: str, count: int = 3):
    """``count`` batches of 8 training images at the preset's input size, with its anchors
    and matching options, as ``Detector.loss`` calls ``match_anchors_batch``."""
    from sodlab.data.dataset import DetectionDataset, collate
    from sodlab.data.transforms import ResizeLongest
    from sodlab.detector import _matching_options, level_specs, make_config

    cfg = make_config(preset, num_classes=1)
    ds = DetectionDataset(root / "train", transforms=ResizeLongest(cfg.input_size))
    pos, neg, low, constant = _matching_options(cfg)
    kw = dict(pos_iou=pos, neg_iou=neg, allow_low_quality=cfg.low_quality,
              compensate=cfg.compensate, min_iou=low, kind=cfg.matcher, constant=constant)
    for start in range(0, 8 * count, 8):
        images, targets = collate([ds[i] for i in range(start, start + 8)])
        anchors = all_anchors(level_specs(cfg), tuple(images.shape[-2:]))
        yield anchors, [t["boxes"].float() for t in targets], \
            [t["iscrowd"].bool() for t in targets], kw


@pytest.mark.parametrize("preset", ["fpn", "s3fd", "baseline"])
def test_real_batches_match_bit_for_bit(preset, quick_dataset, monkeypatch):
    crowded = 0
    for anchors, boxes, crowds, kw in _real_batches(quick_dataset, preset):
        crowded += sum(int(c.any()) for c in crowds)
        got = match_anchors_batch(anchors, boxes, crowds, **kw)
        want = _dense(monkeypatch, match_anchors_batch, anchors, boxes, crowds, **kw)
        assert torch.equal(got, want)
        assert int((got >= 0).sum()) > 0
        sim, col = _stage(anchors, boxes, crowds, kw)
        want_sim, want_col = _dense(monkeypatch, _stage, anchors, boxes, crowds, kw)
        assert torch.equal(sim, want_sim) and torch.equal(col, want_col)
    assert crowded, "the batches hold crowd boxes"

"""Similarity measures for anchor matching beyond IoU: NWD (Wang et al. 2021) and DotD (Xu et
al. 2021) by hand and against a pure-Python loop, matching tiny boxes with them, the detector's
``matcher`` option end to end, and the IoU path left as it was."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torchvision

from sodlab.detector import DetectorConfig, build_detector, make_config
from sodlab.errors import InputError
from sodlab.matching import (
    DOTD_SIZE,
    IGNORE,
    NEGATIVE,
    NWD_CONSTANT,
    match_anchors,
    match_anchors_batch,
    mean_object_size,
    similarity,
)


# ------------------------------------------------------------------------------- by hand
def test_two_6px_boxes_shifted_by_2px_by_hand():
    anchor = torch.tensor([[0.0, 0, 6, 6]])  # centre (3, 3), 6 x 6
    box = torch.tensor([[2.0, 0, 8, 6]])  # centre (5, 3), 6 x 6: 2 px to the right
    # IoU: intersection [2, 6] x [0, 6] = 4 * 6 = 24; union 36 + 36 - 24 = 48; 24 / 48 = 0.5
    assert float(similarity(anchor, box, "iou")) == pytest.approx(0.5, abs=1e-7)
    # NWD: W2² = (5 - 3)² + (3 - 3)² + ((6 - 6) / 2)² + ((6 - 6) / 2)² = 4, W2 = 2;
    # with C = 12.8 (the NWD paper's AI-TOD value): exp(-2 / 12.8) = exp(-0.15625) = 0.855345
    assert float(similarity(anchor, box, "nwd", constant=12.8)) == pytest.approx(0.855345,
                                                                                  abs=1e-6)
    # DotD: D = |(5, 3) - (3, 3)| = 2; with S = 8: exp(-2 / 8) = exp(-0.25) = 0.778801
    assert float(similarity(anchor, box, "dotd", constant=8.0)) == pytest.approx(0.778801,
                                                                                  abs=1e-6)
    # the defaults are the module's constants: exp(-2 / C), exp(-2 / S)
    assert float(similarity(anchor, box, "nwd")) == pytest.approx(math.exp(-2 / NWD_CONSTANT))
    assert float(similarity(anchor, box, "dotd")) == pytest.approx(math.exp(-2 / DOTD_SIZE))


def test_same_centre_different_shape_by_hand():
    anchor = torch.tensor([[0.0, 0, 6, 6]])  # centre (3, 3), 6 x 6
    box = torch.tensor([[1.0, -1, 5, 7]])  # centre (3, 3), 4 wide, 8 high
    # IoU: intersection [1, 5] x [0, 6] = 4 * 6 = 24; union 36 + 32 - 24 = 44; 24 / 44 = 6 / 11
    assert float(similarity(anchor, box, "iou")) == pytest.approx(6 / 11, abs=1e-7)
    # NWD: W2² = 0 + 0 + ((6 - 4) / 2)² + ((6 - 8) / 2)² = 1 + 1 = 2; exp(-sqrt(2) / 10)
    # = exp(-0.141421) = 0.868123
    assert float(similarity(anchor, box, "nwd", constant=10.0)) == pytest.approx(0.868123,
                                                                                  abs=1e-6)
    # DotD looks at the centres only: D = 0, exp(0) = 1
    assert float(similarity(anchor, box, "dotd", constant=10.0)) == 1.0


def test_disjoint_boxes_iou_zero_nwd_dotd_positive():
    anchor = torch.tensor([[0.0, 0, 6, 6]])  # centre (3, 3)
    box = torch.tensor([[10.0, 0, 16, 6]])  # centre (13, 3): 4 px of empty space between
    assert float(similarity(anchor, box, "iou")) == 0.0
    # W2 = D = 10 (same sizes): exp(-10 / 12.8) = 0.457833; exp(-10 / 8) = 0.286505
    nwd = float(similarity(anchor, box, "nwd", constant=12.8))
    dotd = float(similarity(anchor, box, "dotd", constant=8.0))
    assert nwd > 0 and dotd > 0
    assert nwd == pytest.approx(0.457833, abs=1e-6)
    assert dotd == pytest.approx(0.286505, abs=1e-6)
    # further apart, still above zero and smaller
    far = torch.tensor([[100.0, 100, 106, 106]])
    assert 0 < float(similarity(anchor, far, "nwd")) < float(similarity(anchor, box, "nwd"))


def test_mean_object_size_by_hand():
    boxes = torch.tensor([[0.0, 0, 2, 2], [10, 10, 14, 14]])  # areas 4 and 16
    # NWD's C: mean of sqrt(w h) = (2 + 4) / 2 = 3; DotD's S: sqrt((4 + 16) / 2) = sqrt(10)
    assert mean_object_size(boxes, "nwd") == pytest.approx(3.0)
    assert mean_object_size(boxes, "dotd") == pytest.approx(math.sqrt(10.0))
    with pytest.raises(ValueError):
        mean_object_size(boxes, "iou")
    with pytest.raises(ValueError):
        mean_object_size(torch.zeros(0, 4), "nwd")


# ------------------------------------------------------------ against a pure-Python loop
def _slow_similarity(anchors, boxes, kind, constant):
    """Every pair in plain Python. NWD through the 2-Wasserstein distance of two Gaussians
    with diagonal covariances Σ = diag(σx², σy²), σ = half the side: for commuting Σ1, Σ2,
    W2² = |m1 - m2|² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^(1/2)), i.e. per axis σ1² + σ2² - 2 σ1 σ2."""
    out = []
    for a in anchors.tolist():
        row = []
        for b in boxes.tolist():
            ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
            cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            if kind == "iou":
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
                row.append(iw * ih / union)
            elif kind == "nwd":
                w2sq = (ca[0] - cb[0]) ** 2 + (ca[1] - cb[1]) ** 2
                for lo, hi in ((0, 2), (1, 3)):
                    s1, s2 = (a[hi] - a[lo]) / 2, (b[hi] - b[lo]) / 2
                    w2sq += s1 * s1 + s2 * s2 - 2 * math.sqrt(s1 * s1 * s2 * s2)
                row.append(math.exp(-math.sqrt(max(w2sq, 0.0)) / constant))
            else:
                row.append(math.exp(-math.hypot(ca[0] - cb[0], ca[1] - cb[1]) / constant))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(len(anchors), len(boxes))


def _random_boxes(n, g, span=80.0):
    size = torch.exp(torch.empty(n, 2).uniform_(0.0, math.log(50.0), generator=g))  # 1..50 px
    xy = torch.rand(n, 2, generator=g) * span
    return torch.cat([xy, xy + size], 1)  # [n, 4]


@pytest.mark.parametrize("kind,constant", [("iou", None), ("nwd", 12.8), ("nwd", 26.6),
                                           ("dotd", 8.0), ("dotd", 39.1)])
def test_against_a_python_double_loop(kind, constant):
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        anchors, boxes = _random_boxes(17, g), _random_boxes(9, g)
        got = similarity(anchors, boxes, kind, constant=constant)  # [A, N]
        assert got.shape == (17, 9)
        want = _slow_similarity(anchors, boxes, kind, constant)
        torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
        assert bool(((got >= 0) & (got <= 1)).all())


def test_similarity_iou_is_torchvision_and_empty_inputs():
    g = torch.Generator().manual_seed(0)
    a, b = _random_boxes(11, g), _random_boxes(5, g)
    assert torch.equal(similarity(a, b, "iou"), torchvision.ops.box_iou(a, b))
    for kind in ("iou", "nwd", "dotd"):
        assert similarity(a, torch.zeros(0, 4), kind).shape == (11, 0)
    with pytest.raises(ValueError, match="iou, nwd, dotd"):
        similarity(a, b, "giou")
    with pytest.raises(ValueError, match="> 0"):
        similarity(a, b, "nwd", constant=0.0)


# ------------------------------------------------------------------------------ matching
def _grid(stride: float, size: float, cells: int) -> torch.Tensor:
    """Square ``size`` anchors centred on a ``cells`` x ``cells`` grid of ``stride``. ``[A, 4]``."""
    c = torch.arange(cells, dtype=torch.float32) * stride + stride / 2  # [cells]
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    ctr = torch.stack([cx.flatten(), cy.flatten()], 1)  # [A, 2]
    return torch.cat([ctr - size / 2, ctr + size / 2], 1)


def _tiny_boxes(n: int, g: torch.Generator, lo: float, hi: float, side: float = 4.0):
    ctr = lo + torch.rand(n, 2, generator=g) * (hi - lo)  # [n, 2]
    return torch.cat([ctr - side / 2, ctr + side / 2], 1)


@pytest.mark.parametrize("kind", ["nwd", "dotd"])
def test_tiny_boxes_get_positives_by_threshold_where_iou_gives_none(kind):
    """8 px anchors every 8 px; 4 px boxes anywhere. IoU is at most 16 / 64 = 0.25 (the box
    inside an anchor) < 0.5, so without low-quality matches IoU gives none. The nearest anchor
    centre is at most 4·sqrt(2) = 5.66 px away, so W2 <= sqrt(32 + 2·2²) = 6.32 px:
    NWD >= exp(-6.32 / 26.6) = 0.79 and DotD >= exp(-5.66 / 39.1) = 0.87, both >= 0.7."""
    cfg = DetectorConfig()  # the default thresholds and constants
    pos, neg, constant = (cfg.nwd_pos, cfg.nwd_neg, cfg.nwd_constant) if kind == "nwd" else \
        (cfg.dotd_pos, cfg.dotd_neg, cfg.dotd_size)
    anchors = _grid(8.0, 8.0, 8)  # [64, 4] on 64 x 64
    boxes = _tiny_boxes(12, torch.Generator().manual_seed(0), 4.0, 60.0)  # [12, 4]
    images = [b[None] for b in boxes]  # one box per image: no two boxes compete for an anchor
    by_iou = match_anchors_batch(anchors, images, pos_iou=0.5, neg_iou=0.4,
                                 allow_low_quality=False)  # [12, A]
    assert not bool((by_iou >= 0).any())
    got = match_anchors_batch(anchors, images, pos_iou=pos, neg_iou=neg,
                              allow_low_quality=False, kind=kind, constant=constant)  # [12, A]
    assert bool(((got == 0).sum(1) >= 1).all()), (got == 0).sum(1)


@pytest.mark.parametrize("kind", ["nwd", "dotd"])
def test_box_between_sparse_anchors_matched_only_by_distance(kind):
    """8 px anchors every 16 px; a 4 px box in the gap overlaps none, so even IoU's
    low-quality stage (which needs IoU > 0) leaves it unmatched; NWD / DotD are > 0 there,
    so the box takes its nearest anchors (here the 4 equidistant ones)."""
    anchors = _grid(16.0, 8.0, 4)  # [16, 4]: [4, 12], [20, 28], ... on each axis
    boxes = torch.tensor([[14.0, 14, 18, 18], [54.0, 54, 58, 58]])  # in the gap; on anchor 15
    by_iou = match_anchors(anchors, boxes)  # pos 0.5, neg 0.4, low-quality on
    assert not bool((by_iou == 0).any()) and (by_iou == 1).nonzero().flatten().tolist() == [15]
    got = match_anchors(anchors, boxes, pos_iou=0.7, neg_iou=0.3, kind=kind)
    assert sorted(torch.nonzero(got == 0).flatten().tolist()) == [0, 1, 4, 5]
    assert 15 in torch.nonzero(got == 1).flatten().tolist()


def _loop_oracle(anchors, boxes, ignore, *, kind, constant, pos, neg, low_quality,
                 compensate, min_sim):
    """Per image, the matching rules written with ``similarity`` ``[A, N]``: the oracle of
    ``match_anchors_batch`` for the non-IoU measures."""
    out = torch.full((len(anchors),), NEGATIVE, dtype=torch.int64)
    keep = torch.nonzero(~ignore).flatten()
    if len(keep):
        s = similarity(anchors, boxes[keep], kind, constant=constant)  # [A, N']
        best, arg = s.max(1)
        out[(best >= neg) & (best < pos)] = IGNORE
        out[best >= pos] = keep[arg[best >= pos]]
        if low_quality:
            top = s.max(0).values
            a_idx, o_idx = torch.nonzero((s == top[None]) & (top[None] > 0), as_tuple=True)
            out[a_idx] = keep[o_idx]
        if compensate:
            counts = torch.bincount(out[out >= 0], minlength=len(boxes))[keep]
            n = max(1, round(float(counts.float().mean())))
            for j in torch.nonzero(counts < n).flatten().tolist():
                cand = torch.nonzero((out < 0) & (s[:, j] > min_sim)).flatten()
                if len(cand):
                    take = s[cand, j].topk(min(n - int(counts[j]), len(cand))).indices
                    out[cand[take]] = keep[j]
    if ignore.any():
        a = anchors[:, None]
        b = boxes[ignore][None]
        inter = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2]))
        cover = inter.clamp(min=0).prod(2) / (anchors[:, 2:] - anchors[:, :2]).prod(1)[:, None]
        out[(cover.max(1).values >= 0.5) & (out < 0)] = IGNORE
    return out


@pytest.mark.parametrize("kind", ["nwd", "dotd"])
@pytest.mark.parametrize("low_quality,compensate", [(True, False), (False, True)])
def test_batch_equals_a_per_image_oracle(kind, low_quality, compensate):
    anchors = torch.cat([_grid(4.0, 6.0, 16), _grid(8.0, 12.0, 8), _grid(16.0, 24.0, 4)])
    g = torch.Generator().manual_seed(1)
    boxes, ignores = [], []
    for n in (5, 0, 1, 9):
        boxes.append(_random_boxes(n, g, span=56.0))
        ignores.append(torch.rand(n, generator=g) < 0.25)
    constant = 12.8 if kind == "nwd" else 8.0
    kw = dict(pos_iou=0.7, neg_iou=0.3, allow_low_quality=low_quality, compensate=compensate,
              min_iou=0.1)
    got = match_anchors_batch(anchors, boxes, ignores, kind=kind, constant=constant, **kw)
    for b in range(len(boxes)):
        want = _loop_oracle(anchors, boxes[b], ignores[b], kind=kind, constant=constant,
                            pos=0.7, neg=0.3, low_quality=low_quality, compensate=compensate,
                            min_sim=0.1)
        assert torch.equal(got[b], want), b


def test_iou_path_unchanged_by_the_new_arguments():
    g = torch.Generator().manual_seed(5)
    anchors = torch.cat([_grid(4.0, 6.0, 16), _grid(8.0, 12.0, 8)])
    boxes = [_random_boxes(n, g, span=56.0) for n in (4, 0, 7)]
    ignores = [torch.rand(len(b), generator=g) < 0.3 for b in boxes]
    for kw in (dict(), dict(compensate=True, pos_iou=0.35, neg_iou=0.35,
                            allow_low_quality=False)):
        want = match_anchors_batch(anchors, boxes, ignores, **kw)
        got = match_anchors_batch(anchors, boxes, ignores, kind="iou", constant=None,
                                  min_iou=0.1, **kw)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="iou, nwd, dotd"):
        match_anchors_batch(anchors, boxes, ignores, kind="wasserstein")


# ------------------------------------------------------------------------------ detector
def test_config_matcher_field_and_errors():
    cfg = make_config("fpn", num_classes=1, overrides=["matcher=nwd", "nwd_constant=12.8"])
    assert cfg.matcher == "nwd" and cfg.nwd_constant == 12.8
    assert DetectorConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    for preset in ("fpn", "s3fd", "faceboxes"):
        assert make_config(preset, num_classes=1).matcher == "iou"  # every preset: IoU
    with pytest.raises(InputError, match="iou, nwd, dotd"):
        make_config("fpn", num_classes=1, overrides=["matcher=giou"])
    with pytest.raises(InputError, match="nwd_constant"):
        make_config("fpn", num_classes=1, overrides={"nwd_constant": 0})
    with pytest.raises(InputError, match="dotd_neg"):
        make_config("fpn", num_classes=1, overrides={"matcher": "dotd", "dotd_neg": 0.9})


def _tiny_batch(g):
    targets = []
    for n in (3, 1):
        boxes = _tiny_boxes(n, g, 10.0, 110.0, side=5.0)
        boxes[0, 2:] += 30.0  # one larger face
        targets.append({"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64),
                        "iscrowd": torch.zeros(n, dtype=torch.bool), "size": (128, 128)})
    return torch.rand(2, 3, 128, 128, generator=g), targets


@pytest.mark.parametrize("preset,matcher", [("fpn", "nwd"), ("fpn", "dotd"), ("s3fd", "nwd")])
def test_detector_trains_one_step_with_the_matcher(preset, matcher, monkeypatch):
    torch.manual_seed(0)
    cfg = make_config(preset, num_classes=1, overrides=[f"matcher={matcher}", "input_size=128"])
    model = build_detector(cfg).train()
    seen = {}

    def spy(*args, **kw):
        seen.update(kw)
        return match_anchors_batch(*args, **kw)

    monkeypatch.setattr("sodlab.detector.match_anchors_batch", spy)
    x, targets = _tiny_batch(torch.Generator().manual_seed(0))
    out = model(x, targets)
    assert seen["kind"] == matcher
    assert seen["pos_iou"] == getattr(cfg, f"{matcher}_pos")
    assert seen["constant"] == (cfg.nwd_constant if matcher == "nwd" else cfg.dotd_size)
    assert torch.isfinite(out["loss"]) and float(out["num_pos"]) > 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    out["loss"].backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())

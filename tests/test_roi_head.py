"""RoI head: pooling against a per-box loop, level rule, loss by hand, a two-stage training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sodlab.boxes import BoxCoder
from sodlab.losses import box_loss
from sodlab.matching import IGNORE, NEGATIVE
from sodlab.models.relation import duplicate_targets
from sodlab.models.roi_head import RoIHead, TwoStageDetector, assign_levels


def _level_loop(box, strides, canonical=56.0, canonical_stride=16):
    s = math.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))
    k = math.floor(math.log2(canonical_stride) + math.log2(s / canonical) + 1e-6)
    return min(sorted(strides), key=lambda st: (abs(math.log2(st) - k), st))


def test_level_rule_by_hand():
    strides = [4, 8, 16, 32]
    sides = [5.0, 27.9, 28.0, 55.0, 56.0, 111.0, 112.0, 500.0]
    boxes = torch.tensor([[0.0, 0.0, s, s] for s in sides])
    got = [strides[i] for i in assign_levels(boxes, strides).tolist()]
    assert got == [4, 4, 8, 8, 16, 16, 32, 32]
    # non-consecutive strides: nearest in log2, ties to the finer
    assert [[8, 32][i] for i in assign_levels(boxes, [8, 32]).tolist()] == \
        [8, 8, 8, 8, 8, 8, 32, 32]


def _feats(B=2, C=8, size=64, strides=(4, 8, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(B, C, size // s, size // s, generator=g) for s in strides}


def _random_boxes(n, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * (size - 8)
    wh = torch.rand(n, 2, generator=g) * 50 + 2
    return torch.cat([xy, (xy + wh).clamp(max=size)], 1)


def test_pool_equals_roi_align_box_by_box():
    feats = _feats()
    head = RoIHead(8, 1, pool=5, fc=16, canonical=28.0)  # so 64 px images reach stride 16
    per_image = [_random_boxes(9, seed=1), _random_boxes(6, seed=2)]
    out = head.pool(feats, per_image)
    assert out.shape == (15, 8, 5, 5)
    ref, levels = [], set()
    for b, boxes in enumerate(per_image):
        for box in boxes:
            s = _level_loop(box.tolist(), feats, canonical=28.0)
            levels.add(s)
            roi = torch.cat([torch.tensor([float(b)]), box])[None]
            ref.append(torchvision.ops.roi_align(feats[s], roi, 5, spatial_scale=1 / s,
                                                 sampling_ratio=2, aligned=True))
    torch.testing.assert_close(out, torch.cat(ref))
    assert levels == {4, 8, 16}  # every level is exercised
    assert head.pool(feats, [torch.zeros(0, 4), torch.zeros(0, 4)]).shape == (0, 8, 5, 5)


def test_aligned_pooling_reads_the_cell_under_the_box():
    # a feature map whose value is its column index (cell i's centre is input pixel 8i + 4):
    # the box over input pixels [8, 16) is column 1 exactly, so it spans feature x 0.5...1.5
    # and its two bins average 0.75 and 1.25 (unaligned pooling would read 1.25 and 1.75)
    f = torch.arange(4.0).repeat(4, 1)[None, None]  # [1, 1, 4, 4]
    head = RoIHead(1, 1, pool=2, fc=4, canonical=8.0, canonical_stride=8)
    out = head.pool({8: f}, [torch.tensor([[8.0, 8.0, 16.0, 16.0]])])
    torch.testing.assert_close(out, torch.tensor([[[[0.75, 1.25], [0.75, 1.25]]]]))


def test_match_and_loss_by_hand():
    head = RoIHead(8, 2, pool=3, fc=16)
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 60.0]])
    target = {"boxes": gt, "labels": torch.tensor([1, 0]),
              "iscrowd": torch.tensor([False, True])}
    rois = torch.tensor([[10.0, 10.0, 30.0, 30.0],  # on gt 0 (class 1 -> target 2)
                         [0.0, 50.0, 8.0, 60.0],  # background
                         [41.0, 41.0, 59.0, 59.0]])  # on the crowd box: ignored
    assert head.match(rois, target).tolist() == [0, NEGATIVE, IGNORE]
    logits = torch.tensor([[0.2, -0.1, 0.5], [1.0, 0.0, -1.0], [9.0, 9.0, 9.0]])
    deltas = torch.tensor([[0.1, -0.2, 0.3, 0.0], [5.0, 5.0, 5.0, 5.0], [7.0, 7.0, 7.0, 7.0]])
    losses = head.loss(logits, deltas, [rois], [target])
    ce = (F.cross_entropy(logits[:1], torch.tensor([2])) +
          F.cross_entropy(logits[1:2], torch.tensor([0]))) / 2
    # the proposal is the gt box, so its target deltas are 0
    box = F.smooth_l1_loss(deltas[0], torch.zeros(4), beta=1 / 9, reduction="sum") / 2
    torch.testing.assert_close(losses["cls"], ce)
    torch.testing.assert_close(losses["box"], box)
    torch.testing.assert_close(losses["loss"], ce + box)
    assert float(losses["num_pos"]) == 1.0
    # a proposal off the gt: the box target is BoxCoder((10, 10, 5, 5)).encode
    off = torch.tensor([[12.0, 8.0, 32.0, 30.0]])
    got = head.loss(logits[:1], deltas[:1], [off], [target])["box"]
    tgt = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(gt[:1], off)
    torch.testing.assert_close(got, box_loss(deltas[:1], tgt, 1.0))


def test_with_gt_appends_non_crowd_truth():
    target = {"boxes": torch.tensor([[0.0, 0, 5, 5], [9, 9, 19, 19]]),
              "labels": torch.tensor([0, 0]), "iscrowd": torch.tensor([True, False])}
    boxes, is_gt = RoIHead.with_gt([torch.tensor([[1.0, 1, 4, 4]])], [target])
    assert boxes[0].tolist() == [[1, 1, 4, 4], [9, 9, 19, 19]]
    assert is_gt.tolist() == [False, True]


def test_relation_head_embeds_per_image():
    feats = _feats(C=8)
    head = RoIHead(8, 1, pool=3, fc=32, relation=1, relation_heads=4)
    per_image = [_random_boxes(5, seed=3), _random_boxes(4, seed=4)]
    out = head.run(feats, per_image)
    assert out["logits"].shape == (9, 2) and out["deltas"].shape == (9, 4)
    assert out["feats"].shape == (9, 32) and out["rois"].shape == (9, 5)
    # image 0's RoIs alone give the same features: relations never cross images
    alone = head.run({s: f[:1] for s, f in feats.items()}, per_image[:1])
    torch.testing.assert_close(alone["feats"], out["feats"][:5], atol=1e-5, rtol=1e-5)
    x, weights = head.embed(out["pooled"], out["rois"][:, 1:], out["rois"][:, 0].long(),
                            return_weights=True)
    assert [w["weights"].shape for w in weights] == [(4, 5, 5), (4, 4, 4)] * 2


def test_enhancer_hook_sees_pooled_rois_and_feats():
    feats = _feats(C=8)
    head = RoIHead(8, 1, pool=3, fc=16)
    seen = {}

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, pooled, rois, feats):
            seen.update(pooled=pooled.shape, rois=rois.clone(), strides=sorted(feats))
            return pooled + self.scale

    head.enhancer = Residual()
    assert any(n.startswith("enhancer.") for n, _ in head.named_parameters())
    boxes = [_random_boxes(3, seed=5), _random_boxes(2, seed=6)]
    out = head.run(feats, boxes)
    assert seen["pooled"] == (5, 8, 3, 3) and seen["strides"] == [4, 8, 16]
    assert seen["rois"][:, 0].tolist() == [0, 0, 0, 1, 1]
    torch.testing.assert_close(out["pooled"], head.pool(feats, boxes) + 0.5)


def _tiny_base():
    from sodlab.detector import build_detector, make_config

    torch.manual_seed(0)
    base = build_detector(make_config("fpn", num_classes=1, overrides={"input_size": 64}))
    base.cfg.score_thresh = 0.0  # an untrained base: let every box through as a proposal
    return base


def _targets():
    return [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 28.0]]), "labels": torch.tensor([0]),
             "iscrowd": torch.tensor([False]), "size": (64, 64)},
            {"boxes": torch.tensor([[30.0, 10.0, 50.0, 30.0], [2.0, 40.0, 12.0, 50.0]]),
             "labels": torch.tensor([0, 0]), "iscrowd": torch.tensor([False, True]),
             "size": (64, 60)}]


@pytest.mark.parametrize("relation,learned_nms", [(0, False), (1, True)])
def test_two_stage_trains_one_step_with_a_frozen_base(relation, learned_nms):
    base = _tiny_base()
    roi = RoIHead(base.cfg.width, 1, fc=32, relation=relation, relation_heads=4,
                  learned_nms=learned_nms, first_n=20)
    model = TwoStageDetector(base, roi, proposals=20).train()
    assert not base.training and all(not p.requires_grad for p in base.parameters())
    before = {k: v.clone() for k, v in base.state_dict().items()}  # weights and BN stats
    head_before = {k: v.clone() for k, v in roi.state_dict().items()}
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = model(images, _targets())
    assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
    assert {"loss", "cls", "box", "num_pos"} <= set(losses)
    assert ("nms" in losses) == learned_nms
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in roi.state_dict().items())
    if learned_nms:
        assert roi.duplicate.logit.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        dets = model(images, _targets())
    assert len(dets) == 2
    for d, (h, w) in zip(dets, [(64, 64), (64, 60)]):
        assert set(d) == {"boxes", "scores", "labels"}
        n = len(d["scores"])
        assert d["boxes"].shape == (n, 4) and d["labels"].shape == (n,) and 0 < n <= 100
        assert d["labels"].dtype == torch.int64 and (d["scores"] > 0).all()
        assert (d["boxes"][:, 2] <= w).all() and (d["boxes"][:, 3] <= h).all()


def test_two_stage_eval_without_proposals():
    base = _tiny_base()
    base.cfg.score_thresh = 1.0  # nothing passes: no proposals at all
    for learned in (False, True):
        model = TwoStageDetector(base, RoIHead(base.cfg.width, 1, fc=32, relation=1,
                                               relation_heads=4, learned_nms=learned)).eval()
        with torch.no_grad():
            dets = model(torch.zeros(1, 3, 64, 64))
        assert dets[0]["boxes"].shape == (0, 4) and dets[0]["scores"].shape == (0,)
        # training still works: the ground truth is the only RoI
        model.train()
        losses = model(torch.zeros(2, 3, 64, 64), _targets())
        assert torch.isfinite(losses["loss"])


def test_unfrozen_base_adds_its_own_loss_and_trains():
    base = _tiny_base()
    model = TwoStageDetector(base, RoIHead(base.cfg.width, 1, fc=32), proposals=10,
                             freeze_base=False).train()
    assert base.training and all(p.requires_grad for p in base.parameters())
    losses = model(torch.randn(2, 3, 64, 64), _targets())
    assert {"base_loss", "base_cls", "base_box"} <= set(losses)
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in base.backbone.parameters())


def test_duplicate_loss_uses_proposals_above_the_threshold_only():
    torch.manual_seed(0)
    head = RoIHead(8, 1, pool=3, fc=16, learned_nms=True, relation_heads=4)
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    target = {"boxes": gt, "labels": torch.tensor([0]), "iscrowd": torch.tensor([False]),
              "size": (64, 64)}
    rois = torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0],
                         [40.0, 40.0, 60.0, 60.0], [10.0, 10.0, 30.0, 30.0]])  # last: the gt
    is_gt = torch.tensor([False, False, False, True])
    # foreground probabilities 0.6, 0.9, 0.01 (below 0.05), 0.99 (gt: never a candidate)
    p = torch.tensor([0.6, 0.9, 0.01, 0.99])
    logits = torch.stack([torch.zeros(4), (p / (1 - p)).log()], 1)
    feats = torch.randn(4, 16)
    out = {"rois": torch.cat([torch.zeros(4, 1), rois], 1), "logits": logits,
           "deltas": torch.zeros(4, 4), "feats": feats}
    got = head.duplicate_loss(out, [rois], [target], is_gt)
    top = torch.tensor([1, 0])  # candidates by score
    s1 = head.duplicate(feats[top], rois[top], p[top])
    tgt = torch.tensor([[1.0] * 5, [0.0] * 5])  # IoU(box 1, gt) = 0.905: it wins up to 0.9
    assert torch.equal(duplicate_targets(rois[top], p[top], gt, head.duplicate.thresholds), tgt)
    torch.testing.assert_close(got, head.duplicate.loss(p[top], s1, tgt))

"""Perceptual GAN: generator against a per-RoI loop, the zero residual, the alternating steps."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from sodlab.engine.train import TrainConfig, TrainingDiverged, build_optimizer, train_step
from sodlab.models.gan import (
    HISTORY_COLUMNS,
    LARGE_AREA,
    SMALL_AREA,
    Discriminator,
    GANCollapsed,
    Generator,
    PerceptualGANHead,
    count_large,
)
from sodlab.models.roi_head import TwoStageDetector, rois_of


def _feats(B=2, C=8, size=64, strides=(4, 8, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(B, C, size // s, size // s, generator=g) for s in strides}


def _rois():
    boxes = [torch.tensor([[2.0, 2.0, 20.0, 30.0], [0.0, 0.0, 60.0, 50.0], [30, 30, 62, 62]]),
             torch.tensor([[10.0, 5.0, 18.0, 12.0], [5.0, 5.0, 45.0, 45.0]])]
    return boxes, rois_of(boxes)  # areas 540, 3000, 1024 (small: <= 32²), 56, 1600


def _randomise(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_generator_adds_its_residual_to_small_rois_only():
    feats = _feats()
    boxes, rois = _rois()
    gen = Generator(8, blocks=2)
    _randomise(gen)
    gen.eval()  # BatchNorm by its running statistics, so RoIs can be run one by one
    pooled = torch.randn(len(rois), 8, 5, 5, generator=torch.Generator().manual_seed(2))
    out = gen(pooled, rois, feats)
    assert out.shape == pooled.shape  # the generator's output = the pooled coarse features
    small = [(r[3] - r[1]) * (r[4] - r[2]) <= SMALL_AREA for r in rois.tolist()]
    assert small == [True, False, True, True, False]
    for i, roi in enumerate(rois):
        if not small[i]:
            assert torch.equal(out[i], pooled[i])
            continue
        fine = torchvision.ops.roi_align(feats[4], roi[None], 5, spatial_scale=0.25,
                                         sampling_ratio=2, aligned=True)  # the finest level
        ref = pooled[i] + gen.residual(fine)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out[i], pooled[i])


def test_zero_last_layer_gives_back_the_inputs():
    feats = _feats()
    _, rois = _rois()
    pooled = torch.randn(len(rois), 8, 7, 7)
    gen = Generator(8, blocks=3)
    assert gen.out.weight.abs().sum() == 0  # so an untrained head is the plain RoI head
    _randomise(gen)
    with torch.no_grad():
        gen.out.weight.zero_()
        gen.out.bias.zero_()
    assert torch.equal(gen(pooled, rois, feats), pooled)
    assert gen.residual(torch.randn(3, 8, 7, 7)).abs().sum() == 0
    # fine features with other channels are mapped to the coarse channels
    g2 = Generator(8, fine_channels=4, blocks=0)
    assert g2.residual(torch.randn(2, 4, 7, 7)).shape == (2, 8, 7, 7)
    assert torch.equal(gen(pooled[:0], rois[:0], feats), pooled[:0])  # no RoIs at all


def test_discriminator_branches():
    d = Discriminator(8 * 3 * 3, 2, hidden=16)
    x = torch.randn(5, 8, 3, 3)
    assert d(x).shape == (5,)
    logits, deltas = d(x, branch="perception")
    assert logits.shape == (5, 3) and deltas.shape == (5, 4)
    torch.testing.assert_close(d.real_probability(x), torch.sigmoid(d(x)))
    assert len([m for m in d.adversarial if isinstance(m, torch.nn.Linear)]) == 3
    assert len([m for m in d.perception if isinstance(m, torch.nn.Linear)]) == 2


def test_count_large_by_hand():
    coco = {"images": [{"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 50,
                                                                "height": 100}],
            "annotations": [
                {"image_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 0},  # x0.5 -> 50²: large
                {"image_id": 1, "bbox": [0, 0, 90, 90], "iscrowd": 0},  # 45²: not
                {"image_id": 2, "bbox": [0, 0, 48, 48], "iscrowd": 0},  # x1 -> 48²: large
                {"image_id": 2, "bbox": [0, 0, 60, 60], "iscrowd": 1}]}  # crowd: never
    assert count_large(coco, input_size=100) == 2
    assert count_large(coco, input_size=100, large_area=49.0 ** 2) == 1
    assert LARGE_AREA == 48.0 ** 2


# ------------------------------------------------------------------ the alternating steps
def _model(adversarial=True, **kw):
    from sodlab.detector import build_detector, make_config

    torch.manual_seed(0)
    base = build_detector(make_config("fpn", num_classes=1, overrides={"input_size": 128}))
    base.cfg.score_thresh = 0.0  # an untrained base: let boxes through as proposals
    head = PerceptualGANHead(base.cfg.width, 1, fc=32, pool=5, blocks=1,
                             adversarial=adversarial, **kw)
    return TwoStageDetector(base, head, proposals=30).train()


def _batch():
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 70.0, 70.0], [80.0, 80.0, 100.0, 100.0]]),
                "labels": torch.tensor([0, 0]), "iscrowd": torch.tensor([False, False]),
                "size": (128, 128)},
               {"boxes": torch.tensor([[5.0, 5.0, 25.0, 30.0], [60.0, 60.0, 80.0, 76.0]]),
                "labels": torch.tensor([0, 0]), "iscrowd": torch.tensor([False, False]),
                "size": (128, 128)}]
    return images, targets


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("adversarial", [True, False])
def test_one_alternating_step_changes_only_its_own_networks(adversarial):
    model = _model(adversarial)
    head = model.roi_head
    opt = build_optimizer(model, TrainConfig(lr=1e-2))
    batch = _batch()
    names = {n for n, _ in head.named_parameters()}
    d_names = {n for n in names if n.startswith("discriminator.")}
    adv_names = {n for n in d_names if n.startswith("discriminator.adversarial.")}
    g_names = {n for n in names if n.startswith("enhancer.")}
    rest = names - d_names - g_names  # the RoI head's own FC layers and predictors
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}

    before = _params(head)
    out = train_step(model, batch, opt, precision="fp32")  # step 0: the discriminator
    changed = _changed(before, head)
    assert out["phase"] == 0 and out["n_real"] >= 1 and out["n_fake"] >= 3
    assert changed <= d_names and "discriminator.perception.1.weight" in changed
    assert ("discriminator.adversarial.1.weight" in changed) == adversarial
    if adversarial:
        assert 0.0 <= out["d_acc"] <= 1.0 and math.isfinite(out["d_adv"])
    else:
        assert not changed & adv_names and "d_adv" not in out

    before = _params(head)
    out = train_step(model, batch, opt, precision="fp32")  # step 1: generator + RoI head
    changed = _changed(before, head)
    assert out["phase"] == 1 and math.isfinite(out["g_det"]) and math.isfinite(out["g_perc"])
    assert ("g_adv" in out) == adversarial
    assert not changed & d_names  # the discriminator ran on detached parameters
    assert "enhancer.out.weight" in changed and changed & rest
    assert all(torch.equal(base_before[k], v) for k, v in model.base.state_dict().items())

    # the history rides in the state dict (extra state), with the step counter
    rows = head.history
    assert [r["phase"] for r in rows] == [0.0, 1.0] and int(head.gan_step) == 2
    state = model.state_dict()
    assert state["roi_head._extra_state"].shape == (2, len(HISTORY_COLUMNS))
    fresh = _model(adversarial)
    fresh.load_state_dict(state)
    assert int(fresh.roi_head.gan_step) == 2 and len(fresh.roi_head.history) == 2
    got, want = fresh.roi_head.history[1], rows[1]
    assert all((math.isnan(got[k]) and math.isnan(want[k])) or got[k] == want[k] for k in got)

    # an evaluation of the loss (no gradient) neither counts a step nor records one
    with torch.no_grad():
        model(*batch)
    assert int(head.gan_step) == 2 and len(head.history) == 2
    # eval mode detects through the RoI head, small RoIs enhanced
    model.eval()
    with torch.no_grad():
        dets = model(batch[0])
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}


def test_collapse_and_nan_stop_training():
    model = _model(True, collapse_patience=3)
    head = model.roi_head
    row = [math.nan] * len(HISTORY_COLUMNS)
    for step, acc in enumerate([0.5, 1.0, 1.0]):
        r = list(row)
        r[0], r[1], r[HISTORY_COLUMNS.index("d_acc")] = 2 * step, 0.0, acc
        head._history += [r, [2 * step + 1, 1.0] + row[2:]]
    head._check_collapse()  # two at 1.0 so far: not yet
    head._history.append(list(head._history[-2]))
    with pytest.raises(GANCollapsed, match="accuracy was 1 on the last 3 adversarial steps"):
        head._check_collapse()
    head.collapse_patience = 0
    head._check_collapse()  # switched off
    # the engine reports a collapse as a divergence
    from sodlab.engine.stage_two import _collapse_as_divergence

    def collapse():
        raise GANCollapsed("stuck")

    with pytest.raises(TrainingDiverged, match="stuck"):
        _collapse_as_divergence(collapse)
    # a non-finite generator makes the discriminator's loss non-finite: train_step stops
    model = _model(True)
    with torch.no_grad():
        model.roi_head.generator.out.bias.fill_(math.nan)
    opt = build_optimizer(model, TrainConfig())
    before = _params(model.roi_head)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1"):
        train_step(model, _batch(), opt, precision="fp32")
    assert not _changed(before, model.roi_head) - {"enhancer.out.bias"}


def test_relation_is_refused():
    with pytest.raises(ValueError, match="no relation modules"):
        PerceptualGANHead(8, 1, relation=1)

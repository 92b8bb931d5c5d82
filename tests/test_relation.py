"""Relation module against multi-head attention and loops; learned duplicate removal by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from sodlab.models.relation import (
    DuplicateRemoval,
    RelationModule,
    duplicate_targets,
    geometry_embedding,
    relative_geometry,
)


def _boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 20 + 2
    return torch.cat([xy, xy + wh], 1)


def _module(dim=32, heads=4, d_k=8, d_g=16, seed=0):
    torch.manual_seed(seed)
    m = RelationModule(dim, heads=heads, d_k=d_k, d_g=d_g)
    with torch.no_grad():  # larger weights than the near-identity init, so relations matter
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def test_geometry_embedding_matches_the_formula_by_loop():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [30.0, 5.0, 34.0, 13.0]])
    geo = relative_geometry(boxes)  # [2, 2, 4]
    # receiver 0 (w 10, h 20, centre (5, 10)), other 1 (w 4, h 8, centre (32, 9))
    expect = [math.log(27 / 10), math.log(1 / 20), math.log(4 / 10), math.log(8 / 20)]
    assert geo[0, 1].tolist() == pytest.approx(expect, rel=1e-5)
    assert geo[0, 0].tolist() == pytest.approx([math.log(1e-3)] * 2 + [0.0, 0.0], abs=1e-5)
    emb = geometry_embedding(geo, 64)  # [2, 2, 64]
    ref = []
    for c in range(4):  # per coordinate: 8 sines then 8 cosines of 100 v / 1000^(i/8)
        v = expect[c]
        ref += [math.sin(100 * v / 1000 ** (i / 8)) for i in range(8)]
        ref += [math.cos(100 * v / 1000 ** (i / 8)) for i in range(8)]
    assert emb[0, 1].tolist() == pytest.approx(ref, abs=1e-4)


def test_permutation_equivariance():
    m = _module()
    x = torch.randn(9, 32, generator=torch.Generator().manual_seed(1))
    b = _boxes(9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    out, w = m(x, b, return_weights=True)
    out_p, w_p = m(x[perm], b[perm], return_weights=True)
    torch.testing.assert_close(out_p, out[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_p, w[:, perm][:, :, perm], atol=1e-6, rtol=1e-5)
    assert w.shape == (4, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 9))
    assert not torch.allclose(out, x, atol=1e-3)  # the relation term is not nothing


@pytest.mark.parametrize("bias", [0.0, 0.7])
def test_constant_geometry_equals_plain_multi_head_attention(bias):
    dim, heads = 32, 4
    m = _module(dim=dim, heads=heads, d_k=dim // heads)
    with torch.no_grad():  # w_g = ReLU(bias) is the same for every pair
        m.geometry.weight.zero_()
        m.geometry.bias.fill_(bias)
    x = torch.randn(7, dim, generator=torch.Generator().manual_seed(3))
    b = _boxes(7, seed=4)
    # oracle: torch's multi-head attention with our projections and an identity output layer
    mha, _ = F.multi_head_attention_forward(
        x[:, None], x[:, None], x[:, None], dim, heads,
        in_proj_weight=torch.cat([m.query.weight, m.key.weight, m.value.weight]),
        in_proj_bias=torch.cat([m.query.bias, m.key.bias, m.value.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=torch.eye(dim), out_proj_bias=torch.zeros(dim), training=False,
        need_weights=False)
    torch.testing.assert_close(m(x, b), x + mha[:, 0], atol=1e-5, rtol=1e-5)


def test_geometry_changes_the_weights():
    m = _module()
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(5))
    w1 = m.attention(x, _boxes(5, seed=1))
    w2 = m.attention(x, _boxes(5, seed=2))
    assert not torch.allclose(w1, w2, atol=1e-4)


def test_one_and_zero_objects():
    m = _module()
    x = torch.randn(1, 32)
    out, w = m(x, _boxes(1), return_weights=True)
    # one object attends to itself with weight 1: x + its own projected value
    torch.testing.assert_close(w, torch.ones(4, 1, 1))
    torch.testing.assert_close(out, x + m.value(x))
    out, w = m(torch.zeros(0, 32), torch.zeros(0, 4), return_weights=True)
    assert out.shape == (0, 32) and w.shape == (4, 0, 0)


def test_key_mask_hides_objects():
    m = _module()
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(6))
    b = _boxes(6)
    mask = torch.tensor([True, True, True, True, False, False])
    out, w = m(x, b, key_mask=mask, return_weights=True)
    assert w.shape == (4, 6, 4)
    x2 = x.clone()
    x2[4:] += 5.0  # the hidden objects change: nobody's output but their own moves
    out2 = m(x2, b, key_mask=mask)
    torch.testing.assert_close(out2[:4], out[:4])
    torch.testing.assert_close(m(x[:4], b[:4]), out[:4], atol=1e-6, rtol=1e-5)
    assert torch.equal(m(x, b, key_mask=torch.zeros(6, dtype=torch.bool)), x)


def test_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        RelationModule(30, heads=16)
    with pytest.raises(ValueError, match="multiple of 8"):
        RelationModule(32, heads=4, d_g=12)


def test_duplicate_targets_hand_case():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # face 0, IoU 1.0
                          [0.0, 0.0, 10.0, 7.0],  # face 0, IoU 0.7, higher score
                          [20.0, 0.0, 30.0, 6.0]])  # face 1, IoU 0.6
    scores = torch.tensor([0.8, 0.9, 0.5])
    t = duplicate_targets(boxes, scores, gt, (0.5, 0.9))
    # at 0.5 the better-scoring loose box wins face 0; at 0.9 only the exact box qualifies
    assert t.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    assert duplicate_targets(boxes, scores, torch.zeros(0, 4), (0.5,)).tolist() == [[0], [0], [0]]


def test_duplicate_targets_against_a_loop():
    boxes, gt = _boxes(30, seed=7), _boxes(4, seed=8)
    scores = torch.rand(30, generator=torch.Generator().manual_seed(9))
    thr = (0.3, 0.5, 0.7)
    t = duplicate_targets(boxes, scores, gt, thr)
    iou = torchvision.ops.box_iou(boxes, gt).tolist()
    for ti, th in enumerate(thr):
        ref = [0.0] * 30
        for g in range(4):
            cands = [i for i in range(30) if max(range(4), key=lambda j: iou[i][j]) == g
                     and iou[i][g] >= th]
            if cands:
                ref[max(cands, key=lambda i: float(scores[i]))] = 1.0
        assert t[:, ti].tolist() == ref
    assert t.sum() > 0


def test_duplicate_removal_ranks_and_trains():
    torch.manual_seed(0)
    dup = DuplicateRemoval(16, thresholds=(0.5, 0.9), rank_dim=32, heads=4, d_k=8, first_n=3)
    feats = torch.randn(5, 16)
    boxes = _boxes(5)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7])
    s1 = dup(feats, boxes, scores)
    assert s1.shape == (5, 2)
    assert (s1[[0, 3]] == 0).all() and (s1[[1, 2, 4]] > 0).all()  # only the top 3 are scored
    final = dup.final_scores(scores, s1)
    torch.testing.assert_close(final, scores * s1.mean(1))
    target = torch.zeros(5, 2)
    target[1] = 1.0
    loss = dup.loss(scores, s1, target)
    ref = F.binary_cross_entropy((scores[:, None] * s1).clamp(1e-6, 1 - 1e-6), target)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert dup.logit.weight.grad.abs().sum() > 0


def test_duplicate_removal_on_no_and_one_detection():
    dup = DuplicateRemoval(16, rank_dim=32, heads=4, d_k=8).eval()
    with torch.no_grad():
        s1 = dup(torch.zeros(0, 16), torch.zeros(0, 4), torch.zeros(0))
        assert s1.shape == (0, 5)
        assert dup.final_scores(torch.zeros(0), s1).shape == (0,)
        one = dup(torch.randn(1, 16), _boxes(1), torch.tensor([0.8]))
        assert one.shape == (1, 5) and ((one > 0) & (one < 1)).all()
    assert dup.loss(torch.zeros(0), torch.zeros(0, 5), torch.zeros(0, 5)) == 0

"""NMS and soft-NMS against torchvision, hand cases and a slow pure-Python loop; SNIP's soft merge."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from sodlab.errors import InputError
from sodlab.nms import nms, soft_nms
from sodlab.snip import multiscale_predict


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _loop_soft_nms(boxes, scores, labels, *, method="gaussian", sigma=0.5, iou=0.3,
                   thresh=1e-3) -> dict[int, float]:
    """Reference: Bodla et al.'s loop, one class at a time, over Python lists. {index: score}."""
    b, s, lab = boxes.tolist(), scores.tolist(), labels.tolist()
    kept = {}
    for c in sorted(set(lab)):
        alive = [i for i in range(len(s)) if lab[i] == c and s[i] >= thresh]
        while alive:
            i = max(alive, key=lambda k: (s[k], -k))
            alive.remove(i)
            kept[i] = s[i]
            for j in list(alive):
                o = _iou(b[i], b[j])
                if method == "gaussian":
                    s[j] *= math.exp(-o * o / sigma)
                elif o > iou:
                    s[j] *= 1.0 - o
                if s[j] < thresh:
                    alive.remove(j)
    return kept


def _random(seed, n=60, classes=3, spread=60.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * spread
    wh = torch.rand(n, 2, generator=g) * 25 + 2
    return (torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g),
            torch.randint(classes, (n,), generator=g))


def test_soft_nms_hand_case():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]],
                         dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    keep, out = soft_nms(boxes, scores, labels)
    # the identical box of the same class decays by exp(-1 / 0.5); other class and far box stay
    got = dict(zip(keep.tolist(), out.tolist()))
    assert got == pytest.approx({0: 0.9, 1: 0.8 * math.exp(-2.0), 2: 0.7, 3: 0.6})
    assert keep.tolist() == [0, 2, 3, 1]  # highest decayed score first
    # linear: IoU 1 > 0.3 multiplies by 0, so the duplicate is dropped
    keep, out = soft_nms(boxes, scores, labels, method="linear")
    assert keep.tolist() == [0, 2, 3] and out.tolist() == pytest.approx([0.9, 0.7, 0.6])


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(4))
def test_soft_nms_equals_the_loop(method, seed):
    boxes, scores, labels = _random(seed)
    ref = _loop_soft_nms(boxes, scores, labels, method=method, sigma=0.5, iou=0.3,
                         thresh=0.05)
    keep, out = soft_nms(boxes, scores, labels, method=method, sigma=0.5, iou=0.3,
                         score_thresh=0.05)
    assert sorted(keep.tolist()) == sorted(ref)
    assert len(keep) < len(boxes)  # something was dropped, so the threshold is exercised
    torch.testing.assert_close(out, torch.tensor([ref[i] for i in keep.tolist()]),
                               atol=1e-6, rtol=0)
    assert (out[:-1] >= out[1:]).all()


def test_soft_nms_drops_boxes_below_the_threshold_from_the_start_and_caps():
    boxes, scores, labels = _random(7, n=20)
    scores[3] = 1e-4
    keep, out = soft_nms(boxes, scores, labels, max_dets=5)
    assert 3 not in keep.tolist() and len(keep) == 5
    full, full_out = soft_nms(boxes, scores, labels)
    assert keep.tolist() == full[:5].tolist() and torch.equal(out, full_out[:5])


def test_soft_nms_empty_and_bad_method():
    keep, out = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert keep.shape == (0,) and out.shape == (0,) and keep.dtype == torch.int64
    with pytest.raises(InputError, match="method"):
        soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), method="hard")


def test_nms_is_classwise_batched_nms():
    boxes, scores, labels = _random(3)
    keep = nms(boxes, scores, labels, 0.4)
    assert torch.equal(keep, torchvision.ops.batched_nms(boxes, scores, labels, 0.4))
    # two identical boxes of different classes both survive; of the same class one does
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    s = torch.tensor([0.9, 0.8])
    assert nms(b, s, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert nms(b, s, torch.tensor([0, 0]), 0.5).tolist() == [0]
    assert nms(boxes, scores, labels, 0.4, max_dets=3).tolist() == keep[:3].tolist()


def _boxes_fn(boxes, scores):
    def fn(img):
        return {"boxes": boxes.clone(), "scores": scores.clone(),
                "labels": torch.zeros(len(boxes), dtype=torch.long)}
    return fn


def test_multiscale_soft_merge_matches_the_loop():
    # the same detections at two scales, scale 2's boxes halved back: overlapping duplicates
    boxes, scores, _ = _random(11, n=15, classes=1, spread=30.0)
    fn = _boxes_fn(boxes, scores)
    img = torch.zeros(3, 40, 40)
    out = multiscale_predict(fn, img, factors=(1.0, 2.0), ranges=((0, math.inf), (0, math.inf)),
                             merge="soft", max_dets=100)
    all_boxes = torch.cat([boxes, boxes / 2])
    all_scores = torch.cat([scores, scores])
    ref = _loop_soft_nms(all_boxes, all_scores, torch.zeros(30, dtype=torch.long))
    # which input each output box is (every box here is distinct), then its reference score
    where = [int(torch.nonzero((all_boxes == b).all(1))[0]) for b in out["boxes"]]
    assert sorted(where) == sorted(ref)
    torch.testing.assert_close(out["scores"], torch.tensor([ref[i] for i in where]), atol=1e-6,
                               rtol=0)
    assert (out["scores"][:-1] >= out["scores"][1:]).all()

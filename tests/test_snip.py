"""SNIP ranges, SNIPER chips (property: every valid object inside a chosen chip), slicing."""

import math

import pytest
import torch

from sodlab.errors import InputError
from sodlab.slicing import merge_boxes, sliced_predict, tile_grid
from sodlab.snip import (
    DEFAULT_RANGES,
    DEFAULT_SCALES,
    PAPER_RANGES,
    candidate_chips,
    check_ranges,
    greedy_cover,
    inside,
    negative_chips,
    positive_chips,
    valid_mask,
)


def _random_boxes(g, n, H, W, lo=3, hi=150):
    size = torch.exp(torch.empty(n).uniform_(math.log(lo), math.log(hi), generator=g))
    asp = torch.empty(n).uniform_(0.7, 1.4, generator=g)
    w = (size * asp).clamp(max=W - 1)
    h = (size / asp).clamp(max=H - 1)
    x1 = torch.rand(n, generator=g) * (W - w)
    y1 = torch.rand(n, generator=g) * (H - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def test_ranges_errors_and_defaults():
    check_ranges(DEFAULT_SCALES, DEFAULT_RANGES)
    check_ranges((3.0, 1.7, 1.0), PAPER_RANGES)
    with pytest.raises(InputError, match="empty"):
        check_ranges((1.0, 2.0), ((0, 50), (60, 60)))
    with pytest.raises(InputError, match="valid at no scale"):
        check_ranges((2.0, 1.0), ((0, 32), (40, math.inf)))
    with pytest.raises(InputError, match="larger than 64"):
        check_ranges((2.0, 1.0), ((0, 32), (16, 64)))
    with pytest.raises(InputError, match="one valid range per scale"):
        check_ranges((1.0,), ((0, 1), (1, 2)))
    with pytest.raises(InputError, match="> 0"):
        check_ranges((0.0,), ((0, math.inf),))


def test_valid_mask_uses_sqrt_wh_inclusive():
    b = torch.tensor([[0.0, 0, 16, 16], [0, 0, 8, 32], [0, 0, 64, 65]])
    assert valid_mask(b, (16.0, 64.0)).tolist() == [True, True, False]


def test_candidate_chips_cover_image_flush():
    c = candidate_chips(300, 500, chip=128, stride=64)
    assert c[:, 2].max() == 500 and c[:, 3].max() == 300
    assert ((c[:, 2] - c[:, 0]) == 128).all()
    assert candidate_chips(50, 60, chip=128, stride=32).tolist() == [[0, 0, 128, 128]]
    with pytest.raises(InputError):
        candidate_chips(10, 10, chip=0, stride=1)


def test_greedy_cover_against_hand_case():
    cover = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert greedy_cover(cover) == [1, 0]


@pytest.mark.parametrize("seed", range(20))
def test_every_valid_object_lies_inside_a_chosen_chip(seed):
    g = torch.Generator().manual_seed(seed)
    H, W = int(torch.randint(200, 640, (1,), generator=g)), int(torch.randint(200, 640, (1,),
                                                                              generator=g))
    boxes = _random_boxes(g, 25, H, W)
    for scale, rng in zip(DEFAULT_SCALES, DEFAULT_RANGES):
        plan = positive_chips(boxes, H, W, scale=scale, valid_range=rng, chip=128, stride=16)
        scaled = boxes * scale
        ok = inside(scaled, plan.chips).any(0) if len(plan.chips) else torch.zeros(25, dtype=bool)
        need = plan.valid & ~plan.uncoverable
        assert ok[need].all()
        # uncoverable objects really are larger than a chip at this scale
        big = ((scaled[:, 2] - scaled[:, 0]) > 128) | ((scaled[:, 3] - scaled[:, 1]) > 128)
        assert not (plan.uncoverable & ~big).any()
        # chips lie inside the scaled image (or are one origin chip for a small image)
        sh, sw = round(H * scale), round(W * scale)
        if sh >= 128 and sw >= 128:
            assert (plan.chips[:, 2] <= sw).all() and (plan.chips[:, 3] <= sh).all()


def test_negative_chips_pick_uncovered_proposal_clusters():
    H = W = 400
    pos = torch.tensor([[0.0, 0, 128, 128]])
    cluster = torch.tensor([[300.0, 300, 310, 310]]).repeat(12, 1)
    covered = torch.tensor([[10.0, 10, 20, 20]]).repeat(30, 1)
    neg = negative_chips(torch.cat([cluster, covered]), pos, H, W, scale=1.0, chip=128,
                         stride=32, min_proposals=10)
    assert len(neg) == 1
    assert inside(cluster[:1], neg).all()
    none = negative_chips(covered, pos, H, W, scale=1.0, chip=128, stride=32)
    assert len(none) == 0


def test_tile_grid_and_errors():
    t = tile_grid(300, 500, tile=128, overlap=0.25)
    assert t[:, 2].max() == 500 and t[:, 3].max() == 300 and t[:, :2].min() == 0
    assert tile_grid(60, 70, tile=128).tolist() == [[0, 0, 70, 60]]
    with pytest.raises(InputError):
        tile_grid(10, 10, tile=8, overlap=1.0)


def test_sliced_predict_maps_boxes_back_and_merges():
    image = torch.zeros(3, 200, 300)
    image[:, 50:60, 250:262] = 1.0  # one bright object at x 250..262, y 50..60

    def fake_detector(img):  # finds the bright blob in whatever image it is given
        m = img[0] > 0.5
        if not m.any():
            return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                    "labels": torch.zeros(0, dtype=torch.long)}
        ys, xs = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        b = torch.tensor([[xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]], dtype=torch.float32)
        return {"boxes": b, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}

    for upscale in (1.0, 2.0):
        out = sliced_predict(fake_detector, image, tile=128, overlap=0.5, upscale=upscale)
        assert len(out["boxes"]) == 1
        torch.testing.assert_close(out["boxes"][0], torch.tensor([250.0, 50, 262, 60]),
                                   atol=1.0, rtol=0)


def test_merge_against_torchvision_nms_and_by_hand():
    g = torch.Generator().manual_seed(0)
    boxes = _random_boxes(g, 60, 100, 100, lo=5, hi=40)
    scores = torch.rand(60, generator=g)
    labels = torch.randint(0, 3, (60,), generator=g)
    ours = merge_boxes(boxes, scores, labels, method="nms", metric="iou", thresh=0.5)
    import torchvision

    keep = torchvision.ops.batched_nms(boxes, scores, labels, 0.5)
    # torchvision suppresses at IoU > 0.5, we at >= 0.5; ties have measure zero here
    torch.testing.assert_close(ours["boxes"], boxes[keep])
    # a clipped part (IoU 0.5, IoS 1) is claimed by IoS and merged into the whole box
    parts = torch.tensor([[0.0, 0, 6, 10], [0, 0, 12, 10], [50, 50, 60, 60]])
    sc = torch.tensor([0.9, 0.8, 0.7])
    lab = torch.tensor([0, 0, 0])
    mer = merge_boxes(parts, sc, lab, method="merge", metric="ios")
    assert mer["boxes"].tolist() == [[0, 0, 12, 10], [50, 50, 60, 60]]
    assert mer["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert len(merge_boxes(parts, sc, lab, method="nms", metric="iou", thresh=0.6)["boxes"]) == 3
    with pytest.raises(InputError):
        merge_boxes(parts, sc, lab, method="wbf")


def _target(boxes):
    n = len(boxes)
    b = torch.tensor(boxes, dtype=torch.float32)
    return {"boxes": b, "labels": torch.zeros(n, dtype=torch.long),
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), "image_id": 1}


def test_snip_scale_ignores_out_of_range_objects():
    from sodlab.snip import SnipScale

    image = torch.rand(3, 200, 400)
    t = _target([[0, 0, 10, 10], [50, 50, 90, 90], [100, 20, 300, 190]])  # sizes 10, 40, ~184
    tf = SnipScale((2.0, 1.0, 0.5), ((0, 32), (16, 64), (48, math.inf)), input_size=200)
    seen = set()
    for s in range(30):
        img, out = tf(image, t, torch.Generator().manual_seed(s))
        k = out["snip_scale"]
        seen.add(k)
        assert max(img.shape[1:]) == round(200 * k)
        expect = {2.0: [False, True, True], 1.0: [True, False, True], 0.5: [True, True, False]}
        assert out["iscrowd"].tolist() == expect[k]
        torch.testing.assert_close(out["boxes"], t["boxes"] * (k * 200 / 400))
    assert seen == {2.0, 1.0, 0.5}
    with pytest.raises(InputError):
        SnipScale((1.0,), ((0, 10),), input_size=100)


def test_sniper_chip_crops_and_marks():
    from sodlab.snip import SniperChip

    g0 = torch.Generator().manual_seed(0)
    image = torch.rand(3, 300, 500)
    boxes = _random_boxes(g0, 15, 300, 500, lo=4, hi=120).tolist()
    t = _target(boxes)
    tf = SniperChip(input_size=500, chip=128, stride=32)
    for s in range(10):
        img, out = tf(image, t, torch.Generator().manual_seed(s))
        assert img.shape[1] <= 128 and img.shape[2] <= 128
        b = out["boxes"]
        assert len(b) == len(out["labels"]) == len(out["iscrowd"]) == len(out["area"])
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 128).all()
        # every non-ignored object is valid at this scale and was not clipped
        k = out["snip_scale"]
        rng = dict(zip((2.0, 1.0, 0.5), ((0, 32), (16, 64), (48, math.inf))))[k]
        size = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sqrt() / (k * 500 / 500)
        pos = ~out["iscrowd"]
        assert ((size[pos] >= rng[0] - 1e-3) & (size[pos] <= rng[1] + 1e-3)).all()

"""Sliced-inference merging: the gate on which claimed boxes may enlarge a kept box."""

import pytest
import torch

from sodlab.errors import InputError
from sodlab.slicing import merge_boxes


def _slow_merge(boxes, scores, labels, *, thresh, ratio, floor, area_ratio):
    """Loop reference: greedy by score, IoS claim, gated enclosing box."""
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    b = [[float(v) for v in boxes[i]] for i in order]
    s = [float(scores[i]) for i in order]
    lab = [int(labels[i]) for i in order]

    def area(x):
        return max(x[2] - x[0], 0) * max(x[3] - x[1], 0)

    def ios(x, y):
        iw = max(min(x[2], y[2]) - max(x[0], y[0]), 0)
        ih = max(min(x[3], y[3]) - max(x[1], y[1]), 0)
        return iw * ih / max(min(area(x), area(y)), 1e-12)

    claimed = [False] * len(b)
    out_b, out_s = [], []
    for i in range(len(b)):
        if claimed[i]:
            continue
        box = list(b[i])
        for j in range(len(b)):
            if claimed[j] or lab[j] != lab[i] or ios(b[i], b[j]) < thresh:
                continue
            claimed[j] = True
            big, small = max(area(b[i]), area(b[j])), min(area(b[i]), area(b[j]))
            if j == i or (s[j] >= max(floor, ratio * s[i]) and big <= area_ratio * small):
                box = [min(box[0], b[j][0]), min(box[1], b[j][1]),
                       max(box[2], b[j][2]), max(box[3], b[j][3])]
        out_b.append(box)
        out_s.append(s[i])
    return out_b, out_s


def test_face_inside_a_weak_large_box_keeps_its_own_box():
    face = [40.0, 40, 52, 54]
    body = [20.0, 30, 80, 120]  # contains the face: IoS 1, 30x its area
    boxes = torch.tensor([face, body])
    scores = torch.tensor([0.95, 0.10])
    labels = torch.zeros(2, dtype=torch.long)
    out = merge_boxes(boxes, scores, labels, method="merge", metric="ios")
    assert out["boxes"].tolist() == [face]  # the weak large box is suppressed, not merged
    assert out["scores"].tolist() == pytest.approx([0.95])
    # the same large box with a high score is still too large to enlarge the face
    out = merge_boxes(boxes, torch.tensor([0.95, 0.9]), labels, method="merge")
    assert out["boxes"].tolist() == [face]
    # ungated: the old behaviour, the face grows into the body box
    out = merge_boxes(boxes, scores, labels, method="merge", grow_score_ratio=0.0,
                      grow_area_ratio=float("inf"))
    assert out["boxes"].tolist() == [body]


def test_tile_fragments_of_one_face_still_merge():
    # a 20x20 face cut by a tile border at x = 112: two fragments from two tiles
    left = [100.0, 50, 112, 70]   # 12 x 20
    right = [108.0, 50, 120, 70]  # 12 x 20, the tiles overlap by 4 px
    boxes = torch.tensor([left, right, [300.0, 300, 310, 310]])
    scores = torch.tensor([0.8, 0.7, 0.6])
    labels = torch.zeros(3, dtype=torch.long)
    out = merge_boxes(boxes, scores, labels, method="merge", metric="ios", thresh=0.3)
    assert out["boxes"].tolist() == [[100.0, 50, 120, 70], [300.0, 300, 310, 310]]
    # default settings: a confident fragment (tile B sees only the face's right 12 px) and
    # the whole face from tile A, which holds all of it: the whole wins over its part
    whole = [100.0, 50, 120, 70]
    out = merge_boxes(torch.tensor([right, whole]), torch.tensor([0.9, 0.6]),
                      labels[:2], method="merge")
    assert out["boxes"].tolist() == [whole]
    assert out["scores"].tolist() == pytest.approx([0.9])
    # a weak fragment (below half the kept score) is suppressed without enlarging
    out = merge_boxes(boxes, torch.tensor([0.8, 0.3, 0.6]), labels, method="merge",
                      thresh=0.3)
    assert out["boxes"].tolist() == [left, [300.0, 300, 310, 310]]
    # an absolute floor gates too
    out = merge_boxes(boxes, scores, labels, method="merge", thresh=0.3, grow_min_score=0.75)
    assert out["boxes"][0].tolist() == left


def test_merge_gate_against_loop_reference():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        n = 40
        xy = torch.rand(n, 2, generator=g) * 80
        wh = 3 + torch.rand(n, 2, generator=g) * 30
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.rand(n, generator=g)
        labels = torch.randint(0, 2, (n,), generator=g)
        kw = dict(thresh=0.5, ratio=0.2 + 0.1 * (trial % 5), floor=0.05 * (trial % 3),
                  area_ratio=2.0 + trial % 4)
        out = merge_boxes(boxes, scores, labels, method="merge", metric="ios",
                          thresh=kw["thresh"], grow_score_ratio=kw["ratio"],
                          grow_min_score=kw["floor"], grow_area_ratio=kw["area_ratio"])
        ref_b, ref_s = _slow_merge(boxes, scores, labels, **kw)
        torch.testing.assert_close(out["boxes"], torch.tensor(ref_b).reshape(-1, 4))
        torch.testing.assert_close(out["scores"], torch.tensor(ref_s))


def test_gate_argument_errors():
    b = torch.tensor([[0.0, 0, 1, 1]])
    with pytest.raises(InputError):
        merge_boxes(b, torch.ones(1), torch.zeros(1, dtype=torch.long), method="merge",
                    grow_area_ratio=0.5)


@pytest.mark.parametrize("method", ["merge", "nms"])
def test_a_box_without_area_keeps_itself(method):
    # a detection clipped to a tile's edge can have zero width: its IoS with itself is 0,
    # and it must still come out as its own group (it once crashed the enclosing-box step)
    flat = [30.0, 10, 30, 25]  # zero width
    face = [50.0, 50, 60, 60]
    boxes = torch.tensor([face, flat])
    scores = torch.tensor([0.9, 0.4])
    labels = torch.zeros(2, dtype=torch.long)
    out = merge_boxes(boxes, scores, labels, method=method, metric="ios")
    assert out["boxes"].tolist() == [face, flat]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.4])
    ref_b, ref_s = _slow_merge(boxes, scores, labels, thresh=0.5, ratio=0.5, floor=0.0,
                               area_ratio=4.0)
    assert ref_b == [face, flat]

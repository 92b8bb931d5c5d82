"""Anchors against torchvision and hand cases, matching against a loop, the detector end to end."""

import dataclasses
import json

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from sodlab.anchors import LevelSpec, anchors_for_level, cell_anchors
from sodlab.detector import PRESETS, DetectorConfig, build_detector, make_config
from sodlab.errors import InputError
from sodlab.losses import softmax_ohem_loss
from sodlab.matching import IGNORE, NEGATIVE, match_anchors


def test_anchors_by_hand():
    a = anchors_for_level(2, 3, LevelSpec(stride=8, sizes=(8.0,), ratios=(1.0,)))
    assert a.shape == (6, 4)
    assert a[0].tolist() == [0, 0, 8, 8]  # cell (0, 0), centre (4, 4)
    assert a[4].tolist() == [8, 8, 16, 16]  # row 1, column 1
    c = cell_anchors([16.0], [4.0])  # ratio h/w = 4: w 8, h 32, area 16²
    assert c.tolist() == [[-4, -16, 4, 16]]


def test_anchors_equal_torchvision_with_corner_offset():
    sizes, ratios = (16.0, 32.0), (0.5, 1.0, 2.0)
    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feat = torch.zeros(1, 8, 8, 12)  # stride 8
    tv = gen(images, [feat])[0]
    ours = anchors_for_level(8, 12, LevelSpec(8, sizes, ratios, offset=0.0))
    # torchvision orders (size, ratio) with ratios outer and rounds base anchors to integers
    order = [r * len(sizes) + s for s in range(len(sizes)) for r in range(len(ratios))]
    tv = tv.reshape(-1, len(sizes) * len(ratios), 4)[:, order].reshape(-1, 4)
    torch.testing.assert_close(ours, tv, atol=0.5, rtol=0)


def _loop_match(anchors, boxes, pos, neg):
    out = []
    for a in anchors:
        ious = []
        for b in boxes:
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            ious.append(inter / union)
        best = max(ious)
        j = ious.index(best)
        out.append(j if best >= pos else (NEGATIVE if best < neg else IGNORE))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_matching_against_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = anchors_for_level(6, 6, LevelSpec(8, (12.0, 24.0), (1.0,)))
    xy = torch.rand(4, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 8 + torch.rand(4, 2, generator=g) * 20], 1)
    got = match_anchors(anchors, boxes, pos_iou=0.5, neg_iou=0.4, allow_low_quality=False)
    assert got.tolist() == _loop_match(anchors.tolist(), boxes.tolist(), 0.5, 0.4)
    low = match_anchors(anchors, boxes, pos_iou=0.5, neg_iou=0.4)
    for j in range(4):  # every object gets at least its best anchor
        assert (low == j).any()


def test_crowd_boxes_make_anchors_ignored():
    anchors = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]])
    boxes = torch.tensor([[0.0, 0, 10, 10], [45, 45, 70, 70]])
    m = match_anchors(anchors, boxes, torch.tensor([False, True]))
    assert m.tolist() == [0, IGNORE, NEGATIVE]


def test_softmax_ohem_keeps_three_negatives_per_positive():
    logits = torch.zeros(10, 2)
    logits[:, 1] = torch.arange(10.0)  # higher face score = harder negative
    labels = torch.full((10,), -1)
    labels[0] = 0
    loss = softmax_ohem_loss(logits, labels, 1.0)
    ce = torch.nn.functional.cross_entropy(logits, labels + 1, reduction="none")
    torch.testing.assert_close(loss, ce[0] + ce[7:].sum())


def _targets(B, size):
    return [{"boxes": torch.tensor([[10.0, 12, 26, 30], [40, 8, 48, 18], [60, 40, 100, 90]]),
             "labels": torch.tensor([0, 0, 0]), "iscrowd": torch.tensor([False, False, False]),
             "size": (size, size)} for _ in range(B)]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_train_and_predict(preset):
    torch.manual_seed(0)
    cfg = make_config(preset, num_classes=2, overrides={"input_size": 128})
    model = build_detector(cfg)
    x = torch.rand(2, 3, 128, 128)
    losses = model(x, _targets(2, 128))
    assert {"loss", "cls", "box"} <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    model.eval()
    out = model(x)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) <= cfg.max_dets
    # config round trip through JSON
    assert DetectorConfig(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


def test_overfits_one_image():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = make_config("fpn", num_classes=1, overrides=["input_size=96", "width=32"])
    model = build_detector(cfg)
    x = torch.rand(1, 3, 96, 96) * 0.2
    t = _targets(1, 96)
    for b in t[0]["boxes"].int().tolist():
        x[0, :, b[1]:b[3], b[0]:b[2]] = 0.9
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(x, t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = model(x)[0]
    from torchvision.ops import box_iou

    hit = box_iou(t[0]["boxes"], out["boxes"][out["scores"] > 0.3])
    assert hit.shape[1] > 0 and (hit.max(1).values > 0.5).all(), hit


def test_config_errors():
    with pytest.raises(InputError, match="unknown preset"):
        make_config("yolo", num_classes=1)
    with pytest.raises(InputError, match="unknown config key"):
        make_config("fpn", num_classes=1, overrides=["colour=red"])
    with pytest.raises(InputError, match="key=value"):
        make_config("fpn", num_classes=1, overrides=["width"])
    assert make_config("fpn", num_classes=1, overrides=["width=32"]).width == 32

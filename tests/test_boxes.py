"""Box formats and buckets against hand-computed cases and torchvision."""

import numpy as np
import pytest
import torch
import torchvision

from sodlab import boxes as B


def test_coco_and_voc_conventions_by_hand():
    # COCO [x, y, w, h] = [10, 20, 5, 4] covers x in [10, 15), y in [20, 24).
    assert B.xywh_to_xyxy(torch.tensor([[10.0, 20, 5, 4]])).tolist() == [[10, 20, 15, 24]]
    # VOC 1-based inclusive (1, 1)-(5, 4) covers 5 x 4 pixels starting at pixel 0.
    voc = np.array([[1.0, 1, 5, 4]])
    assert B.voc_to_xyxy(voc).tolist() == [[0, 0, 5, 4]]
    assert B.box_area(B.voc_to_xyxy(voc)).tolist() == [20.0]
    assert B.xyxy_to_voc(B.voc_to_xyxy(voc)).tolist() == voc.tolist()


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_round_trips_match_torchvision(fmt):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    wh = torch.rand(50, 2, generator=g) * 50 + 0.5
    xyxy = torch.cat([xy, xy + wh], 1)
    ours = B.xyxy_to_xywh(xyxy) if fmt == "xywh" else B.xyxy_to_cxcywh(xyxy)
    theirs = torchvision.ops.box_convert(xyxy, "xyxy", fmt)
    torch.testing.assert_close(ours, theirs)
    back = B.xywh_to_xyxy(ours) if fmt == "xywh" else B.cxcywh_to_xyxy(ours)
    torch.testing.assert_close(back, xyxy)
    torch.testing.assert_close(B.box_area(xyxy), torchvision.ops.box_area(xyxy))
    # numpy in, numpy out, same numbers
    np.testing.assert_allclose(B.xyxy_to_xywh(xyxy.numpy()), B.xyxy_to_xywh(xyxy).numpy(),
                               rtol=1e-6)


def test_buckets_use_pycocotools_inclusive_bounds():
    areas = torch.tensor([0.0, 256.0, 257.0, 1024.0, 1025.0, 9216.0, 9217.0])
    assert B.in_bucket(areas, "tiny").tolist() == [True, True, False, False, False, False, False]
    assert B.in_bucket(areas, "small").tolist() == [True, True, True, True, False, False, False]
    assert B.in_bucket(areas, "medium").tolist() == [False, False, False, True, True, True, False]
    assert B.in_bucket(areas, "large").tolist() == [False] * 5 + [True, True]
    assert [B.bucket_of(float(a)) for a in areas] == [
        "tiny", "tiny", "small", "small", "medium", "medium", "large"]
    with pytest.raises(ValueError, match="unknown size bucket"):
        B.in_bucket(areas, "huge")


def test_clip_valid_and_sqrt_wh():
    b = torch.tensor([[-5.0, -5, 10, 10], [90, 40, 120, 60], [3, 3, 3, 8]])
    c = B.clip_boxes(b, height=50, width=100)
    assert c.tolist() == [[0, 0, 10, 10], [90, 40, 100, 50], [3, 3, 3, 8]]
    assert B.valid_boxes(c).tolist() == [True, True, False]
    torch.testing.assert_close(B.sqrt_wh(torch.tensor([[0.0, 0, 4, 9]])), torch.tensor([6.0]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        B.box_area(torch.zeros(3, 5))


def test_box_coder_round_trip_and_torchvision_equivalence():
    g = torch.Generator().manual_seed(1)
    anchors = torch.tensor([[0.0, 0, 16, 16], [10, 10, 42, 74], [5, 5, 9, 13]])
    boxes = anchors + torch.randn(3, 4, generator=g)
    coder = B.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, atol=1e-4, rtol=1e-4)
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    tv = TVBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(deltas, tv.encode_single(boxes, anchors), atol=1e-5, rtol=1e-5)

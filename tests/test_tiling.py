"""Pyramid and sliding-window geometry: separable blur, level sizes, window boxes, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sodlab.errors import InputError
from sodlab.tiling import (
    gaussian_kernel1d,
    image_pyramid,
    map_to_original,
    merge_detections,
    pyramid_sigma,
    pyramid_sizes,
    separable_blur,
    sliding_windows,
)


@pytest.mark.parametrize("sigma", [0.3, 0.87, 2.0])
def test_separable_blur_equals_2d_convolution(sigma):
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 17, 23, generator=g)
    k = gaussian_kernel1d(sigma)
    assert abs(float(k.sum()) - 1) < 1e-6 and torch.equal(k, k.flip(0))
    r = (len(k) - 1) // 2
    k2 = torch.outer(k, k)                                              # [K, K]
    ref = F.conv2d(F.pad(img, (r, r, r, r), mode="reflect"),
                   k2.expand(3, 1, -1, -1), groups=3)
    assert torch.allclose(separable_blur(img, sigma), ref, atol=1e-6)


def test_blur_keeps_a_constant_image_and_zero_sigma_is_identity():
    img = torch.full((1, 1, 9, 9), 0.25)
    assert torch.allclose(separable_blur(img, 1.5), img)
    assert separable_blur(img, 0.0) is img


def test_pyramid_sigma_rule():
    assert pyramid_sigma(2.0) == pytest.approx(0.5 * math.sqrt(3))
    assert pyramid_sigma(math.sqrt(2)) == pytest.approx(0.5)


@pytest.mark.parametrize("step, sizes", [
    (2.0, [(64, 96), (32, 48), (16, 24)]),
    (math.sqrt(2), [(64, 96), (45, 68), (32, 48), (23, 34), (16, 24)]),
])
def test_pyramid_sizes_for_steps(step, sizes):
    img = torch.rand(3, 64, 96)
    levels = image_pyramid(img, scale_step=step, min_size=16)
    assert [tuple(lv.image.shape[-2:]) for lv in levels] == sizes
    assert pyramid_sizes(64, 96, scale_step=step, min_size=16) == sizes
    for k, lv in enumerate(levels):
        assert lv.scale == pytest.approx(step ** -k)
    assert len(image_pyramid(img, scale_step=step, min_size=16, max_levels=2)) == 2
    up = image_pyramid(img, scale_step=step, min_size=16, first_scale=2.0)
    assert tuple(up[0].image.shape[-2:]) == (128, 192) and up[0].scale == 2.0


def test_pyramid_level_of_a_constant_image_stays_constant():
    img = torch.full((3, 40, 40), 0.5)
    for lv in image_pyramid(img, scale_step=2 ** 0.25, min_size=10):
        assert torch.allclose(lv.image, img[:, :1, :1].expand_as(lv.image), atol=1e-6)


def test_sliding_windows_hand_case_and_map_back():
    boxes = sliding_windows(10, 12, window=4, stride=3)
    # rows y = 0, 3, 6 ; columns x = 0, 3, 6 (9 + 4 > 12 is left out)
    assert boxes.shape == (9, 4)
    assert boxes[0].tolist() == [0, 0, 4, 4]
    assert boxes[1].tolist() == [3, 0, 7, 4]            # row-major: x moves first
    assert boxes[3].tolist() == [0, 3, 4, 7]
    assert boxes[-1].tolist() == [6, 6, 10, 10]
    # a 24 px window at (8, 4) on a level of scale 0.5 is a 48 px box at (16, 8)
    w = sliding_windows(30, 40, window=24, stride=4)
    assert w[2].tolist() == [8, 0, 32, 24]
    assert map_to_original(torch.tensor([[8.0, 4.0, 32.0, 28.0]]), 0.5).tolist() == \
        [[16.0, 8.0, 64.0, 56.0]]


def test_merge_detections_is_nms_across_levels():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.5, 0.9, 0.7])
    kept, s = merge_detections(boxes, scores, nms_iou=0.5)
    assert s.tolist() == pytest.approx([0.9, 0.7]) and kept[0].tolist() == [1, 1, 11, 11]


@pytest.mark.parametrize("call, words", [
    (lambda: sliding_windows(10, 30, window=24, stride=4), "smaller than the 24 px window"),
    (lambda: sliding_windows(30, 30, window=24, stride=0), "stride must be > 0"),
    (lambda: image_pyramid(torch.rand(3, 32, 32), scale_step=1.0, min_size=8), "step must be > 1"),
    (lambda: image_pyramid(torch.rand(3, 32, 32), scale_step=0.5, min_size=8), "step must be > 1"),
    (lambda: image_pyramid(torch.rand(3, 10, 32), scale_step=2, min_size=24), "smaller than"),
    (lambda: separable_blur(torch.rand(3, 8, 8), 1.0), "[B, C, H, W]"),
])
def test_bad_input_raises_input_error(call, words):
    with pytest.raises(InputError, match=None) as err:
        call()
    assert words in str(err.value)

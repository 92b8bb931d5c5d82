"""Notebook 05's additions: SNIP multi-scale inference, pixels per epoch, chip viewer."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from sodlab.errors import InputError
from sodlab.snip import epoch_pixels, inside, multiscale_predict

matplotlib.use("Agg")


def _fixed_box_fn(side):
    """A fake detector: one box of ``side`` px at the corner of whatever tensor it gets."""
    def fn(img):
        return {"boxes": torch.tensor([[0.0, 0.0, side, side]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([0])}
    return fn


def test_multiscale_predict_keeps_each_scale_in_its_range():
    image = torch.zeros(3, 40, 40)
    # a 20 px box at x2 is 10 px in the original, at x0.5 it is 40 px
    out = multiscale_predict(_fixed_box_fn(20.0), image, factors=(2.0, 0.5),
                             ranges=((0.0, 16.0), (30.0, math.inf)))
    sides = sorted((out["boxes"][:, 2] - out["boxes"][:, 0]).tolist())
    assert sides == pytest.approx([10.0, 40.0])
    out = multiscale_predict(_fixed_box_fn(20.0), image, factors=(2.0, 0.5),
                             ranges=((0.0, 8.0), (30.0, math.inf)))
    assert (out["boxes"][:, 2] - out["boxes"][:, 0]).tolist() == pytest.approx([40.0])
    # the same box from two scales is merged by NMS; soft-NMS keeps it with a lower score
    both = multiscale_predict(_fixed_box_fn(20.0), image, factors=(1.0, 1.0),
                              ranges=((0.0, math.inf), (0.0, math.inf)))
    assert len(both["boxes"]) == 1
    soft = multiscale_predict(_fixed_box_fn(20.0), image, factors=(1.0, 1.0),
                              ranges=((0.0, math.inf), (0.0, math.inf)), merge="soft")
    assert soft["scores"].tolist() == pytest.approx([0.9, 0.9 * math.exp(-2.0)])


def test_multiscale_predict_rejects_bad_input():
    with pytest.raises(InputError):
        multiscale_predict(_fixed_box_fn(5.0), torch.zeros(3, 8, 8), factors=(1.0,),
                           ranges=((0, 1), (1, 2)))
    with pytest.raises(InputError):
        multiscale_predict(_fixed_box_fn(5.0), torch.zeros(3, 8, 8), factors=(1.0,),
                           ranges=((0, math.inf),), merge="wbf")


def test_epoch_pixels_hand_computed():
    boxes = [torch.tensor([[10.0, 10.0, 20.0, 20.0]])]  # 10 px: valid at scale 2 only
    pix = epoch_pixels([(100, 200)], boxes, input_size=200, chip=64, stride=32,
                       scales=(2.0, 1.0, 0.5), ranges=((0, 32), (16, 64), (48, math.inf)))
    assert pix["single"] == 100 * 200
    assert pix["multi_scale"] == 200 * 400 + 100 * 200 + 50 * 100
    assert pix["chips"] == 1 and pix["sniper"] == 64 * 64


def test_chip_view_covers_valid_objects_and_explorer_builds():
    from sodlab.widgets.chips import chip_explorer, chip_view

    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[5, 5, 15, 15], [100, 60, 112, 72], [20, 30, 90, 100]],
                         dtype=torch.float32)
    for k in range(3):
        fig, plan = chip_view(image, boxes, scale_index=k, input_size=160, chip=64)
        need = plan.valid & ~plan.uncoverable
        factor = (2.0, 1.0, 0.5)[k]
        if need.any():
            assert inside(boxes[need] * factor, plan.chips).any(0).all()
        matplotlib.pyplot.close(fig)
    with pytest.raises(InputError):
        chip_view(image, boxes, scale_index=3, input_size=160)
    box = chip_explorer(image, boxes, input_size=160, draw=False)
    assert box.children

"""Sliced training (SAHI's fine-tuning on slices): the ``slice`` recipe and ``RandomSlice``."""

from __future__ import annotations

import math

import pytest
import torch

from sodlab.data.dataset import DetectionDataset, item_generator
from sodlab.data.transforms import Compose, RandomSlice
from sodlab.engine.experiment import RECIPES
from sodlab.engine.recipes import build_transforms
from sodlab.errors import InputError


def _clone(g: torch.Generator) -> torch.Generator:
    twin = torch.Generator()
    twin.set_state(g.get_state())
    return twin


def reference_slice(image, target, g, *, tile, p, min_visible):
    """Slow reference written from the recipe's description, one box at a time.

    Draw order (documented by ``RandomSlice``): nothing for p == 0; else one uniform number,
    a tile when it is below p; then the left edge, then the top edge, each uniform over the
    whole-pixel starts that keep the tile inside the image.
    Returns (pixels, kept boxes [(box, label)], ignored boxes [(box, label)], areas, masks).
    """
    _, H, W = image.shape
    n = len(target["boxes"])
    rows = [(target["boxes"][i].tolist(), int(target["labels"][i]), bool(target["iscrowd"][i]),
             float(target["area"][i])) for i in range(n)]
    unchanged = (image, [(b, lab) for b, lab, c, _ in rows if not c],
                 [(b, lab) for b, lab, c, _ in rows if c], [a for *_, a in rows], target["masks"])
    if p == 0 or not float(torch.rand((), generator=g)) < p:
        return unchanged
    tw, th = min(tile, W), min(tile, H)
    left = int(torch.randint(W - tw + 1, (1,), generator=g))
    top = int(torch.randint(H - th + 1, (1,), generator=g))
    if (tw, th) == (W, H):  # an image no larger than the tile is used whole
        return unchanged
    pixels = image[:, top:top + th, left:left + tw]
    kept, ignored, areas, masks = [], [], [], []
    for i, (b, lab, crowd, area) in enumerate(rows):
        x1, y1, x2, y2 = b[0] - left, b[1] - top, b[2] - left, b[3] - top
        cx1, cx2 = min(max(x1, 0.0), tw), min(max(x2, 0.0), tw)
        cy1, cy2 = min(max(y1, 0.0), th), min(max(y2, 0.0), th)
        own = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
        seen_area = max(cx2 - cx1, 0.0) * max(cy2 - cy1, 0.0)
        if own > 0:
            share = seen_area / own
        else:  # a box of no area counts as fully visible when it lies in the tile
            share = 1.0 if (x1 >= 0 and y1 >= 0 and x2 <= tw and y2 <= th) else 0.0
        if share < min_visible and seen_area <= 0:
            continue  # outside: dropped
        clipped = [cx1, cy1, cx2, cy2]
        if share >= min_visible and not crowd:
            kept.append((clipped, lab))
        else:
            ignored.append((clipped, lab))
        areas.append(area * share)
        masks.append(target["masks"][i, top:top + th, left:left + tw])
    mask_t = torch.stack(masks) if masks else torch.zeros((0, th, tw), dtype=torch.bool)
    return pixels, kept, ignored, areas, mask_t


def _random_item(rng: torch.Generator):
    H, W = (int(v) for v in torch.randint(20, 160, (2,), generator=rng))
    n = int(torch.randint(0, 12, (1,), generator=rng))
    xy = torch.rand(n, 2, generator=rng) * torch.tensor([W + 20.0, H + 20.0]) - 10
    wh = torch.rand(n, 2, generator=rng) * 40
    if n:
        whole = torch.rand(n, generator=rng) < 0.5  # half of them on whole pixels
        xy[whole], wh[whole] = xy[whole].round(), wh[whole].round()
    if n and float(torch.rand((), generator=rng)) < 0.5:
        wh[0, 0] = 0.0  # a box of no area
    boxes = torch.cat([xy, xy + wh], 1)
    masks = torch.rand(n, H, W, generator=rng) < 0.3
    target = {"boxes": boxes, "labels": torch.randint(0, 3, (n,), generator=rng),
              "iscrowd": torch.rand(n, generator=rng) < 0.15,
              "area": (wh[:, 0] * wh[:, 1]) * 0.8, "masks": masks, "image_id": 7}
    return torch.rand(3, H, W, generator=rng), target


def _split(target):
    boxes, labels, crowd = target["boxes"], target["labels"], target["iscrowd"]
    kept = [(boxes[i].tolist(), int(labels[i])) for i in range(len(boxes)) if not crowd[i]]
    ignored = [(boxes[i].tolist(), int(labels[i])) for i in range(len(boxes)) if crowd[i]]
    return kept, ignored


def _same_boxes(got, want):
    assert len(got) == len(want)
    for (gb, gl), (wb, wl) in zip(got, want):
        assert gl == wl
        assert gb == pytest.approx(wb, abs=1e-4)


@pytest.mark.parametrize("p, tile, min_visible", [(0.7, 48, 0.5), (1.0, 64, 0.25),
                                                  (0.5, 100, 1.0)])
def test_random_slice_agrees_with_a_slow_reference(p, tile, min_visible):
    rng = torch.Generator().manual_seed(11)
    t = RandomSlice(tile, p=p, min_visible=min_visible)
    for trial in range(60):
        image, target = _random_item(rng)
        g = torch.Generator().manual_seed(1000 + trial)
        want = reference_slice(image, target, _clone(g), tile=tile, p=p, min_visible=min_visible)
        out, got = t(image, target, g)
        assert torch.equal(out, want[0])
        kept, ignored = _split(got)
        _same_boxes(kept, want[1])
        _same_boxes(ignored, want[2])
        assert got["area"].tolist() == pytest.approx(want[3], rel=1e-5, abs=1e-4)
        assert torch.equal(got["masks"], want[4])
        assert got["image_id"] == 7
        assert len(got["labels"]) == len(got["boxes"]) == len(got["iscrowd"])


def test_a_box_cut_to_30_percent_is_ignored_at_min_visible_half_and_kept_at_a_quarter():
    image = torch.rand(3, 90, 120)
    g = torch.Generator().manual_seed(3)
    x0, y0, x1, y1 = RandomSlice(40, p=1.0).draw(90, 120, _clone(g))
    # 10 x 10 box with 3 columns inside the tile's right edge: 30 % visible
    box = torch.tensor([[x1 - 3.0, y0 + 5.0, x1 + 7.0, y0 + 15.0]])
    target = {"boxes": box, "labels": torch.tensor([0]), "iscrowd": torch.tensor([False]),
              "area": torch.tensor([100.0])}
    _, half = RandomSlice(40, p=1.0, min_visible=0.5)(image, target, _clone(g))
    _, quarter = RandomSlice(40, p=1.0, min_visible=0.25)(image, target, _clone(g))
    for got in (half, quarter):
        assert got["boxes"].tolist() == [[37.0, 5.0, 40.0, 15.0]]
        assert got["area"].tolist() == pytest.approx([30.0])
    assert half["iscrowd"].tolist() == [True]
    assert quarter["iscrowd"].tolist() == [False]


def test_boxes_outside_the_tile_are_dropped_and_a_small_image_is_used_whole():
    t = RandomSlice(32, p=1.0)
    target = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "labels": torch.tensor([1]),
              "iscrowd": torch.tensor([False]), "area": torch.tensor([16.0])}
    image = torch.rand(3, 20, 30)
    out, got = t(image, target, torch.Generator().manual_seed(0))
    assert out is image and got is target
    far = {**target, "boxes": torch.tensor([[40.0, 2.0, 50.0, 12.0], [30.0, 2.0, 34.0, 6.0]]),
           "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([False, False]),
           "area": torch.tensor([100.0, 16.0])}
    got = t.cut_target(far, (0, 0, 32, 32))
    assert got["boxes"].tolist() == [[30.0, 2.0, 32.0, 6.0]]  # the first lies outside
    assert got["labels"].tolist() == [2] and got["iscrowd"].tolist() == [False]


@pytest.fixture(scope="module")
def train_split(quick_dataset):
    return quick_dataset / "train"


def _dataset(split, recipe, *, input_size, seed=0):
    spec = build_transforms(recipe, input_size=input_size, train_split=split)
    return DetectionDataset(split, seed=seed, transforms=Compose(spec["transforms"]))


def test_p0_is_todays_chain_and_p1_is_always_a_tile_at_scale_one(train_split):
    today = _dataset(train_split, None, input_size=128)
    never = _dataset(train_split, {"slice": {"p": 0.0}}, input_size=128)
    for i in range(6):
        (a, ta), (b, tb) = today[i], never[i]
        assert torch.equal(a, b)
        assert set(ta) == set(tb)
        for k in ta:
            assert (torch.equal(ta[k], tb[k]) if isinstance(ta[k], torch.Tensor)
                    else ta[k] == tb[k])
    always = _dataset(train_split, {"slice": {"p": 1.0}, "flip": False}, input_size=96)
    raw = DetectionDataset(train_split)
    for i in range(6):
        g = item_generator(0, 0, i)
        x0, y0, x1, y1 = always.transforms.transforms[0].draw(*raw[i][0].shape[1:], _clone(g))
        img, _ = always.get(i, g)
        assert img.shape == (3, 96, 96)  # the tile is the input size: not resized
        assert torch.equal(img, raw[i][0][:, y0:y1, x0:x1])


def test_same_seed_same_tile_and_epochs_differ(train_split):
    a = _dataset(train_split, {"slice": {"p": 1.0, "tile": 64}}, input_size=64, seed=4)
    b = _dataset(train_split, {"slice": {"p": 1.0, "tile": 64}}, input_size=64, seed=4)
    first = [a[i] for i in range(5)]
    for i in range(5):
        assert torch.equal(first[i][0], b[i][0])
        assert torch.equal(first[i][1]["boxes"], b[i][1]["boxes"])
    a.set_epoch(1)
    assert any(not torch.equal(first[i][0], a[i][0]) for i in range(5))


def test_bad_slice_specs_name_the_key(train_split):
    for spec, key in (({"q": 1}, "unknown keys"), ({"p": 1.5}, "slice.p"),
                      ({"p": -0.1}, "slice.p"), ({"min_visible": 0}, "slice.min_visible"),
                      ({"min_visible": 1.2}, "slice.min_visible"), ({"tile": 8}, "slice.tile"),
                      ({"tile": 32.5}, "slice.tile"), ({"tile": math.inf}, "slice.tile"),
                      ({"p": "half"}, "slice.p"), ([0.5], "slice")):
        with pytest.raises(InputError, match=key):
            build_transforms({"slice": spec}, input_size=64, train_split=train_split)
    with pytest.raises(InputError, match="not both"):
        build_transforms({"slice": {}, "das": {"p": 0.5}}, input_size=64, train_split=train_split)
    spec = build_transforms({"slice": {}}, input_size=80, train_split=train_split)
    assert repr(spec["transforms"][0]) == "RandomSlice(80, p=0.5, min_visible=0.5)"


def test_sliced_training_is_a_named_recipe():
    assert RECIPES["sliced training"](384) == {"slice": {"p": 0.5, "tile": 384,
                                                         "min_visible": 0.5}}


def test_a_detector_trains_two_steps_on_slices(quick_dataset, tmp_path):
    from sodlab.engine.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = train("fpn", quick_dataset, tmp_path / "run", max_steps=2, batch_size=2,
                        recipe={"slice": {"p": 1.0, "tile": 96, "min_visible": 0.5}},
                        overrides={"input_size": 128}, val_every=0, progress=False,
                        device="cpu", precision="fp32")
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] == 2
    assert math.isfinite(summary["final_loss"])
    assert summary["train"]["transforms"][0] == "RandomSlice(96, p=1.0, min_visible=0.5)"

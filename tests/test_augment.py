"""Oversampling and copy-paste: property tests on random images and targets (seeded)."""

import math

import pytest
import torch

from sodlab.augment import (
    CopyPaste,
    OversamplingSampler,
    contains_small,
    copy_paste,
    oversample_repeats,
)


def _ellipse(h, w, cy, cx, ry, rx):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1


def _random_scene(seed, n=6, H=96, W=128):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, H, W, generator=g)
    masks, boxes = [], []
    for _ in range(n):
        r = float(torch.randint(2, 14, (1,), generator=g))
        cy = float(torch.randint(int(r) + 1, H - int(r) - 1, (1,), generator=g))
        cx = float(torch.randint(int(r) + 1, W - int(r) - 1, (1,), generator=g))
        m = _ellipse(H, W, cy, cx, r, r * 0.8)
        if not m.any():
            continue
        ys, xs = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
        masks.append(m)
        boxes.append([float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)])
    masks = torch.stack(masks)
    k = len(boxes)
    target = {
        "boxes": torch.tensor(boxes),
        "labels": torch.randint(0, 3, (k,), generator=g),
        "iscrowd": torch.zeros(k, dtype=torch.bool),
        "masks": masks,
        "area": masks.flatten(1).sum(1).float(),
        "image_id": seed,
    }
    target["iscrowd"][0] = True
    return image, target


def _tight(m):
    ys, xs = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def _rect(box, H, W):
    m = torch.zeros(H, W, dtype=torch.bool)
    x1, y1 = math.floor(box[0]), math.floor(box[1])
    x2, y2 = math.ceil(box[2]), math.ceil(box[3])
    m[max(y1, 0):min(y2, H), max(x1, 0):min(x2, W)] = True
    return m


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("strategy", ["all_once", "one_many", "random_subset"])
@pytest.mark.parametrize("with_context", [False, True])
def test_copy_paste_properties(seed, strategy, with_context):
    image, target = _random_scene(seed)
    n0 = len(target["boxes"])
    g = torch.Generator().manual_seed(seed)
    out_img, out = copy_paste(image, target, g=g, strategy=strategy, n_copies=3,
                              max_area=20.0**2, with_context=with_context,
                              blend="soft" if seed % 2 else "hard")
    H, W = image.shape[1:]
    P = out["pasted"]
    assert len(out["boxes"]) == len(out["masks"]) == len(out["labels"]) == n0 + P
    assert len(out["iscrowd"]) == len(out["area"]) == n0 + P
    # nothing lost: original objects, their pixels and their fields unchanged
    torch.testing.assert_close(out["boxes"][:n0], target["boxes"])
    assert torch.equal(out["masks"][:n0], target["masks"])
    assert torch.equal(out["labels"][:n0], target["labels"])
    orig_pixels = target["masks"].any(0)
    assert torch.equal(out_img[:, orig_pixels], image[:, orig_pixels])
    occupied = target["masks"].any(0)
    for b in target["boxes"]:
        occupied |= _rect(b.tolist(), H, W)
    for j in range(n0, n0 + P):
        m, b = out["masks"][j], out["boxes"][j].tolist()
        assert m.any()
        assert _tight(m) == b, "box must be the tight bound of the pasted mask"
        assert 0 <= b[0] < b[2] <= W and 0 <= b[1] < b[3] <= H
        assert not (m & occupied).any(), "pasted mask overlaps an existing object"
        assert not (_rect(b, H, W) & occupied).any(), "pasted box overlaps an existing object"
        occupied |= m | _rect(b, H, W)  # later pastes must avoid earlier ones too
        assert not out["iscrowd"][j]
        assert out["area"][j] == m.sum()
    # same generator seed -> same output
    img2, out2 = copy_paste(image, target, g=torch.Generator().manual_seed(seed),
                            strategy=strategy, n_copies=3, max_area=20.0**2,
                            with_context=with_context, blend="soft" if seed % 2 else "hard")
    assert torch.equal(img2, out_img) and torch.equal(out2["boxes"], out["boxes"])


@pytest.mark.parametrize("strategy", ["all_once", "one_many", "random_subset"])
@pytest.mark.parametrize("with_context", [False, True])
def test_property_cases_do_paste(strategy, with_context):
    """The property test above must exercise real pastes, not only skips."""
    total = 0
    for seed in range(8):
        image, target = _random_scene(seed)
        _, out = copy_paste(image, target, g=torch.Generator().manual_seed(seed),
                            strategy=strategy, n_copies=3, max_area=20.0**2,
                            with_context=with_context)
        total += out["pasted"]
    assert total >= 4


def test_copy_paste_pastes_something_and_labels_follow_sources():
    image, target = _random_scene(3, n=3, H=160, W=200)
    target["iscrowd"][:] = False
    out_img, out = copy_paste(image, target, g=torch.Generator().manual_seed(0),
                              strategy="one_many", n_copies=4, max_area=1e6)
    assert out["pasted"] >= 2
    assert len(set(out["labels"][3:].tolist())) == 1  # one object, many times
    assert not torch.equal(out_img, image)


def test_rotation_and_scale_change_pasted_size_within_bounds():
    H, W = 200, 200
    m = _ellipse(H, W, 50, 50, 8, 8)
    target = {"boxes": torch.tensor([_tight(m)]), "labels": torch.tensor([0]),
              "iscrowd": torch.tensor([False]), "masks": m[None], "area": m.sum()[None].float()}
    image = torch.zeros(3, H, W)
    image[:, m] = 1.0
    _, out = copy_paste(image, target, g=torch.Generator().manual_seed(1), n_copies=10,
                        max_area=1e6, scale=(0.8, 1.2), rotation=15)
    src = float(target["area"][0])
    for a in out["area"][1:]:
        # area scales with s^2 in [0.64, 1.44]; allow rasterisation slack
        assert 0.5 * src <= float(a) <= 1.6 * src


def test_copy_paste_rejects_bad_arguments():
    image, target = _random_scene(0)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="strategy"):
        copy_paste(image, target, g=g, strategy="everything")
    with pytest.raises(ValueError, match="blend"):
        copy_paste(image, target, g=g, blend="poisson")
    del target["masks"]
    with pytest.raises(ValueError, match="with_masks"):
        copy_paste(image, target, g=g)


def test_copy_paste_transform_probability():
    image, target = _random_scene(1)
    t = CopyPaste(p=0.0, max_area=1e6)
    img, out = t(image, target, torch.Generator().manual_seed(0))
    assert img is image and out is target


def test_oversample_repeats_and_sampler():
    coco = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "annotations": [{"image_id": 1, "area": 100.0, "iscrowd": 0},
                            {"image_id": 2, "area": 5000.0, "iscrowd": 0},
                            {"image_id": 3, "area": 50.0, "iscrowd": 1}]}
    assert oversample_repeats(coco, k=3) == [3, 1, 1]
    assert contains_small([{"area": 1024.0, "iscrowd": 0}])  # inclusive bound, as COCO
    with pytest.raises(ValueError):
        oversample_repeats(coco, k=0)
    s = OversamplingSampler([3, 1, 1], seed=0)
    s.set_epoch(0)
    a = list(s)
    assert sorted(a) == [0, 0, 0, 1, 2] and len(s) == 5
    s.set_epoch(0)
    assert list(s) == a  # same epoch, same order
    s.set_epoch(1)
    b = list(s)
    assert sorted(b) == sorted(a)


def test_oversampling_sampler_splits_across_ranks():
    reps = [3, 1, 2, 1, 1]
    parts = []
    for rank in range(2):
        s = OversamplingSampler(reps, seed=5, num_replicas=2, rank=rank)
        s.set_epoch(2)
        parts.append(list(s))
    assert len(parts[0]) == len(parts[1]) == 4
    whole = OversamplingSampler(reps, seed=5)
    whole.set_epoch(2)
    full = list(whole)
    assert sorted(parts[0] + parts[1]) == sorted(full)  # 8 = total, no padding needed


def test_repeated_dataset_draws_fresh_transforms_per_copy():
    from sodlab.augment import RepeatedDataset

    class Base:
        seed, epoch, cat_ids = 0, 0, [1]

        def __len__(self):
            return 3

        def set_epoch(self, e):
            self.epoch = e

        def get(self, i, g):
            return i, float(torch.rand((), generator=g))

    view = RepeatedDataset(Base(), [1, 3, 1])
    assert len(view) == 5 and view.cat_ids == [1]
    items = [view[j] for j in range(5)]
    assert [i for i, _ in items] == [0, 1, 1, 1, 2]
    draws = [d for i, d in items if i == 1]
    assert len(set(draws)) == 3  # three copies, three different random draws
    assert [view[j] for j in range(5)] == items  # deterministic
    view.set_epoch(1)
    assert [view[j] for j in range(5)] != items
    with pytest.raises(ValueError):
        RepeatedDataset(Base(), [1, 2])


def test_context_boxes_from_the_dataset_travel_with_pastes():
    image, target = _random_scene(2, n=3, H=200, W=240)
    target["iscrowd"][:] = False
    b = target["boxes"]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    target["head_boxes"] = torch.stack([b[:, 0] - 0.1 * w, b[:, 1] - 0.2 * h, b[:, 2] + 0.1 * w,
                                        b[:, 3]], 1)
    target["body_boxes"] = torch.stack([b[:, 0] - w, b[:, 3], b[:, 2] + w, b[:, 3] + 2 * h], 1)
    _, out = copy_paste(image, target, g=torch.Generator().manual_seed(0), max_area=1e6,
                        with_context=True, rotation=0.0, scale=(1.0, 1.0))
    n = len(out["boxes"])
    assert out["pasted"] > 0
    assert len(out["head_boxes"]) == len(out["body_boxes"]) == n
    for j in range(3, n):  # offsets between a pasted face and its body equal the source's
        src = [i for i in range(3) if torch.allclose(
            out["boxes"][j, 2:] - out["boxes"][j, :2], b[i, 2:] - b[i, :2], atol=1.5)]
        assert src
        d_out = out["body_boxes"][j, :2] - out["boxes"][j, :2]
        assert any(torch.allclose(d_out, target["body_boxes"][i, :2] - b[i, :2], atol=1.5)
                   for i in src)

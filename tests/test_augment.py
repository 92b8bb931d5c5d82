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


# --------------------------------------------------------------------------- speed-up guard
# The first implementation of copy_paste (per-object torch ops, one placement try at a time),
# kept as the reference: the faster one must give the same outputs for the same generator.
def _ref_uniform(g, lo, hi):
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _ref_rect_mask(box, h, w):
    x1, y1 = int(math.floor(box[0])), int(math.floor(box[1]))
    x2, y2 = int(math.ceil(box[2])), int(math.ceil(box[3]))
    m = torch.zeros(h, w, dtype=torch.bool)
    m[max(y1, 0):max(min(y2, h), 0), max(x1, 0):max(min(x2, w), 0)] = True
    return m


def _ref_tight_box(mask):
    ys = mask.any(1).nonzero()
    xs = mask.any(0).nonzero()
    return torch.tensor([xs[0, 0], ys[0, 0], xs[-1, 0] + 1, ys[-1, 0] + 1], dtype=torch.float32)


def _ref_default_context(box):
    w, h = box[2] - box[0], box[3] - box[1]
    cx = (box[0] + box[2]) / 2
    return torch.stack([cx - 1.5 * w, box[1] - 0.5 * h, cx + 1.5 * w, box[3] + 2.5 * h])


def _ref_context_region(target, i):
    box = target["boxes"][i]
    if "context_boxes" in target:
        return target["context_boxes"][i]
    parts = [target[k][i] for k in ("head_boxes", "body_boxes")
             if k in target and torch.isfinite(target[k][i]).all()]
    if not parts:
        return _ref_default_context(box)
    allb = torch.stack([box, *parts])
    return torch.cat([allb[:, :2].min(0).values, allb[:, 2:].max(0).values])


def _ref_warp(patch, scale, angle_deg):
    import torch.nn.functional as F

    _, h, w = patch.shape
    a = math.radians(angle_deg)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    wo = max(1, math.ceil(scale * (w * c + h * s)))
    ho = max(1, math.ceil(scale * (w * s + h * c)))
    inv = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) / scale
    theta = torch.diag(torch.tensor([2.0 / w, 2.0 / h])) @ inv @ torch.diag(
        torch.tensor([wo / 2.0, ho / 2.0]))
    theta = torch.cat([theta, torch.zeros(2, 1)], 1)[None]
    grid = F.affine_grid(theta, [1, patch.shape[0], ho, wo], align_corners=False)
    return F.grid_sample(patch[None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[0]


def _ref_feather(alpha, sigma=1.0):
    import torch.nn.functional as F

    r = max(1, int(2 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    a = alpha[None, None]
    a = F.conv2d(F.pad(a, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    a = F.conv2d(F.pad(a, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return a[0, 0] * (alpha > 0)


def _ref_copy_paste(image, target, *, g, strategy="all_once", n_copies=1, max_area=32.0**2,
                    scale=(0.8, 1.2), rotation=15.0, blend="hard", with_context=False,
                    max_tries=20, subset_p=0.5):
    _, H, W = image.shape
    boxes, masks = target["boxes"], target["masks"]
    areas = target["area"] if "area" in target else masks.flatten(1).sum(1).float()
    crowd = target["iscrowd"]
    small = [i for i in range(len(boxes)) if not crowd[i] and 0 < areas[i] <= max_area]
    if strategy == "one_many":
        small = [small[int(torch.randint(len(small), (1,), generator=g))]] if small else []
    elif strategy == "random_subset":
        small = [i for i in small if float(torch.rand((), generator=g)) < subset_p]
    occupied = torch.zeros(H, W, dtype=torch.bool)
    for b in boxes:
        x1, y1 = max(int(math.floor(b[0])), 0), max(int(math.floor(b[1])), 0)
        occupied[y1:max(int(math.ceil(b[3])), 0), x1:max(int(math.ceil(b[2])), 0)] = True
    image = image.clone()
    new_boxes, new_masks, new_labels, src_idx = [], [], [], []
    skipped = 0
    for i in small:
        region = _ref_context_region(target, i) if with_context else boxes[i]
        x1 = max(int(math.floor(region[0])), 0)
        y1 = max(int(math.floor(region[1])), 0)
        x2 = min(int(math.ceil(region[2])), W)
        y2 = min(int(math.ceil(region[3])), H)
        obj = masks[i, y1:y2, x1:x2].float()
        if with_context:
            others = (masks[:, y1:y2, x1:x2].any(0) & ~masks[i, y1:y2, x1:x2]).float()
            foot = 1.0 - others
        else:
            foot = obj
        patch = torch.cat([image[:, y1:y2, x1:x2], obj[None], foot[None]])
        for _ in range(n_copies):
            warped = _ref_warp(patch, _ref_uniform(g, *scale),
                               _ref_uniform(g, -rotation, rotation))
            m = warped[3] > 0.5
            fp = (warped[4] > 0.5) | m
            if not m.any():
                skipped += 1
                continue
            tb = _ref_tight_box(m)
            fp = fp | _ref_rect_mask(tb, *fp.shape)
            ho, wo = fp.shape
            if ho > H or wo > W:
                skipped += 1
                continue
            placed = False
            for _ in range(max_tries):
                oy = int(torch.randint(H - ho + 1, (1,), generator=g))
                ox = int(torch.randint(W - wo + 1, (1,), generator=g))
                if not (occupied[oy:oy + ho, ox:ox + wo] & fp).any():
                    placed = True
                    break
            if not placed:
                skipped += 1
                continue
            alpha = fp.float() if blend == "hard" else _ref_feather(fp.float())
            dst = image[:, oy:oy + ho, ox:ox + wo]
            image[:, oy:oy + ho, ox:ox + wo] = alpha * warped[:3].clamp(0, 1) + (1 - alpha) * dst
            occupied[oy:oy + ho, ox:ox + wo] |= fp
            new_masks.append((oy, ox, m))
            new_boxes.append(tb + torch.tensor([ox, oy, ox, oy], dtype=torch.float32))
            new_labels.append(target["labels"][i])
            src_idx.append(i)
    out = dict(target)
    if new_boxes:
        nb = torch.stack(new_boxes)
        all_masks = torch.zeros(len(masks) + len(nb), H, W, dtype=torch.bool)
        all_masks[:len(masks)] = masks
        for k, (oy, ox, m) in enumerate(new_masks):
            all_masks[len(masks) + k, oy:oy + m.shape[0], ox:ox + m.shape[1]] = m
        out["boxes"] = torch.cat([boxes, nb])
        out["masks"] = all_masks
        out["labels"] = torch.cat([target["labels"], torch.stack(new_labels)])
        out["iscrowd"] = torch.cat([crowd, torch.zeros(len(nb), dtype=torch.bool)])
        pasted_area = torch.tensor([float(m.sum()) for _, _, m in new_masks])
        out["area"] = torch.cat([areas.float(), pasted_area])
        for key in target:
            if key.endswith("_boxes"):
                shift = (nb[:, :2] - boxes[src_idx][:, :2]).repeat(1, 2)
                out[key] = torch.cat([target[key], target[key][src_idx] + shift])
    out["pasted"] = len(new_boxes)
    out["pasted_skipped"] = skipped
    return image, out


def _assert_same_output(a, b):
    (img_a, ta), (img_b, tb) = a, b
    assert torch.equal(img_a, img_b)
    assert set(ta) == set(tb)
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0, equal_nan=True,
                                       msg=k)  # exact; dtypes must match too
        else:
            assert ta[k] == tb[k], k


def _with_context_parts(seed):
    """A scene whose objects carry head and body boxes, some of them missing (NaN)."""
    image, target = _random_scene(seed, n=7, H=120, W=150)
    b = target["boxes"]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    target["head_boxes"] = torch.stack([b[:, 0] - 0.2 * w, b[:, 1] - 0.3 * h, b[:, 2] + 0.2 * w,
                                        b[:, 3]], 1)
    target["body_boxes"] = torch.stack([b[:, 0] - w, b[:, 3], b[:, 2] + w, b[:, 3] + 2 * h], 1)
    target["head_boxes"][1::3] = float("nan")
    target["body_boxes"][1::2] = float("nan")
    return image, target


@pytest.mark.parametrize("strategy", ["all_once", "one_many", "random_subset"])
@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("blend", ["hard", "soft"])
def test_copy_paste_equals_reference_implementation(strategy, with_context, blend):
    scenes = [_random_scene(s, n=8) for s in range(6)] + [_with_context_parts(s) for s in (1, 2)]
    ctx = _random_scene(9, n=5)  # explicit context boxes
    ctx[1]["context_boxes"] = ctx[1]["boxes"] + torch.tensor([-6.0, -4.0, 6.0, 12.0])
    scenes.append(ctx)
    pasted = 0
    for max_tries in (20, 2):  # few tries: placements fail and skip too
        g_ref = torch.Generator().manual_seed(11)
        g_new = torch.Generator().manual_seed(11)
        for image, target in scenes:  # one generator through all: its stream must match
            kw = dict(strategy=strategy, with_context=with_context, blend=blend, n_copies=2,
                      max_area=22.0**2, max_tries=max_tries)
            ref = _ref_copy_paste(image, target, g=g_ref, **kw)
            new = copy_paste(image, target, g=g_new, **kw)
            _assert_same_output(ref, new)
            pasted += new[1]["pasted"]
        assert torch.equal(g_ref.get_state(), g_new.get_state())
    assert pasted > 0

"""Oversampling and copy-paste: property tests on random images and targets (seeded)."""

import math

import numpy as np
import pytest
import torch

from sodlab.augment import CopyPaste, contains_small, copy_paste, oversample_repeats


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


def test_oversample_repeats():
    coco = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "annotations": [{"image_id": 1, "area": 100.0, "iscrowd": 0},
                            {"image_id": 2, "area": 5000.0, "iscrowd": 0},
                            {"image_id": 3, "area": 50.0, "iscrowd": 1}]}
    assert oversample_repeats(coco, k=3) == [3, 1, 1]
    assert contains_small([{"area": 1024.0, "iscrowd": 0}])  # inclusive bound, as COCO
    with pytest.raises(ValueError):
        oversample_repeats(coco, k=0)


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


# --------------------------------------------------------------------------- the reference
# An independent, slow copy-paste written from the method as sodlab/augment.py describes it
# (plain loops over objects, tries and pixels; no code shared with the implementation). It
# draws from the generator in the documented order: the strategy's draws (one_many: one
# randint over the small objects; random_subset: one rand per small object), then per copy
# a scale and an angle (lo + (hi - lo) * rand), then per placement try a row and a column
# offset (randint), one try at a time. The fast implementation must give the same objects,
# masks, boxes and generator state, and the same pixels up to float rounding.
def _ref_touches(lo, hi, p):
    """Pixel p covers [p, p + 1): does it overlap the interval [lo, hi)?"""
    return p < hi and p + 1 > lo


def _ref_touched(box, H, W):
    """The image pixels a box touches, as a bool array [H, W]."""
    out = np.zeros((H, W), dtype=bool)
    for r in range(H):
        if _ref_touches(box[1], box[3], r):
            for c in range(W):
                out[r, c] = _ref_touches(box[0], box[2], c)
    return out


def _ref_context_region(target, i):
    """The object's context: its context box; else the union of its box with its head and
    body boxes (missing ones left out); else its face box widened 3x about its centre, from
    half a face height above its top to 3.5 face heights below it (head and shoulders)."""
    if "context_boxes" in target:
        return target["context_boxes"][i].tolist()
    box = target["boxes"][i].tolist()
    parts = [target[k][i].tolist() for k in ("head_boxes", "body_boxes") if k in target]
    parts = [p for p in parts if all(math.isfinite(v) for v in p)]
    if parts:
        allb = [box, *parts]
        return [min(b[0] for b in allb), min(b[1] for b in allb),
                max(b[2] for b in allb), max(b[3] for b in allb)]
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    return [cx - 1.5 * w, y1 - 0.5 * h, cx + 1.5 * w, y1 + 3.5 * h]


def _ref_bilinear(chan, y, x):
    """Channel value at continuous pixel-centre coordinates (y, x); zero outside."""
    h, w = len(chan), len(chan[0])
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * chan[yy][xx]
    return total


def _ref_warp(channels, scale, angle_deg):
    """Scale by ``scale`` and rotate by ``angle_deg`` about the centre, into the bounding size
    of the turned rectangle: each output pixel samples (bilinear, zero outside) the input at
    R(-angle) / scale times its offset from the output centre."""
    h, w = len(channels[0]), len(channels[0][0])
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    wo = max(1, math.ceil(scale * (w * abs(ca) + h * abs(sa))))
    ho = max(1, math.ceil(scale * (w * abs(sa) + h * abs(ca))))
    out = [[[0.0] * wo for _ in range(ho)] for _ in channels]
    for r in range(ho):
        for q in range(wo):
            dx, dy = q + 0.5 - wo / 2, r + 0.5 - ho / 2
            sx, sy = (ca * dx + sa * dy) / scale, (-sa * dx + ca * dy) / scale
            for k, chan in enumerate(channels):
                out[k][r][q] = _ref_bilinear(chan, h / 2 + sy - 0.5, w / 2 + sx - 0.5)
    return out


def _ref_feather(alpha, sigma=1.0):
    """Soft edges inside the footprint: a normalised Gaussian blur (sigma 1, radius 2 sigma,
    edge pixels repeated) of the 0/1 footprint [h, w], then zero outside the footprint."""
    h, w = len(alpha), len(alpha[0])
    r = max(1, int(2 * sigma))
    k = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-r, r + 1)]
    total = sum(k)
    k = [v / total for v in k]
    out = [[0.0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            if not alpha[y][x]:
                continue
            for i, dy in enumerate(range(-r, r + 1)):
                for j, dx in enumerate(range(-r, r + 1)):
                    yy, xx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                    out[y][x] += k[i] * k[j] * alpha[yy][xx]
    return out


def _ref_small_objects(target, max_area, strategy, g, subset_p):
    masks = target["masks"]
    small = []
    for i in range(len(masks)):
        area = float(target["area"][i]) if "area" in target else float(masks[i].sum())
        if not bool(target["iscrowd"][i]) and 0 < area <= max_area:
            small.append(i)
    if strategy == "one_many":
        return [small[int(torch.randint(len(small), (1,), generator=g))]] if small else []
    if strategy == "random_subset":
        return [i for i in small if float(torch.rand((), generator=g)) < subset_p]
    return small


def _ref_source(img, masks, region, i, with_context):
    """Channels (lists) of the pixels ``region`` touches in ``img [3, H, W]``: r, g, b, the
    mask of object ``i`` and, with context, 'no other object here'."""
    _, H, W = img.shape
    rows = [y for y in range(H) if _ref_touches(region[1], region[3], y)]
    cols = [x for x in range(W) if _ref_touches(region[0], region[2], x)]
    chans = [[[float(img[c, y, x]) for x in cols] for y in rows] for c in range(3)]
    chans.append([[float(masks[i][y][x]) for x in cols] for y in rows])
    if with_context:
        chans.append([[float(masks[i][y][x] or not any(masks[j][y][x] for j in range(len(masks))))
                       for x in cols] for y in rows])
    return chans


def _ref_footprint(warped, with_context):
    """(mask, footprint, tight box) of a warped source, or None if its mask vanished."""
    ho, wo = len(warped[0]), len(warped[0][0])
    mask = [[warped[3][y][x] > 0.5 for x in range(wo)] for y in range(ho)]
    ys = [y for y in range(ho) if any(mask[y])]
    xs = [x for x in range(wo) if any(mask[y][x] for y in range(ho))]
    if not ys:
        return None
    box = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    fp = [[mask[y][x] or (with_context and warped[4][y][x] > 0.5)
           or (box[0] <= x < box[2] and box[1] <= y < box[3]) for x in range(wo)]
          for y in range(ho)]
    return mask, fp, box


def _ref_place(occupied, fp, g, max_tries):
    H, W = occupied.shape
    ho, wo = len(fp), len(fp[0])
    for _ in range(max_tries):
        oy = int(torch.randint(H - ho + 1, (1,), generator=g))
        ox = int(torch.randint(W - wo + 1, (1,), generator=g))
        if not any(fp[y][x] and occupied[oy + y, ox + x] for y in range(ho) for x in range(wo)):
            return oy, ox
    return None


def _ref_copy_paste(image, target, *, g, strategy="all_once", n_copies=1, max_area=32.0**2,
                    scale=(0.8, 1.2), rotation=15.0, blend="hard", with_context=False,
                    max_tries=20, subset_p=0.5):
    _, H, W = image.shape
    small = _ref_small_objects(target, max_area, strategy, g, subset_p)
    occupied = np.zeros((H, W), dtype=bool)
    for box in target["boxes"].tolist():
        occupied |= _ref_touched(box, H, W)
    img = image.numpy().copy()  # [3, H, W] float32, written pixel by pixel
    masks = target["masks"].tolist()
    pasted, skipped = [], 0  # (mask, offset, box, source)
    for i in small:
        region = _ref_context_region(target, i) if with_context else target["boxes"][i].tolist()
        source = _ref_source(img, masks, region, i, with_context)  # earlier pastes included
        for _ in range(n_copies):
            s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
            a = -rotation + 2 * rotation * float(torch.rand((), generator=g))
            warped = _ref_warp(source, s, a)
            found = _ref_footprint(warped, with_context)
            if found is None or len(warped[0]) > H or len(warped[0][0]) > W:
                skipped += 1
                continue
            mask, fp, (tx1, ty1, tx2, ty2) = found
            where = _ref_place(occupied, fp, g, max_tries)
            if where is None:
                skipped += 1
                continue
            oy, ox = where
            alpha = fp if blend == "hard" else _ref_feather([[float(v) for v in row]
                                                             for row in fp])
            for y, row in enumerate(fp):
                for x, inside in enumerate(row):
                    occupied[oy + y, ox + x] |= inside
                    al = float(alpha[y][x])
                    for c in range(3):
                        new = min(max(warped[c][y][x], 0.0), 1.0)
                        if al:
                            img[c, oy + y, ox + x] = al * new + (1 - al) * float(
                                img[c, oy + y, ox + x])
            pasted.append((mask, (oy, ox), [tx1 + ox, ty1 + oy, tx2 + ox, ty2 + oy], i))
    return torch.from_numpy(img), _ref_pasted_target(target, pasted, skipped, H, W)


def _ref_pasted_target(target, pasted, skipped, H, W):
    out = dict(target)
    out["pasted"], out["pasted_skipped"] = len(pasted), skipped
    if not pasted:
        return out
    new_masks = torch.zeros(len(pasted), H, W, dtype=torch.bool)
    for k, (mask, (oy, ox), _, _) in enumerate(pasted):
        for y, row in enumerate(mask):
            for x, v in enumerate(row):
                new_masks[k, oy + y, ox + x] = v
    src = [i for *_, i in pasted]
    new_boxes = torch.tensor([b for _, _, b, _ in pasted], dtype=torch.float32)
    out["boxes"] = torch.cat([target["boxes"], new_boxes])
    out["masks"] = torch.cat([target["masks"], new_masks])
    out["labels"] = torch.cat([target["labels"], target["labels"][src]])
    out["iscrowd"] = torch.cat([target["iscrowd"], torch.zeros(len(pasted), dtype=torch.bool)])
    area = target["area"] if "area" in target else target["masks"].flatten(1).sum(1)
    out["area"] = torch.cat([area.float(), new_masks.flatten(1).sum(1).float()])
    for key in target:  # a head or body box moves with its pasted face
        if key.endswith("_boxes"):
            moved = [[v + (new_boxes[k, j % 2] - target["boxes"][i, j % 2]).item()
                      for j, v in enumerate(target[key][i].tolist())]
                     for k, i in enumerate(src)]
            out[key] = torch.cat([target[key], torch.tensor(moved, dtype=target[key].dtype)])
    return out


def _assert_same_output(a, b):
    """The same objects, masks and boxes exactly; the same pixels up to float rounding (the
    reference computes in float64, one pixel at a time)."""
    (img_a, ta), (img_b, tb) = a, b
    torch.testing.assert_close(img_a, img_b, rtol=0, atol=1e-5)
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

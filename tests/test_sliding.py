"""Patch classifier and sliding-window scoring: fcn == crops, detection, widget, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.errors import InputError
from sodlab.models.classifiers import (
    build_patch_classifier,
    crop_windows,
    score_crops,
    score_map,
    score_windows,
    sliding_window_detect,
)
from sodlab.tiling import sliding_windows

torch.set_num_threads(1)


def _model(window: int, seed: int = 0):
    torch.manual_seed(seed)
    m = build_patch_classifier(window)
    for mod in m.modules():  # non-trivial BatchNorm statistics, so eval() is not the identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.mark.parametrize("window, stride", [(24, 4), (24, 8), (24, 2), (24, 6), (12, 2), (48, 8)])
def test_fcn_equals_crops_at_aligned_windows(window, stride):
    m = _model(window)
    img = torch.rand(3, 61, 83, generator=torch.Generator().manual_seed(1))
    b_crop, s_crop = score_windows(m, img, stride=stride, method="crops", batch_size=32)
    b_fcn, s_fcn = score_windows(m, img, stride=stride, method="fcn")
    assert torch.equal(b_crop, b_fcn)
    assert torch.allclose(s_crop, s_fcn, atol=1e-5)


def test_score_map_cell_is_the_window_at_stride_times_index():
    m = _model(24)
    assert m.stride == 4
    img = torch.rand(3, 40, 52, generator=torch.Generator().manual_seed(2))
    smap = score_map(m, img)                                            # [ny, nx]
    assert smap.shape == (5, 8)
    i, j = 3, 5
    crop = img[:, 4 * i:4 * i + 24, 4 * j:4 * j + 24]
    assert torch.allclose(torch.sigmoid(m.classify(crop[None]))[0], smap[i, j], atol=1e-5)
    boxes = sliding_windows(40, 52, window=24, stride=4)
    assert torch.equal(crop_windows(img, boxes[i * 8 + j:i * 8 + j + 1])[0], crop)
    assert torch.allclose(score_crops(m, img, boxes), smap.reshape(-1), atol=1e-5)


def test_sliding_window_detect_boxes_in_original_pixels_and_methods_agree():
    m = _model(24)
    img = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(3))
    out = {meth: sliding_window_detect(m, img, scale_step=2.0, stride=4, score_thresh=0.0, nms_iou=1.0,
                                method=meth, max_dets=None) for meth in ("fcn", "crops")}
    (bf, sf), (bc, sc) = out["fcn"], out["crops"]
    assert torch.allclose(sf, sc, atol=1e-5) and torch.allclose(bf, bc)
    sides = (bf[:, 2] - bf[:, 0]).unique().tolist()
    assert sides == pytest.approx([24.0, 48.0])   # levels of scale 1 and 1/2
    assert float(bf[:, 2].max()) <= 80 + 1e-4 and float(bf[:, 3].max()) <= 64 + 1e-4


def test_bad_input_errors():
    m = _model(24)
    with pytest.raises(InputError, match="smaller than"):
        score_map(m, torch.rand(3, 20, 40))
    with pytest.raises(InputError, match="'fcn' or 'crops'"):
        score_windows(m, torch.rand(3, 30, 30), stride=4, method="loop")
    with pytest.raises(InputError, match="window 12 px"):
        sliding_window_detect(m, torch.rand(3, 30, 30), scale_step=2, window=12)
    with pytest.raises(InputError, match="no patch classifier"):
        build_patch_classifier(20)


def test_widget_callback_without_a_browser():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from sodlab.widgets.sliding import make_state, window_view

    m = _model(24)
    img = torch.rand(3, 60, 72, generator=torch.Generator().manual_seed(4))
    state = make_state(m, img, scale_step=2 ** 0.5)
    assert len(state.levels) == 3
    fig, score = window_view(state, 1, 9, 5)  # snaps to the corner (8, 4)
    assert isinstance(fig, Figure) and 0.0 <= score <= 1.0
    crop = state.levels[1].image[:, 4:28, 8:32]
    with torch.no_grad():
        ref = float(torch.sigmoid(m.classify(crop[None]))[0])
    assert score == pytest.approx(ref, abs=1e-5)
    with pytest.raises(InputError, match="level must be"):
        window_view(state, 7, 0, 0)
    from sodlab.widgets.sliding import explorer

    box = explorer(state)  # builds the sliders and draws once, no browser needed
    box.children[0].children[0].value = 2
    assert box.children[0].children[1].max == 36 - 24


# ----------------------------------------------------------------- training on a tiny split
def _draw_split(root, *, n_images: int, seed: int):
    """Noise images with 'faces': light discs with two dark eyes and a mouth, 14-30 px."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    yy, xx = np.mgrid[0:72, 0:96]
    for i in range(n_images):
        img = rng.uniform(0.0, 1.0, (72, 96, 3)) * 0.6
        for _ in range(2):
            s = rng.uniform(14, 30)
            x, y = rng.uniform(0, 96 - s), rng.uniform(0, 72 - s)
            cx, cy, r = x + s / 2, y + s / 2, s / 2
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = 0.85
            for ex in (-0.35, 0.35):
                img[(xx - cx - ex * s) ** 2 + (yy - cy + 0.15 * s) ** 2 < (0.1 * s) ** 2] = 0.05
            img[(abs(xx - cx) < 0.25 * s) & (abs(yy - cy - 0.25 * s) < 0.05 * s + 0.5)] = 0.1
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0})
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 96, "height": 72})
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}))
    return root


@pytest.mark.slow
def test_short_training_beats_chance_on_held_out_crops(tmp_path):
    from sodlab.engine.patches import crop_metrics, load_split_images, mine_crops, train_classifier

    train = _draw_split(tmp_path / "train", n_images=12, seed=0)
    val = _draw_split(tmp_path / "val", n_images=6, seed=1)
    model, info = train_classifier(train, steps=60, mining_steps=30, batch_size=32,
                                   hard_per_image=5, seed=0)
    assert info["n_pos"] > 0 and info["n_neg"] > 0 and len(info["hard"]) == 1
    assert np.mean(info["losses"][-10:]) < np.mean(info["losses"][:10])
    crops, labels = mine_crops(load_split_images(val), seed=5)
    m = crop_metrics(model, crops, labels)
    assert m["balanced_accuracy"] > 0.75 and m["auc"] > 0.8, m

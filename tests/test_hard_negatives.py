"""Hard negatives: redrawn regions against a second drawing, FP counts by hand and by a loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sodlab.data.coco import to_coco_results
from sodlab.errors import InputError
from sodlab.metrics.hard_negatives import (
    hard_negative_fp,
    hard_negative_regions,
    mean_interval,
    redraw_hard_negatives,
)

# ------------------------------------------------------------------------ redrawing


def _strip(anns: list[dict]) -> list[dict]:
    return [{k: v for k, v in a.items() if k not in ("id", "image_id", "category_id")}
            for a in anns]


def test_the_redraw_is_the_datasets_image(quick_dataset):
    from sodlab.data import render

    val = json.loads((quick_dataset / "val" / "annotations.json").read_text())
    paste, degrade = render.paste_crop, render.degrade
    for im in val["images"][:3]:
        got = redraw_hard_negatives(0, "val", int(im["file_name"][:5]))
        mine = [a for a in val["annotations"] if a["image_id"] == im["id"]]
        assert _strip(mine) == got["annotations"]  # recording changes nothing that is drawn
        assert got["size"] == (im["height"], im["width"])
        assert 1 <= len(got["negatives"]) <= 4  # synth pastes 1-4 per image
    assert render.paste_crop is paste and render.degrade is degrade  # restored


def _undegraded(monkeypatch, index: int, *, with_negatives: bool) -> np.ndarray:
    """Image ``index`` of val, not degraded, drawn with or without its non-face crops."""
    from sodlab.data import render, synth

    nonfaces = synth._material()["nonfaces"]
    paste = render.paste_crop

    def maybe_paste(img, crop, *args, **kw):
        if not with_negatives and np.shares_memory(crop, nonfaces):
            return np.zeros(img.shape[:2], dtype=bool)  # paste_crop draws nothing random
        return paste(img, crop, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(render, "paste_crop", maybe_paste)
        m.setattr(render, "degrade", lambda img, rng: img)
        img, _ = synth.make_image(0, "val", index)
    return img  # [H, W, 3]


def test_visible_pixels_agree_with_a_drawing_without_the_crops(monkeypatch):
    # oracle: the pixels where the image with its non-face crops differs from the same image
    # drawn without them are exactly the crops' visible pixels (up to a colour that happens
    # to equal what lies underneath)
    for index in (0, 1, 5):
        diff = (_undegraded(monkeypatch, index, with_negatives=True)
                != _undegraded(monkeypatch, index, with_negatives=False)).any(-1)  # [H, W]
        negs = redraw_hard_negatives(0, "val", index)["negatives"]
        total = sum(n["pixels"] for n in negs)
        assert total > 0
        assert abs(total - int(diff.sum())) <= max(3, 0.02 * total), index
        covered = np.zeros_like(diff)
        for n in negs:
            if n["box"] is not None:
                x1, y1, x2, y2 = (int(v) for v in n["box"])
                covered[y1:y2, x1:x2] = True
        assert not (diff & ~covered).any(), index  # every differing pixel is in a box
        assert all(0.0 <= n["visible"] <= 1.0 for n in negs)


def test_regions_of_the_embedded_split(quick_dataset, tmp_path):
    # the first eight images of val (their entries and info are all the redraw needs)
    val = json.loads((quick_dataset / "val" / "annotations.json").read_text())
    val["images"] = val["images"][:8]
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] <= 8]
    (tmp_path / "annotations.json").write_text(json.dumps(val))
    regions = hard_negative_regions(tmp_path)
    assert set(regions) == {im["id"] for im in val["images"]}
    sizes = {im["id"]: (im["width"], im["height"]) for im in val["images"]}
    n = 0
    for iid, r in regions.items():
        assert r.shape[1:] == (4,) and r.dtype == torch.float32 and len(r) <= 4
        w, h = sizes[iid]
        assert (r[:, 0] >= 0).all() and (r[:, 1] >= 0).all()
        assert (r[:, 2] <= w).all() and (r[:, 3] <= h).all()
        assert (r[:, 2] > r[:, 0]).all() and (r[:, 3] > r[:, 1]).all()
        n += len(r)
    assert n >= len(regions)  # about two visible per image
    # a stricter visibility keeps a subset
    strict = hard_negative_regions(tmp_path, min_visible=0.95)
    assert sum(len(r) for r in strict.values()) < n


def _split(tmp_path, images, info=None):
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "face"}]}
    if info is not None:
        coco["info"] = info
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def test_regions_listed_in_the_image_entries(tmp_path):
    split = _split(tmp_path / "s", [
        {"id": 3, "file_name": "a.png", "width": 50, "height": 40,
         "hard_negatives": [[1, 2, 10, 20], [30, 5, 4, 4]]},
        {"id": 4, "file_name": "b.png", "width": 50, "height": 40, "hard_negatives": []}])
    r = hard_negative_regions(split)
    assert r[3].tolist() == [[1, 2, 11, 22], [30, 5, 34, 9]]
    assert r[4].shape == (0, 4)


def test_unknown_hard_negatives_are_an_input_error(tmp_path):
    plain = _split(tmp_path / "plain", [{"id": 1, "file_name": "00000.png"}])
    with pytest.raises(InputError, match="annotations.json.*hard negatives are unknown"):
        hard_negative_regions(plain)
    old = _split(tmp_path / "old", [{"id": 1, "file_name": "00000.png"}],
                 info={"generator_version": 1, "seed": 0, "split": "val"})
    with pytest.raises(InputError, match="generator version 1"):
        hard_negative_regions(old)
    from sodlab.data.synth import GENERATOR_VERSION

    info = {"generator_version": GENERATOR_VERSION, "seed": 0, "split": "val"}
    renamed = _split(tmp_path / "renamed", [{"id": 1, "file_name": "photo.png"}], info=info)
    with pytest.raises(InputError, match="photo.png"):
        hard_negative_regions(renamed)
    resized = _split(tmp_path / "resized", [{"id": 1, "file_name": "00000.png", "width": 10,
                                             "height": 10}], info=info)
    with pytest.raises(InputError, match="redraws as"):
        hard_negative_regions(resized)


# ------------------------------------------------------------------------ counting


def _dets(per_image: dict[int, list[tuple[list[float], float]]]) -> list[dict]:
    ids = list(per_image)
    outs = [{"boxes": torch.tensor([b for b, _ in per_image[i]]).reshape(-1, 4),
             "scores": torch.tensor([s for _, s in per_image[i]]),
             "labels": torch.zeros(len(per_image[i]), dtype=torch.long)} for i in ids]
    return to_coco_results(ids, outs, cat_ids=[1])


def _gt(faces: dict[int, list[list[float]]], n_images: int) -> dict:
    anns = [{"id": k + 1, "image_id": iid, "category_id": 1,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0}
            for k, (iid, b) in enumerate((i, b) for i, bs in faces.items() for b in bs)]
    return {"images": [{"id": i + 1, "width": 200, "height": 200} for i in range(n_images)],
            "annotations": anns, "categories": [{"id": 1, "name": "face"}]}


def test_counts_by_hand():
    gt = _gt({1: [[10, 10, 30, 30]], 4: [[5, 0, 15, 10]]}, 4)
    regions = {1: torch.tensor([[50.0, 50, 60, 60], [80, 80, 90, 90]]),
               4: torch.tensor([[0.0, 0, 10, 10]])}
    dets = _dets({
        1: [([50, 50, 60, 60], 0.9),      # on region 0
            ([51, 50, 61, 60], 0.8),      # on region 0 again: a second false positive
            ([10, 10, 30, 30], 0.9),      # the face: not counted
            ([100, 100, 120, 120], 0.9),  # on nothing: "other"
            ([80, 80, 90, 90], 0.3)],     # on region 1 but below the score
        2: [([0, 0, 20, 20], 0.7)],       # no faces, no regions: "other"
        # image 3 has no detections at all
        4: [([3, 0, 13, 10], 0.9)],       # IoU 0.54 with the region, 0.67 with the face
    })
    out = hard_negative_fp(gt, dets, regions, score_thresh=0.5, iou_thresh=0.3)
    assert out["per_image"] == [2, 0, 0, 0]
    assert out["per_image_other"] == [1, 1, 0, 0]
    assert out["fp_per_image"] == 0.5 and out["other_fp_per_image"] == 0.5
    assert out["n_regions"] == 3 and out["hit_rate"] == pytest.approx(1 / 3)
    assert out["n_images"] == 4
    # a lower score takes the detection on region 1 too
    low = hard_negative_fp(gt, dets, regions, score_thresh=0.2)
    assert low["per_image"] == [3, 0, 0, 0] and low["hit_rate"] == pytest.approx(2 / 3)
    # no regions: no hit rate, every non-face detection is "other"
    none = hard_negative_fp(gt, dets, {})
    assert none["fp_per_image"] == 0 and np.isnan(none["hit_rate"])
    assert none["per_image_other"] == [3, 1, 0, 0]  # the two on region 0 and the one on nothing


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _loop_reference(faces, regions, dets, thr, iou_thr):
    fp, other, hit, n_reg = [], [], 0, 0
    for iid in sorted(faces):
        F, R = faces[iid], regions[iid]
        n_reg += len(R)
        k_fp = k_other = 0
        hits = set()
        for box, score in dets.get(iid, []):
            if score < thr:
                continue
            ir = [_iou(box, r) for r in R]
            bf = max([_iou(box, f) for f in F], default=0.0)
            br = max(ir, default=0.0)
            if br >= iou_thr and br > bf:
                k_fp += 1
                hits.add(ir.index(br))
            elif br < iou_thr and bf < iou_thr:
                k_other += 1
        fp.append(k_fp)
        other.append(k_other)
        hit += len(hits)
    return fp, other, hit / n_reg


def test_counts_against_a_loop_reference():
    g = torch.Generator().manual_seed(3)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 80
        wh = 4 + torch.rand(n, 2, generator=g) * 20
        return torch.cat([xy, xy + wh], 1).round(decimals=2).tolist()

    faces = {i + 1: boxes(int(torch.randint(0, 4, (1,), generator=g))) for i in range(12)}
    regions = {i: boxes(int(torch.randint(1, 4, (1,), generator=g))) for i in faces}
    dets = {}
    for i in faces:  # detections near faces and regions, jittered, and some anywhere
        near = [[v + float(torch.randn((), generator=g)) * 2 for v in b]
                for b in faces[i] + regions[i]]
        near = [[b[0], b[1], max(b[2], b[0] + 1), max(b[3], b[1] + 1)] for b in near]
        every = near + boxes(3)
        dets[i] = [(b, round(float(torch.rand((), generator=g)), 3)) for b in every]
    gt = _gt(faces, 12)
    out = hard_negative_fp(gt, _dets(dets), {i: torch.tensor(r) for i, r in regions.items()},
                           score_thresh=0.4, iou_thresh=0.3)
    fp, other, hit = _loop_reference(faces, regions, dets, 0.4, 0.3)
    assert out["per_image"] == fp and out["per_image_other"] == other
    assert out["hit_rate"] == pytest.approx(hit)
    assert sum(fp) > 0 and sum(other) > 0  # the case exercises both counts


# ------------------------------------------------------------------------ intervals


def test_mean_interval():
    assert mean_interval([2.0] * 10) == (2.0, 2.0)
    x = np.random.default_rng(0).integers(0, 2, size=400)  # coin flips
    lo, hi = mean_interval(x, n=400, seed=1)
    assert lo < x.mean() < hi
    assert 0.07 < hi - lo < 0.13  # about 2 x 1.96 x sqrt(0.25 / 400) = 0.098
    assert mean_interval(x, n=400, seed=1) == (lo, hi)  # the seed decides
    with pytest.raises(InputError):
        mean_interval([])

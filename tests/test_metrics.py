"""Size-wise evaluation against pycocotools, TIDE errors on hand-built cases, bootstrap, CLI."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from sodlab.cli import main
from sodlab.errors import InputError
from sodlab.metrics import bootstrap_ci, error_breakdown, evaluate
from sodlab.metrics.bootstrap import resample
from sodlab.metrics.coco import load_dets, load_gt

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CATS = (2, 5, 11)  # non-contiguous on purpose


def _random_case(seed: int, n_images: int = 12):
    """Objects of every size incl. areas exactly 16², 32², 96²; crowd boxes; jittered dets."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img in range(1, n_images + 1):
        images.append({"id": img, "width": 400, "height": 300})
        k = int(rng.integers(0, 12))
        sides = list(np.exp(rng.uniform(np.log(4), np.log(150), size=k)))
        if img % 3 == 0:
            sides += [16.0, 32.0, 96.0]  # square boxes exactly on the bucket boundaries
        for s in sides:
            ar = float(np.exp(rng.uniform(-0.4, 0.4))) if s not in (16.0, 32.0, 96.0) else 1.0
            w, h = s * ar, s / ar
            x, y = float(rng.uniform(0, 400 - min(w, 399))), float(rng.uniform(0, 300 - min(h, 299)))
            c = int(rng.choice(CATS))
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": c,
                         "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(rng.random() < 0.08)})
            for _ in range(int(rng.integers(0, 3))):  # 0-2 detections per object
                j = rng.normal(0, 0.08, size=4) * [w, h, w, h]
                dc = c if rng.random() < 0.85 else int(rng.choice(CATS))
                dets.append({"image_id": img, "category_id": dc,
                             "bbox": [x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)],
                             "score": float(rng.random())})
            if s in (16.0, 32.0, 96.0) and rng.random() < 0.5:  # an exact hit on a boundary box
                dets.append({"image_id": img, "category_id": c, "bbox": [x, y, w, h],
                             "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 5))):  # background detections
            s = float(np.exp(rng.uniform(np.log(4), np.log(120))))
            dets.append({"image_id": img, "category_id": int(rng.choice(CATS)),
                         "bbox": [float(rng.uniform(0, 300)), float(rng.uniform(0, 200)), s, s],
                         "score": float(rng.random())})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in CATS]}
    return gt, dets


def _pycoco(gt, dets, area_rng=None, labels=None):
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(copy.deepcopy(dets)), "bbox")
        if area_rng is not None:
            ev.params.areaRng, ev.params.areaRngLbl = area_rng, labels
        ev.evaluate()
        ev.accumulate()
    return ev


def _s(ev, ap, iouThr=None, areaRng="all"):
    """pycocotools' summarize() reading of its arrays (a nested function there), at 100 dets."""
    p = ev.params
    a, m = p.areaRngLbl.index(areaRng), p.maxDets.index(100)
    s = ev.eval["precision"][..., a, m] if ap else ev.eval["recall"][..., a, m]
    if iouThr is not None:
        s = s[np.where(iouThr == p.iouThrs)[0]]
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_equals_pycocotools(seed, capsys):
    gt, dets = _random_case(seed)
    ours = evaluate(gt, dets)
    assert capsys.readouterr().out == ""  # the library prints nothing
    ev = _pycoco(gt, dets)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    st = ev.stats
    ref = {"AP": st[0], "AP50": st[1], "AP75": st[2], "AP_small": st[3], "AP_medium": st[4],
           "AP_large": st[5], "AR": st[8], "AR_small": st[9], "AR_medium": st[10],
           "AR_large": st[11]}
    for b in ("small", "medium", "large"):
        ref[f"R50_{b}"] = _s(ev, 0, iouThr=0.5, areaRng=b)
    tiny = _pycoco(gt, dets, [[0, 1e10], [0, 16.0**2]], ["all", "tiny"])
    ref["AP_tiny"] = _s(tiny, 1, areaRng="tiny")
    ref["AR_tiny"] = _s(tiny, 0, areaRng="tiny")
    ref["R50_tiny"] = _s(tiny, 0, iouThr=0.5, areaRng="tiny")
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k
        assert ours[k] == -1 or 0 <= ours[k] <= 1
    areas = [a["area"] for a in gt["annotations"] if not a["iscrowd"]]
    assert ours["n_gt_small"] == sum(a <= 32**2 for a in areas)
    assert ours["n_gt_medium"] == sum(32**2 <= a <= 96**2 for a in areas)
    assert ours["n_gt_tiny"] == sum(a <= 16**2 for a in areas)


def test_boundary_areas_count_in_both_buckets():
    gt = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": [{"id": 1}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32],
                           "area": 1024.0, "iscrowd": 0}]}
    m = evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "score": 1}])
    assert m["n_gt_small"] == m["n_gt_medium"] == 1 and m["n_gt_tiny"] == 0
    assert m["AP_small"] == m["AP_medium"] == 1.0
    assert m["AP_tiny"] == m["AP_large"] == -1 and m["R50_large"] == -1 and m["AR_tiny"] == -1


def test_empty_detections_give_zeros():
    gt, _ = _random_case(0)
    m = evaluate(gt, [])
    for k in ("AP", "AP50", "AP_small", "AR_small", "R50_small", "AP_large"):
        assert m[k] == 0.0, k


def test_bad_inputs_raise_input_error(tmp_path):
    gt, dets = _random_case(0)
    with pytest.raises(InputError, match="image 999, which is not in the ground truth"):
        evaluate(gt, dets + [{"image_id": 999, "category_id": 2, "bbox": [0, 0, 1, 1],
                              "score": 1.0}])
    with pytest.raises(InputError, match="needs image_id"):
        evaluate(gt, [{"image_id": 1}])
    with pytest.raises(InputError):
        evaluate(tmp_path / "missing.json", [])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):  # ground truth reads through load_coco
        evaluate(tmp_path / "bad.json", [])


def _hand_case():
    """One of each TIDE error type (see the comments), categories 1 and 2."""
    def a(i, img, box, cat=1, crowd=0):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": box,
                "area": float(box[2] * box[3]), "iscrowd": crowd}

    anns = [a(1, 1, [0, 0, 20, 20]),  # small: a TP and a duplicate
            a(2, 2, [100, 100, 40, 40]),  # medium: classification error
            a(3, 3, [0, 0, 40, 40]),  # medium: localisation error
            a(4, 4, [0, 0, 100, 100]),  # large: "both" error, and missed
            a(5, 5, [0, 0, 10, 10]),  # tiny: missed (no detection)
            a(6, 6, [0, 0, 10, 10]),  # tiny: missed; a background det elsewhere
            a(7, 8, [0, 0, 100, 100], crowd=1)]  # crowd region: its det is ignored
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8},
            {"image_id": 2, "category_id": 2, "bbox": [100, 100, 40, 40], "score": 0.7},
            {"image_id": 3, "category_id": 1, "bbox": [0, 0, 40, 13], "score": 0.6},
            {"image_id": 4, "category_id": 2, "bbox": [0, 0, 100, 30], "score": 0.5},
            {"image_id": 6, "category_id": 1, "bbox": [200, 200, 5, 5], "score": 0.4},
            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 60, 60], "score": 0.3},
            {"image_id": 8, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.2}]
    gt = {"images": [{"id": i, "width": 300, "height": 300} for i in range(1, 9)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": anns}
    return gt, dets


def test_error_breakdown_hand_cases():
    gt, dets = _hand_case()
    e = error_breakdown(gt, dets)
    c = e["counts"]
    assert c["all"] == {"classification": 1, "localisation": 1, "both": 1, "duplicate": 1,
                        "background": 2, "missed": 3, "tp": 1, "n_gt": 6}
    assert c["small"]["duplicate"] == 1 and c["medium"]["duplicate"] == 0
    assert c["medium"]["classification"] == 1 and c["medium"]["localisation"] == 1
    assert c["large"]["both"] == 1 and c["large"]["missed"] == 1
    assert c["tiny"]["missed"] == 2 and c["small"]["missed"] == 2
    # background: the 5x5 det (tiny, small) and the 60x60 det on an image without objects
    assert c["tiny"]["background"] == 1 and c["medium"]["background"] == 1
    d = e["dAP"]["all"]
    assert set(d) == {"classification", "localisation", "both", "duplicate", "background",
                      "missed"}
    assert d["classification"] > 0 and d["localisation"] > 0 and d["missed"] > 0
    assert all(v >= 0 for v in d.values())
    # small: the duplicate scores below the only true positive, so removing it gains nothing;
    # finding the two missed tiny objects does
    assert e["dAP"]["small"]["duplicate"] == 0 and e["dAP"]["small"]["missed"] > 0
    assert e["dAP"]["medium"]["classification"] > 0 and e["dAP"]["tiny"]["classification"] == 0
    # medium: one object fixed by classification, one by localisation, no true positive
    # fixed: FP (0.7), TP (0.6), FP (0.3) over 2 objects -> precision 0.5 up to recall 0.5
    assert e["AP"]["medium"] == 0
    assert e["dAP"]["medium"]["localisation"] == pytest.approx(0.5 * 51 / 101)
    assert e["AP"]["small"] > 0


def test_error_breakdown_ap_is_coco_ap50():
    gt, dets = _random_case(3, n_images=20)
    e = error_breakdown(gt, dets)
    assert e["AP"]["all"] == pytest.approx(evaluate(gt, dets)["AP50"], abs=1e-6)
    assert e["counts"]["all"]["tp"] + e["counts"]["all"]["missed"] <= e["counts"]["all"]["n_gt"]


def test_bootstrap_is_seeded_and_covers_the_estimate():
    gt, dets = _random_case(4, n_images=40)
    a = bootstrap_ci(gt, dets, keys=("AP", "AP_small", "R50_small"), n=40, seed=1)
    b = bootstrap_ci(gt, dets, keys=("AP", "AP_small", "R50_small"), n=40, seed=1)
    assert a == b
    m = evaluate(gt, dets)
    for k, (lo, hi) in a.items():
        assert lo <= m[k] <= hi, k
    with pytest.raises(InputError):
        bootstrap_ci(gt, dets, keys=("nope",), n=1)


def test_resample_duplicates_images_under_new_ids():
    gt, dets = _hand_case()
    g = load_gt(gt)
    d = load_dets(dets, g)
    rg, rd = resample(g, d, np.array([0, 0, 1]))
    assert [im["id"] for im in rg["images"]] == [1, 2, 3]
    assert [a["image_id"] for a in rg["annotations"]] == [1, 2, 3]
    assert [x["image_id"] for x in rd] == [1, 1, 2, 2, 3]
    assert len({a["id"] for a in rg["annotations"]}) == 3


def test_cli_eval(tmp_path, capsys):
    gt, dets = _random_case(0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "m.json"
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "dets.json"),
                 "--out", str(out), "--errors"]) == 0
    text = capsys.readouterr().out
    assert "tiny" in text and "medium" in text and "dAP" in text
    res = json.loads(out.read_text())
    assert res["metrics"]["AP"] == pytest.approx(evaluate(gt, dets)["AP"])
    assert "provenance" in res and "errors" in res
    assert main(["eval", "--gt", str(tmp_path / "no.json"), "--dets", str(out)]) == 2
    (tmp_path / "bad.json").write_text("[{")
    assert main(["eval", "--gt", str(tmp_path / "gt.json"), "--dets",
                 str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_cli_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--errors" in capsys.readouterr().out


def test_segm_equals_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    anns, dets = [], []
    for img in (1, 2):
        for _ in range(6):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(5, 80, 2)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": 1,
                         "bbox": [x, y, w, h], "area": w * h * 0.9, "iscrowd": 0,
                         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            j = rng.normal(0, 3, 4)
            poly = [x + j[0], y + j[1], x + w, y + j[1], x + w, y + h + j[3], x + j[0], y + h]
            rle = mask_utils.frPyObjects([poly], 200, 200)[0]
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": img, "category_id": 1, "segmentation": rle,
                         "score": float(rng.random())})
    gt = {"images": [{"id": i, "width": 200, "height": 200} for i in (1, 2)],
          "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    ours = evaluate(gt, copy.deepcopy(dets), iou_type="segm")
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(copy.deepcopy(dets)), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for k, i in (("AP", 0), ("AP50", 1), ("AP_small", 3), ("AP_medium", 4), ("AR", 8)):
        assert ours[k] == pytest.approx(ev.stats[i], abs=1e-6), k


def test_no_objects_at_all():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    m = evaluate(gt, dets)
    assert m["AP"] == -1 and m["AP_small"] == -1 and m["n_gt_all"] == 0
    e = error_breakdown(gt, dets)
    assert e["counts"]["all"]["background"] == 1 and e["AP"]["all"] == -1
    assert evaluate(gt, [])["AR"] == -1

"""Bucket sets (coco, aitod, tinyperson, soda) and max_dets in evaluation vs pycocotools; CLI."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from sodlab.cli import main
from sodlab.cli.eval import _BUCKET_SETS
from sodlab.errors import InputError
from sodlab.metrics import BUCKET_SETS, evaluate
from sodlab.metrics.buckets import bucket_set
from sodlab.metrics.coco import RANGE_LABELS, evaluate_clean, load_dets, load_gt, max_dets_list

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CATS = (3, 7)
# Boxes exactly on the sets' boundaries: (w, h) with w * h = 1, 2², 8², 12², ..., 2000.
EDGES = ((1, 1), (2, 2), (8, 8), (12, 12), (16, 16), (20, 20), (32, 32), (64, 64), (96, 96),
         (40, 50))


def _objects(rng, img: int, n: int) -> list[dict]:
    """``n`` objects of sqrt(area) 2-120 px (log-uniform), plus the boundary boxes on image 4."""
    sizes = [(s * r, s / r) for s, r in zip(np.exp(rng.uniform(np.log(2), np.log(120), n)),
                                            np.exp(rng.uniform(-0.3, 0.3, n)))]
    if img == 4:
        sizes += EDGES
    out = []
    for w, h in sizes:
        w, h = float(w), float(h)
        cat = CATS[0] if img <= 3 else int(rng.choice(CATS))  # > 100 dets of one category
        out.append({"image_id": img, "category_id": cat,
                    "bbox": [float(rng.uniform(0, 600 - w)), float(rng.uniform(0, 600 - h)), w, h],
                    "area": w * h, "iscrowd": 0})
    return out


def _case(seed: int = 0):
    """A COCO dict and detections: images 1-3 with > 100 detections of one category, a crowd region,
    jittered, duplicate and background detections, all scores distinct."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 600, "height": 600} for i in range(1, 13)]
    anns = []
    for img in range(1, 13):
        anns += _objects(rng, img, 50 if img <= 3 else int(rng.integers(0, 12)))
    anns.append({"image_id": 5, "category_id": CATS[0], "bbox": [300.0, 300.0, 200.0, 150.0],
                 "area": 30000.0, "iscrowd": 1})
    dets = []
    for a in anns:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, 4)) if a["image_id"] > 3 else 3):
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            cat = a["category_id"] if rng.random() < 0.9 else int(rng.choice(CATS))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [x + j[0], y + j[1], max(w + j[2], 0.5), max(h + j[3], 0.5)]})
    for img in range(1, 13):  # background
        for _ in range(int(rng.integers(0, 8))):
            s = float(np.exp(rng.uniform(np.log(2), np.log(100))))
            dets.append({"image_id": img, "category_id": int(rng.choice(CATS)),
                         "bbox": [float(rng.uniform(0, 500)), float(rng.uniform(0, 500)), s, s]})
    scores = (rng.permutation(len(dets)) + 1) / (len(dets) + 1)
    for d, s in zip(dets, scores):
        d["score"] = float(s)
    for i, a in enumerate(anns):
        a["id"] = i + 1
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in CATS]}
    return gt, dets


def _pycocotools(gt, dets, bset, max_dets: int):
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.areaRng = [list(r) for r in bset.area_rng]
        ev.params.areaRngLbl = list(bset.labels)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev


def _mean(s: np.ndarray) -> float:
    return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0


def _reference(ev, max_dets: int) -> dict:
    """pycocotools' arrays read as ``summarize`` in coco.py does (and its own summarize())."""
    p = ev.params
    m = p.maxDets.index(max_dets)
    t50, t75 = (int(np.where(np.isclose(p.iouThrs, t))[0][0]) for t in (0.5, 0.75))
    prec, rec = ev.eval["precision"], ev.eval["recall"]
    out = {"AP": _mean(prec[..., 0, m]), "AP50": _mean(prec[t50, ..., 0, m]),
           "AP75": _mean(prec[t75, ..., 0, m]), "AR": _mean(rec[..., 0, m]),
           "R50": _mean(rec[t50, ..., 0, m])}
    for a, b in enumerate(p.areaRngLbl[1:], start=1):
        out[f"AP_{b}"] = _mean(prec[..., a, m])
        out[f"AR_{b}"] = _mean(rec[..., a, m])
        out[f"R50_{b}"] = _mean(rec[t50, ..., a, m])
    return out


@pytest.mark.parametrize("max_dets", [100, 1500])
@pytest.mark.parametrize("name", list(BUCKET_SETS))
def test_bucket_set_equals_pycocotools(name, max_dets, capsys, caplog):
    gt, dets = _case()
    bset = bucket_set(name)
    ours = evaluate(gt, dets, buckets=name, max_dets=max_dets)
    assert capsys.readouterr().out == "" and not caplog.records  # quiet, no range warning
    ref = _reference(_pycocotools(gt, dets, bset, max_dets), max_dets)
    keys = {"AP", "AP50", "AP75", "AR", "R50", "n_gt_all", "n_dets"}
    for b in bset.buckets:
        keys |= {f"AP_{b}", f"AR_{b}", f"R50_{b}", f"n_gt_{b}"}
    assert set(ours) == keys
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-9, rel=0), k
    areas = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]])
    for b, lo, hi in bset.ranges:
        assert ours[f"n_gt_{b}"] == int(((areas >= lo) & (areas <= hi)).sum()), b
    assert sum(ours[f"AP_{b}"] > 0 for b in bset.buckets) >= len(bset.buckets) - 1


def test_max_dets_changes_the_numbers_and_default_is_coco_100():
    gt, dets = _case()
    assert min(sum(d["image_id"] == i and d["category_id"] == CATS[0] for d in dets)
               for i in (1, 2, 3)) > 100
    a = evaluate(gt, dets, buckets="aitod", max_dets=100)
    b = evaluate(gt, dets, buckets="aitod", max_dets=1500)
    assert b["AR"] > a["AR"] and a["n_gt_all"] == b["n_gt_all"]
    default = evaluate(gt, dets)
    assert default == evaluate(gt, dets, buckets="coco", max_dets=100)
    assert list(default) == list(evaluate(gt, dets, buckets="coco", max_dets=100))
    g = load_gt(gt)
    assert evaluate_clean(g, load_dets(dets, g)) == default


def test_bucket_sets_data():
    assert BUCKET_SETS["coco"].labels == RANGE_LABELS
    assert _BUCKET_SETS == tuple(BUCKET_SETS)  # the CLI's copy of the names
    assert BUCKET_SETS["aitod"].buckets == ("verytiny", "tiny", "small", "medium")
    assert BUCKET_SETS["tinyperson"].buckets == ("tiny1", "tiny2", "tiny3", "tiny", "small",
                                                 "reasonable")
    assert BUCKET_SETS["soda"].buckets == ("eS", "rS", "gS", "normal", "small")
    for s in BUCKET_SETS.values():
        assert s.labels[0] == "all" and len(set(s.labels)) == len(s.labels)
        assert all(lo < hi for _, lo, hi in s.ranges)


def test_boundaries_are_inclusive_at_both_ends():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8]},
                          {"image_id": 1, "category_id": 1, "bbox": [20, 0, 12, 12]}]}
    m = evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "score": 0.9}],
                 buckets="aitod")
    assert m["n_gt_verytiny"] == 1 and m["n_gt_tiny"] == 2 and m["AP_verytiny"] == 1.0
    t = evaluate(gt, [], buckets="tinyperson")
    assert t["n_gt_tiny1"] == 1 and t["n_gt_tiny2"] == 2 and t["n_gt_tiny3"] == 1


def test_empty_case_has_the_sets_keys():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []}
    m = evaluate(gt, [], buckets="soda", max_dets=5)
    assert m["AP_eS"] == -1 and m["AR_normal"] == -1 and m["n_gt_small"] == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"buckets": "visdrone"}, "coco, aitod, tinyperson, soda"),
    ({"buckets": None}, "unknown bucket set"),
    ({"max_dets": 0}, "max_dets must be >= 1"),
    ({"max_dets": 2.5}, "whole number"),
    ({"max_dets": True}, "whole number"),
])
def test_bad_arguments_raise_input_error(kwargs, match):
    gt, dets = _case()
    with pytest.raises(InputError, match=match):
        evaluate(gt, dets, **kwargs)
    g = load_gt(gt)
    with pytest.raises(InputError, match=match):
        evaluate_clean(g, load_dets(dets, g), **kwargs)


def test_max_dets_list():
    assert max_dets_list(100) == [1, 10, 100]
    assert max_dets_list(1500) == [1, 10, 1500]
    assert max_dets_list(10) == [1, 10] and max_dets_list(1) == [1]
    assert max_dets_list(np.int64(5)) == [1, 5]


def test_cli_eval_aitod(tmp_path, capsys):
    gt, dets = _case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "m.json"
    base = ["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "dets.json")]
    assert main([*base, "--buckets", "aitod", "--max-dets", "1500", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines() if line.strip()]
    for b in ("verytiny", "tiny", "small", "medium", "all"):
        assert b in rows, b
    assert "large" not in rows and "AI-TOD" in text and "1500" in text
    res = json.loads(out.read_text())
    assert res["buckets"] == "aitod" and res["max_dets"] == 1500
    assert res["metrics"] == pytest.approx(evaluate(gt, dets, buckets="aitod", max_dets=1500))
    assert main(base) == 0  # the default table: COCO's rows, no title line
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[0] == "bucket" and "large" in text


@pytest.mark.parametrize("extra, match", [
    (["--buckets", "nope"], "coco, aitod, tinyperson, soda"),
    (["--max-dets", "0"], "--max-dets must be >= 1"),
    (["--max-dets", "many"], "whole number"),
    (["--buckets", "soda", "--errors"], "--errors"),
    (["--protocol", "wider", "--buckets", "aitod"], "--protocol coco only"),
    (["--protocol", "wider", "--max-dets", "1500"], "--protocol coco only"),
])
def test_cli_bad_bucket_arguments_exit_2_with_one_line(tmp_path, capsys, extra, match):
    gt, dets = _case()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    argv = ["eval", "--gt", str(tmp_path / "gt.json"), "--dets", str(tmp_path / "dets.json"),
            "--gt-dir", str(tmp_path), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err


def test_cli_help_names_every_set(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--max-dets" in text
    for name in BUCKET_SETS:
        assert f"  {name} " in text, name

"""The technique suite: its statistics against library oracles and loops, the cache key, skips,
and one end-to-end run of `sodlab bench --only suite --data` on a tiny two-class COCO folder."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from sodlab.bench import suite
from sodlab.metrics.verdict import UNCLEAR, UP

CATS = [{"id": 3, "name": "three"}, {"id": 9, "name": "nine"}]


def tiny_gt(n_images: int = 12, seed: int = 0) -> dict:
    """Images with objects of every bucket (sides 8 to 120 px), two categories."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 320, "height": 240})
        for side in (8, 14, 24, 30, 60, 120):
            if rng.random() < 0.25:
                continue
            x, y = float(rng.integers(0, 320 - side)), float(rng.integers(0, 240 - side))
            anns.append({"id": len(anns) + 1, "image_id": 10 + i,
                         "category_id": CATS[int(rng.integers(0, 2))]["id"],
                         "bbox": [x, y, float(side), float(side)], "area": float(side * side),
                         "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": CATS}


def noisy_dets(gt: dict, *, keep: float, jitter: float, seed: int) -> list[dict]:
    """Detections: a share of the objects found (box jittered), plus false alarms."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() > keep:
            continue
        x, y, w, h = a["bbox"]
        d = rng.normal(0, jitter * w, size=2)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + d[0], y + d[1], w, h], "score": float(rng.uniform(0.3, 1))})
    for im in gt["images"]:
        dets.append({"image_id": im["id"], "category_id": CATS[0]["id"],
                     "bbox": [float(rng.integers(0, 280)), float(rng.integers(0, 200)), 20.0,
                              20.0], "score": float(rng.uniform(0, 0.6))})
    return dets


# ---------------------------------------------------------------- statistics
def _records(gt: dict, dets: list[dict], name: str, seed: int) -> dict:
    return suite.record_of_dets(gt, dets, name=name, seed=seed)


def test_records_of_detections_pair_on_the_same_resamples():
    from sodlab.engine.records import paired_samples
    from sodlab.metrics import evaluate

    gt = tiny_gt()
    a = _records(gt, noisy_dets(gt, keep=0.5, jitter=0.2, seed=1), "a", 0)
    b = _records(gt, noisy_dets(gt, keep=0.9, jitter=0.05, seed=2), "b", 0)
    assert a["val_hash"] == b["val_hash"] and a["resamples"] == b["resamples"]
    assert a["metrics"]["AP_small"] == pytest.approx(
        evaluate(gt, noisy_dets(gt, keep=0.5, jitter=0.2, seed=1))["AP_small"], abs=1e-4)
    d = paired_samples(a, b, "AP_small")
    assert d.shape == (500,) and np.nanmean(d) > 0


def test_pareto_frontier_against_a_sweep():
    rng = np.random.default_rng(0)
    for trial in range(20):
        pts = {f"t{i}": (float(rng.uniform(1, 100)), float(rng.uniform(0, 1)))
               for i in range(int(rng.integers(1, 12)))}
        # sweep by latency: a point is on the frontier when it beats every faster one
        best, want = -math.inf, []
        for name, (_x, y) in sorted(pts.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
            if y > best:
                want.append(name)
                best = y
        assert suite.pareto_frontier(pts) == want, trial
    assert suite.pareto_frontier({"a": (1.0, math.nan), "b": (2.0, 0.5)}) == ["b"]


def test_pr_curve_of_all_objects_averages_to_ap50():
    from sodlab.metrics import evaluate

    gt = tiny_gt()
    dets = noisy_dets(gt, keep=0.8, jitter=0.1, seed=3)
    from sodlab.metrics.coco import pr_curves

    curves = pr_curves(gt, dets)
    assert len(curves["recall"]) == 101
    assert set(curves["precision"]) == {"all", "tiny", "small", "medium", "large"}
    # COCO's AP50 is the mean over categories of precision at the 101 recall thresholds
    assert np.mean(curves["precision"]["all"]) == pytest.approx(evaluate(gt, dets)["AP50"],
                                                                abs=1e-6)
    for p in curves["precision"].values():
        assert all(-1 <= x <= 1 for x in p)


def _rec(value: float, shifts, key: str = "AP_small") -> dict:
    """A record whose resampled values are ``value + shifts`` (the validation noise)."""
    return {"key": f"k{value}", "val_hash": "v", "resamples": {"n": len(shifts), "seed": 0},
            "metrics": {key: value}, "samples": {key: list(value + np.asarray(shifts))}}


def test_compare_pairs_seeds_on_the_same_resamples():
    rng = np.random.default_rng(0)
    noise = [rng.normal(0, 0.01, 200) for _ in range(3)]  # one validation noise per seed
    a = {s: _rec(v, noise[s]) for s, v in enumerate((0.20, 0.22, 0.21))}
    b = {s: _rec(v, noise[s]) for s, v in enumerate((0.30, 0.31, 0.29))}
    c = suite.compare(a, b, "AP_small", a_name="a", b_name="b")
    assert c["verdict"] == UP and c["delta"] == pytest.approx(0.09)
    assert c["per_seed"] == pytest.approx({"0": 0.10, "1": 0.09, "2": 0.08})
    assert c["diff_ci"] == pytest.approx([0.09, 0.09])  # paired: the shared noise cancels
    mixed = {s: _rec(v, noise[s]) for s, v in enumerate((0.30, 0.21, 0.29))}
    assert suite.compare(a, mixed, "AP_small")["verdict"] == UNCLEAR


def test_outcome_of_a_paper_direction():
    assert suite.outcome(+1, "up") == "direction reproduced"
    assert suite.outcome(+1, "down") == "not reproduced"
    assert suite.outcome(-1, "down") == "direction reproduced"
    assert suite.outcome(+1, UNCLEAR) == "no clear difference"
    assert suite.outcome(0, "up") == "no direction to compare"


def test_paper_rows_name_our_techniques_and_keys():
    from sodlab.bench.papers import PAPER_CHANGES

    for c in PAPER_CHANGES:
        assert c.technique in suite.NAMES, c
        if c.ours:
            a, b, key = c.ours
            assert a in suite.NAMES and b in suite.NAMES and key in suite.KEYS, c
        assert c.direction in (-1, 0, 1) and c.paper_text()
    rng = np.random.default_rng(1)
    noise = [rng.normal(0, 0.01, 100) for _ in range(2)]
    recs = {"baseline": {s: _rec(0.1 + 0.01 * s, noise[s]) for s in (0, 1)},
            "fpn": {s: _rec(0.4 + 0.02 * s, noise[s]) for s in (0, 1)}}
    techs = {"baseline": {"status": "ok"}, "fpn": {"status": "ok"}}
    rows = suite.paper_rows(techs, recs)
    fpn_small = [r for r in rows if r["ours"] == ["baseline", "fpn", "AP_small"]][0]
    assert fpn_small["verdict"] == UP and fpn_small["outcome"] == "direction reproduced"
    assert fpn_small["ours_delta"] == pytest.approx(0.305)
    snip = [r for r in rows if r["technique"] == "SNIP"][0]
    assert snip["verdict"] is None and "not run" in snip["outcome"]


def _result(mode="full", value=0.30, ms=10.0, cpu="x"):
    t = {"status": "ok", "ci_seed": 0, "seeds": {"0": {k: value for k in suite.SHOWN}},
         "ci": {k: [0.25, 0.35] for k in suite.SHOWN}, "vga_ms_1t": ms, "vga_ms_2t": ms}
    return {"techniques": {"fpn": t}, "provenance": {"mode": mode, "cpu": cpu, "threads": 2},
            "data": {"hash": "h"}, "budget": {"max_steps": 4, "batch_size": 2,
                                              "overrides": {}, "stage_two": {}}}


def test_regression_marks_moved_numbers_only():
    ref = _result()
    same = suite.regression(_result(value=0.31, ms=11.0), ref)
    assert same["comparable"] and not same["moved"] and same["checked"] == 7
    assert set(same["marks"]["fpn"].values()) == {"held"}
    moved = suite.regression(_result(value=0.40, ms=20.0), ref)
    keys = {m["key"] for m in moved["moved"]}
    assert keys == {*suite.SHOWN, "vga_ms_1t", "vga_ms_2t"}
    assert moved["marks"]["fpn"]["AP_small"] == "moved"
    other_cpu = suite.regression(_result(ms=20.0, cpu="y"), ref)
    assert other_cpu["marks"]["fpn"]["vga_ms_1t"] == "new" and not other_cpu["speed_compared"]
    assert not suite.regression(_result(mode="quick"), ref)["comparable"]
    assert suite.regression(_result(), None)["why"] == "no reference result"


# ---------------------------------------------------------------- data and models
@pytest.fixture(scope="module")
def two_class_root(tmp_path_factory):
    """A tiny COCO folder with two classes, no masks, no head/body boxes."""
    from test_engine import make_split

    root = tmp_path_factory.mktemp("mydata")
    make_split(root / "train", n=6, seed=0)
    make_split(root / "val", n=3, seed=1)
    return root


def test_data_facts_and_skip_reasons(two_class_root):
    facts = suite.data_facts(two_class_root)
    assert facts["classes"] == 2 and not facts["masks"] and not facts["head_body_boxes"]
    assert facts["hard_negative_regions"] is None and "hard negatives" in \
        facts["hard_negatives_why"]
    cp = suite.BY_NAME["copy-paste"]
    assert "masks" in suite.skip_reason(cp, facts)
    assert suite.skip_reason(suite.BY_NAME["fpn"], facts) is None
    gan = suite.BY_NAME["Perceptual GAN"]
    assert "large objects" in suite.skip_reason(gan, facts, input_size=64, root=two_class_root)
    notes = " ".join(suite.data_notes(facts, suite.TECHNIQUES))
    assert "PyramidBox" in notes and "hard negatives" in notes
    with pytest.raises(Exception, match="unknown technique"):
        suite.select(["nope"])


class BoxModel(torch.nn.Module):
    """Stands in for a detector: one box at a fixed place of whatever input it gets."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):  # [B, 3, H, W] -> one box per image, in input pixels
        h, w = x.shape[-2:]
        box = torch.tensor([[w * 0.25, h * 0.25, w * 0.5, h * 0.5]])
        return [{"boxes": box.clone(), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in range(len(x))]


@pytest.mark.parametrize("test", ["single", "pyramid", "multiscale", "sliced"])
def test_every_test_path_maps_boxes_to_the_original_image(test):
    from sodlab.engine.experiment import predict_fn

    fn = predict_fn(test, BoxModel().eval(), 64)
    images = [torch.rand(3, 48, 80), torch.rand(3, 50, 40)]
    outs = fn(images)
    assert len(outs) == 2
    for img, out in zip(images, outs):
        b = out["boxes"]
        assert len(b) >= 1 and set(out) >= {"boxes", "scores", "labels"}
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= img.shape[2] + 1e-4).all()
        assert (b[:, 1] >= 0).all() and (b[:, 3] <= img.shape[1] + 1e-4).all()
    if test == "single":  # 80 px wide -> 64 (not padded across): x maps back by 80 / 64
        assert outs[0]["boxes"][0, 0::2].tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


TINY = {"max_steps": 2, "batch_size": 2, "overrides": {"input_size": 64}}


def test_is_cached_follows_the_run_cache(two_class_root, tmp_path, monkeypatch):
    from sodlab.engine import cached_train

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    tech = suite.BY_NAME["baseline"]
    assert not suite.is_cached(tech, two_class_root, seed=0, quick=True, budget=TINY)
    cached_train("baseline", two_class_root, seed=0, quick=True,
                 **suite.train_kwargs(tech, two_class_root, quick=True, budget=TINY))
    assert suite.is_cached(tech, two_class_root, seed=0, quick=True, budget=TINY)
    assert not suite.is_cached(tech, two_class_root, seed=1, quick=True, budget=TINY)
    assert suite.missing_models(two_class_root, quick=True, techniques=["baseline", "SSDlite"],
                                budget=TINY) == ["SSDlite (seed 0)"]


def test_is_cached_follows_a_second_stage(two_class_root, tmp_path, monkeypatch):
    from sodlab.engine.stage_two import cached_stage_two

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    tech = suite.BY_NAME["RoI head"]
    stage = {"max_steps": 1, "batch_size": 2}
    kw = dict(seed=0, quick=True, budget=TINY, stage_budget=stage)
    assert not suite.is_cached(tech, two_class_root, **kw)
    cached_stage_two("fpn", two_class_root, tech.stage_two, seed=0, quick=True,
                     base_budget=TINY, budget=stage)
    assert suite.is_cached(tech, two_class_root, **kw)
    assert suite.is_cached(suite.BY_NAME["fpn"], two_class_root, seed=0, quick=True,
                           budget=TINY)  # its base
    assert not suite.is_cached(suite.BY_NAME["Relation Networks"], two_class_root, **kw)


def test_a_failing_technique_is_recorded_and_the_rest_run(two_class_root, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    real = suite._technique_runs

    def runs(tech, *args, **kwargs):
        if tech.name == "fpn":
            raise RuntimeError("broken on purpose")
        return real(tech, *args, **kwargs)

    monkeypatch.setattr(suite, "_technique_runs", runs)
    res = suite.run(data_root=two_class_root, techniques=["baseline", "fpn", "copy-paste"],
                    budget=TINY, speed=False, repeats=1)
    techs = res["techniques"]
    assert techs["fpn"]["status"] == "failed" and "broken on purpose" in res["failed"]["fpn"]
    assert techs["baseline"]["status"] == "ok" and techs["baseline"]["ci"]
    assert res["skipped"] == {"copy-paste": techs["copy-paste"]["reason"]}
    assert res["comparisons"] == {}  # fpn's comparison needs fpn
    assert res["pr_curves"]["technique"] == "baseline"
    json.dumps(res)  # plain JSON all through


@pytest.mark.slow
def test_bench_cli_on_own_data(two_class_root, tmp_path, monkeypatch, capsys):
    """`sodlab bench --only suite --data ROOT` with a tiny budget: the page, CSV and skips."""
    from sodlab.cli import main

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    torch.set_num_threads(1)
    out = tmp_path / "reports" / "bench.json"
    names = "baseline,image pyramid,fpn,copy-paste,Perceptual GAN,SSDlite"
    rc = main(["bench", "--only", "suite", "--data", str(two_class_root), "--out", str(out),
               "--techniques", names, "--max-steps", "2", "--batch-size", "2",
               "--set", "input_size=64", "--no-speed", "--ssdlite-seconds", "1",
               "--no-progress", "--reference", str(tmp_path / "missing.json")])
    assert rc == 2 and "no such file" in capsys.readouterr().err  # a bad reference path
    rc = main(["bench", "--only", "suite", "--data", str(two_class_root), "--out", str(out),
               "--techniques", names, "--max-steps", "2", "--batch-size", "2",
               "--set", "input_size=64", "--no-speed", "--ssdlite-seconds", "1",
               "--vga-repeats", "1", "--no-progress", "--update-reference",
               "--reference", str(tmp_path / "ref.json")])
    printed = capsys.readouterr()
    assert out.is_file(), printed.err
    res = json.loads(out.read_text())["benchmarks"]["suite"]
    techs = res["techniques"]
    assert rc == 0, (res["failed"], printed.err)
    printed = printed.out
    assert techs["copy-paste"]["status"] == "skipped" and "masks" in techs["copy-paste"]["reason"]
    assert techs["Perceptual GAN"]["status"] == "skipped"
    for name in ("baseline", "image pyramid", "fpn", "SSDlite"):
        t = techs[name]
        assert t["status"] == "ok", (name, t.get("error"))
        assert set(t["seeds"]) == {"0"} and t["vga_ms_1t"] > 0 and t["vga_ms_2t"] > 0
        assert all(-1 <= t["seeds"]["0"][k] <= 1 for k in suite.KEYS)
        assert set(t["ci"]) == set(suite.KEYS)
    assert techs["SSDlite"]["evaluate_ssdlite_AP"] == pytest.approx(
        techs["SSDlite"]["seeds"]["0"]["AP"], abs=1e-4)  # agrees to the records' rounding
    assert res["data"]["classes"] == 2 and "hard negatives" in " ".join(res["data"]["notes"])
    assert res["comparisons"]["fpn"]["against"] == "baseline"
    assert "copy-paste" in printed and "skipped" in printed
    page = (out.parent / "bench.html").read_text()
    assert "Skipped" in page and "segmentation" in page and "Provenance" in page
    rows = list(csv.DictReader((out.parent / "bench.csv").open()))
    assert {r["technique"] for r in rows} == set(names.split(","))
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert ref["benchmarks"]["suite"]["techniques"]["fpn"]["status"] == "ok"

"""Run records: fixed resamples, one run key, a study that trains only what has no record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sodlab.engine.records import (
    paired_samples,
    read_record,
    resample_draws,
    resampled_metrics,
    split_hash,
)
from sodlab.errors import InputError

TINY = {"max_steps": 2, "batch_size": 2}
SMALL = ("input_size=128",)


def _gt(n_img=6):
    images = [{"id": i + 1, "width": 64, "height": 64} for i in range(n_img)]
    anns = [{"id": k + 1, "image_id": (k % n_img) + 1, "category_id": 1,
             "bbox": [2.0 * k, 3.0, 8.0 + k, 9.0], "area": (8.0 + k) * 9.0, "iscrowd": 0}
            for k in range(2 * n_img)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}


def test_draws_are_fixed_by_the_split_and_differ_between_splits():
    a = resample_draws("ab" * 32, 40, n=20)
    assert a.shape == (20, 40) and a.min() >= 0 and a.max() < 40
    assert np.array_equal(a, resample_draws("ab" * 32, 40, n=20))
    assert not np.array_equal(a, resample_draws("cd" * 32, 40, n=20))
    with pytest.raises(InputError):
        resample_draws("ab" * 32, 0)


def test_split_hash_follows_the_annotations():
    g = _gt()
    h = split_hash(g)
    g["annotations"][0]["bbox"][0] += 1
    assert split_hash(g) != h


def test_the_identity_resample_is_the_whole_set_and_a_repeated_image_counts_twice():
    from sodlab.metrics.coco import evaluate_clean, load_dets, load_gt

    g = load_gt(_gt())
    rng = np.random.default_rng(0)
    dets = load_dets([{"image_id": a["image_id"], "category_id": 1,
                       "bbox": [v + float(rng.uniform(-1, 1)) for v in a["bbox"]],
                       "score": float(rng.uniform())} for a in g["annotations"]], g)
    n = len(g["images"])
    draws = np.stack([np.arange(n), np.zeros(n, dtype=np.int64)])
    out = resampled_metrics(g, dets, draws, keys=("AP", "AP50", "AP_large"))
    whole = evaluate_clean(g, dets)
    assert out["AP"][0] == pytest.approx(whole["AP"])
    first = {"images": [g["images"][0]], "categories": g["categories"],
             "annotations": [a for a in g["annotations"] if a["image_id"] == 1]}
    one = evaluate_clean(load_gt(first), [d for d in dets if d["image_id"] == 1])
    assert out["AP50"][1] == pytest.approx(one["AP50"])
    assert np.isnan(out["AP_large"]).all()  # no large objects: NaN, not -1


def test_paired_samples_refuse_records_on_different_validation_sets():
    a = {"key": "a" * 64, "val_hash": "x", "resamples": {"n": 2, "seed": 0},
         "samples": {"AP": [0.1, 0.2]}}
    b = {**a, "key": "b" * 64, "samples": {"AP": [0.3, None]}}
    d = paired_samples(a, b, "AP")
    assert d[0] == pytest.approx(0.2) and np.isnan(d[1])
    with pytest.raises(InputError):
        paired_samples(a, {**b, "val_hash": "y"}, "AP")
    with pytest.raises(InputError):
        paired_samples(a, b, "AP_small")


def test_a_study_trains_once_and_after_the_cache_is_gone_still_trains_nothing(
        quick_dataset, tmp_path, monkeypatch):
    from sodlab.engine.experiment import Technique, plan, run_technique

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    tech = Technique("tiny fpn", "fpn", overrides=(("input_size", 128),))
    first = run_technique(tech, quick_dataset, seed=0, mode="full", budget=TINY)
    assert first["from_record"] is False
    assert first["key"] == plan(tech, quick_dataset, seed=0, budget=TINY)["key"]
    assert len(first["samples"]["AP_small"]) == 500
    # the embedded data's hard negatives: false alarms per image, compared like AP
    assert len(first["samples"]["hn_fp_per_image"]) == 500
    assert first["metrics"]["hn_fp_per_image"] >= 0
    assert set(first["diagnostics"]) == {"tide", "pr"}
    assert len(first["diagnostics"]["pr"]["precision"]["all"]) == 101
    path = tmp_path / "records" / "full" / f"{first['key']}.json"
    assert path.is_file() and path.stat().st_size < 60_000
    trained = []
    import sodlab.engine.cache as cache  # run_technique imports cached_train from here

    orig = cache.cached_train

    def spy(*a, **k):
        trained.append(a)
        return orig(*a, **k)

    monkeypatch.setattr(cache, "cached_train", spy)
    second = run_technique(tech, quick_dataset, seed=0, mode="full", budget=TINY)
    shutil.rmtree(tmp_path / "cache")
    third = run_technique(tech, quick_dataset, seed=0, mode="full", budget=TINY)
    assert trained == []
    for rec in (second, third):
        assert rec["from_record"] is True
        assert rec["metrics"] == first["metrics"] and rec["samples"] == first["samples"]
    assert read_record(first["key"], mode="full")["seed"] == 0
    assert json.loads(path.read_text())["budget"]["images_seen"] == 4


def test_the_cache_key_does_not_hold_the_resolved_precision(quick_dataset):
    from sodlab.engine.cache import train_key

    auto = train_key("fpn", quick_dataset, overrides=SMALL, max_steps=3)[0]
    assert auto == train_key("fpn", quick_dataset, overrides=SMALL, max_steps=3,
                             precision="auto")[0]
    assert auto != train_key("fpn", quick_dataset, overrides=SMALL, max_steps=3,
                             precision="fp32")[0]
    assert auto != train_key("fpn", quick_dataset, overrides=SMALL, max_steps=4)[0]


def test_a_tiny_study_run_twice_and_without_its_cache_gives_the_same_tables(
        quick_dataset, tmp_path, monkeypatch):
    import sodlab.engine.cache as cache
    from sodlab.engine.experiment import Technique
    from sodlab.engine.study import Study, run_study, tables

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    st = Study("tiny", "none", (Technique("a", "fpn", overrides=(("input_size", 128),)),
                                Technique("b", "fpn", overrides=(("input_size", 96),))),
               (("a", "b"),), metrics=("AP", "AP50"))
    kept = []
    first = run_study(st, quick_dataset, mode="full", seeds=(0, 1), budget=TINY,
                      on_technique=kept.append)
    assert [sorted(k["techniques"]) for k in kept] == [["a"], ["a", "b"]]
    assert kept[0]["missing"] == [["b", 0], ["b", 1]] and kept[0]["comparisons"] == []
    assert kept[1]["missing"] == [] and kept[1]["comparisons"] == first["comparisons"]
    trained = []
    orig = cache.cached_train
    monkeypatch.setattr(cache, "cached_train", lambda *a, **k: trained.append(a) or orig(*a, **k))
    second = run_study(st, quick_dataset, mode="full", seeds=(0, 1), budget=TINY)
    shutil.rmtree(tmp_path / "cache")
    third = run_study(st, quick_dataset, mode="full", seeds=(0, 1), budget=TINY)
    assert trained == []
    for later in (second, third):
        assert later == first
        for x, y in zip(tables(first), tables(later)):
            assert x.equals(y)
    verdicts = {c["verdict"] for c in first["comparisons"]}
    assert verdicts <= {"up", "down", "no clear difference"} and len(first["comparisons"]) == 2


def test_study_show_compares_what_the_records_allow_and_trains_nothing(
        quick_dataset, tmp_path, monkeypatch, capsys):
    import sodlab.bench.studies as studies
    import sodlab.engine.budgets as budgets
    import sodlab.engine.cache as cache
    from sodlab.cli import main
    from sodlab.engine.experiment import Technique, run_technique
    from sodlab.engine.study import Study

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    monkeypatch.setattr(budgets, "standard_budget",
                        lambda preset, quick=False: {**TINY, "overrides": {}})
    techs = tuple(Technique(n, "fpn", overrides=(("input_size", s),))
                  for n, s in (("a", 128), ("b", 96), ("c", 64)))
    st = Study("tiny", "none", techs, (("a", "b"), ("a", "c")), metrics=("AP",))
    monkeypatch.setitem(studies.STUDIES, "tiny", st)
    run_technique(techs[0], quick_dataset, seed=0, mode="quick")
    trained = []
    orig = cache.cached_train
    monkeypatch.setattr(cache, "cached_train", lambda *a, **k: trained.append(a) or orig(*a, **k))
    args = ["study", "show", "tiny", "--quick", "--data", str(quick_dataset)]
    assert main(args) == 1  # one technique recorded: nothing to compare
    assert "nothing to compare" in capsys.readouterr().out
    monkeypatch.setattr(cache, "cached_train", orig)
    run_technique(techs[1], quick_dataset, seed=0, mode="quick")
    monkeypatch.setattr(cache, "cached_train", lambda *a, **k: trained.append(a) or orig(*a, **k))
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no record: c, seed 0" in out and "partial: a, b (every seed recorded)" in out
    assert "b vs a" in out and "c vs a" not in out
    assert main(["study", "missing", "tiny", "--quick", "--seeds", "0,1", "--data",
                 str(quick_dataset)]) == 0
    out = capsys.readouterr().out
    assert "no record: a, seed 1" in out and "no record: a, seed 0" not in out
    assert "4 of 6 runs have no record" in out
    assert trained == []


@pytest.mark.parametrize("text", ["a", "0,0", "-1", ""])
def test_study_seeds_option_refuses_bad_lists(text, capsys):
    from sodlab.cli import main

    assert main(["study", "missing", "fpn", "--seeds", text]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_study_show_keeps_a_partial_full_study(quick_dataset, tmp_path, monkeypatch, capsys):
    import sodlab.bench.studies as studies
    import sodlab.data
    import sodlab.engine.budgets as budgets
    from sodlab.bench.study_view import load_study
    from sodlab.cli import main
    from sodlab.engine.experiment import Technique, run_technique
    from sodlab.engine.study import Study

    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path / "studies"))
    monkeypatch.setattr(budgets, "standard_budget",
                        lambda preset, quick=False: {**TINY, "overrides": {}})
    monkeypatch.setattr(sodlab.data, "ensure_dataset", lambda *a, **k: quick_dataset)
    techs = tuple(Technique(n, "fpn", overrides=(("input_size", s),))
                  for n, s in (("a", 128), ("b", 96), ("c", 64)))
    monkeypatch.setitem(studies.STUDIES, "tiny", Study("tiny", "none", techs,
                                                       (("a", "b"), ("a", "c"))))
    for t in techs[:2]:
        for seed in (0, 1, 2):
            run_technique(t, quick_dataset, seed=seed, mode="full")
    assert main(["study", "show", "tiny", "--full"]) == 0
    assert "tiny.partial.json" in capsys.readouterr().out
    kept = load_study("tiny", partial=True)
    assert kept["missing"] == [["c", 0], ["c", 1], ["c", 2]]
    assert {(c["a"], c["b"]) for c in kept["comparisons"]} == {("a", "b")}
    assert load_study("tiny") is None
    # a budget multiple keeps what was asked for, one seed of two techniques included
    import sodlab.bench.budget_curve as curve

    monkeypatch.setattr(curve, "budget_at", lambda m, quick=False: {"max_steps": 2 * m,
                                                                     "batch_size": 2})
    assert main(["study", "run", "tiny", "--full", "--multiple", "2", "--seeds", "0",
                 "--only", "a,b"]) == 0
    point = load_study("tiny", images=8)
    assert sorted(point["techniques"]) == ["a", "b"]
    assert list(point["techniques"]["a"]["seeds"]) == ["0"]
    assert point["comparisons"][0]["verdict"] == "no clear difference"  # one seed

"""sodlab.bench.show_results on every committed result, and on files made up for the test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sodlab.bench import show_results
from sodlab.bench.show import COLUMNS, comparisons, mean_table, per_seed_table
from sodlab.errors import InputError
from sodlab.metrics import verdict
from sodlab.metrics.verdict import VERDICTS

RESULTS = Path(__file__).resolve().parents[1] / "results"
STEMS = ["02_augmentation", "03_fpn", "04_ssh_receptive_fields", "05_snip_sniper",
         "06_dense_anchors"]


def _numbers(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())["numbers"]


@pytest.mark.parametrize("stem", STEMS)
def test_every_committed_result_shows(stem):
    shown = show_results(stem)
    assert shown.found and shown.path == f"results/{stem}.json"
    assert "full mode" in shown.summary and shown.provenance["mode"] == "full"
    assert shown.tables and shown.comparisons
    main = next(iter(shown.tables.values()))
    assert [c for c in COLUMNS[stem] if c in main.columns] == COLUMNS[stem]  # the live columns
    for c in shown.comparisons:
        assert c.verdict in VERDICTS
        assert c.sentence.startswith(f"{c.b} against {c.a} on {c.metric}: {c.verdict}")
    page = shown._repr_html_()
    assert "<table" in page and "Verdicts" in page and '{"' not in page  # tables, no raw JSON
    assert stem in repr(shown) and "Verdicts:" in str(shown)


def test_02_recipes_against_none_from_the_seeds():
    n = _numbers("02_augmentation")
    shown = show_results("02_augmentation")
    per = n["per_seed"]
    for c in shown.comparisons:
        assert c.a == "none" and c.metric == "AP_small" and c.intervals is None
        diffs = [per[c.b][s]["AP_small"] - per["none"][s]["AP_small"] for s in per["none"]]
        assert c.verdict == verdict(diffs)                     # seeds only: 3 seeds
        assert c.mean_change == pytest.approx(np.mean(diffs))
    # the paper's change sits beside ours where Kisantal et al. report one
    cp = [c for c in shown.comparisons if c.b == "copy-paste (object alone)"][0]
    assert cp.paper[:2] == (0.167, 0.179) and "Kisantal" in cp.sentence
    means = shown.tables["mean over seeds"]
    for recipe, seeds in per.items():
        assert means.loc[recipe, "AP_small"] == pytest.approx(
            np.mean([v["AP_small"] for v in seeds.values()]))
        assert means.loc[recipe, "seeds"] == len(seeds)


def test_03_and_04_take_seeds_and_intervals_from_quality():
    q = json.loads((RESULTS / "quality.json").read_text())["numbers"]["presets"]
    shown = show_results("03_fpn")
    assert any("quality.json" in note for note in shown.notes)
    fpn = shown.comparisons[0]
    assert (fpn.a, fpn.b, fpn.metric) == ("baseline", "fpn", "AP_small")
    want = [(a["AP_small"], b["AP_small"]) for a, b in zip(q["baseline"]["seeds"],
                                                            q["fpn"]["seeds"])]
    assert list(fpn.per_seed.values()) == want
    assert fpn.intervals == (tuple(q["baseline"]["ci"]["AP_small"]),
                             tuple(q["fpn"]["ci"]["AP_small"]))
    assert fpn.verdict == "up" and fpn.against_paper == "the paper's direction"
    assert shown.tables["mean over seeds"].loc["fpn", "AP_small"] == pytest.approx(
        _numbers("03_fpn")["AP_small_fpn"])
    ssh = show_results("04_ssh_receptive_fields").verdict("ssh", "baseline", "AP_tiny")
    assert ssh == "up"


def test_quality_of_other_checkpoints_is_not_used(tmp_path):
    for name in ("03_fpn", "quality"):
        obj = json.loads((RESULTS / f"{name}.json").read_text())
        if name == "quality":
            obj["trained_at_commit"] = "0" * 40
        (tmp_path / f"{name}.json").write_text(json.dumps(obj))
    shown = show_results("03_fpn", results_dir=tmp_path)
    assert any("other checkpoints" in note for note in shown.notes)
    assert all(c.verdict == "no clear difference" and not c.per_seed
               for c in shown.comparisons)


def _means_only_05(tmp_path) -> None:
    """A copy of the committed notebook-05 result as files made before per-seed values were
    recorded held it: means only."""
    obj = json.loads((RESULTS / "05_snip_sniper.json").read_text())
    for key in ("per_seed", "bootstrap_ci", "AP_small_snip_minus_mst_per_seed"):
        obj["numbers"].pop(key, None)
    (tmp_path / "05_snip_sniper.json").write_text(json.dumps(obj))


def test_05_means_only_decides_nothing_and_says_so(tmp_path):
    _means_only_05(tmp_path)
    shown = show_results("05_snip_sniper", results_dir=tmp_path)
    snip = shown.comparisons[0]
    assert snip.b == "SNIP / multi-scale test" and snip.a.startswith("MST")
    assert snip.verdict == "no clear difference" and "only means" in snip.sentence
    table = _numbers("05_snip_sniper")["table"]
    by = {(r["training"], r["test"]): r for r in table}
    assert snip.mean_change == pytest.approx(by[("SNIP", "multi-scale test")]["AP_small"]
                                             - by[("MST (no ranges)", "multi-scale test")]
                                             ["AP_small"])
    assert snip.paper[:2] == (19.5, 21.4)


def test_05_committed_run_decides_from_its_seeds_and_intervals():
    numbers = _numbers("05_snip_sniper")
    snip = show_results("05_snip_sniper").comparisons[0]
    diffs = numbers["AP_small_snip_minus_mst_per_seed"]
    lo_snip = numbers["bootstrap_ci"]["SNIP / multi-scale test"]["AP_small"][0]
    hi_mst = numbers["bootstrap_ci"]["MST (no ranges) / multi-scale test"]["AP_small"][1]
    # the verdict rule itself: every seed agrees and the intervals are apart
    expected = "up" if all(d > 0 for d in diffs) and lo_snip > hi_mst else None
    if expected:
        assert snip.verdict == expected
    else:
        assert snip.verdict != "up"


def test_05_per_seed_differences_when_recorded(tmp_path):
    _means_only_05(tmp_path)
    obj = json.loads((tmp_path / "05_snip_sniper.json").read_text())
    obj["numbers"]["AP_small_snip_minus_mst_per_seed"] = [0.01, 0.02, 0.03]
    (tmp_path / "05_snip_sniper.json").write_text(json.dumps(obj))
    snip = comparisons("05_snip_sniper", tmp_path)[0]
    # three seeds agree but the committed file has no intervals: no direction
    assert snip.per_seed == {"0": 0.01, "1": 0.02, "2": 0.03}
    assert snip.verdict == "no clear difference" and "no intervals" in snip.sentence


def test_06_one_seed_with_intervals():
    n = _numbers("06_dense_anchors")
    shown = show_results("06_dense_anchors")
    for c in shown.comparisons:
        a, b = n["ap_by_preset"][c.a][c.metric], n["ap_by_preset"][c.b][c.metric]
        ia, ib = n["bootstrap_ci"][c.a][c.metric], n["bootstrap_ci"][c.b][c.metric]
        assert list(c.per_seed.values()) == [(a, b)]
        assert c.verdict == verdict([b - a], (ia, ib))
    assert shown.verdict("faceboxes", "fpn", "AP_tiny") == "down"
    assert shown.tables["the paper beside us"].loc[
        "FaceBoxes, VGA on one CPU core (FPS)", "paper"] == 20.0


def test_missing_file_says_so(tmp_path):
    shown = show_results("03_fpn", results_dir=tmp_path)
    assert not shown.found and not shown.tables and not shown.comparisons
    assert "not committed yet" in shown.summary and "--only 03" in shown.summary
    assert "not committed yet" in shown._repr_html_()
    assert comparisons("03_fpn", tmp_path) == []


def test_bad_inputs(tmp_path):
    (tmp_path / "03_fpn.json").write_text("{not json")
    with pytest.raises(InputError, match="03_fpn.json: invalid JSON at line 1"):
        show_results("03_fpn", results_dir=tmp_path)
    with pytest.raises(InputError):
        show_results("")


def test_generic_stem_with_compare(tmp_path):
    per_seed = {"a": {"0": {"AP": 0.1}, "1": {"AP": 0.2}, "2": {"AP": 0.3}},
                "b": {"0": {"AP": 0.2}, "1": {"AP": 0.25}, "2": {"AP": 0.35}}}
    obj = {"notebook": "09_x", "numbers": {"x": 1.5, "per_seed": per_seed,
                                           "compare": [{"a": "a", "b": "b", "metric": "AP",
                                                        "paper": [1, 2, "AP %"]}]},
           "provenance": {"mode": "quick"}}
    (tmp_path / "09_x.json").write_text(json.dumps(obj))
    shown = show_results("09_x", results_dir=tmp_path)
    assert shown.tables["numbers"].loc["x", "value"] == "1.5"
    c = shown.comparisons[0]
    assert c.verdict == "no clear difference" and c.paper == (1.0, 2.0, "AP %")  # no intervals
    assert "quick-mode run" in shown.notes[0]
    obj["numbers"]["compare"] = [{"a": "a"}]
    (tmp_path / "09_x.json").write_text(json.dumps(obj))
    with pytest.raises(InputError, match="compare"):
        show_results("09_x", results_dir=tmp_path)


def test_live_tables_have_the_committed_form():
    per_seed = {"none": {"0": {"AP": 0.1, "AP_small": -1.0}, "1": {"AP": 0.3, "AP_small": 0.2}}}
    seeds = per_seed_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert list(seeds.index) == [("none", "0"), ("none", "1")]
    means = mean_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert means.loc["none", "AP"] == pytest.approx(0.2)
    assert means.loc["none", "AP_small"] == pytest.approx(0.2)  # the empty bucket left out
    assert means.loc["none", "seeds"] == 2
    assert math.isnan(mean_table({"x": {"0": {"AP": -1.0}}}, ["AP"]).loc["x", "AP"])

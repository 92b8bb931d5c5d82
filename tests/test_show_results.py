"""The committed earlier-budget studies (results/studies/NAME-3200.json), their comparisons
under the earlier files' labels (sodlab.bench.show.comparisons), and the live tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sodlab.bench.show import comparisons, mean_table, per_seed_table
from sodlab.bench.studies import STUDIES
from sodlab.bench.study_view import earlier_images, load_study
from sodlab.errors import InputError
from sodlab.metrics import verdict
from sodlab.metrics.verdict import VERDICTS

RESULTS = Path(__file__).resolve().parents[1] / "results"
EARLIER = sorted((RESULTS / "studies").glob(f"*-{earlier_images()}.json"))
# what the notebooks read from an earlier study's extras
EXTRAS = {"augmentation": ("context_probe",), "fpn": ("images_per_s",),
          "snip_sniper": ("table", "slicing", "mismatch"),
          "dense_anchors": ("vga_fps_1t", "matched_per_face_tiny", "unmatched_share_tiny"),
          "perceptual_gan": ("game", "centroid_gap"), "relation_networks": ("attention",)}


def _earlier(name: str) -> dict:
    return load_study(name, images=earlier_images())


def test_every_notebook_result_of_the_earlier_budget_is_a_study():
    assert EARLIER, "no results/studies/NAME-3200.json"
    names = {p.name.rsplit("-", 1)[0] for p in EARLIER}
    notebooks = {STUDIES[n].notebook for n in names}
    assert notebooks >= {p.stem for p in RESULTS.glob("[0-9][0-9]_*.json")}


@pytest.mark.parametrize("path", EARLIER, ids=[p.stem for p in EARLIER])
def test_an_earlier_study_loads_and_every_comparison_has_a_verdict(path):
    name = path.name.rsplit("-", 1)[0]
    res = _earlier(name)
    assert res["study"] == name and res["notebook"] == STUDIES[name].notebook
    assert res["rule"] == "unpaired, earlier budget" and isinstance(res["extras"], dict)
    for t in res["techniques"].values():
        assert set(t) >= {"seeds", "mean", "interval", "keys", "images_seen"}
        assert set(t["mean"]) == set(t["interval"]) == set(res["metrics"])
    assert res["comparisons"]
    for c in res["comparisons"]:
        assert c["verdict"] in VERDICTS and c["reason"] and c["sentence"]
        assert c["a"] in res["techniques"] and c["b"] in res["techniques"]
        assert c["metric"] in res["metrics"]
        assert c["interval"] is None and c["seeds_interval"] is None   # no paired resamples
        assert c["mean"] == pytest.approx(np.mean(list(c["per_seed"].values())))


@pytest.mark.parametrize("path", EARLIER, ids=[p.stem for p in EARLIER])
def test_the_stored_verdict_is_the_unpaired_rule_on_the_stored_numbers(path):
    res = _earlier(path.name.rsplit("-", 1)[0])
    for c in res["comparisons"]:
        sa, sb = res["techniques"][c["a"]]["seeds"], res["techniques"][c["b"]]["seeds"]
        k = c["metric"]
        pairs = {s: (sa[s][k], sb[s][k]) for s in c["per_seed"]}
        assert {s: b - a for s, (a, b) in pairs.items()} == pytest.approx(c["per_seed"])
        iv = c["unpaired_intervals"]
        assert c["verdict"] == verdict(pairs, None if iv is None else tuple(map(tuple, iv)))


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_the_extras_the_notebooks_read_are_there(name):
    extras = _earlier(name)["extras"]
    assert all(extras.get(k) for k in EXTRAS[name]), name


def test_techniques_carry_the_study_names_and_the_earlier_file_s_seeds():
    res = _earlier("augmentation")
    old = json.loads((RESULTS / "02_augmentation.json").read_text())["numbers"]["per_seed"]
    assert set(res["techniques"]) == {t.name for t in STUDIES["augmentation"].techniques}
    assert res["techniques"]["fpn"]["seeds"]["1"]["AP_small"] == old["none"]["1"]["AP_small"]
    assert res["techniques"]["copy-paste"]["seeds"] == {
        s: {k: v for k, v in m.items() if isinstance(v, float)}
        for s, m in old["copy-paste (with context)"].items()}


def test_comparisons_keep_the_earlier_labels_and_pairs():
    comps = comparisons("02_augmentation")
    c = next(c for c in comps if c.b == "copy-paste (with context)")
    res = _earlier("augmentation")
    fpn, cp = res["techniques"]["fpn"], res["techniques"]["copy-paste"]
    assert c.a == "none" and c.label == "copy-paste (with context) vs none, AP_small"
    assert c.per_seed == {s: (fpn["seeds"][s]["AP_small"], cp["seeds"][s]["AP_small"])
                          for s in fpn["seeds"]}
    assert c.mean_a == pytest.approx(fpn["mean"]["AP_small"])
    assert c.verdict in VERDICTS and c.sentence.startswith(f"{c.b} against {c.a} on AP_small")
    assert [x.verdict for x in comps] == [x["verdict"] for x in res["comparisons"]]


def test_comparisons_of_a_notebook_without_an_earlier_study(tmp_path):
    assert comparisons("03_fpn", tmp_path) == []
    assert comparisons("01_sliding_window_pyramid") == []
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / f"fpn-{earlier_images()}.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        comparisons("03_fpn", tmp_path)


def test_live_tables():
    per_seed = {"none": {"0": {"AP": 0.1, "AP_small": -1.0}, "1": {"AP": 0.3, "AP_small": 0.2}}}
    seeds = per_seed_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert list(seeds.index) == [("none", "0"), ("none", "1")]
    means = mean_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert means.loc["none", "AP"] == pytest.approx(0.2)
    assert means.loc["none", "AP_small"] == pytest.approx(0.2)  # the empty bucket left out
    assert means.loc["none", "seeds"] == 2
    assert math.isnan(mean_table({"x": {"0": {"AP": -1.0}}}, ["AP"]).loc["x", "AP"])

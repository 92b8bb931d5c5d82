"""The committed earlier-budget studies (results/studies/NAME-3200.json) and the live tables
(sodlab.bench.show)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sodlab.bench.show import mean_table, per_seed_table
from sodlab.bench.studies import STUDIES
from sodlab.bench.study_view import earlier_images, load_study
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


def test_every_notebook_run_of_the_earlier_budget_is_a_study():
    assert EARLIER, "no results/studies/NAME-3200.json"
    names = {p.name.rsplit("-", 1)[0] for p in EARLIER}
    numbers = {STUDIES[n].notebook[:2] for n in names}
    assert numbers == {f"{i:02d}" for i in range(2, 10)}   # notebooks 02-09 ran at that budget


@pytest.mark.parametrize("path", EARLIER, ids=[p.stem for p in EARLIER])
def test_an_earlier_study_loads_and_every_comparison_has_a_verdict(path):
    name = path.name.rsplit("-", 1)[0]
    res = _earlier(name)
    assert res["study"] == name and res["notebook"] == STUDIES[name].notebook
    assert res["rule"] == "unpaired, earlier budget" and isinstance(res["extras"], dict)
    head = res["extras"]["headline"]   # beside a quick run's in reports/index.html
    assert head and all(isinstance(v, (int, float)) for v in head.values())
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


def test_techniques_carry_the_study_names():
    res = _earlier("augmentation")
    assert set(res["techniques"]) == {t.name for t in STUDIES["augmentation"].techniques}
    assert all(c["a"] == "fpn" for c in res["comparisons"])


def test_live_tables():
    per_seed = {"none": {"0": {"AP": 0.1, "AP_small": -1.0}, "1": {"AP": 0.3, "AP_small": 0.2}}}
    seeds = per_seed_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert list(seeds.index) == [("none", "0"), ("none", "1")]
    means = mean_table(per_seed, ["AP", "AP_small"], name="recipe")
    assert means.loc["none", "AP"] == pytest.approx(0.2)
    assert means.loc["none", "AP_small"] == pytest.approx(0.2)  # the empty bucket left out
    assert means.loc["none", "seeds"] == 2
    assert math.isnan(mean_table({"x": {"0": {"AP": -1.0}}}, ["AP"]).loc["x", "AP"])

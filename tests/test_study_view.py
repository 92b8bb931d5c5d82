"""A study's result shown generically: tables, the paper beside a comparison, budgets side by side."""

from __future__ import annotations

import numpy as np

from sodlab.bench.study_view import (
    AGREES,
    NO_DIRECTION,
    NO_NUMBER,
    OPPOSITE,
    agreement,
    earlier_images,
    load_study,
    quick_against_full,
    save_study,
    show_earlier,
    show_study,
    side_by_side,
    study_comparisons,
)
from sodlab.engine.experiment import Technique
from sodlab.engine.study import Study, assemble

STUDY = Study("fpn", "03_fpn", (Technique("baseline", "baseline"), Technique("fpn", "fpn")),
              (("baseline", "fpn"),), metrics=("AP_small",))


def _record(key: str, value: float, rng, shift: float) -> dict:
    return {"key": key, "budget": {"images_seen": 3200}, "val_hash": "v",
            "resamples": {"n": 50, "seed": 0}, "metrics": {"AP_small": value},
            "samples": {"AP_small": list(value + shift + rng.normal(0, 0.01, 50))}}


def _result(gain: float) -> dict:
    rng = np.random.default_rng(0)
    recs = {"baseline": {s: _record(f"b{s}", 0.1, rng, 0.0) for s in range(3)},
            "fpn": {s: _record(f"f{s}", 0.1 + gain + 0.001 * s, rng, gain) for s in range(3)}}
    return assemble(STUDY, recs, mode="full")


def test_the_paper_sits_beside_its_comparison_and_the_verdict_is_the_paired_one():
    frame = study_comparisons(_result(0.3))
    row = frame.iloc[0]
    assert row["verdict"] == "up" and row["B against A"] == "fpn vs baseline"
    assert "13.2" in row["paper"] and row["vs paper"] == "direction reproduced"


def test_side_by_side_flags_a_verdict_that_changes_with_the_budget():
    out = side_by_side({"3,200 images": _result(0.0), "12,800 images": _result(0.3)})
    assert list(out["verdict (12,800 images)"]) == ["up"]
    assert list(out["changed with the budget"]) == ["yes"]


def test_save_load_and_show(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    assert load_study("fpn") is None
    show_study("fpn")
    assert "no committed full-mode result" in capsys.readouterr().out
    path = save_study(_result(0.3))
    assert path == tmp_path / "fpn.json"
    shown = show_study("fpn", metrics=("AP_small",))
    out = capsys.readouterr().out
    assert shown["study"] == "fpn" and "3 seeds" in out and "fpn against baseline" in out


def _quick(gain: float, images: int = 800) -> dict:
    """A one-seed quick result whose fpn is ``gain`` above baseline (sharp resamples)."""
    rng = np.random.default_rng(1)
    recs = {"baseline": {0: _record("qb", 0.05, rng, 0.0)},
            "fpn": {0: _record("qf", 0.05 + gain, rng, gain)}}
    for by_seed in recs.values():
        by_seed[0]["budget"] = {"images_seen": images}
    return assemble(STUDY, recs, mode="quick")


def test_agreement_against_each_full_verdict():
    assert agreement(0.02, "up") == AGREES and agreement(-0.02, "down") == AGREES
    assert agreement(-0.02, "up") == OPPOSITE and agreement(0.02, "down") == OPPOSITE
    assert agreement(0.0, "up") == OPPOSITE
    assert agreement(0.02, "no clear difference") == NO_DIRECTION
    assert agreement(None, "up") == NO_NUMBER and agreement(float("nan"), "up") == NO_NUMBER


def test_quick_against_full_flags_only_the_comparisons_that_part_ways():
    table, notes = quick_against_full(_quick(0.2), _result(0.3))
    assert list(table["quick against full"]) == [AGREES] and notes == []
    table, notes = quick_against_full(_quick(-0.2), _result(0.3))
    assert list(table["quick against full"]) == [OPPOSITE]
    assert len(notes) == 1 and "opposite" in notes[0] and "4× fewer" in notes[0]
    assert "-0.200" in notes[0] and "contains zero" not in notes[0]
    table, notes = quick_against_full(_quick(0.2), _result(0.0))
    assert list(table["quick against full"]) == [NO_DIRECTION] and "no clear difference" in notes[0]


def test_show_study_prints_the_quick_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    show_study("fpn", quick=_quick(-0.2))
    out = capsys.readouterr().out
    assert "no committed full-mode result to hold these quick numbers against" in out
    save_study(_result(0.3))
    show_study("fpn", metrics=("AP_small",), quick=_quick(-0.2))
    assert "Trust the full run" in capsys.readouterr().out


def test_job_line_says_how_far_and_where_the_record_came_from():
    from sodlab.engine.study import job_line

    line = job_line("ssh", 2, 12, "ssh", 1, {"metrics": {"AP_small": 0.5}}, 383.2)
    assert line == "ssh [3/12] ssh, seed 1: trained and recorded in 383 s, AP_small 0.500"
    line = job_line("ssh", 0, 12, "fpn", 0, {"from_record": True, "metrics": {}}, 0.1)
    assert line == "ssh [1/12] fpn, seed 0: from its record"


def test_show_earlier_shows_the_rule_both_budgets_and_returns_the_extras(tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    assert show_earlier("fpn") is None
    assert "no committed result at the earlier budget" in capsys.readouterr().out
    earlier = {**_result(0.0), "rule": "unpaired, earlier budget", "extras": {"x": [1, 2]},
               "provenance": {"seconds": 600.0, "cpu_count": 2, "threads": 1}}
    save_study(earlier, images=earlier_images())
    shown = show_earlier("fpn")
    out = capsys.readouterr().out
    assert shown["extras"] == {"x": [1, 2]} and "older unpaired rule" in out
    assert "took 10 min" in out and "side" not in out and "full budget" not in out
    save_study(_result(0.3))
    show_earlier("fpn")
    out = capsys.readouterr().out
    assert "at the earlier and at the full budget" in out and "changed with the budget" in out


def test_images_seen_name_a_second_stage_and_its_base():
    from sodlab.bench.study_view import seen_label, seen_labels

    one = {"images_seen": 25600}
    two = {"images_seen": 1600, "base_images_seen": 25600}
    assert seen_label(one) == "25,600"
    assert seen_label(two) == "25,600 base + 1,600 second-stage"
    assert seen_label({"images_seen": None}) == "not recorded"
    res = {"techniques": {"fpn": one, "RoI head": two, "relation": dict(two)}}
    assert seen_labels(res) == "25,600 / 25,600 base + 1,600 second-stage"
    assert seen_labels(res, ["RoI head"]) == "25,600 base + 1,600 second-stage"


def test_a_second_stage_note_counts_the_base_models_images():
    quick, full = _quick(-0.2, images=1200), _result(0.3)
    quick["techniques"]["fpn"]["base_images_seen"] = 2000
    full["techniques"]["fpn"].update(images_seen=1600, base_images_seen=25600)
    _, notes = quick_against_full(quick, full)
    assert "each quick base model saw 2,000 images against 25,600 in the full run " \
           "(12.8× fewer)" in notes[0]


def test_a_partial_study_is_kept_beside_and_replaced_by_the_complete_one(
        tmp_path, monkeypatch, capsys):
    import pytest

    from sodlab.errors import InputError

    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    partial = {**_result(0.3), "missing": [["fpn", 2]]}
    assert save_study(partial) == tmp_path / "fpn.partial.json"
    assert load_study("fpn") is None and load_study("fpn", partial=True)["missing"]
    shown = show_study("fpn", metrics=("AP_small",))
    out = capsys.readouterr().out
    assert shown["missing"] and "partial: 2 techniques have every seed recorded" in out
    assert "still to run: fpn (1 runs" in out
    with pytest.raises(InputError, match="full budget only"):
        save_study(partial, images=51200)
    save_study(_result(0.3))
    assert not (tmp_path / "fpn.partial.json").exists()
    assert "missing" not in load_study("fpn", partial=True)

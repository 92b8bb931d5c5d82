"""What a change in AP is made of: the table from committed records, and the sentence it makes."""

from __future__ import annotations

import pytest

from sodlab.bench.anatomy import explain_gain, gain_anatomy, study_records
from sodlab.engine.records import RECORD_VERSION, record_name, write_record
from sodlab.errors import InputError

ERRORS = ("localisation", "background", "missed", "duplicate")


def _record(key, test, metrics, dap):
    return {"record_version": RECORD_VERSION, "key": key, "mode": "full", "seed": 0,
            "technique": {"name": "x", "test": test}, "metrics": metrics,
            "diagnostics": {"tide": {"dAP": {"small": dict(zip(ERRORS, dap))}}}}


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """A tiny_objects result naming fpn and sliced inference (same training keys, another
    test path), with records where the tiles tighten the boxes and find no more faces."""
    monkeypatch.setenv("SODLAB_RECORDS", str(tmp_path / "records"))
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path / "studies"))
    keys = {"0": "k0", "1": "k1"}
    for s, key in keys.items():
        base = {"AP_small": 0.50 + 0.01 * int(s), "AP50": 0.90, "AP75": 0.60, "R50_small": 0.93,
                "R50_tiny": 0.90, "n_dets": 1000}
        tiles = dict(base, AP_small=base["AP_small"] + 0.08, AP75=0.68, AP50=0.91,
                     R50_small=0.935, n_dets=1500 + 100 * int(s))
        write_record(_record(key, "single", base, (0.10, 0.02, 0.01, 0.001)))
        write_record(_record(key, "sliced", tiles, (0.04, 0.03, 0.01, 0.002)))
    result = {"study": "tiny_objects", "mode": "full",
              "techniques": {"fpn": {"keys": keys}, "sliced inference": {"keys": keys}}}
    return result, tmp_path


def test_table_reads_each_seeds_record_and_differences_by_hand(committed):
    result, tmp = committed
    assert (tmp / "records" / "full" / f"{record_name('k0', 'sliced')}.json").is_file()
    recs = study_records(result, "sliced inference")
    assert sorted(recs) == [0, 1] and recs[1]["metrics"]["n_dets"] == 1600
    t = gain_anatomy("fpn", "sliced inference", result=result)
    assert t.attrs["seeds"] == [0, 1]
    assert t.loc["AP_small", "fpn"] == pytest.approx((0.50 + 0.51) / 2)
    assert t.loc["AP_small", "B − A"] == pytest.approx(0.08)
    assert t.loc["AP_small", "B − A per seed"] == "+0.080 / +0.080"
    assert t.loc["AP at IoU 0.75, all sizes", "B − A"] == pytest.approx(0.08)
    assert t.loc["detections kept on the validation split", "B − A per seed"] == "+500 / +600"
    loc = "AP_small lost to localisation errors (TIDE)"
    assert t.loc[loc, "B − A"] == pytest.approx(-0.06)
    assert t.loc[loc, "better when"] == "lower"


def test_sentence_names_the_error_that_moved_and_the_flat_recall(committed):
    result, _ = committed
    text = explain_gain(gain_anatomy("fpn", "sliced inference", result=result))
    assert "AP_small +0.080" in text
    assert "recall of small faces at IoU 0.5 +0.005, so little of it is faces found" in text
    assert "AP at IoU 0.75 moved +0.080 against +0.010 at IoU 0.5: the boxes fit more tightly" \
        in text
    assert "TIDE's largest change is in the AP_small lost to localisation errors, 0.060 less " \
        "with sliced inference" in text


def test_recall_that_moves_is_named_as_part_of_the_gain(committed):
    result, tmp = committed
    for key in ("k0", "k1"):
        rec = study_records(result, "sliced inference")[int(key[1])]
        rec["metrics"]["R50_small"] = 0.99
        write_record(rec)
    text = explain_gain(gain_anatomy("fpn", "sliced inference", result=result))
    assert "+0.060, so part of it is faces found or lost" in text


def test_no_common_seed_or_no_study_gives_none(committed, tmp_path):
    result, tmp = committed
    only = dict(result, techniques={"fpn": {"keys": {"0": "k0"}},
                                    "sliced inference": {"keys": {"1": "missing"}}})
    assert gain_anatomy("fpn", "sliced inference", result=only) is None
    assert gain_anatomy("fpn", "sliced inference", studies=["tiny_objects"]) is None
    assert explain_gain(None) == "No committed study holds both techniques yet."
    with pytest.raises(InputError, match="no technique"):
        study_records(result, "fpn + NWD")


def test_a_gain_at_iou_half_is_not_called_a_tighter_fit(committed):
    result, _ = committed
    for rec in study_records(result, "sliced inference").values():
        rec["metrics"].update(AP50=0.99, AP75=0.62)  # AP50 +0.09, AP75 +0.02
        write_record(rec)
    text = explain_gain(gain_anatomy("fpn", "sliced inference", result=result))
    assert "AP at IoU 0.75 moved +0.020 against +0.090 at IoU 0.5." in text
    assert "tightly" not in text

"""The quality benchmark: directions decided only by intervals and seeds together."""

import pytest

from sodlab.bench.quality import direction


def _res(values, ci):
    return {"seeds": [{"AP_small": v} for v in values], "ci": {"AP_small": ci}}


def test_direction_needs_intervals_and_every_seed():
    base = _res([0.20, 0.22, 0.21], [0.18, 0.24])
    assert direction(base, _res([0.30, 0.31, 0.29], [0.26, 0.33]), "AP_small") == "up"
    assert direction(base, _res([0.10, 0.12, 0.11], [0.08, 0.15]), "AP_small") == "down"
    # intervals overlap
    assert direction(base, _res([0.30, 0.31, 0.29], [0.23, 0.33]), "AP_small") == "no clear difference"
    # intervals apart but one seed below a baseline seed
    assert direction(base, _res([0.30, 0.21, 0.29], [0.26, 0.33]), "AP_small") == "no clear difference"
    # an empty bucket (-1) decides nothing
    assert direction(_res([-1.0], [-1, -1]), _res([0.3], [0.2, 0.4]), "AP_small") == "no clear difference"
    assert direction(base, {"seeds": [{"AP_small": 0.5}]}, "AP_small") == "no clear difference"


@pytest.mark.slow
def test_quality_run_quick(quick_dataset):
    from sodlab.bench.quality import run

    out = run(quick=True, data_root=quick_dataset, presets=("baseline", "fpn"), n_boot=4)
    assert set(out["presets"]) == {"baseline", "fpn"} and out["against"] == "baseline"
    fpn = out["presets"]["fpn"]
    assert len(fpn["seeds"]) == 1 and set(fpn["ci"]) == {"AP", "AP_tiny", "AP_small"}
    for k, (lo, hi) in fpn["ci"].items():
        assert lo <= hi, k
    assert out["direction"]["fpn"]["AP_small"] in {"up", "down", "no clear difference"}
    assert out["budget"]["seeds"] == [0] and "commit" in out["provenance"]

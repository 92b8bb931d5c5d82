"""The recipe benchmark times notebook 05's four recipes side by side and reports ratios."""

from __future__ import annotations

import math

import torch


def test_recipe_speed_quick_smoke(quick_dataset):
    from sodlab.bench import BENCHMARKS
    from sodlab.bench.recipe_speed import run, snip_recipes

    assert "recipe_speed" in BENCHMARKS
    torch.set_num_threads(1)
    out = run(quick=True, data_root=quick_dataset, overrides={"input_size": 128},
              batch_size=2, rounds=1, n_test=1)
    names = list(snip_recipes(64))
    assert out["input_size"] == 128 and out["chip"] == 64 and out["test_images"] == 1
    for key in ("train_step_vs_single", "train_pixels_vs_single", "train_step_ms",
                "train_images_per_s", "train_padding_share"):
        assert list(out[key]) == names, key
        assert all(math.isfinite(v) and v >= 0 for v in out[key].values()), key
    assert out["train_step_vs_single"]["single scale"] == 1.0
    px = out["train_pixels_vs_single"]
    # SNIPER trains on chips of half the input side (a quarter of a square input at most);
    # MST and SNIP draw the same scale per item from the same seed, only their ranges differ
    assert px["single scale"] == 1.0 and px["SNIPER"] <= 0.25 + 1e-9
    assert px["MST (no ranges)"] == px["SNIP"]
    assert all(0.0 <= v < 1.0 for v in out["train_padding_share"].values())
    assert out["test_ms_per_image"]["multi-scale test"] > 0
    assert out["test_multi_vs_single"] > 0


def test_snip_recipes_match_notebook_05():
    """The notebook and the benchmark must train the same recipes (same names, ranges)."""
    from sodlab.bench.recipe_speed import snip_recipes
    from sodlab.snip import DEFAULT_SCALES

    r = snip_recipes(192)
    assert r["single scale"] is None
    assert r["MST (no ranges)"]["snip"]["ranges"] == [[0, None]] * len(DEFAULT_SCALES)
    assert r["SNIP"]["snip"]["ranges"][-1][1] is None  # the last range is open
    assert r["SNIPER"]["sniper"]["chip"] == 192 and r["SNIPER"]["sniper"]["stride"] == 32

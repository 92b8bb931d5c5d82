"""The augmentation benchmark runs on a few small images and returns consistent numbers."""

from __future__ import annotations

import math

import torch


def test_augment_speed_quick_smoke(quick_dataset):
    from sodlab.bench import BENCHMARKS
    from sodlab.bench.augment_speed import TARGET_SHARE, run

    assert "augment_speed" in BENCHMARKS
    torch.set_num_threads(1)
    out = run(quick=True, data_root=quick_dataset, preset="baseline", overrides={"input_size": 128},
              n_images=3, batch_size=2, steps=1)
    assert out["images"] == 3 and out["input_size"] == 128 and out["preset"] == "baseline"
    for key in ("copy_paste_share_of_step", "copy_paste_context_share_of_step",
                "masks_share_of_step", "copy_paste_images_per_s", "load_images_per_s",
                "load_with_masks_images_per_s", "train_images_per_s",
                "copy_paste_share_of_baseline_step", "baseline_step_ms_per_image"):
        assert math.isfinite(out[key]) and out[key] >= 0, key
    for key in ("copy_paste_images_per_s", "load_images_per_s", "train_images_per_s"):
        assert out[key] > 0, key
    share = max(out["copy_paste_share_of_step"], out["copy_paste_context_share_of_step"])
    assert out["meets_target"] == (share < TARGET_SHARE) and out["target_share"] == TARGET_SHARE
    # the preset is the baseline itself: its step is the baseline step
    assert out["copy_paste_share_of_baseline_step"] == out["copy_paste_share_of_step"]
    # every small object is pasted at most once per image (all_once, one copy)
    assert 0 <= out["pasted_per_image"] <= out["small_objects_per_image"]
    assert 0 <= out["pasted_context_per_image"] <= out["small_objects_per_image"]

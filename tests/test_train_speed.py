"""The speed benchmark's parts: VGA timing and the side-by-side comparison with SSDlite."""

import pytest
import torch

from sodlab.bench.train_speed import compare_with_ssdlite, measure_preset, vga_latency_ms


def test_vga_latency_restores_threads_and_is_positive():
    before = torch.get_num_threads()
    seen = []
    ms = vga_latency_ms(lambda x: seen.append(torch.get_num_threads()) or x.sum(),
                        torch.zeros(3, 48, 64), repeats=3)
    assert ms > 0 and seen == [1] * 4 and torch.get_num_threads() == before


@pytest.mark.slow
def test_compare_with_ssdlite_smoke(quick_dataset):
    out = compare_with_ssdlite(quick_dataset, max_seconds=1.5, presets=("faceboxes",))
    for name in ("faceboxes", "ssdlite320_mobilenet_v3"):
        r = out[name]
        assert r["steps"] >= 1 and r["vga_fps_1t"] > 0 and r["vga_ms_1t"] > 0
        for k in ("AP", "AP50", "AP_small", "AP_tiny"):
            assert -1 <= r[k] <= 1
    assert out["budget_s"] == 1.5 and out["faceboxes"]["input_size"] == 384


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["faceboxes", "s3fd"])
def test_measure_dense_presets(quick_dataset, preset):
    r = measure_preset(preset, quick_dataset, steps=1, warmup=1, repeats=1, batch_size=2)
    assert r["train_images_per_s"] > 0 and r["vga_ms_1t"] > 0 and r["params"] > 0

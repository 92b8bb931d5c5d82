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
        assert r["vga_fps_1t_fast"] > 0 and r["fast_precision"] in ("bf16", "fp32")
        for k in ("AP", "AP50", "AP_small", "AP_tiny"):
            assert -1 <= r[k] <= 1
    assert out["budget_s"] == 1.5 and out["faceboxes"]["input_size"] == 384


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["faceboxes", "s3fd", "fast"])
def test_measure_dense_presets(quick_dataset, preset):
    r = measure_preset(preset, quick_dataset, steps=1, warmup=1, repeats=1, batch_size=2)
    assert r["train_images_per_s"] > 0 and r["vga_ms_1t"] > 0 and r["params"] > 0
    # both precisions timed side by side, end to end too, and the work per image counted
    for k in ("train_images_per_s_fp32", "train_images_per_s_e2e", "train_images_per_s_e2e_fp32",
              "vga_ms_1t_fast", "train_gflops_per_s"):
        assert r[k] > 0, k
    assert r["fast_vs_fp32"] == pytest.approx(r["train_images_per_s"] / r["train_images_per_s_fp32"])
    assert r["macs_per_image"] > 1e6 and r["train_flops_per_image"] > 2 * r["macs_per_image"]
    parts = r["step_breakdown_ms"]
    assert set(parts) >= {"backbone", "neck", "head", "loss", "backward", "optimizer", "data"}
    assert all(v > 0 for v in parts.values()), parts


def test_flops_of_one_conv_are_counted_exactly():
    from sodlab.bench.train_speed import count_flops

    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)

        def forward(self, images, targets=None):
            y = self.conv(images)
            return {"loss": y.square().mean()} if self.training else y

    x = torch.zeros(2, 3, 8, 8)
    # 2 FLOPs per multiply-add: 4 x 3 x 9 per output pixel, 64 pixels, 2 images
    assert count_flops(One(), (x[:1], None), train=False) == 2 * 4 * 3 * 9 * 64
    assert count_flops(One(), (x, None), train=True) >= 2 * (2 * 4 * 3 * 9 * 64)

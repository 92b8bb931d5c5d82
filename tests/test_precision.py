"""The precision choice: auto picks bf16 only where it is fast, fp32 stays selectable."""

import pytest
import torch

from sodlab.engine import precision as P
from sodlab.errors import InputError


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu") == "fp32"  # a laptop without AVX-512-BF16/AMX
    assert P.resolve_precision("bf16", "cpu") == "bf16"  # asked for: given, even if slow
    assert P.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(InputError, match="precision 'fp16'"):
        P.resolve_precision("fp16")


def test_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    for flags, fast in (("fpu sse avx512f avx512_bf16", True), ("fpu sse amx_bf16", True),
                        ("fpu sse avx2 avx512f", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(P, "Path", lambda _p, info=info: info)
        P.cpu_has_fast_bf16.cache_clear()
        assert P.cpu_has_fast_bf16() is fast
    P.cpu_has_fast_bf16.cache_clear()


def test_bf16_step_matches_fp32_closely_and_fp32_is_exact():
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.train import TrainConfig, build_optimizer, train_step

    cfg = make_config("fpn", num_classes=1, overrides={"input_size": 64})
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "labels": torch.tensor([0]),
                "iscrowd": torch.tensor([False])} for _ in range(2)]
    losses = {}
    for prec in ("fp32", "fp32", "bf16"):
        torch.manual_seed(0)
        model = P.prepare_model(build_detector(cfg), prec).train()
        opt = build_optimizer(model, TrainConfig(lr=1e-3))
        out = train_step(model, (images, targets), opt, precision=prec)
        losses.setdefault(prec, []).append(out["loss"])
    assert losses["fp32"][0] == losses["fp32"][1]  # the reference path is deterministic
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.05)  # bf16: close


def test_precision_benchmark_says_when_there_is_nothing_to_compare(monkeypatch, tmp_path):
    from sodlab.bench import precision as bench

    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda: False)
    out = bench.run(quick=True, data_root=tmp_path)
    assert out["fast"] == "fp32" and "nothing to compare" in out["note"] and not out["runs"]

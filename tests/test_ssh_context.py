"""SSH's own ablation: detection modules without their context module (``ssh_context=False``)."""

from __future__ import annotations

import torch

from sodlab.detector import build_detector, make_config
from sodlab.models.necks import ContextModule, DetectionModule


def _rf_extent(module: torch.nn.Module, width: int = 8, size: int = 33) -> int:
    """Pixels of the input that reach the centre output (gradient of one output cell)."""
    x = torch.zeros(1, width, size, size, requires_grad=True)
    module.eval()
    y = module(x)
    y[0, :, size // 2, size // 2].sum().backward()
    hit = x.grad[0].abs().sum(0) > 0
    rows = hit.any(1).nonzero()
    return int(rows.max() - rows.min() + 1)


def test_without_context_the_module_keeps_its_width_and_loses_its_receptive_field():
    torch.manual_seed(0)
    with_ctx, without = DetectionModule(8), DetectionModule(8, context=False)
    assert isinstance(with_ctx.context, ContextModule)
    assert not isinstance(without.context, ContextModule)
    x = torch.randn(2, 8, 12, 12)
    assert with_ctx(x).shape == without(x).shape == (2, 8, 12, 12)
    assert _rf_extent(with_ctx) == 7 and _rf_extent(without) == 3  # 7x7 context vs one 3x3


def test_the_ablation_trains_and_has_its_own_run_key(tmp_path):
    cfg = make_config("ssh", num_classes=1, overrides={"ssh_context": False, "input_size": 128})
    model = build_detector(cfg)
    model.train()
    images = torch.rand(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([0]),
                "iscrowd": torch.tensor([False])} for _ in range(2)]
    loss = model(images, targets)["loss"]
    assert torch.isfinite(loss)
    from sodlab.engine.cache import _beside_defaults

    assert _beside_defaults(cfg)["ssh_context"] is False
    assert "ssh_context" not in _beside_defaults(make_config("ssh", num_classes=1))

"""The step profile benchmark: the yardstick, the operator table and the phase clock are real."""

import pytest
import torch

from sodlab.bench.step_speed import YARDSTICK_SHAPE, measure, operator_table, yardstick_rate


def test_yardstick_times_a_real_step():
    assert YARDSTICK_SHAPE == (8, 3, 384, 384)
    assert yardstick_rate("fp32", steps=1, warmup=0) > 0


def test_operator_table_names_real_operators_and_shares_sum_below_one():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, images, targets):
            return {"loss": self.net(images).mean()}

    m = Wrap()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    batch = (torch.rand(2, 3, 16, 16), [{}, {}])
    rows = operator_table(m, opt, [batch, batch], "fp32", top=5)
    names = [r["operator"] for r in rows]
    assert any("conv" in n for n in names)
    assert any(r["backward"] for r in rows)          # backward operators are told apart
    assert 0 < sum(r["share"] for r in rows) <= 1.0 + 1e-9
    assert all(r["ms_per_step"] > 0 for r in rows)


@pytest.mark.slow
def test_measure_a_preset(quick_dataset):
    r = measure("fpn", quick_dataset, precision="fp32", steps=1, warmup=1, batch_size=2)
    assert r["images_per_s"] > 0 and r["operators"]
    assert set(r["phases_ms"]) >= {"forward", "backward", "optimizer"}


def test_dense_reference_is_restored_and_matches_bit_for_bit():
    from sodlab import matching

    anchors = torch.tensor([[0.0, 0, 8, 8], [4, 4, 12, 12], [20, 20, 28, 28]])
    boxes = [torch.tensor([[1.0, 1, 9, 9]]), torch.zeros((0, 4))]
    fast = matching.match_anchors_batch(anchors, boxes)
    with matching.dense_reference():
        assert matching._DENSE_ONLY[0]
        dense = matching.match_anchors_batch(anchors, boxes)
    assert not matching._DENSE_ONLY[0] and torch.equal(fast, dense)

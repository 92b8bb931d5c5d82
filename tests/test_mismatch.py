"""SNIP's resolution-mismatch experiment: resampling shapes, training, result rows."""

import torch

from sodlab.engine.mismatch import (
    accuracy,
    down_up,
    downsample,
    fit_crop_classifier,
    mismatch_experiment,
)
from sodlab.models.mismatch import build_cnn_b, build_cnn_s


def _toy(n, seed):
    """Class 1: a bright disc; class 0: the same noise without it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 8**2).float()
    x = x + 0.5 * y[:, None, None, None] * disc
    return x.clamp(0, 1), y


def test_resampling_shapes_and_identity():
    x = torch.rand(4, 3, 32, 32)
    assert downsample(x, 4).shape == (4, 3, 8, 8)
    assert down_up(x, 4).shape == x.shape
    assert torch.equal(down_up(x, 1), x)
    # a constant image survives down-then-up sampling
    c = torch.full((1, 3, 32, 32), 0.3)
    torch.testing.assert_close(down_up(c, 8), c)


def test_nets_take_their_inputs():
    assert build_cnn_b()(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    assert build_cnn_s()(torch.rand(2, 3, 8, 8)).shape == (2, 2)


def test_fit_learns_and_experiment_rows():
    torch.set_num_threads(1)
    xtr, ytr = _toy(256, 0)
    xte, yte = _toy(128, 1)
    torch.manual_seed(0)
    model = build_cnn_b(width=8)
    losses = fit_crop_classifier(model, xtr, ytr, epochs=4, seed=0)
    assert losses[-1] < losses[0]
    assert accuracy(model, xte, yte) > 0.8
    rows = mismatch_experiment((xtr, ytr), (xte, yte), factors=(1, 4), epochs=1, ft_epochs=1)
    assert [r["factor"] for r in rows] == [1, 4]
    assert set(rows[1]) == {"factor", "test_px", "CNN-B", "CNN-S", "CNN-B-FT"}
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in r if k.startswith("CNN"))


def test_crops_at_the_image_border_are_padded():
    from PIL import Image

    from sodlab.engine.mismatch import _crop

    img = Image.new("RGB", (40, 30), (255, 255, 255))
    out = _crop(img, -10.0, -10.0, 20.0, 8)  # a quarter inside, the rest outside
    assert out.shape == (3, 8, 8)
    assert out[:, -1, -1].min() > 0.9 and out[:, 0, 0].max() < 0.1

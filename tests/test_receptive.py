"""Receptive fields: hand-computed cases, resnet18's known values, input gradients as the oracle."""

import pytest
import torch
import torchvision
from torch import nn

from sodlab.errors import InputError
from sodlab.receptive import (
    RF,
    effective_rf,
    erf_centre,
    erf_radius,
    plot_rf,
    receptive_fields,
)

torch.set_num_threads(1)


def _positive(net: nn.Module) -> nn.Module:
    """All-positive, linear copy of a net: weights 1/(k*k*C_in), no ReLU, max-pool -> avg-pool.

    Every input pixel in a unit's theoretical RF then reaches it with a positive weight, so
    the support of the input gradient is exactly the RF.
    """
    for m in list(net.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, child_name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(m, child_name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                    child.padding))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            k = m.weight.shape[-1] * m.weight.shape[-2] * m.weight.shape[1]
            nn.init.constant_(m.weight, 1.0 / k)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net.eval()


def _gradient_support(net, x, layer_fn, row, col):
    """(size, centre) per axis (y, x) of the input-gradient support of unit (row, col)."""
    x = x.clone().requires_grad_(True)
    feat = layer_fn(net, x)
    (g,) = torch.autograd.grad(feat[:, :, row, col].sum(), x)
    nz = g.abs().sum(dim=(0, 1)) > 0  # [H, W]
    ys = nz.any(1).nonzero().flatten()
    xs = nz.any(0).nonzero().flatten()
    size = (float(ys[-1] - ys[0] + 1), float(xs[-1] - xs[0] + 1))
    centre = (float(ys[0] + ys[-1] + 1) / 2, float(xs[0] + xs[-1] + 1) / 2)
    return size, centre


HAND = [
    # (net, layer, expected RF) computed by hand with the three rules
    (nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1) for _ in range(3)]), "2",
     RF(size=(7, 7), jump=(1, 1), start=(0.5, 0.5))),
    (nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=1)), "1",
     RF(size=(7, 7), jump=(2, 2), start=(0.5, 0.5))),
    (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=2, dilation=2)), "1",
     RF(size=(7, 7), jump=(1, 1), start=(0.5, 0.5))),
    # unpadded: 3 + 2 * 2 * 1 = 7, unit 0 centred at 3.5
    (nn.Sequential(nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 3, dilation=2)), "1",
     RF(size=(7, 7), jump=(1, 1), start=(3.5, 3.5))),
    # 2x2 max-pool stride 2: 3 + 1 * 1 = 4, jump 2, centre 0.5 + 0.5; then 3x3: 4 + 2 * 2 = 8
    (nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1)),
     "2", RF(size=(8, 8), jump=(2, 2), start=(1.0, 1.0))),
    # rectangular kernel (1 x 5): the axes are independent
    (nn.Sequential(nn.Conv2d(2, 2, (1, 5), padding=(0, 2)), nn.MaxPool2d(3, 2, 1)), "1",
     RF(size=(3, 7), jump=(2, 2), start=(0.5, 0.5))),
]


@pytest.mark.parametrize("net,layer,expected", HAND)
def test_hand_cases(net, layer, expected):
    rf = receptive_fields(net, (1, 2, 24, 24))[layer]
    assert (rf.size, rf.jump, rf.start) == (expected.size, expected.jump, expected.start)


@pytest.mark.parametrize("net,layer,expected", HAND)
def test_hand_cases_against_gradients(net, layer, expected):
    net = _positive(net)
    rfs = receptive_fields(net, (1, 2, 24, 24))
    rf = rfs[layer]
    row, col = rf.shape[0] // 2, rf.shape[1] // 2
    size, centre = _gradient_support(net, torch.rand(1, 2, 24, 24),
                                     lambda n, x: n[: int(layer) + 1](x), row, col)
    assert size == rf.size
    assert centre == rf.centre(row, col)


def test_resnet18_known_values():
    rfs = receptive_fields(torchvision.models.resnet18(weights=None), (1, 3, 224, 224))
    # conv1 7x7/2: 7; maxpool 3x3/2: 7 + 2*2 = 11; layer1 4 convs: + 4*2*4 = 43;
    # layer2 (first conv /2): + 2*4 + 3*2*8 = 99; layer3: + 2*8 + 3*2*16 = 211;
    # layer4: + 2*16 + 3*2*32 = 435. Every padding is (k - 1) / 2, so unit 0 stays at 0.5.
    expected = {"conv1": (7, 2), "maxpool": (11, 4), "layer1": (43, 4), "layer2": (99, 8),
                "layer3": (211, 16), "layer4": (435, 32)}
    for name, (size, jump) in expected.items():
        assert rfs[name].size == (size, size), name
        assert rfs[name].jump == (jump, jump), name
        assert rfs[name].start == (0.5, 0.5), name
    assert rfs["layer2.0.downsample"].size == (43, 43)  # the 1x1 shortcut adds nothing
    assert rfs["layer4"].shape == (7, 7)
    assert rfs["input"] == RF(size=(1, 1), jump=(1, 1), start=(0.5, 0.5), shape=(224, 224))


def test_resnet18_against_gradients():
    net = _positive(torchvision.models.resnet18(weights=None))
    rfs = receptive_fields(net, (1, 3, 448, 448))
    rf = rfs["layer4"]  # [14, 14] map; unit (7, 7) sees [7, 442)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                          net.layer1, net.layer2, net.layer3, net.layer4)
    size, centre = _gradient_support(trunk, torch.rand(1, 3, 448, 448),
                                     lambda n, x: n(x), 7, 7)
    assert size == rf.size == (435, 435)
    assert centre == rf.centre(7, 7) == (224.5, 224.5)


class _Merge(nn.Module):
    """A stride-1 branch plus an upsampled stride-2 branch (FPN-style) and a concatenation."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.fine = nn.Conv2d(2, 2, 3, padding=1)
        self.coarse = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1),
                                    nn.Conv2d(2, 2, 3, padding=1))
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.mode = mode

    def forward(self, x):
        a = self.fine(x)
        b = self.up(self.coarse(x))
        return {"sum": a + b, "cat": torch.cat([a, b], 1),
                "f": a + torch.nn.functional.interpolate(self.coarse(x), size=a.shape[-2:],
                                                         mode=self.mode)}


@pytest.mark.parametrize("mode,extra", [("nearest", 0), ("bilinear", 2)])
def test_upsample_and_merge(mode, extra):
    net = _Merge(mode)
    rfs = receptive_fields(net, (1, 2, 32, 32))
    # coarse: 3x3/2 -> 3, jump 2; 3x3 -> 7. Upsampling x2 halves the jump; bilinear adds one
    # input step (2 px); unit 0 moves by (0.5 / 2 - 0.5) * 2 = -0.5 px.
    up = rfs["up"]
    assert up.jump == (1, 1) and up.size == (7 + extra,) * 2 and up.start == (0.0, 0.0)
    for key in ("output.sum", "output.cat", "output.f"):
        # union of [-1, 2] (fine: 3 px at 0.5) and [-3.5 - e, 3.5 + e] (upsampled, at 0.0)
        merged = rfs[key]
        assert merged.jump == (1, 1)
        assert merged.size == (7 + extra,) * 2 and merged.start == (0.0, 0.0)
    # the gradient support of every unit fits in its RF (nearest centres alternate +-0.5 px)
    pos = _positive(net)
    for row in (7, 8):
        size, centre = _gradient_support(pos, torch.rand(1, 2, 32, 32),
                                         lambda n, x: n(x)["sum"], row, row)
        lo = centre[0] - size[0] / 2
        hi = centre[0] + size[0] / 2
        c = rfs["output.sum"].centre(row, row)[0]
        half = rfs["output.sum"].size[0] / 2
        assert c - half - 0.5 <= lo and hi <= c + half + 0.5
        assert size[0] >= 7  # at least the coarse branch's own RF


def test_functional_ops_and_repeated_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3)
            self.head = nn.Linear(2, 1)

        def forward(self, x):
            x = torch.nn.functional.pad(x, (1, 1, 1, 1))
            y = self.conv(self.conv(x))  # the same module twice
            z = torch.nn.functional.max_pool2d(y, 2)
            return self.head(z.flatten(2).mean(-1))  # not spatial: left out

    rfs = receptive_fields(Net(), (1, 2, 16, 16))
    assert rfs["conv"].size == (3, 3) and rfs["conv"].start == (0.5, 0.5)  # padded by 1
    assert rfs["conv@2"].size == (5, 5) and rfs["conv@2"].start == (1.5, 1.5)
    assert "head" not in rfs and "output" not in rfs
    with pytest.raises(InputError):
        receptive_fields(Net(), (2, 16, 16))


def _deep_random(depth: int = 12) -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    layers = []
    for i in range(depth):
        conv = nn.Conv2d(3 if i == 0 else 8, 8, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                              * (2.0 / (9 * conv.in_channels)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_erf_smaller_than_theoretical_and_centred():
    net = _deep_random(12)
    rf = receptive_fields(net, (1, 3, 48, 48))["23"]  # RF 25 px
    assert rf.size == (25, 25)
    erf = effective_rf(net, (3, 48, 48), n_samples=8, seed=0)
    assert erf.shape == (48, 48)
    assert abs(float(erf.sum()) - 1) < 1e-5
    centre = rf.centre(24, 24)  # the default unit: the centre one
    cy, cx = erf_centre(erf)
    assert abs(cy - centre[0]) < 1.5 and abs(cx - centre[1]) < 1.5
    radius = erf_radius(erf, 0.95, centre=centre)
    assert 2 * radius < rf.size[0]
    # zero outside the theoretical RF
    x1, y1, x2, y2 = (int(v) for v in rf.box(24, 24))
    outside = erf.clone()
    outside[y1:y2, x1:x2] = 0
    assert float(outside.sum()) == 0
    # the same seed gives the same heatmap; a given image gives its own gradient
    assert torch.equal(erf, effective_rf(net, (3, 48, 48), n_samples=8, seed=0))
    one = effective_rf(net, torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1)))
    assert one.shape == (48, 48)


def test_effective_rf_on_a_dict_output():
    net = _deep_random(4)

    def features(x):
        return {"c2": net[:4](x), "c4": net(x)}

    erf = effective_rf(features, (1, 3, 20, 20), layer="c2", position=(3, 4), n_samples=2)
    nz = erf.nonzero()
    assert nz[:, 0].min() >= 1 and nz[:, 0].max() <= 5  # rows 3 +- 2
    assert nz[:, 1].min() >= 2 and nz[:, 1].max() <= 6
    with pytest.raises(InputError):
        effective_rf(features, (3, 20, 20), layer="nope")
    with pytest.raises(InputError):
        effective_rf(features, (3, 20, 20), layer="c2", position=(30, 0))


def test_erf_radius_hand_cases():
    h = torch.zeros(11, 11)
    h[5, 5] = 1
    assert erf_radius(h, 0.95) == 0.5  # one pixel: a 1 px square
    h[5, 7] = 1
    assert erf_radius(h, 0.95, centre=(5.5, 5.5)) == 2.5  # reaches column 7: 5 px side
    assert erf_radius(h, 0.5, centre=(5.5, 5.5)) == 0.5
    u = torch.ones(10, 10)
    assert erf_radius(u, 1.0) == 5.0
    with pytest.raises(InputError):
        erf_radius(u, 0)


def test_plot_rf_draws_squares():
    rf = RF(size=(9, 9), jump=(2, 2), start=(0.5, 0.5), shape=(8, 8))
    erf = torch.zeros(16, 16)
    erf[7:10, 7:10] = 1
    ax = plot_rf(erf / erf.sum(), rf, [4, 8], (4, 4), image=torch.rand(3, 16, 16))
    assert len(ax.patches) == 4  # theoretical RF, ERF square, two anchors
    assert ax.patches[0].get_width() == 9


def test_union_of_shifted_branches_against_gradients():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 3, padding=1)  # unit i sees [i - 1, i + 2)
            self.b = nn.Conv2d(2, 2, 3)  # shifted by the padding below: [i - 2, i + 1)

        def forward(self, x):
            return self.a(x) + torch.nn.functional.pad(self.b(x), (2, 0, 2, 0))

    net = _positive(Net())
    rf = receptive_fields(net, (1, 2, 16, 16))["output"]
    assert rf.size == (4, 4) and rf.start == (0.0, 0.0)  # [-2, 2): wider than either branch
    size, centre = _gradient_support(net, torch.rand(1, 2, 16, 16), lambda n, x: n(x), 8, 8)
    assert size == rf.size and centre == rf.centre(8, 8)


def test_widget_view_and_explorer():
    from sodlab.widgets.receptive import ExplorerState, explorer, rf_cell_anchors, rf_view

    net = _deep_random(6)

    def features(x):
        return {"p1": net[:4](x), "p2": torch.nn.functional.max_pool2d(net(x), 2)}

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return features(x)

    rfs = receptive_fields(Wrap(), (1, 3, 32, 32))
    rfs = {"p1": rfs["output.p1"], "p2": rfs["output.p2"]}
    assert rfs["p2"].jump == (2, 2) and rfs["p2"].size == (14, 14)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    state = ExplorerState(features, image, rfs, anchor_sizes={"p1": [4], "p2": [8, 16]})
    view = rf_view(state, "p2", x=20, y=9)
    # p2 unit centres at 1 + 2 * i: x = 20 -> col 10 (centre 21) ; y = 9 -> row 4 (centre 9)
    assert view["position"] == (4, 10)
    assert view["centre"] == (9.0, 21.0)
    assert view["erf"].shape == (32, 32)
    assert torch.allclose(view["anchors"], torch.tensor([[17.0, 5, 25, 13], [13, 1, 29, 17]]))
    assert 0 < view["erf_radius"] <= 7.5
    assert len(view["figure"].axes) == 2
    assert ("p2", 4, 10) in state.cache
    # an anchor generator's convention: centres at (index + offset) * stride
    state.anchor_offset = 0.0
    assert rf_cell_anchors(state, "p2", 4, 10)[0].tolist() == [16.0, 4.0, 24.0, 12.0]
    with pytest.raises(InputError):
        rf_view(state, "p9", 0, 0)
    box = explorer(state)
    box.children[0].children[0].value = "p1"  # the dropdown redraws through the callback
    assert "p1" in {k[0] for k in state.cache}

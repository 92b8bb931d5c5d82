"""The explorers draw their first figure at construction, as a PNG in an Image widget.

No browser and no kernel here: every explorer of notebooks 01, 04, 05 and 06 is built on
tiny inputs, with ``display``, ``Output`` and ``plt.show`` made to fail (what a papermill run
could wait on), and its picture is checked right after construction and after a control
change. tests/browser/ drives the same explorers in voila and headless Chromium.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sodlab.errors import InputError
from sodlab.viz import figure_png
from sodlab.widgets import canvas

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _png_array(data: bytes) -> np.ndarray:
    assert data[:8] == canvas.PNG_MAGIC
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # [H, W, 3]


# ------------------------------------------------------------------ tiny explorer inputs
def _sliding():
    from sodlab.models.classifiers import build_patch_classifier
    from sodlab.widgets.sliding import explorer, make_state

    torch.manual_seed(0)
    model = build_patch_classifier(24).eval()
    image = torch.rand(3, 60, 72, generator=torch.Generator().manual_seed(1))
    return explorer(make_state(model, image, scale_step=2 ** 0.5)), "x (level px)"


def _receptive():
    from sodlab.receptive import receptive_fields
    from sodlab.widgets.receptive import ExplorerState, explorer

    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"M1": self.net[:4](x), "M2": self.net(x)}

    feats = Features()
    rfs = receptive_fields(feats, (1, 3, 32, 32))
    image = torch.rand(3, 32, 32, generator=g)
    state = ExplorerState(feats, image, {k: rfs[f"output.{k}"] for k in ("M1", "M2")},
                          anchor_sizes={"M1": [4], "M2": [8]}, anchor_offset=0.5)
    return explorer(state, layer="M1"), "x"


def _chips():
    from sodlab.widgets.chips import chip_explorer

    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[4.0, 4, 12, 12], [30, 20, 40, 30], [10, 8, 50, 44]])
    return chip_explorer(image, boxes, input_size=64), "scale index"


def _anchors():
    from sodlab.widgets.anchors import explorer

    return explorer(canvas=(64, 64)), "box x"


EXPLORERS = {"01_sliding": _sliding, "04_receptive": _receptive, "05_chips": _chips,
             "06_anchors": _anchors}


def _slider(box, description: str):
    import ipywidgets as W

    def walk(w):
        yield w
        for c in getattr(w, "children", ()):
            yield from walk(c)

    found = [w for w in walk(box) if isinstance(w, (W.IntSlider, W.FloatSlider))
             and w.description == description]
    assert len(found) == 1, description
    return found[0]


@pytest.fixture
def no_blocking_display(monkeypatch):
    """Fail on every call a papermill run could wait on: display, an Output, plt.show."""
    import IPython.display
    import ipywidgets

    def refuse(*_a, **_k):
        raise AssertionError("an explorer displayed a figure instead of setting an Image")

    monkeypatch.setattr(IPython.display, "display", refuse)
    monkeypatch.setattr(ipywidgets.Output, "__enter__", refuse)
    monkeypatch.setattr(plt, "show", refuse)
    plt.close("all")
    yield
    plt.close("all")


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_first_figure_exists_at_construction(name, no_blocking_display):
    box, slider = EXPLORERS[name]()
    first = box.image.value
    arr = _png_array(first)
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 0  # a drawn figure, not a blank canvas
    assert canvas.FIGURE_CLASS in box.image._dom_classes and box.image in box.children
    assert "error" not in box.status.value
    assert plt.get_fignums() == []  # closed: the inline backend would show it again
    s = _slider(box, slider)
    s.value = s.max  # the observer redraws (no display either)
    assert box.image.value != first
    second = _png_array(box.image.value)
    assert second.shape == arr.shape and np.abs(second.astype(int) - arr).sum() > 0
    assert "error" not in box.status.value and plt.get_fignums() == []


@pytest.mark.parametrize("name", ["01_sliding", "06_anchors"])
def test_draw_false_waits_for_a_control(name, monkeypatch):
    from sodlab.widgets import anchors, sliding

    module = sliding if name == "01_sliding" else anchors
    real = module.explorer
    monkeypatch.setattr(module, "explorer", lambda *a, **k: real(*a, **k, draw=False))
    box, slider = EXPLORERS[name]()
    assert box.image.value == b""
    s = _slider(box, slider)
    s.value = s.max
    _png_array(box.image.value)


def test_figure_png_is_the_agg_rendering():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0, 1.5), dpi=50)
    ax = fig.add_subplot()
    ax.imshow(np.arange(12).reshape(3, 4), cmap="viridis")
    ax.set_axis_off()
    png = figure_png(fig, close=False)
    got = _png_array(png)
    agg = FigureCanvasAgg(fig)
    agg.draw()
    want = np.asarray(agg.buffer_rgba())[..., :3]  # [H, W, 3]
    assert got.shape == want.shape == (75, 100, 3)
    assert np.array_equal(got, want)
    assert _png_array(figure_png(fig, dpi=100)).shape == (150, 200, 3)


def test_figure_png_closes_pyplot_figures():
    plt.close("all")
    fig, ax = plt.subplots(figsize=(1, 1))
    assert plt.get_fignums()
    figure_png(fig)
    assert plt.get_fignums() == []


def test_watch_shows_errors_in_the_status_line():
    import ipywidgets as W

    slider, status = W.IntSlider(0, min=0, max=3), canvas.status_line("ready")
    calls = []

    def redraw():
        calls.append(slider.value)
        if slider.value == 2:
            raise InputError("value <2> is bad")

    canvas.watch([slider], redraw, status)
    slider.value = 1
    assert calls == [1] and status.value == "ready"
    slider.value = 2  # the exception lands in the page, escaped, not in the kernel's log
    assert calls == [1, 2]
    assert canvas.ERROR_CLASS in status.value and "InputError: value &lt;2&gt; is bad" in status.value
    assert canvas.STATUS_CLASS in status._dom_classes


def test_anchor_design_error_is_escaped():
    from sodlab.widgets.anchors import explorer

    box = explorer(canvas=(64, 64), draw=False)
    box.children[0].children[1].value = "8; <b>x"
    assert "design error" in box.status.value and "<b>x" not in box.status.value
    assert box.redraw() is None


EXPLORER_CALL = re.compile(r"^(?:chip_)?explorer\(.*$", re.M)


@pytest.mark.parametrize("stem", ["01_sliding_window_pyramid", "04_ssh_receptive_fields",
                                  "05_snip_sniper", "06_dense_anchors"])
def test_notebooks_let_the_explorers_draw_at_once(stem):
    nb = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())
    calls = [m.group(0) for c in nb["cells"] if c["cell_type"] == "code"
             for m in EXPLORER_CALL.finditer("".join(c["source"]))]
    assert len(calls) == 1, calls
    assert "draw=False" not in calls[0], (
        f"{stem} still calls {calls[0]!r}: the explorers draw at construction now (also "
        "under papermill), so drop draw=False and the 'move a control to draw' comment")

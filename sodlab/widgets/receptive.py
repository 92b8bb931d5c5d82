"""Receptive-field explorer: pick a layer and a point on an image, see the RF, ERF and anchors.

The view is a plain function, ``rf_view(state, layer, x, y)``, that returns the unit under
the point, its theoretical receptive field (``sodlab.receptive.receptive_fields``), its
effective receptive field (``sodlab.receptive.effective_rf``, Luo et al. 2016) and the square
anchors of that cell, plus a matplotlib figure of all three; ``explorer(state)`` wraps it in
ipywidgets (a layer dropdown and x/y sliders). Taught in notebook 04_ssh_receptive_fields.

Shapes: image ``[3, H, W]`` in [0, 1]; ERF ``[H, W]``; anchors ``[A, 4]`` xyxy input pixels.

Dimension legend: H W image height/width, A anchors at one cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sodlab.errors import InputError
from sodlab.receptive import RF, effective_rf, erf_radius, plot_rf


@dataclass
class ExplorerState:
    """What the explorer shows: a feature function, an image and the RFs of its layers.

    ``feature_fn`` maps ``[B, 3, H, W]`` to a dict of feature maps (or one map) whose keys
    are the ``layers``; ``rfs[layer]`` is that layer's theoretical RF; ``anchor_sizes[layer]``
    the square anchor sides at each of its cells. ``anchor_offset`` None centres a cell's
    anchors on its RF centre; a number o centres them at ``(index + o) * jump`` instead (the
    convention of an anchor generator). ``erf_samples`` 0 takes the ERF on the image itself,
    n > 0 on n random images of its shape (seeded by ``seed``).
    """

    feature_fn: Callable[[torch.Tensor], torch.Tensor | dict]
    image: torch.Tensor  # [3, H, W]
    rfs: dict[str, RF]
    anchor_sizes: dict[str, list[int]] = field(default_factory=dict)
    anchor_offset: float | None = None
    erf_samples: int = 0
    seed: int = 0
    cache: dict = field(default_factory=dict)  # (layer, row, col) -> ERF [H, W]

    @property
    def layers(self) -> list[str]:
        return list(self.rfs)


def rf_cell_anchors(state: ExplorerState, layer: str, row: int, col: int) -> torch.Tensor:
    """Square anchors of cell (row, col) of ``layer``, xyxy input pixels. ``[A, 4]``"""
    rf = state.rfs[layer]
    if state.anchor_offset is None:
        cy, cx = rf.centre(row, col)
    else:
        cy, cx = ((row + state.anchor_offset) * rf.jump[0], (col + state.anchor_offset) * rf.jump[1])
    sizes = torch.tensor(state.anchor_sizes.get(layer, []), dtype=torch.float32)  # [A]
    return torch.stack([cx - sizes / 2, cy - sizes / 2, cx + sizes / 2, cy + sizes / 2], dim=1)


def rf_view(state: ExplorerState, layer: str, x: float, y: float) -> dict:
    """Everything the explorer shows for input point (x, y) on ``layer``.

    Returns ``dict(position=(row, col), rf=RF, centre=(y, x), erf=[H, W], erf_radius=float,
    anchors=[A, 4], figure=matplotlib Figure)``.
    """
    from matplotlib.figure import Figure

    if layer not in state.rfs:
        raise InputError(f"layer {layer!r} is not one of {state.layers}")
    rf = state.rfs[layer]
    row, col = rf.unit_at(x, y)
    key = (layer, row, col)
    if key not in state.cache:
        source = (state.image if state.erf_samples == 0
                  else (state.erf_samples, *state.image.shape))
        state.cache[key] = effective_rf(state.feature_fn, source, layer=layer,
                                        position=(row, col), n_samples=max(state.erf_samples, 1),
                                        seed=state.seed)
    erf = state.cache[key]  # [H, W]
    anchors = rf_cell_anchors(state, layer, row, col)  # [A, 4]
    centre = rf.centre(row, col)
    radius = erf_radius(erf, 0.95, centre=centre)
    sizes = state.anchor_sizes.get(layer, [])
    anchor_centre = (float((anchors[0, 1] + anchors[0, 3]) / 2),
                     float((anchors[0, 0] + anchors[0, 2]) / 2)) if len(sizes) else None

    fig = Figure(figsize=(9, 4.5))
    left, right = fig.subplots(1, 2)
    plot_rf(erf, rf, sizes, (row, col), left, image=state.image, anchor_centre=anchor_centre,
            title=f"{layer}: unit ({row}, {col}), stride {rf.jump[1]:g}")
    plot_rf(erf, rf, sizes, (row, col), right, anchor_centre=anchor_centre,
            title=f"ERF, theoretical RF {rf.size[1]:g} px")
    half = max(rf.size) / 2 + max(sizes, default=0) / 2 + 4
    right.set_xlim(centre[1] - half, centre[1] + half)
    right.set_ylim(centre[0] + half, centre[0] - half)
    fig.tight_layout()
    return dict(position=(row, col), rf=rf, centre=centre, erf=erf, erf_radius=radius,
                anchors=anchors, figure=fig)


def explorer(state: ExplorerState, *, layer: str | None = None, draw: bool = True):
    """ipywidgets explorer around ``rf_view``: a layer dropdown, x and y sliders, the figure.

    The figure is a PNG in an ``ipywidgets.Image`` (``sodlab.widgets.canvas``), drawn at
    construction, so it shows at once in Jupyter and voila and a papermill run stores it
    without waiting on anything; ``draw=False`` leaves it to the first control change. The
    box has ``update()`` (also ``redraw()``; returns the view), ``image`` and ``status``.
    """
    import ipywidgets as w

    from sodlab.widgets.canvas import figure_image, show_figure, status_line, watch

    h, wd = state.image.shape[-2:]
    layer_box = w.Dropdown(options=state.layers, value=layer or state.layers[0],
                           description="layer")
    xs = w.IntSlider(value=wd // 2, min=0, max=wd - 1, description="x")
    ys = w.IntSlider(value=h // 2, min=0, max=h - 1, description="y")
    info = status_line()
    image = figure_image()

    def update(_change=None) -> dict:
        view = rf_view(state, layer_box.value, xs.value, ys.value)
        rf = view["rf"]
        info.value = (f"unit {view['position']} &middot; theoretical RF {rf.size[1]:g} px, "
                      f"stride {rf.jump[1]:g} &middot; ERF (95 % mass) "
                      f"{2 * view['erf_radius']:g} px &middot; anchors "
                      f"{state.anchor_sizes.get(layer_box.value, [])}")
        show_figure(image, view["figure"])
        return view

    watch((layer_box, xs, ys), update, info)
    box = w.VBox([w.HBox([layer_box, xs, ys]), info, image])
    box.update = box.redraw = update  # lets a notebook or test redraw by hand
    box.image, box.status = image, info
    if draw:
        update()
    return box

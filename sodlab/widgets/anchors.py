"""Anchor explorer: design anchors (strides, sizes, ratios, densification, offset, threshold),
move a ground-truth box, see the anchors, an IoU heatmap and the matched anchors.

The callbacks are plain functions tested without a browser: ``design_levels`` turns the
controls' values into ``sodlab.anchors.LevelSpec`` s, ``anchor_view(design, box)`` matches
the anchors of a canvas to one box with ``sodlab.matching.match_anchors`` and returns the
numbers and a figure (left: the box, the anchors of the cell under its centre, the matched
anchors; right: the best IoU any anchor centred in each cell reaches, per pixel cell of
the finest level). ``explorer(...)`` wraps them in ipywidgets. Taught in notebook
06_dense_anchors.

Shapes: box ``[4]`` xyxy canvas pixels; anchors ``[A, 4]``; heatmap ``[H / s, W / s]``.
Dimension legend: A anchors of the canvas, s the finest stride.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch
import torchvision

from sodlab.anchors import LevelSpec, all_anchors, level_shape
from sodlab.errors import InputError
from sodlab.matching import match_anchors


@dataclass
class Design:
    """An anchor design on a canvas, and the matching rule."""

    levels: list[LevelSpec]
    canvas: tuple[int, int] = (128, 128)  # (H, W) pixels
    pos_iou: float = 0.5
    compensate: bool = False
    compensate_n: int | None = None


def design_levels(strides, sizes, *, ratios=(1.0,), densify=None,
                  offset: float = 0.5) -> list[LevelSpec]:
    """``LevelSpec`` s from per-level strides and sizes (and densification factors)."""
    if len(strides) != len(sizes):
        raise InputError(f"{len(strides)} strides but {len(sizes)} size lists")
    densify = densify or [None] * len(strides)
    try:
        return [LevelSpec(int(t), tuple(float(v) for v in sz), tuple(float(r) for r in ratios),
                          float(offset), tuple(int(n) for n in d) if d else None)
                for t, sz, d in zip(strides, sizes, densify)]
    except ValueError as err:
        raise InputError(str(err)) from None


def anchor_view(design: Design, box, *, figure: bool = True) -> dict:
    """Match one box against every anchor of the canvas.

    Returns ``matched`` (the matched anchors ``[M, 4]``), ``count``, ``best_iou``,
    ``cell_anchors`` (the anchors centred nearest the box centre, per level), ``heat``
    (best IoU of each finest-level cell's anchors with the box) and ``figure``.
    """
    box = torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
    if not bool((box[0, 2:] > box[0, :2]).all()):
        raise InputError(f"the box needs x2 > x1 and y2 > y1, got {box[0].tolist()}")
    anchors = all_anchors(design.levels, design.canvas)  # [A, 4]
    m = match_anchors(anchors, box, pos_iou=design.pos_iou, neg_iou=design.pos_iou,
                      allow_low_quality=False, compensate=design.compensate,
                      compensate_n=design.compensate_n)
    iou = torchvision.ops.box_iou(anchors, box)[:, 0]  # [A]
    matched = anchors[m == 0]
    cx, cy = float(box[0, 0] + box[0, 2]) / 2, float(box[0, 1] + box[0, 3]) / 2
    per_cell, heat = {}, None
    start = 0
    for lv in design.levels:
        h, w = level_shape(lv, design.canvas)
        n = h * w * lv.num_anchors
        lv_iou = iou[start:start + n].view(h, w, lv.num_anchors)  # [h, w, A_cell]
        r = min(max(int(cy // lv.stride), 0), h - 1)
        c = min(max(int(cx // lv.stride), 0), w - 1)
        per_cell[lv.stride] = anchors[start:start + n].view(h, w, -1, 4)[r, c]
        if heat is None:
            heat = lv_iou.max(-1).values
        start += n
    out = {"matched": matched, "count": int(len(matched)), "best_iou": float(iou.max()),
           "cell_anchors": per_cell, "heat": heat, "figure": None}
    if figure:
        out["figure"] = _figure(design, box[0], out)
    return out


def _figure(design: Design, box: torch.Tensor, view: dict):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    def rect(ax, b, **kw):
        x1, y1, x2, y2 = [float(v) for v in b]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **kw))

    H, W = design.canvas
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    ax = axes[0]
    colours = plt.cm.tab10.colors
    for i, (stride, cell) in enumerate(view["cell_anchors"].items()):
        for a in cell:
            rect(ax, a, color=colours[i % 10], lw=0.6, alpha=0.5)
        ax.plot([], [], color=colours[i % 10], label=f"stride {stride}: {len(cell)} per cell")
    for a in view["matched"]:
        rect(ax, a, color="red", lw=1.4)
    rect(ax, box, color="black", lw=2.2)
    ax.set_xlim(0, W)
    ax.set_ylim(H, 0)
    ax.set_aspect("equal")
    ax.set_title(f"{view['count']} matched at IoU >= {design.pos_iou}"
                 + (" + compensation" if design.compensate else "")
                 + f"; best IoU {view['best_iou']:.2f}")
    ax.legend(fontsize=7, loc="lower right")
    stride = design.levels[0].stride
    im = axes[1].imshow(view["heat"].numpy(), vmin=0, vmax=1, cmap="viridis",
                        extent=(0, view["heat"].shape[1] * stride,
                                view["heat"].shape[0] * stride, 0))
    rect(axes[1], box, color="white", lw=1.5)
    axes[1].set_title(f"best IoU per cell, stride {stride}")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    return fig


def explorer(*, canvas: tuple[int, int] = (128, 128), draw: bool = True):
    """ipywidgets: design sliders and box sliders driving ``anchor_view``.

    The figure is a PNG in an ``ipywidgets.Image`` (``sodlab.widgets.canvas``), drawn at
    construction, so it shows at once in Jupyter and voila and a papermill run stores it
    without waiting on anything; ``draw=False`` leaves it to the first control move. The box
    has ``redraw()`` (returns the view, or None for a design that does not parse), ``image``
    and ``status``; a design error is shown in the status line.
    """
    import ipywidgets as W

    from sodlab.widgets.canvas import figure_image, show_figure, status_line, watch

    H, Wd = canvas
    strides = W.Text("8, 16", description="strides")
    sizes = W.Text("8; 16", description="sizes (; per level)")
    dens = W.Text("1; 1", description="densify")
    ratios = W.Text("1", description="ratios h/w")
    offset = W.FloatSlider(0.5, min=0, max=1, step=0.5, description="offset")
    thr = W.FloatSlider(0.5, min=0.1, max=0.9, step=0.05, description="IoU thr")
    comp = W.Checkbox(False, description="scale compensation")
    cx = W.FloatSlider(Wd / 2, min=0, max=Wd, step=0.5, description="box x")
    cy = W.FloatSlider(H / 2, min=0, max=H, step=0.5, description="box y")
    size = W.FloatSlider(10, min=2, max=min(H, Wd), step=0.5, description="box size")
    aspect = W.FloatSlider(1.0, min=0.5, max=2.0, step=0.1, description="box h/w")
    msg, image = status_line(), figure_image()

    def parse(text: str) -> list[list[float]]:
        return [[float(v) for v in part.replace(",", " ").split()] for part in text.split(";")]

    def redraw(*_) -> dict | None:
        try:
            levels = design_levels([int(v[0]) for v in parse(strides.value.replace(",", ";"))],
                                   parse(sizes.value), ratios=parse(ratios.value)[0],
                                   densify=[[int(n) for n in d] for d in parse(dens.value)],
                                   offset=offset.value)
        except (InputError, ValueError, IndexError) as err:
            msg.value = f"<b>design error:</b> {html.escape(str(err))}"
            return None
        w, h = size.value / aspect.value ** 0.5, size.value * aspect.value ** 0.5
        box = [cx.value - w / 2, cy.value - h / 2, cx.value + w / 2, cy.value + h / 2]
        view = anchor_view(Design(levels, canvas, thr.value, comp.value), box)
        msg.value = f"{view['count']} anchors matched; best IoU {view['best_iou']:.3f}"
        show_figure(image, view["figure"])
        return view

    controls = [strides, sizes, dens, ratios, offset, thr, comp, cx, cy, size, aspect]
    watch(controls, redraw, msg)
    box = W.VBox([W.HBox(controls[:4]), W.HBox(controls[4:7]), W.HBox(controls[7:]), msg, image])
    box.redraw, box.image, box.status = redraw, image, msg
    if draw:
        redraw()
    return box

"""SNIPER chip viewer: one image at one scale, its positive chips, valid and invalid objects.

``chip_view(image, boxes, scale_index=..., ...)`` is a plain function returning a matplotlib
figure (the image resized to that scale, its chosen chips in blue, objects valid at the
scale in green, invalid ones in grey, valid ones no chip can hold in red) and the
``ChipPlan``; ``chip_explorer(image, boxes, ...)`` wraps it in ipywidgets (scale, chip side
and stride sliders). Taught in notebook 05_snip_sniper; the chips are ``sodlab.snip``.

Shapes: image ``[3, H, W]`` in [0, 1]; boxes ``[N, 4]`` xyxy original pixels.
Dimension legend: N objects, P chosen chips.
"""

from __future__ import annotations

import torch

from sodlab.boxes import scale_boxes
from sodlab.errors import InputError
from sodlab.snip import DEFAULT_RANGES, DEFAULT_SCALES, ChipPlan, positive_chips
from sodlab.tiling import resize_image


def draw_chips(ax, image: torch.Tensor, boxes: torch.Tensor, plan: ChipPlan, *,
               factor: float) -> None:
    """Draw ``image`` resized by ``factor``, ``plan``'s chips and the objects on ``ax``."""
    from matplotlib.patches import Rectangle

    _, h, w = image.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = resize_image(image, size, antialias=factor < 1)
    ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
    for x1, y1, x2, y2 in plan.chips.tolist():
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="tab:blue",
                               lw=2, ls="--"))
    scaled = scale_boxes(boxes, factor)  # [N, 4]
    for b, ok, lost in zip(scaled.tolist(), plan.valid.tolist(), plan.uncoverable.tolist()):
        colour = "red" if lost else ("lime" if ok else "lightgrey")
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False,
                               color=colour, lw=1.5))
    ax.set_xlim(-0.5, max(size[1], *(plan.chips[:, 2].tolist() or [0])) - 0.5)
    ax.set_ylim(max(size[0], *(plan.chips[:, 3].tolist() or [0])) - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def chip_view(image: torch.Tensor, boxes: torch.Tensor, *, scale_index: int, input_size: int,
              scales=DEFAULT_SCALES, ranges=DEFAULT_RANGES, chip: int = 256, stride: int = 32):
    """``(figure, plan)``: the chips SNIPER picks for ``image`` at ``scales[scale_index]``.

    Scale s resizes the image so its longest side is ``s * input_size`` (as in training).
    """
    import matplotlib.pyplot as plt

    if not 0 <= scale_index < len(scales):
        raise InputError(f"scale index must be in 0..{len(scales) - 1}, got {scale_index}")
    _, h, w = image.shape
    factor = scales[scale_index] * input_size / max(h, w)
    plan = positive_chips(boxes, h, w, scale=factor, valid_range=ranges[scale_index],
                          chip=chip, stride=stride)
    fig, ax = plt.subplots(figsize=(6, 6))
    draw_chips(ax, image, boxes, plan, factor=factor)
    lo, hi = ranges[scale_index]
    ax.set_title(f"scale {scales[scale_index]} (x{factor:.2f}): valid sqrt(wh) in "
                 f"[{lo:g}, {hi:g}] px, {int(plan.valid.sum())} valid, {len(plan.chips)} chips")
    fig.tight_layout()
    return fig, plan


def chip_explorer(image: torch.Tensor, boxes: torch.Tensor, *, input_size: int,
                  scales=DEFAULT_SCALES, ranges=DEFAULT_RANGES, draw: bool = True):
    """ipywidgets: scale, chip side and stride sliders driving ``chip_view``.

    The figure is a PNG in an ``ipywidgets.Image`` (``sodlab.widgets.canvas``), drawn at
    construction, so it shows at once in Jupyter and voila and a papermill run stores it
    without waiting on anything; ``draw=False`` leaves it to the first slider move. The box
    has ``redraw()`` (returns the ``ChipPlan``), ``image`` and ``status``.
    """
    import ipywidgets as W

    from sodlab.widgets.canvas import figure_image, show_figure, status_line, watch

    scale = W.IntSlider(0, min=0, max=len(scales) - 1, description="scale index")
    side = W.IntSlider(input_size // 2, min=64, max=2 * input_size, step=32, description="chip")
    step = W.IntSlider(32, min=16, max=128, step=16, description="stride")
    picture, status = figure_image(), status_line()

    def redraw(*_) -> ChipPlan:
        fig, plan = chip_view(image, boxes, scale_index=scale.value, input_size=input_size,
                              scales=scales, ranges=ranges, chip=side.value, stride=step.value)
        show_figure(picture, fig)
        status.value = (f"scale {scales[scale.value]}: {len(plan.chips)} chips, "
                        f"{int(plan.valid.sum())} of {len(boxes)} objects valid")
        return plan

    watch((scale, side, step), redraw, status)
    box = W.VBox([W.HBox([scale, side, step]), picture, status])
    box.redraw, box.image, box.status = redraw, picture, status
    if draw:
        redraw()
    return box

"""Sliding-window explorer: pick a pyramid level and a window, see it on the image and its score.

The view is a plain function, ``window_view(state, level, x, y)``, returning a matplotlib
figure (the level with the window drawn on it, the level's score map with the window's
cell marked, the window mapped back onto the original image) and the window's score;
``explorer(state)`` wraps it in ipywidgets (a level slider and x/y sliders). Taught in
notebook 01_sliding_window_pyramid; the pyramid is ``sodlab.tiling``, the classifier and
its score map ``sodlab.models.classifiers``.

Shapes: image ``[3, H, W]`` in [0, 1]; a level's score map ``[ny, nx]``.

Dimension legend: H W image height/width, ny nx window rows/columns of a level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sodlab.errors import InputError
from sodlab.models.classifiers import PatchClassifier, score_map
from sodlab.tiling import Level, image_pyramid, map_to_original


@dataclass
class SlidingState:
    """The classifier, the image and its pyramid levels; score maps are computed on demand."""

    model: PatchClassifier
    image: torch.Tensor  # [3, H, W]
    levels: list[Level]
    maps: dict = field(default_factory=dict)  # level index -> score map [ny, nx]

    def score_map(self, level: int) -> torch.Tensor:
        """Score map of ``level`` (window corner = cell index x the network's stride)."""
        if level not in self.maps:
            self.maps[level] = score_map(self.model, self.levels[level].image)
        return self.maps[level]


def make_state(model: PatchClassifier, image: torch.Tensor, *, scale_step: float = 2 ** 0.5,
               first_scale: float = 1.0, max_levels: int | None = None) -> SlidingState:
    """A state over ``image_pyramid(image, ...)`` down to the classifier's window size."""
    levels = image_pyramid(image, scale_step=scale_step, min_size=model.window,
                           first_scale=first_scale, max_levels=max_levels)
    return SlidingState(model=model, image=image, levels=levels)


def snap(state: SlidingState, level: int, x: int, y: int) -> tuple[int, int, int, int]:
    """The window nearest to corner ``(x, y)`` (level px): ``(x, y, row, col)`` on the grid."""
    if not 0 <= level < len(state.levels):
        raise InputError(f"level must be in 0..{len(state.levels) - 1}, got {level}")
    g = state.model.stride
    ny, nx = state.score_map(level).shape
    col = min(max(round(x / g), 0), nx - 1)
    row = min(max(round(y / g), 0), ny - 1)
    return col * g, row * g, row, col


def window_view(state: SlidingState, level: int, x: int, y: int):
    """``(figure, score)`` for the window at corner ``(x, y)`` of ``level`` (snapped to the grid).

    The score is the score map's cell for that window (the same number as classifying the
    cropped window). The figure has three panels: the level, its score map, the original.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    x, y, row, col = snap(state, level, x, y)
    lv = state.levels[level]
    smap = state.score_map(level)                                       # [ny, nx]
    score = float(smap[row, col])
    win = state.model.window
    box = map_to_original(torch.tensor([[x, y, x + win, y + win]], dtype=torch.float32),
                          lv.scale)[0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    axes[0].imshow(lv.image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0].add_patch(Rectangle((x - 0.5, y - 0.5), win, win, fill=False, color="yellow", lw=2))
    axes[0].set_title(f"level {level}: scale {lv.scale:.3f}, {lv.image.shape[-1]}x"
                      f"{lv.image.shape[-2]} px")
    im = axes[1].imshow(smap.numpy(), vmin=0, vmax=1, cmap="magma")
    axes[1].add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, color="cyan", lw=2))
    axes[1].set_title(f"score map cell ({row}, {col}) = {score:.3f}")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    axes[2].imshow(state.image.permute(1, 2, 0).clamp(0, 1).numpy())
    x1, y1, x2, y2 = box.tolist()
    axes[2].add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                color="yellow", lw=2))
    axes[2].set_title(f"in original pixels: {x2 - x1:.0f} px box at ({x1:.0f}, {y1:.0f})")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig, score


def explorer(state: SlidingState, *, draw: bool = True):
    """ipywidgets: a level slider and window x/y sliders driving ``window_view``.

    The figure is a PNG in an ``ipywidgets.Image`` (``sodlab.widgets.canvas``), drawn at
    construction, so it shows at once in Jupyter and voila and a papermill run stores it
    without waiting on anything; ``draw=False`` leaves it to the first slider move. The box
    has ``redraw()`` (draws the current window, returns the score), ``image`` and ``status``.
    """
    import ipywidgets as W

    from sodlab.widgets.canvas import figure_image, show_figure, status_line, watch

    level = W.IntSlider(0, min=0, max=len(state.levels) - 1, description="level")
    xs = W.IntSlider(0, min=0, step=state.model.stride, description="x (level px)")
    ys = W.IntSlider(0, min=0, step=state.model.stride, description="y (level px)")
    image, status = figure_image(), status_line()

    def redraw(*_) -> float:
        h, w = state.levels[level.value].image.shape[-2:]
        xs.max, ys.max = w - state.model.window, h - state.model.window
        fig, score = window_view(state, level.value, xs.value, ys.value)
        show_figure(image, fig)
        status.value = f"level {level.value}, window ({xs.value}, {ys.value}): score {score:.3f}"
        return score

    watch((level, xs, ys), redraw, status)
    box = W.VBox([W.HBox([level, xs, ys]), image, status])
    box.redraw, box.image, box.status = redraw, image, status
    if draw:
        redraw()
    return box

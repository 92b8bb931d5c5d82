"""Plotting helpers: boxes coloured by size bucket on an image, size histograms with buckets.

Layer L1 (matplotlib; imports only ``sodlab.boxes``). Taught in notebook 00
(what_is_small); every notebook that shows detections or sizes uses it.

- ``show_image(ax, image)``: an image given as a float tensor ``[3, H, W]`` in [0, 1], a
  ``[H, W, 3]`` / ``[H, W]`` array (uint8 or float) or a PIL image.
- ``draw_boxes(ax, boxes, areas=None, ...)``: ``[N, 4]`` xyxy pixel boxes, outlined in the
  colour of their size bucket (``bucket_of(area)``; area = the COCO ``area`` field when given,
  else the box area), optional labels and scores; returns the patches drawn.
- ``draw_relations(ax, boxes, strength)``: lines between box centres, as wide as the
  attention ``strength [N, N]`` between them (relation modules, notebook 09).
- ``bucket_legend(ax, extra=...)``: a legend of the bucket colours with their area ranges
  (and any extra handles).
- ``BUCKET_COLORS`` (hex) and ``BUCKET_RGB`` (8-bit tuples): the one set of bucket colours.
- ``size_axis(ax)``: a log x axis for sizes, ticks at 2, 4, 8, ... px.
- ``show(fig)``: a figure as a PNG output in Jupyter, papermill and the HTML export, the one
  way notebooks show a ``matplotlib.figure.Figure`` they built themselves.
- ``figure_png(fig, dpi=)``: a figure as PNG bytes on white (Agg, whatever the backend),
  closed afterwards: the pictures of the explorers (``sodlab.widgets``) and the benchmark
  page's plots (``sodlab.bench.page``).
- ``size_histogram(ax, sizes, ...)``: a histogram of ``sqrt(area)`` (px) on a log axis with
  the bucket boundaries 16, 32, 96 drawn and labelled.

Every function takes a matplotlib ``Axes`` (or makes one when ``ax=None``) and returns
what it drew, so a notebook composes figures itself. Dimension legend: N boxes, H x W image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sodlab.boxes import AREA_RANGES, bucket_of

BUCKET_COLORS: dict[str, str] = {  # the bucket colours everywhere (matplotlib's tab10)
    "tiny": "#d62728",    # red
    "small": "#ff7f0e",   # orange
    "medium": "#2ca02c",  # green
    "large": "#1f77b4",   # blue
}
# The same colours as 8-bit (r, g, b), for drawing with PIL.
BUCKET_RGB: dict[str, tuple[int, int, int]] = {
    name: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)) for name, c in BUCKET_COLORS.items()
}
# sqrt(area) boundaries of the buckets: tiny <= 16, small <= 32, medium <= 96 (inclusive).
BOUNDARIES: dict[str, float] = {"tiny": 16.0, "small": 32.0, "medium": 96.0}


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def to_hwc(image) -> np.ndarray:
    """An image as a ``[H, W, 3]`` (or ``[H, W]``) numpy array ready for ``imshow``."""
    if hasattr(image, "convert") and not hasattr(image, "shape"):  # PIL
        return np.asarray(image.convert("RGB"))
    arr = _np(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)  # [3, H, W] -> [H, W, 3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32), 0.0, 1.0)
    return arr


def show_image(ax, image, *, title: str | None = None):
    """Show an image without axes ticks; returns the Axes."""
    ax = _axes(ax)
    arr = to_hwc(image)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def draw_boxes(ax, boxes, areas=None, *, labels: Sequence[str] | None = None,
               scores=None, linewidth: float = 1.5, linestyle: str = "-",
               color: str | None = None, fontsize: float = 7):
    """Outline ``boxes [N, 4]`` (xyxy px) coloured by size bucket; returns the patches.

    ``areas [N]``: the area deciding each box's bucket (default: the box's own w*h).
    ``color`` overrides the bucket colours (for, e.g., ground truth vs detections).
    """
    from matplotlib.patches import Rectangle

    ax = _axes(ax)
    b = _np(boxes).reshape(-1, 4).astype(np.float64)  # [N, 4]
    a = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) if areas is None else \
        _np(areas).reshape(-1).astype(np.float64)  # [N]
    s = None if scores is None else _np(scores).reshape(-1)
    patches = []
    for i, (x1, y1, x2, y2) in enumerate(b):
        c = color or BUCKET_COLORS[bucket_of(float(a[i]))]
        rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                         linewidth=linewidth, linestyle=linestyle)
        ax.add_patch(rect)
        patches.append(rect)
        text = []
        if labels is not None:
            text.append(str(labels[i]))
        if s is not None:
            text.append(f"{float(s[i]):.2f}")
        if text:
            ax.text(x1, y1 - 1, " ".join(text), color=c, fontsize=fontsize, va="bottom")
    return patches


def draw_relations(ax, boxes, strength, *, min_strength: float = 0.02,
                   max_width: float = 6.0, color: str = "#17becf", symmetric: bool = True):
    """Lines between the centres of ``boxes [N, 4]``, width and opacity by ``strength [N, N]``.

    ``strength[i, j]``: how much box i attends to box j (``symmetric``: the mean of both
    directions, one line per pair). Pairs below ``min_strength`` are not drawn; the
    strongest pair gets ``max_width``. Returns the lines drawn, strongest last.
    """
    ax = _axes(ax)
    b = _np(boxes).reshape(-1, 4).astype(np.float64)  # [N, 4]
    w = _np(strength).astype(np.float64).reshape(len(b), len(b))  # [N, N]
    if symmetric:
        w = 0.5 * (w + w.T)
    c = 0.5 * (b[:, :2] + b[:, 2:])  # [N, 2] centres
    pairs = [(w[i, j], i, j) for i in range(len(b)) for j in range(len(b))
             if i != j and (not symmetric or i < j) and w[i, j] >= min_strength]
    top = max((p[0] for p in pairs), default=1.0)
    lines = []
    for v, i, j in sorted(pairs):
        (line,) = ax.plot([c[i, 0], c[j, 0]], [c[i, 1], c[j, 1]], color=color,
                          linewidth=max_width * v / top, alpha=min(1.0, 0.3 + 0.7 * v / top),
                          solid_capstyle="round")
        lines.append(line)
    return lines


def bucket_legend(ax, *, loc: str = "upper right", fontsize: float = 8, extra: Sequence = (),
                  **kwargs):
    """A legend of the bucket colours with their COCO area ranges.

    ``extra``: more legend handles after the buckets' (e.g. a dashed line for crowd boxes);
    ``kwargs`` go to ``ax.legend`` (e.g. ``bbox_to_anchor=(1.01, 1)`` with ``loc="upper left"``
    to put the legend outside the axes, off the image).
    """
    from matplotlib.lines import Line2D

    ax = _axes(ax)
    handles = []
    for name, col in BUCKET_COLORS.items():
        lo, hi = AREA_RANGES[name]
        lo_s = "0" if name in ("tiny", "small") else f"{math.sqrt(lo):.0f}²"
        hi_s = "∞" if hi >= 1e9 else f"{math.sqrt(hi):.0f}²"
        handles.append(Line2D([], [], color=col, lw=2, label=f"{name} [{lo_s}, {hi_s}]"))
    return ax.legend(handles=handles + list(extra), loc=loc, fontsize=fontsize,
                     title="area (px²)", title_fontsize=fontsize, **kwargs)


def size_axis(ax, *, lo: float = 1.0, hi: float = 1024.0):
    """A log x axis with plain ticks at powers of two (2, 4, 8, 16, 32, ...) between lo and hi."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = [2.0**k for k in range(0, 13) if lo <= 2.0**k <= hi]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.0f}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    return ax


def size_histogram(ax, sizes, *, bins: int | Sequence[float] = 40, log: bool = True,
                   label: str | None = None, color: str = "0.35", boundaries: bool = True,
                   xlabel: str = "sqrt(area) (px)"):
    """Histogram of object sizes ``sqrt(area)`` with the bucket boundaries 16/32/96 marked.

    Returns the Axes. ``log`` uses logarithmic bins and x axis (sizes must be > 0).
    """
    ax = _axes(ax)
    x = _np(sizes).reshape(-1).astype(np.float64)
    x = x[np.isfinite(x)]
    if log:
        x = x[x > 0]
        if isinstance(bins, int):
            lo = max(float(x.min()) if x.size else 1.0, 0.5)
            hi = max(float(x.max()) if x.size else 100.0, lo * 1.01)
            bins = np.geomspace(lo, hi, bins + 1)
        size_axis(ax, lo=float(np.min(bins)) * 0.9, hi=float(np.max(bins)) * 1.1)
    ax.hist(x, bins=bins, color=color, alpha=0.8, label=label)
    if boundaries:
        ymax = ax.get_ylim()[1]
        for name, edge in BOUNDARIES.items():
            ax.axvline(edge, color=BUCKET_COLORS[name], lw=1.5, ls="--")
            ax.text(edge, ymax * 0.97, f" {name} ≤ {edge:.0f}", color=BUCKET_COLORS[name],
                    rotation=90, va="top", ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("objects")
    return ax


def show(fig, *, dpi: int = 100) -> None:
    """Display ``fig`` as a PNG image (any backend) and release it.

    A ``Figure`` made without pyplot is not drawn by the inline backend, and ``display(fig)``
    prints ``<Figure size ...>`` where no inline backend was set up; a PNG output renders
    the same in Jupyter, in papermill's executed copy and in the HTML export.
    """
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    display(Image(data=buf.getvalue(), format="png"))
    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)


def figure_png(fig, *, dpi: float | None = None, close: bool = True) -> bytes:
    """PNG bytes of ``fig`` (Agg), closed afterwards unless ``close=False``.

    Closing matters for a pyplot figure made while a cell runs: the inline backend would
    otherwise show it a second time, as a static output under the cell.
    """
    import io

    buf = io.BytesIO()
    # white behind the axes: readable on a dark notebook theme too
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, facecolor="white")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)  # a no-op for a Figure that pyplot does not manage
    return buf.getvalue()

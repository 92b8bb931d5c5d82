"""The picture of every explorer: a matplotlib figure rendered to PNG and shown in an Image widget.

An explorer used to display its figure inside an ``ipywidgets.Output``; such a figure is
shown only where a front end routes the captured output, and a run under papermill/nbclient
had to leave the first figure to the first slider move. Here a figure becomes PNG bytes
(``sodlab.viz.figure_png``: matplotlib's ``savefig``, which renders PNG with Agg whatever the
backend) and sets the ``value`` of an ``ipywidgets.Image`` (``figure_image``,
``show_figure``). That is one widget-state update: live Jupyter and voila draw it at once, and papermill/nbclient
only store it, so nothing can wait on a front end. ``watch`` ties controls to a redraw and
puts an error into the explorer's status line instead of losing it in the kernel's log.

Used by the explorers of notebooks 01 (``sliding``), 04 (``receptive``), 05 (``chips``) and
06 (``anchors``).

Shapes: no tensors; a figure of W x H inches at ``dpi`` becomes a ``[H * dpi, W * dpi]`` PNG.
Dimension legend: W H figure width/height in inches.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

from sodlab.viz import figure_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURE_CLASS = "sodlab-figure"  # CSS class of the Image widget (the browser tests find it)
STATUS_CLASS = "sodlab-status"  # CSS class of the status line
ERROR_CLASS = "sodlab-error"    # CSS class of an error shown in the status line


def figure_image(fig=None, *, dpi: float | None = None):
    """An ``ipywidgets.Image`` (PNG) that shrinks to its container; shows ``fig`` if given."""
    import ipywidgets as W

    # flex-start: a VBox would otherwise stretch a narrow figure to its full width
    image = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto",
                                                  align_self="flex-start"))
    image.add_class(FIGURE_CLASS)
    if fig is not None:
        show_figure(image, fig, dpi=dpi)
    return image


def show_figure(image, fig, *, dpi: float | None = None) -> None:
    """Replace the picture of ``image`` by ``fig`` (which is closed)."""
    image.value = figure_png(fig, dpi=dpi)


def status_line(text: str = ""):
    """An ``ipywidgets.HTML`` for an explorer's numbers and errors."""
    import ipywidgets as W

    status = W.HTML(text)
    status.add_class(STATUS_CLASS)
    return status


def error_html(err: BaseException) -> str:
    """An exception as one line of HTML for the status line."""
    return (f'<span class="{ERROR_CLASS}" style="color: #cf222e"><b>error:</b> '
            f"{html.escape(type(err).__name__)}: {html.escape(str(err))}</span>")


def watch(controls: Iterable, redraw: Callable[[], object], status) -> Callable:
    """Call ``redraw()`` on every value change of ``controls``; returns the observer.

    An exception from ``redraw`` goes to ``status`` (an ``ipywidgets.HTML``): inside a
    widget callback it would otherwise reach only the kernel's log. Calling ``redraw``
    directly still raises.
    """
    def on_change(_change=None) -> None:
        try:
            redraw()
        except Exception as err:  # shown to the reader, not swallowed
            status.value = error_html(err)

    for control in controls:
        control.observe(on_change, names="value")
    return on_change

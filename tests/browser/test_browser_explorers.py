"""The explorers of notebooks 01, 04, 05 and 06 in voila and headless Chromium, and in papermill.

Each page is a small generated notebook that builds the explorer with the teaching
notebook's own cell on tiny inputs (``browser_pages``). In the browser: the first figure
is there without any interaction, an arrow key on a focused slider redraws it (the pixels
of the figure change) and the page shows no error. Under papermill the same cells run to
the end and the executed notebook's widget state holds each first figure as a PNG.
"""

from __future__ import annotations

import base64
import io

import nbformat
import numpy as np
import pytest
from browser_pages import PAGES, write_page
from browser_tools import start_voila
from PIL import Image

pytestmark = pytest.mark.slow

LOAD_MS = 240_000   # a kernel start and the torch import on a busy two-core machine
REDRAW_MS = 60_000
FIGURE = "img.sodlab-figure"
FIGURE_READY = f"""(src) => {{
    const img = document.querySelector("{FIGURE}");
    return img !== null && img.src !== src && img.complete && img.naturalWidth > 0;
}}"""
# voila's lab template links Font Awesome from a CDN; the page fixture answers it empty
VOILA_CDN = ("https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free",)


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    root = tmp_path_factory.mktemp("explorers")
    for name in PAGES:
        write_page(name, root)
    yield from start_voila(root)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)  # [H, W, 3]


@pytest.mark.parametrize("name", list(PAGES))
def test_explorer_draws_at_once_and_follows_the_keyboard(name, voila, page):
    pg, log = page
    pg.goto(voila.page_url(f"{name}.ipynb"), wait_until="domcontentloaded", timeout=LOAD_MS)
    figure = pg.locator(FIGURE)
    figure.wait_for(state="visible", timeout=LOAD_MS)  # no click, no key: it is drawn
    pg.wait_for_function(FIGURE_READY, arg="", timeout=REDRAW_MS)
    first = _pixels(figure.screenshot())
    assert first.shape[0] > 100 and first.shape[1] > 100
    assert first.std() > 10, "the first figure is blank"
    src = figure.get_attribute("src")

    label = PAGES[name].slider
    slider = pg.locator(".widget-slider").filter(
        has=pg.locator(f'label.widget-label:text-is("{label}")'))
    assert slider.count() == 1, f"no single slider labelled {label!r}"
    readout = slider.locator(".widget-readout")
    value = readout.inner_text()
    slider.locator(".noUi-handle").focus()
    for _ in range(PAGES[name].presses):
        pg.keyboard.press("ArrowRight")
    pg.wait_for_function(FIGURE_READY, arg=src, timeout=REDRAW_MS)
    assert readout.inner_text() != value
    second = _pixels(figure.screenshot())
    changed = (second != first).any(-1).mean() if second.shape == first.shape else 1.0
    assert changed > 0, "the slider moved but the figure stayed the same"

    assert pg.locator(".sodlab-error").count() == 0, pg.locator(".sodlab-error").all_inner_texts()
    stderr = pg.locator('[data-mime-type="application/vnd.jupyter.stderr"]')
    assert stderr.count() == 0, stderr.all_inner_texts()
    assert "Traceback" not in pg.inner_text("body")
    assert not log.page_errors and not log.console_errors, (log.page_errors, log.console_errors)
    assert all(url.startswith(VOILA_CDN) for url in log.external), log.external
    assert "Traceback" not in voila.log.read_text()


def _widget_state(nb) -> dict:
    return nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]


def _first_png(state: dict, model_id: str) -> bytes:
    """The PNG of the one Image widget under the box ``model_id`` in a saved widget state."""
    found = []

    def walk(mid: str) -> None:
        model = state[mid]
        if model["model_name"] == "ImageModel":
            found.extend(base64.b64decode(b["data"]) for b in model.get("buffers", [])
                         if b["path"] == ["value"])
        for child in model["state"].get("children", []):
            walk(child.removeprefix("IPY_MODEL_"))

    walk(model_id)
    assert len(found) == 1, f"{len(found)} image values under the explorer"
    return found[0]


def test_explorer_cells_run_under_papermill(tmp_path):
    """The four explorer cells in one kernel: nothing waits, each first figure is stored."""
    import papermill as pm

    cells = []
    for name in PAGES:
        cells += nbformat.read(str(write_page(name, tmp_path)), as_version=4).cells
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    src, out = tmp_path / "all.ipynb", tmp_path / "all.out.ipynb"
    nbformat.write(nb, str(src))
    pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path),
                        execution_timeout=120, progress_bar=False, log_output=False,
                        extra_arguments=["--IPKernelApp.log_level=ERROR"])
    done = nbformat.read(str(out), as_version=4)
    state = _widget_state(done)
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for c in done.cells[1::2] for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == len(PAGES)
    for model_id in views:
        png = _first_png(state, model_id)
        assert _pixels(png).std() > 10
    assert not [o for c in done.cells for o in c.outputs if o["output_type"] == "error"]

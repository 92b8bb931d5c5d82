"""The report pages opened from disk in headless Chromium: images load, links resolve, no errors.

A tiny fake run is made with the harness's own pieces (``sodlab.bench.record`` for the
JSON, ``sodlab.bench.notebooks.export_html`` for the executed pages, ``report.write_index``
for the index): one notebook that drew a figure, one that failed, one with no HTML. No
kernel runs. ``REPORT_PAGES`` lists the pages checked; ``bench.html`` is the benchmark page
of ``sodlab.bench.page``, written by ``fake_run`` from a fake suite result
(``tests/test_bench_page.fake_bench``): its plots load, its links resolve, no errors.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
from test_bench_page import fake_bench

from sodlab.bench import page as bench_page
from sodlab.bench import record, report
from sodlab.bench.notebooks import NotebookResult, export_html
from sodlab.widgets.canvas import figure_png

pytestmark = pytest.mark.slow

REPORT_PAGES = ["index.html", "bench.html"]
IMAGES = """() => Array.from(document.images).map(
    i => ({src: i.src.slice(0, 80), complete: i.complete, width: i.naturalWidth}))"""
LINKS = "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"


def _executed(path: Path, stem: str, *, figure: bool, error: str | None) -> None:
    """An executed notebook as papermill leaves it: a figure output, or an error output."""
    cell = nbformat.v4.new_code_cell("plot()", execution_count=1)
    if figure:
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot(np.arange(10) ** 2)
        ax.set_title(stem)
        png = base64.b64encode(figure_png(fig)).decode()
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png,
                                                                      "text/plain": "<Figure>"})]
    if error:
        cell.outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue=error,
                                                   traceback=[f"ValueError: {error}"]))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}"), cell])
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def fake_run(reports: Path) -> list[dict]:
    """Write a tiny run into ``reports`` (index.html and what it links to); returns its rows."""
    results = reports.parent / "results"
    record(results, "00_fine", {"AP": 0.25, "shares": {"tiny": 0.5}}, quick=False, seed=0)
    rows = []
    for stem, figure, error, html in (("00_fine", True, None, True),
                                      ("01_broken", False, "broken on purpose", True),
                                      ("02_no_html", False, None, False)):
        executed = reports / "executed" / f"{stem}.ipynb"
        _executed(executed, stem, figure=figure, error=error)
        res = NotebookResult(stem=stem, status="failed" if error else "ok", seconds=1.5,
                             quick=True, error=f"ValueError: {error}" if error else None,
                             executed=f"executed/{stem}.ipynb")
        if html:
            export_html(executed, reports / "html" / f"{stem}.html")
            res.html = f"html/{stem}.html"
        if not error:
            record(reports / "nb", stem, {"AP": 0.2, "shares": {"tiny": 0.4}}, quick=True,
                   seed=0)
            res.json = f"nb/{stem}.json"
            res.numbers = json.loads((reports / res.json).read_text())["numbers"]
        rows.append(dataclasses.asdict(res))
    bench = reports / "bench.json"
    run = fake_bench()  # the technique suite on hand-made detections, and eval_speed
    bench.write_text(json.dumps(run))
    report.write_index(reports, rows, provenance={"commit": "abc123", "threads": 1},
                       results_dir=results, bench_path=bench)
    bench_page.write_page(run, reports)  # bench.html, bench.csv and the plots, as sodlab bench does
    return rows


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    reports = tmp_path_factory.mktemp("run") / "reports"
    rows = fake_run(reports)
    return reports, rows


def _images_load(pg) -> list[dict]:
    images = pg.evaluate(IMAGES)
    bad = [i for i in images if not (i["complete"] and i["width"] > 0)]
    assert not bad, f"images that did not load on {pg.url}: {bad}"
    return images


@pytest.mark.parametrize("name", REPORT_PAGES)
def test_report_page_from_disk(name, reports, page):
    reports_dir, rows = reports
    path = reports_dir / name
    assert path.is_file(), f"fake_run wrote no reports/{name}"
    pg, log = page
    pg.goto(path.as_uri(), wait_until="load")
    images = _images_load(pg)
    links = [u for u in pg.evaluate(LINKS) if urlparse(u).scheme == "file"]
    targets = {Path(unquote(urlparse(u).path)) for u in links}
    missing = [t for t in targets if not t.is_file()]
    assert not missing, f"links from {name} to missing files: {missing}"
    assert not log.console_errors and not log.page_errors, (log.console_errors, log.page_errors)
    assert not log.external, f"{name} loads assets from outside: {log.external}"
    if name == "bench.html":  # every plot shows, and the page links its JSON, CSV and index
        assert len(images) == len(bench_page.PLOTS), images
        want = {reports_dir / f for f in ("bench.json", "bench.csv", "index.html")}
        assert want <= targets, (want, targets)
        assert "copy-paste" in pg.inner_text("body")  # a skipped technique, with its reason
        return
    assert reports_dir / "bench.html" in targets  # the index links the benchmark page
    # every executed notebook the run made is linked, and opens with its figure
    want = {reports_dir / r["html"] for r in rows if r.get("html")}
    assert want and want <= targets, (want, targets)
    for target in sorted(want):
        pg.goto(target.as_uri(), wait_until="load")
        images = _images_load(pg)
        stem = target.stem
        assert stem in pg.inner_text("body")
        if stem == "00_fine":
            assert len(images) >= 1, "the executed notebook lost its figure"
        if stem == "01_broken":
            assert "broken on purpose" in pg.inner_text("body")
    assert {reports_dir / r["json"] for r in rows if r.get("json")} <= targets

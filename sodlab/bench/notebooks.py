"""Run the notebooks with papermill, keep executed copies and HTML, write the report index.

Layer L4. ``sodlab notebooks`` and the notebook tests call ``run_notebooks``; the
lecturer and the maintainer read ``reports/index.html`` (written by ``report``).

Each ``notebooks/NN_name.ipynb`` runs in a fresh kernel (``python3``: jupyter_client starts
it with the interpreter running this code, so the venv's packages are the ones used) with
``notebooks/`` as working directory and the parameters ``QUICK``, ``SEED``, ``OUT_DIR``
(absolute ``<reports>/nb``), ``DATA_DIR`` and ``PROGRESS=False``. Written under
``reports_dir``: ``executed/NN_name.ipynb``, ``html/NN_name.html``, ``nb/NN_name.json`` (by
the notebook itself), ``notebooks.json`` (the latest result of every notebook ever run
into this folder, so ``--only`` updates rows without losing the others) and ``index.html``.
A failing notebook is recorded with its error and the next one still runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from sodlab.files import repo_root

KERNEL_NAME = "python3"
QUICK_LIMIT_S = 90.0  # docs/design.md: every notebook runs in quick mode in under 90 s


@dataclasses.dataclass
class NotebookResult:
    """The outcome of one notebook run."""

    stem: str                      # "00_what_is_small"
    status: str                    # "ok" or "failed"
    seconds: float
    quick: bool
    error: str | None = None       # one line (exception name and message) when failed
    executed: str | None = None    # path of the executed copy, relative to reports_dir
    html: str | None = None        # path of its HTML, relative to reports_dir
    json: str | None = None        # path of the numbers JSON it wrote, relative to reports_dir
    numbers: dict | None = None    # the "numbers" of that JSON

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def slow(self) -> bool:
        """Over the 90 s quick-mode limit (only meaningful in quick mode)."""
        return self.quick and self.seconds > QUICK_LIMIT_S



def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def find_notebooks(only: list[str] | None = None, folder: str | os.PathLike | None = None
                   ) -> list[Path]:
    """``NN_*.ipynb`` in ``folder`` (default ``notebooks/``), sorted; ``only`` filters by prefix.

    An entry of ``only`` matches a notebook whose stem starts with it ("03" or
    "03_fpn"); an entry that matches nothing raises ``InputError``.
    """
    from sodlab.errors import InputError

    folder = Path(folder) if folder else notebooks_dir()
    paths = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())
    if not only:
        return paths
    picked = []
    for want in only:
        want = want.strip()
        hits = [p for p in paths if p.stem.startswith(want)]
        if not want or not hits:
            names = ", ".join(p.stem for p in paths) or "none"
            raise InputError(f"--only {want!r} matches no notebook (have: {names})")
        picked += [p for p in hits if p not in picked]
    return sorted(picked)


def _one_line(exc: BaseException) -> str:
    name = getattr(exc, "ename", None) or type(exc).__name__
    value = getattr(exc, "evalue", None) or str(exc)
    line = " ".join(str(value).split())
    return f"{name}: {line}"[:500]


def export_html(executed: Path, out: Path) -> None:
    """The executed notebook as a standalone HTML page (nbconvert's HTMLExporter)."""
    import nbformat
    from nbconvert import HTMLExporter

    from sodlab.files import write_bytes

    nb = nbformat.read(str(executed), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    write_bytes(out, body.encode("utf-8"))


INLINE = "module://matplotlib_inline.backend_inline"


def inline_figures():
    """Start kernels with matplotlib's inline backend, whatever ``MPLBACKEND`` says.

    A kernel inherits the environment: under ``MPLBACKEND=Agg`` (CI, headless shells)
    ``plt.show()`` draws nothing into the notebook, so its executed copy and HTML would
    have no figures. The inline backend turns every figure into a PNG output.
    """
    from sodlab.files import env_set

    return env_set("MPLBACKEND", INLINE)


def run_one(path: Path, *, quick: bool, seed: int, reports_dir: Path,
            data_dir: str | None, timeout_per_cell: int | None) -> NotebookResult:
    """Execute one notebook with papermill and export it; never raises for a notebook error."""
    import papermill as pm

    stem = path.stem
    executed = reports_dir / "executed" / f"{stem}.ipynb"
    html = reports_dir / "html" / f"{stem}.html"
    out_json = reports_dir / "nb" / f"{stem}.json"
    for p in (executed, html):
        p.parent.mkdir(parents=True, exist_ok=True)
    if out_json.exists():  # a stale JSON from an earlier run must not pass as this run's
        out_json.unlink()
    params = {"QUICK": bool(quick), "SEED": int(seed), "OUT_DIR": str(reports_dir / "nb"),
              "DATA_DIR": data_dir, "PROGRESS": False}
    error = None
    t0 = time.perf_counter()
    try:
        with inline_figures():
            pm.execute_notebook(str(path), str(executed), parameters=params,
                                kernel_name=KERNEL_NAME, language="python",
                                cwd=str(path.parent), progress_bar=False, log_output=False,
                                execution_timeout=timeout_per_cell,
                                # the kernel's start-up warnings would clutter the CLI's lines
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except Exception as exc:  # PapermillExecutionError, timeouts, a dead kernel
        error = _one_line(exc)
    seconds = time.perf_counter() - t0
    res = NotebookResult(stem=stem, status="failed" if error else "ok",
                         seconds=round(seconds, 2), quick=quick, error=error)
    if executed.exists():
        res.executed = executed.relative_to(reports_dir).as_posix()
        try:
            export_html(executed, html)
            res.html = html.relative_to(reports_dir).as_posix()
        except Exception as exc:  # a report without HTML is still a report
            res.error = (res.error + "; " if res.error else "") + "HTML: " + _one_line(exc)
    if out_json.exists():
        res.json = out_json.relative_to(reports_dir).as_posix()
        try:
            res.numbers = json.loads(out_json.read_text()).get("numbers")
        except (OSError, ValueError, AttributeError):
            res.numbers = None
    elif res.ok:
        res.status = "failed"
        res.error = f"the notebook wrote no {out_json.name}"
    return res


def _merge_history(reports_dir: Path, results: list[NotebookResult], provenance: dict
                   ) -> list[dict]:
    """Update ``notebooks.json`` with this run's results and return every row, by stem."""
    from sodlab.files import write_json

    hist_path = reports_dir / "notebooks.json"
    rows: dict[str, dict] = {}
    try:
        for row in json.loads(hist_path.read_text()).get("notebooks", []):
            rows[row["stem"]] = row
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        rows = {}
    for r in results:
        rows[r.stem] = dataclasses.asdict(r)
    ordered = [rows[k] for k in sorted(rows)]
    write_json(hist_path, {"notebooks": ordered, "provenance": provenance})
    return ordered


def refresh_index(reports_dir: str | os.PathLike = "reports") -> Path | None:
    """Rewrite ``index.html`` from ``notebooks.json`` (e.g. after ``sodlab bench``); None if
    no notebooks were run into this folder yet."""
    from sodlab.bench.report import write_index

    reports = Path(reports_dir)
    try:
        hist = json.loads((reports / "notebooks.json").read_text())
        rows = list(hist["notebooks"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return write_index(reports, rows, provenance=hist.get("provenance"),
                       results_dir=repo_root() / "results", bench_path=reports / "bench.json")


def run_notebooks(*, quick: bool = True, only: list[str] | None = None,
                  data_dir: str | os.PathLike | None = None,
                  reports_dir: str | os.PathLike = "reports", progress: bool = True,
                  timeout_per_cell: int | None = 600, seed: int = 0,
                  notebooks: str | os.PathLike | None = None,
                  on_result=None) -> list[NotebookResult]:
    """Run every notebook (or those whose stem starts with an entry of ``only``).

    Returns one ``NotebookResult`` per notebook run and writes ``reports_dir/index.html``.
    ``on_result(result)`` is called after each notebook (the CLI prints as it goes).
    ``notebooks`` is the folder to take them from (default: the repository's).
    """
    from tqdm.auto import tqdm

    from sodlab.bench.report import write_index
    from sodlab.errors import InputError
    from sodlab.provenance import provenance

    paths = find_notebooks(only, notebooks)
    if not paths:
        raise InputError(f"no notebooks NN_*.ipynb in {Path(notebooks or notebooks_dir())}")
    reports = Path(reports_dir).resolve()
    reports.mkdir(parents=True, exist_ok=True)
    data = None
    if data_dir is not None:
        data_path = Path(data_dir).resolve()
        if not data_path.is_dir():
            raise InputError(f"--data {data_dir}: no such dataset folder")
        data = str(data_path)
    t_all = time.perf_counter()
    results = []
    for path in tqdm(paths, desc="notebooks", disable=not progress):
        res = run_one(path, quick=quick, seed=seed, reports_dir=reports, data_dir=data,
                      timeout_per_cell=timeout_per_cell)
        results.append(res)
        if on_result:
            on_result(res)
    data_hash = None
    if data is not None:
        from sodlab.bench import _dataset_hash

        data_hash = _dataset_hash(data)
    prov = provenance(seed=seed, data_hash=data_hash, quick=quick,
                      seconds=time.perf_counter() - t_all,
                      data_dir=str(data_dir) if data_dir is not None else "embedded", kernel=KERNEL_NAME)
    rows = _merge_history(reports, results, prov)
    write_index(reports, rows, provenance=prov, results_dir=repo_root() / "results",
                bench_path=reports / "bench.json")
    return results

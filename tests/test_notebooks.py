"""Every notebook runs in quick mode through the harness; the harness and index.html work."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from sodlab.bench import notebooks as nbrun
from sodlab.bench import record, report, run_benchmarks
from sodlab.bench.study_view import earlier_images
from sodlab.errors import InputError

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_quick(path, quick_dataset, tmp_path):
    # quick_dataset makes the embedded dataset once; the notebook finds it in the cache. On a
    # clean machine the run cache is empty, so a cell may train several quick models (notebook
    # 05 trains four recipes in one cell): the cell limit allows for that.
    results = nbrun.run_notebooks(quick=True, only=[path.stem], reports_dir=tmp_path,
                                  progress=False, timeout_per_cell=2400)
    assert [r.stem for r in results] == [path.stem]
    res = results[0]
    assert res.ok, res.error
    out = json.loads((tmp_path / "nb" / f"{path.stem}.json").read_text())
    assert out["notebook"] == path.stem
    assert isinstance(out["numbers"], dict) and out["numbers"]
    prov = out["provenance"]
    assert prov["mode"] == "quick" and prov["seed"] == 0 and "commit" in prov
    assert (tmp_path / "executed" / f"{path.stem}.ipynb").is_file()
    assert (tmp_path / "html" / f"{path.stem}.html").is_file()
    assert path.stem in (tmp_path / "index.html").read_text()
    problems = output_problems(nbformat.read(str(tmp_path / "executed" / f"{path.stem}.ipynb"),
                                             as_version=4))
    assert not problems, problems


MAX_STREAM_LINES = 40


def output_problems(nb) -> list[str]:
    """What a student should not see in an executed notebook (issue list of the teaching rules):
    a figure printed as ``<Figure size ...>`` instead of drawn, a printed stream or a cell's
    value shown as plain text longer than ``MAX_STREAM_LINES`` lines (a dump, not a table), a
    pandas table cut to ``...`` rows; and a notebook without a single image."""
    problems, images = [], 0
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            images += "image/png" in data
            text = data.get("text/plain", "")
            if isinstance(text, list):
                text = "".join(text)
            if text.startswith("<Figure size") and "image/png" not in data:
                problems.append(f"cell {i}: a figure shown as text ({text[:40]})")
            html = data.get("text/html", "")
            if isinstance(html, list):
                html = "".join(html)
            if "<td>...</td>" in html or "<th>...</th>" in html:
                problems.append(f"cell {i}: a pandas table cut to '...'")
            if out.get("output_type") == "stream":
                lines = "".join(out.get("text", "")).count("\n")
                if lines > MAX_STREAM_LINES:
                    problems.append(f"cell {i}: {lines} printed lines (a dump)")
            elif text and not html and "image/png" not in data and (
                    text.count("\n") > MAX_STREAM_LINES):
                problems.append(f"cell {i}: a {text.count(chr(10))}-line value shown as text "
                                f"(a dump)")
    if not images:
        problems.append("no image in the whole notebook")
    return problems


def test_output_problems_finds_each_kind():
    nb = nbformat.v4.new_notebook()
    fig_text = nbformat.v4.new_output("execute_result", {"text/plain": "<Figure size 9x5>"})
    cut = nbformat.v4.new_output("display_data", {"text/html": "<table><td>...</td></table>"})
    dump = nbformat.v4.new_output("stream", name="stdout", text="x\n" * 41)
    value = nbformat.v4.new_output("execute_result", {"text/plain": "{'a': 1,\n" * 41})
    nb.cells = [nbformat.v4.new_code_cell("", outputs=[fig_text, cut, dump, value])]
    found = output_problems(nb)
    assert len(found) == 5 and "no image" in found[-1] and "value shown as text" in found[3]
    png = nbformat.v4.new_output("display_data", {"image/png": "iVBOR", "text/plain": "<Figure"})
    nb.cells = [nbformat.v4.new_code_cell("", outputs=[png])]
    assert output_problems(nb) == []


def _write_nb(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('QUICK = True\nSEED = 0\nOUT_DIR = "../reports/nb"\n'
                                       "DATA_DIR = None\nPROGRESS = True",
                                       metadata={"tags": ["parameters"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# test"), params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_harness_continues_after_failure_and_passes_parameters(tmp_path):
    books = tmp_path / "nbs"
    books.mkdir()
    _write_nb(books / "00_ok.ipynb",
              "import os, sys\nfrom sodlab.bench import record\n"
              "record(OUT_DIR, '00_ok', {'cwd': os.path.basename(os.getcwd()), 'quick': QUICK,\n"
              "       'progress': PROGRESS, 'exe': sys.executable}, quick=QUICK, seed=SEED)")
    _write_nb(books / "01_bad.ipynb", "raise ValueError('broken on purpose')")
    _write_nb(books / "02_silent.ipynb", "x = 1")  # runs but writes no JSON
    reports = tmp_path / "rep"
    seen = []
    results = nbrun.run_notebooks(quick=False, reports_dir=reports, progress=False,
                                  notebooks=books, on_result=seen.append, seed=3)
    assert [r.stem for r in results] == ["00_ok", "01_bad", "02_silent"] == [r.stem for r in seen]
    ok, bad, silent = results
    assert ok.ok and ok.numbers["cwd"] == "nbs" and ok.numbers["quick"] is False
    assert ok.numbers["progress"] is False
    import sys

    assert Path(ok.numbers["exe"]).resolve() == Path(sys.executable).resolve()  # the venv kernel
    assert json.loads((reports / "nb" / "00_ok.json").read_text())["provenance"]["seed"] == 3
    assert not bad.ok and "broken on purpose" in bad.error
    assert (reports / "html" / "01_bad.html").is_file()  # the failure is kept for reading
    assert not silent.ok and "wrote no" in silent.error
    index = (reports / "index.html").read_text()
    assert "broken on purpose" in index and 'href="html/00_ok.html"' in index
    # --only updates one row and keeps the others
    nbrun.run_notebooks(quick=True, only=["00"], reports_dir=reports, progress=False,
                        notebooks=books)
    rows = json.loads((reports / "notebooks.json").read_text())["notebooks"]
    assert [r["stem"] for r in rows] == ["00_ok", "01_bad", "02_silent"]
    assert rows[0]["quick"] is True and rows[1]["quick"] is False


def test_find_notebooks_only_prefixes(tmp_path):
    for name in ("00_a", "01_b", "03_c"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    (tmp_path / "scratch.ipynb").write_text("{}")
    assert [p.stem for p in nbrun.find_notebooks(None, tmp_path)] == ["00_a", "01_b", "03_c"]
    assert [p.stem for p in nbrun.find_notebooks(["03", "00"], tmp_path)] == ["00_a", "03_c"]
    with pytest.raises(InputError, match="07"):
        nbrun.find_notebooks(["07"], tmp_path)


def test_cli_bad_only_is_input_error(capsys):
    from sodlab.cli import main

    assert main(["notebooks", "--only", "9x"]) == 2
    assert "matches no notebook" in capsys.readouterr().err


def test_record_writes_numbers_and_provenance(tmp_path):
    path = record(tmp_path / "nb", "00_x", {"a": 1.5}, quick=True, seed=7, seconds=2.0)
    out = json.loads(path.read_text())
    assert out["notebook"] == "00_x" and out["numbers"] == {"a": 1.5}
    prov = out["provenance"]
    assert prov["seed"] == 7 and prov["mode"] == "quick" and prov["seconds"] == 2.0
    assert prov["data_hash"] is None and prov["threads"] >= 1


def test_index_flags_failed_and_slow(tmp_path):
    rows = [
        {"stem": "00_fine", "status": "ok", "seconds": 12.0, "quick": True,
         "html": "html/00_fine.html", "numbers": {"shares": {"tiny": 0.25}, "n": 3}},
        {"stem": "01_broken", "status": "failed", "seconds": 3.0, "quick": True,
         "error": "ValueError: <bad> thing", "html": "html/01_broken.html", "numbers": None},
        {"stem": "02_slow", "status": "ok", "seconds": 131.5, "quick": True,
         "html": None, "numbers": {"AP": 0.123456}},
        {"stem": "03_full", "status": "ok", "seconds": 400.0, "quick": False, "numbers": {}},
    ]
    results = tmp_path / "results"
    (results / "studies").mkdir(parents=True)
    (results / "studies" / f"augmentation-{earlier_images()}.json").write_text(json.dumps(
        {"study": "augmentation", "comparisons": [], "extras": {"headline": {"AP": 0.4321}}}))
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmarks": {"eval_speed": {"speedup": 7.5}},
                                 "skipped": {"sliding": "not written yet"}, "failed": {},
                                 "seconds": {"eval_speed": 4.0},
                                 "provenance": {"mode": "quick", "threads": 2}}))
    path = report.write_index(tmp_path, rows, provenance={"commit": "abc123", "threads": 2},
                              results_dir=results, bench_path=bench)
    text = path.read_text()
    assert text.count("over 90 s</span>") == 1 + 1  # the slow row and the summary line
    assert "02_slow" in text and "131.5 s" in text and "400.0 s" in text
    assert 'class="failed">failed' in text and "ValueError: &lt;bad&gt; thing" in text
    assert "1 failed" in text and "3 of 4 notebooks ran" in text
    assert 'href="html/00_fine.html"' in text and "shares.tiny" in text and "0.1235" in text
    assert "Committed full-mode results" in text and "0.4321" in text
    assert "eval_speed" in text and "speedup" in text and "not written yet" in text
    assert "abc123" in text
    assert "http://" not in text and "https://" not in text  # no external assets


def test_a_benchmark_without_a_module_is_an_input_error(monkeypatch):
    import sodlab.bench as bench

    assert callable(bench.load_benchmark("eval_speed").run)
    for name in ("no_such_bench_xyz", "page"):  # no module; a module without run
        with pytest.raises(InputError, match="unknown benchmark"):
            bench.load_benchmark(name)
    with pytest.raises(InputError, match="no_such_bench_xyz"):
        run_benchmarks(quick=True, only=["no_such_bench_xyz"])
    monkeypatch.setattr(bench, "BENCHMARKS", ["not_written_yet_xyz"])
    with pytest.raises(InputError, match="not_written_yet_xyz"):
        run_benchmarks(quick=True)


def test_every_listed_benchmark_has_a_run():
    import sodlab.bench as bench

    for name in bench.BENCHMARKS:
        assert callable(bench.load_benchmark(name).run), name


def test_record_keeps_the_headline_and_checks_its_keys(tmp_path):
    numbers = {"AP_small": {"none": 0.1, "fpn": 0.4}, "n": 3, "seeds": [0, 1]}
    path = record(tmp_path, "03_x", numbers, quick=True, seed=0,
                  headline=["AP_small.none", "AP_small.fpn", "n"])
    out = json.loads(path.read_text())
    assert out["headline"] == ["AP_small.none", "AP_small.fpn", "n"]
    assert out["numbers"] == numbers                       # the full list stays in the JSON
    assert "headline" not in json.loads(record(tmp_path, "03_y", numbers, quick=True,
                                               seed=0).read_text())
    with pytest.raises(InputError, match="AP_small.ssh"):
        record(tmp_path, "03_x", numbers, quick=True, seed=0, headline=["AP_small.ssh"])
    with pytest.raises(InputError, match="one to 6"):
        record(tmp_path, "03_x", numbers, quick=True, seed=0, headline=["n"] * 7)
    with pytest.raises(InputError):
        record(tmp_path, "03_x", numbers, quick=True, seed=0, headline="n")


def test_index_shows_headline_beside_committed_values_and_verdicts(tmp_path):
    reports = tmp_path / "rep"
    nb = reports / "nb"
    numbers = {"AP_small_fpn": 0.05, "AP_small_baseline": 0.01, "images_per_s_fpn": 99.0,
               "not_in_headline": 123.456}
    record(nb, "03_fpn", numbers, quick=True, seed=0,
           headline=["AP_small_baseline", "AP_small_fpn", "images_per_s_fpn"])
    rows = [{"stem": "03_fpn", "status": "ok", "seconds": 50.0, "quick": True,
             "html": "html/03_fpn.html", "json": "nb/03_fpn.json", "numbers": numbers}]
    results = Path(__file__).resolve().parents[1] / "results"   # the committed full runs
    text = report.write_index(reports, rows, results_dir=results).read_text()
    study = json.loads((results / "studies" / f"fpn-{earlier_images()}.json").read_text())
    committed = study["extras"]["headline"]
    assert "AP_small_fpn" in text and "0.05" in text
    assert report.fmt(committed["AP_small_fpn"]) in text          # the full-mode value beside
    assert report.fmt(committed["images_per_s_fpn"]) in text
    assert "not_in_headline" not in text and 'href="nb/03_fpn.json"' in text
    assert 'href="html/03_fpn.html">executed notebook' in text
    # the verdicts of the committed study, computed by sodlab.metrics.verdict, with sentences
    for c in study["comparisons"]:
        assert f"{c['b']} vs {c['a']}, {c['metric']}: <span" in text and c["verdict"] in text
    assert "fpn vs baseline, AP_small: <span class=\"v-up\">up</span>" in text
    assert "Mean difference +0.304" in text
    # notebooks with committed results that did not run here still show their verdicts
    assert "Committed results of notebooks not run here" in text
    assert f"results/studies/dense_anchors-{earlier_images()}.json" in text
    assert "faceboxes vs fpn, AP_tiny" in text
    assert "quality" in text and "Other committed results" in text


def test_index_survives_a_broken_committed_file(tmp_path):
    results = tmp_path / "results"
    (results / "studies").mkdir(parents=True)
    name = f"augmentation-{earlier_images()}.json"
    (results / "studies" / name).write_text(json.dumps({"comparisons": [1]}))
    rows = [{"stem": "02_augmentation", "status": "ok", "seconds": 5.0, "quick": True,
             "numbers": {"AP": 0.1}}]
    text = report.write_index(tmp_path, rows, results_dir=results).read_text()
    assert "unreadable" in text and f"results/studies/{name}" in text
    (results / "studies" / name).write_text("{not json")
    text = report.write_index(tmp_path, rows, results_dir=results).read_text()
    assert "unreadable" in text and "not valid JSON" in text

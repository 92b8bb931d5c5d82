"""House style of every notebook (docs/design.md): parameters cell, no outputs, goals, checks,
verdicts computed in code, the shared budgets and data helpers, a named headline."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMS = {"QUICK", "SEED", "OUT_DIR", "DATA_DIR", "PROGRESS"}
# Notebooks the course has or is about to have (a reference to any other number is a typo).
PLANNED = {"07": "perceptual_gan", "08": "pyramidbox", "09": "relation_networks",
           "10": "benchmark_report"}
# Claims that only sodlab.metrics.verdict may make, so never typed into a markdown cell.
VERDICT_CLAIMS = ("no clear difference", "reproduced", "confirmed", "contradicted",
                  "the paper's direction", "verdict:")


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def nb(request):
    return request.param, nbformat.read(str(request.param), as_version=4)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/NN_*.ipynb"


def test_first_cell_is_goals_and_run_time(nb):
    _, book = nb
    first = book.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.lstrip().startswith("#"), "the first cell starts with a title"
    assert "run time" in first.source.lower(), "the first cell states the expected run time"


def test_one_parameters_cell_with_all_parameters(nb):
    _, book = nb
    cells = [c for c in book.cells if "parameters" in _tags(c)]
    assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'"
    assert cells[0].cell_type == "code"
    tree = ast.parse(cells[0].source)
    names = {t.id for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    assert PARAMS <= names, f"missing {sorted(PARAMS - names)}"
    values = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    assert ast.literal_eval(values["QUICK"]) is True
    assert ast.literal_eval(values["DATA_DIR"]) is None


def test_committed_without_outputs(nb):
    _, book = nb
    for i, cell in enumerate(book.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"cell {i} has outputs"
            assert cell.get("execution_count") is None, f"cell {i} has an execution count"


def test_checks_section_with_asserts(nb):
    _, book = nb
    idx = [i for i, c in enumerate(book.cells) if c.cell_type == "markdown"
           and any(line.strip() == "## Checks" for line in c.source.splitlines())]
    assert len(idx) == 1, "exactly one '## Checks' heading"
    after = [c for c in book.cells[idx[0] + 1:] if c.cell_type == "code"]
    assert after and "assert" in after[0].source, "a code cell of asserts follows '## Checks'"


def test_records_its_numbers_under_its_own_name(nb):
    path, book = nb
    code = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    assert "record(" in code and f'"{path.stem}"' in code, \
        f"the notebook calls sodlab.bench.record(OUT_DIR, \"{path.stem}\", ...)"
    assert "Exercises" in "\n".join(c.source for c in book.cells if c.cell_type == "markdown")


def _code(book) -> str:
    return "\n".join(c.source for c in book.cells if c.cell_type == "code")


def _markdown(book) -> str:
    return "\n".join(c.source for c in book.cells if c.cell_type == "markdown")


def test_markdown_types_no_verdict(nb):
    _, book = nb
    for i, cell in enumerate(book.cells):
        if cell.cell_type != "markdown":
            continue
        low = cell.source.lower()
        hits = [w for w in VERDICT_CLAIMS if w in low]
        assert not hits, f"markdown cell {i} states {hits}: let a code cell compute it " \
                         "(sodlab.bench.study_view or sodlab.metrics.verdict)"


def test_verdicts_come_from_code(nb):
    from sodlab.bench.studies import STUDIES

    path, book = nb
    code = _code(book)
    for name, st in STUDIES.items():
        if st.notebook != path.stem:
            continue
        assert f'show_study("{name}"' in code, f"the study is shown with show_study(\"{name}\")"
        if list((REPO / "results" / "studies").glob(f"{name}-*.json")):
            assert f'show_earlier("{name}")' in code, \
                f"its earlier budget is shown with show_earlier(\"{name}\")"
    assert "show_results(" not in code, "committed results are studies: show_study"
    assert "json.dumps(" not in code, "no raw JSON dumps: show_study renders tables"
    hand = re.findall(r"""["']up["']\s+if\b|else\s+["']down["']|["']not up["']""", code)
    assert not hand, f"a direction decided by hand ({hand}); call sodlab.metrics.verdict"
    assert "T95" not in code and "12.706" not in code, "no hand-typed t-table"


def test_shared_budgets_and_helpers(nb):
    _, book = nb
    code = _code(book)
    if "cached_train(" in code:
        assert "standard_budget" in code, "trainings take sodlab.engine.standard_budget"
    assert not re.search(r"max_steps\s*=\s*\d", code), "a budget typed by hand"
    assert "HAVE_DETECTOR" not in code
    assert not re.search(r"json\.loads\([^)]*annotations", code), \
        "annotations are read with sodlab.data.coco.load_coco"
    assert not re.search(r"""\.setdefault\([^)]*\[["']image_id["']\]""", code), \
        "group annotations with sodlab.data.coco.annotations_by_image"


def test_cites_the_design_docs_and_existing_notebooks(nb):
    _, book = nb
    text = "\n".join(c.source for c in book.cells)
    for old in ("DESIGN" + ".md", "METHODS" + ".md", ".." + "/shared"):
        assert old not in text, f"cite docs/design.md or docs/methods.md, not {old}"
    have = {p.stem[:2] for p in NOTEBOOKS} | set(PLANNED)
    for m in re.finditer(r"[Nn]otebooks? ((?:\d\d(?:\s*[-–,]\s*|\s+and\s+|\s+or\s+)?)+)", text):
        for nn in re.findall(r"\d\d", m.group(1)):
            assert nn in have, f"'{m.group(0).strip()}' names notebook {nn}, which does not exist"


def _record_call(book):
    calls = [node for node in ast.walk(ast.parse(_code(book)))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record"]
    assert len(calls) == 1, f"{len(calls)} record(...) calls"
    return calls[0]


def test_record_names_three_to_six_headline_numbers(nb):
    _, book = nb
    kw = {k.arg: k.value for k in _record_call(book).keywords}
    assert "headline" in kw, "record(..., headline=[...]) names the report's key numbers"
    keys = ast.literal_eval(kw["headline"])
    assert isinstance(keys, list) and 3 <= len(keys) <= 6, keys
    assert all(isinstance(k, str) and k for k in keys) and len(set(keys)) == len(keys), keys


def test_headline_keys_exist_in_the_committed_results(nb):
    """The report puts the committed value beside each headline number: the key must be there
    (the notebook's study at the earlier budget keeps them in ``extras["headline"]``)."""
    from sodlab.bench.report import committed_results

    path, book = nb
    committed = committed_results(REPO / "results").get(path.stem)
    if committed is None:
        pytest.skip("no committed full-mode results")
    kw = {k.arg: k.value for k in _record_call(book).keywords}
    missing = [k for k in ast.literal_eval(kw["headline"]) if k not in committed["numbers"]]
    assert not missing, f"headline keys not in {committed['file']}: {missing}"

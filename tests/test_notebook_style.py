"""House style of every notebook (docs/design.md): parameters cell, no outputs, goals, checks."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMS = {"QUICK", "SEED", "OUT_DIR", "DATA_DIR", "PROGRESS"}


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

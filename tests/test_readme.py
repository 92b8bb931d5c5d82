"""The generated sections of the README and the docs are what the committed results give.

No number of ours is typed by hand: ``sodlab.bench.readme`` renders them, and docs/methods.md
keeps only the papers' rows in its tables, with a generated "ours" section after them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sodlab.bench import readme
from sodlab.bench.studies import STUDIES
from sodlab.errors import InputError

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
GENERATED = re.compile(r"<!-- generated: (\S+) -->\n.*?<!-- end generated: \1 -->", re.S)


def test_the_readme_matches_the_committed_results():
    assert readme.refresh(["--check"]) == 0, "run: python -m sodlab.bench.readme"


def test_sections_are_rewritten_between_their_markers_and_required():
    text = "".join(f"<!-- generated: {n} -->\nstale\n<!-- end generated: {n} -->\n"
                   for n in readme.SECTIONS)
    new = readme.updated(text)
    assert "stale" not in new and new.count("<!-- generated:") == len(readme.SECTIONS)
    assert readme.updated(new) == new
    with pytest.raises(InputError, match="no generated section"):
        readme.updated("no markers")


def test_methods_has_no_typed_ours_row_and_a_section_for_every_study():
    text = METHODS.read_text(encoding="utf-8")
    typed = [line for line in GENERATED.sub("", text).splitlines()
             if line.lstrip().lower().startswith("| ours")]
    assert not typed, f"hand-typed ours rows in docs/methods.md (generate them): {typed}"
    sections = readme.FILES["docs/methods.md"]
    for name in sections:
        assert f"<!-- generated: {name} -->" in text, name
    covered = {readme.OURS[n].study for n in sections if n in readme.OURS}
    assert covered >= set(STUDIES), f"studies without an ours section: {set(STUDIES) - covered}"
    assert set(readme.OURS) <= set(sections) <= set(readme.RENDER)


def test_an_ours_section_shows_the_full_study_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    spec = readme.Ours("fpn")
    before = readme.render_ours(spec)
    assert "not yet run at the full budget" in before
    assert "`sodlab study run fpn --full`" in before and "older unpaired rule" in before
    tech = {"seeds": {"0": {}, "1": {}}, "images_seen": 1234, "mean": {"AP_small": 0.25}}
    comp = {"a": "baseline", "b": "fpn", "metric": "AP_small", "mean": -0.0125,
            "interval": [-0.02, -0.005], "verdict": "down"}
    (tmp_path / "fpn.json").write_text(json.dumps(
        {"study": "fpn", "notebook": "03_fpn", "mode": "full",
         "techniques": {"baseline": tech, "fpn": tech}, "comparisons": [comp]}))
    after = readme.render_ours(spec)
    assert "full budget (1,234 images seen, 2 seeds, paired rule)" in after
    assert "| fpn vs baseline | −0.013 | −0.020 to −0.005 | down |" in after
    assert "baseline 0.250, fpn 0.250" in after and "not yet run" not in after
    assert "no comparison on AP_small" in readme.render_ours(readme.Ours("fpn", only="^x"))


def test_benchmarks_and_facts_no_file_holds_are_not_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "_results", lambda: tmp_path)
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    for render in (readme.render_sliding_speed, readme.render_vga_speed,
                   readme.render_recipe_cost):
        assert render().startswith("Ours: not committed"), render
    text = readme.render_ours(readme.OURS["ours_ssh"])
    assert "No earlier-budget result is committed either" in text
    assert "px: not committed / not committed / not committed." in text

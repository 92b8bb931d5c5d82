"""The README's result sections are what the committed results give (no number typed by hand)."""

from __future__ import annotations

import pytest

from sodlab.bench import readme
from sodlab.errors import InputError


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

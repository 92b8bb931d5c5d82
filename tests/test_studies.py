"""The declared studies: one technique per name everywhere, the suite is their union."""

from __future__ import annotations

import pytest

from sodlab.bench import suite
from sodlab.bench.studies import STUDIES, study, suite_study
from sodlab.engine.experiment import RECIPES, Technique
from sodlab.engine.study import Study
from sodlab.errors import InputError


def test_a_name_means_one_technique_in_every_study_and_in_the_suite_rows():
    seen: dict[str, Technique] = {}
    for s in STUDIES.values():
        for t in s.techniques:
            assert seen.setdefault(t.name, t) == t, t.name
    for row in suite.TECHNIQUES:
        if row.technique is not None and row.name in seen:
            assert row.technique == seen[row.name], row.name


def test_the_suite_study_holds_every_study_and_its_comparisons():
    union = suite_study()
    names = {t.name for t in union.techniques}
    for s in STUDIES.values():
        assert {t.name for t in s.techniques} <= names
        assert set(s.comparisons) <= set(union.comparisons)
    assert study("suite").name == "suite"
    with pytest.raises(InputError, match="known"):
        study("nope")


def test_recipes_by_name_give_the_dicts_the_notebooks_train_with():
    assert RECIPES["oversample 3x"](384) == {"oversample": 3}
    assert RECIPES["copy-paste"](384)["copy_paste"]["with_context"] is True
    assert RECIPES["sniper"](384)["sniper"]["chip"] == 192
    with pytest.raises(InputError, match="unknown recipe"):
        Technique("x", "fpn", recipe="nope")


def test_a_study_refuses_comparisons_of_techniques_it_does_not_have():
    with pytest.raises(InputError, match="does not have"):
        Study("s", "nb", (Technique("a", "fpn"),), (("a", "b"),))
    with pytest.raises(InputError, match="repeat"):
        Study("s", "nb", (Technique("a", "fpn"), Technique("a", "s3fd")), ())

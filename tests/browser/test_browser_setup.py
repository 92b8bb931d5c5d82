"""A missing browser piece skips the browser tests outside CI and fails them in CI."""

from __future__ import annotations

import pytest
from browser_tools import INSTALL, is_local, require


@pytest.mark.parametrize("what", sorted(INSTALL))
def test_missing_piece_skips_outside_ci_and_fails_in_ci(what, monkeypatch):
    require(what, True)  # present: nothing happens
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=INSTALL[what].split(":")[0]):
        require(what, False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI must run the browser tests; {what}"):
        require(what, False)


def test_only_this_machine_counts_as_local():
    assert is_local("http://127.0.0.1:8866/voila/render/x.ipynb")
    assert is_local("file:///tmp/reports/index.html") and is_local("blob:http://127.0.0.1:1/x")
    assert not is_local("https://cdn.jsdelivr.net/npm/x.css")
    assert not is_local("http://example.org/")
    assert not is_local("http://127.0.0.1.example.org/x")

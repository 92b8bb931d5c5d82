"""Shared fixtures: the embedded quick dataset, made once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def quick_dataset():
    """Root of the embedded quick dataset (seed 0), generated into the default cache once."""
    from sodlab.data import ensure_dataset

    return ensure_dataset("quick", 0, progress=False)

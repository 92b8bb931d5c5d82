"""Shared fixtures: the embedded quick dataset, made once per test session; a private pixel
cache folder, so no test writes decoded images into the checkout's ``runs/pixels``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_pixel_cache(tmp_path_factory):
    """``SODLAB_PIXELS`` points at a temporary folder for the whole session."""
    before = os.environ.get("SODLAB_PIXELS")
    os.environ["SODLAB_PIXELS"] = str(tmp_path_factory.mktemp("pixels"))
    yield
    if before is None:
        os.environ.pop("SODLAB_PIXELS", None)
    else:
        os.environ["SODLAB_PIXELS"] = before


@pytest.fixture(scope="session")
def quick_dataset():
    """Root of the embedded quick dataset (seed 0), generated into the default cache once."""
    from sodlab.data import ensure_dataset

    return ensure_dataset("quick", 0, progress=False)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A dataset root of 8 training and 4 validation images (``test_engine.make_split``),
    made once per test module."""
    from test_engine import make_split

    r = tmp_path_factory.mktemp("data")
    make_split(r / "train", n=8, seed=0)
    make_split(r / "val", n=4, seed=1)
    return r

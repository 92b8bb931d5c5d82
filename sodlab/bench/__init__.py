"""Benchmarks and notebook runs: record a notebook's numbers, run the benchmark modules.

Layer L4. Notebook 10 (benchmark report) and ``reports/index.html`` show what is written here.

- ``record(out_dir, stem, numbers, quick=, seed=, data_dir=, seconds=, headline=)`` writes
  ``out_dir/<stem>.json`` = ``{"notebook", "numbers", "headline", "provenance"}``; every
  notebook ends with it, naming in ``headline`` the three to six (flattened) keys of
  ``numbers`` that ``reports/index.html`` shows beside the committed full-mode values
  (the ``extras["headline"]`` of the notebook's study at the earlier budget).
- committed results are studies (``results/studies/NAME.json``, ``NAME-<images>.json``),
  shown by ``sodlab.bench.study_view`` (``show_study``, ``show_earlier``).
- ``BENCHMARKS``: the plain, ordered list of benchmark modules ``sodlab.bench.<name>``,
  each exposing ``run(*, quick: bool, progress: bool) -> dict``.
- ``run_benchmarks(quick=, only=, progress=)`` runs them one after another and returns one
  dict with provenance; a name without a module ``sodlab.bench.<name>`` is an ``InputError``.
- ``notebooks.run_notebooks`` executes the notebooks with papermill; ``report`` writes the
  HTML index.

Nothing heavy is imported at module level, so notebooks can import ``record`` cheaply.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import time
from pathlib import Path

# Run in this order by ``sodlab bench``.
BENCHMARKS: list[str] = ["eval_speed", "train_speed", "step_speed", "data_path", "sliding",
                         "augment_speed", "recipe_speed", "quality", "precision", "suite"]


def _dataset_hash(data_dir: str | os.PathLike | None) -> str | None:
    """``sodlab.data.coco.dataset_hash`` of ``data_dir``, or None if unavailable."""
    if data_dir is None:
        return None
    try:
        from sodlab.data.coco import dataset_hash
    except ImportError:
        return None
    from sodlab.errors import InputError

    try:
        return dataset_hash(data_dir)
    except (OSError, ValueError, InputError):  # not a dataset folder: no hash, no failure
        return None


MAX_HEADLINE = 6


def record(out_dir: str | os.PathLike, stem: str, numbers: dict, *, quick: bool, seed: int,
           data_dir: str | os.PathLike | None = None, seconds: float | None = None,
           headline: list[str] | None = None) -> Path:
    """Write ``out_dir/<stem>.json`` with the notebook's key numbers and their provenance.

    ``numbers`` must be JSON-serialisable (plain floats, ints, strings, lists, dicts).
    ``headline`` names the three to six numbers ``reports/index.html`` shows for this
    notebook, as flattened keys of ``numbers`` (``"AP_small.none"`` for
    ``numbers["AP_small"]["none"]``); the JSON keeps every number. A key that is not in
    ``numbers``, or more than six, raises ``InputError``. Returns the path written
    (atomically).
    """
    from sodlab.errors import InputError
    from sodlab.files import write_json
    from sodlab.provenance import provenance

    obj: dict = {"notebook": stem, "numbers": numbers}
    if headline is not None:
        from sodlab.bench.report import flatten

        if isinstance(headline, str) or not all(isinstance(k, str) for k in headline):
            raise InputError(f"record({stem!r}): headline is a list of key names, "
                             f"got {headline!r}")
        headline = list(headline)
        if not 1 <= len(headline) <= MAX_HEADLINE:
            raise InputError(f"record({stem!r}): name one to {MAX_HEADLINE} headline numbers, "
                             f"got {len(headline)}")
        flat = flatten(numbers)
        missing = [k for k in headline if k not in flat]
        if missing:
            raise InputError(f"record({stem!r}): headline key(s) {missing} are not in the "
                             f"numbers (flattened keys look like "
                             f"{', '.join(list(flat)[:3])})")
        obj["headline"] = headline
    path = Path(out_dir) / f"{stem}.json"
    prov = provenance(seed=seed, data_hash=_dataset_hash(data_dir), quick=quick,
                      seconds=seconds)
    write_json(path, {**obj, "provenance": prov})
    return path


def _has_module(name: str) -> bool:
    """True if a module ``sodlab.bench.<name>`` exists (found without importing it)."""
    try:
        return importlib.util.find_spec(f"sodlab.bench.{name}") is not None
    except (ImportError, ValueError):  # a dotted name under a module, an empty name
        return False


def load_benchmark(name: str):
    """The module ``sodlab.bench.<name>``; ``InputError`` if there is none or it has no ``run``."""
    from sodlab.errors import InputError

    module = importlib.import_module(f"sodlab.bench.{name}") if _has_module(name) else None
    if module is None or not callable(getattr(module, "run", None)):
        raise InputError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return module


def run_benchmarks(*, quick: bool = True, only: list[str] | None = None,
                   progress: bool = False, on_result=None, data_root=None,
                   options: dict | None = None) -> dict:
    """Run the benchmark modules in ``BENCHMARKS`` order (or the names in ``only``).

    Returns ``{"benchmarks": {name: result dict}, "skipped": {}, "failed": {name: error},
    "seconds": {name: s}, "provenance": {...}}`` (``skipped`` stays empty; the page and the
    index still read it from older files). ``on_result(name, result_or_None, note)``
    is called after each one (the CLI prints as it goes). A benchmark that raises is
    recorded under ``"failed"`` with its error and the others still run. ``data_root`` (a
    dataset root) goes to every benchmark whose ``run`` takes one; ``options`` maps a
    benchmark's name to more keyword arguments of its ``run``.
    """
    from sodlab.errors import InputError

    names = list(BENCHMARKS) if not only else list(only)
    unknown = [n for n in names if not _has_module(n)]
    if unknown:
        raise InputError(f"unknown benchmark(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(BENCHMARKS)}")
    out: dict = {"benchmarks": {}, "skipped": {}, "failed": {}, "seconds": {}}
    t_all = time.perf_counter()
    for name in names:
        module = load_benchmark(name)
        t0 = time.perf_counter()
        try:
            kw = {}
            if data_root is not None and "data_root" in inspect.signature(module.run).parameters:
                kw["data_root"] = data_root
            kw.update((options or {}).get(name) or {})
            result = module.run(quick=quick, progress=progress, **kw)
        except Exception as exc:  # keep going: one broken benchmark must not hide the rest
            out["failed"][name] = f"{type(exc).__name__}: {exc}"
            out["seconds"][name] = round(time.perf_counter() - t0, 3)
            if on_result:
                on_result(name, None, out["failed"][name])
            continue
        out["seconds"][name] = round(time.perf_counter() - t0, 3)
        out["benchmarks"][name] = result
        if on_result:
            on_result(name, result, None)
    from sodlab.provenance import provenance

    out["provenance"] = provenance(quick=quick, seconds=time.perf_counter() - t_all)
    return out

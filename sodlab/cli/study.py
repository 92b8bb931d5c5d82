"""`sodlab study`: list the declared studies, say what has no record yet, run one, show one.

Layer L4. ``sodlab study list``; ``sodlab study missing NAME [--full]``; ``sodlab study run
NAME [--full] [--data ROOT] [--only TECH,...] [--seeds S,...] [--multiple M]`` gets a record
for every technique and seed (training only what has none; a full-mode record lands in
``results/runs/`` as each model finishes) and prints both tables; in full mode on the
embedded data, with every technique and the mode's seeds, it also writes
``results/studies/NAME.json`` (committed; notebooks show it); at ``--multiple M`` it keeps
what was run, any techniques and seeds, as ``NAME-<images seen>.json``. ``sodlab study show NAME
--full`` prints them from the records alone (nothing trains): with runs still missing it lists
them and compares the techniques whose every seed has a record, and fails only when fewer than
two have. A study that spans sessions keeps what it has as ``results/studies/NAME.partial.json``
(written by ``run`` each time a technique has all its seeds, and by ``show``); the complete
result replaces it. ``missing`` and ``show`` look at the mode's budget. ``--json OUT`` writes the
study's result there instead.
"""

from __future__ import annotations

import argparse

from sodlab.cli import add_mode_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="run a notebook's experiment from run records (train what is missing)",
        description="A study is a notebook's set of techniques and comparisons. Each "
        "technique and seed leaves a run record (full mode: results/runs/, committed); a "
        "study trains only what has no record and compares every pair on the same fixed "
        "resamples of the validation images (the paired verdict rule).")
    p.add_argument("action", choices=("list", "missing", "run", "show"),
                   help="list: the studies; missing: what has no record; run: record what is "
                   "missing and compare; show: compare from records only (while runs are "
                   "missing, the techniques with every seed recorded)")
    p.add_argument("name", nargs="?", default=None, help="the study (see 'sodlab study list')")
    add_mode_arguments(p, quick_help="one seed on the quick dataset: numbers, no verdicts "
                       "(default)", full_help="three seeds on the full dataset: verdicts")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="dataset root (train/ and val/) instead of the embedded one")
    p.add_argument("--only", default=None, metavar="TECH,...",
                   help="run only these techniques of the study (comma-separated names)")
    p.add_argument("--multiple", type=int, default=None, metavar="M",
                   help="train at M times the earlier full budget (400 steps x 8 images) "
                   "instead of the mode's; the result (whatever techniques and seeds were run) "
                   "is kept as results/studies/NAME-<images seen>.json, beside the full "
                   "budget's")
    p.add_argument("--seeds", default=None, metavar="S,...",
                   help="these seeds instead of the mode's (quick: 0; full: 0,1,2); one seed "
                   "gives numbers and paired intervals but no verdict; at the mode's budget "
                   "the study file is then not written (at --multiple M it is)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the result as JSON")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodlab.bench.studies import STUDIES, study
    from sodlab.errors import InputError

    if args.action == "list":
        for s in [*STUDIES.values(), study("suite")]:
            print(f"{s.name:18s} {s.notebook:26s} {len(s.techniques):2d} techniques, "
                  f"{len(s.comparisons):2d} comparisons")
        return 0
    if not args.name:
        raise InputError(f"sodlab study {args.action}: name a study (sodlab study list)")
    st = study(args.name)
    mode = "quick" if args.quick else "full"
    if args.action in ("missing", "show"):
        from sodlab.engine.experiment import mode_of
        from sodlab.engine.study import missing

        seeds = _seeds(args.seeds) or mode_of(mode).seeds
        todo = missing(st, args.data, mode=mode, seeds=seeds)
        if args.action == "missing" or todo:
            for name, seed in todo:
                print(f"no record: {name}, seed {seed}")
            print(f"{len(todo)} of {len(st.techniques) * len(seeds)} runs have no record")
        if args.action == "missing":
            return 0
        if todo:  # show what the records allow: the techniques with every seed recorded
            gaps = {name for name, _ in todo}
            complete = [t.name for t in st.techniques if t.name not in gaps]
            if args.only:
                complete = [n for n in complete if n in _only(st, args)]
            if len(complete) < 2:
                print("fewer than two techniques have every seed recorded: nothing to compare")
                return 1
            print(f"partial: {', '.join(complete)} (every seed recorded)\n")
            keep = not args.only  # the whole study asked for: keep what it has as partial
            args.only = ",".join(complete)
            return _run(st, args, mode, missing=[[n, s] for n, s in todo] if keep else None)
    return _run(st, args, mode)


def _seeds(text: str | None) -> tuple[int, ...] | None:
    """``--seeds 0,1`` as a tuple of distinct non-negative integers (None: the mode's)."""
    from sodlab.errors import InputError

    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise InputError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds takes distinct integers >= 0, got {text!r}")
    return seeds


def _only(st, args: argparse.Namespace) -> list[str] | None:
    """The ``--only`` names (checked against the study), or None."""
    from sodlab.errors import InputError

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if only:
        unknown = [n for n in only if n not in {t.name for t in st.techniques}]
        if unknown:
            raise InputError(f"study {st.name!r} has no technique(s) {unknown}")
    return only


def _run(st, args: argparse.Namespace, mode: str, missing: list | None = None) -> int:
    """Run (or, from ``show``, read) the study; ``missing``: the runs a partial ``show`` lacks."""
    import pandas as pd

    from sodlab.bench.study_view import save_study
    from sodlab.engine.study import run_study, tables
    from sodlab.files import write_json

    only = _only(st, args)
    budget = None
    if args.multiple is not None:
        from sodlab.bench.budget_curve import budget_at

        budget = budget_at(args.multiple, quick=args.quick)
    seeds = _seeds(args.seeds)
    whole = mode == "full" and args.data is None and seeds is None and budget is None

    def keep_partial(res: dict) -> None:  # a study that spans sessions keeps what it has
        if res["missing"] and len(res["techniques"]) >= 2:
            print(f"wrote {save_study(res)}", flush=True)

    result = run_study(st, args.data, mode=mode, progress=args.progress, only=only,
                       budget=budget, seeds=seeds, log=lambda line: print(line, flush=True),
                       on_technique=keep_partial if whole and not only else None)
    techs, comps = tables(result)
    with pd.option_context("display.width", 160, "display.max_columns", 30,
                           "display.max_rows", 500, "display.float_format", "{:.3f}".format):
        print(techs.to_string())
        print()
        print(comps.to_string(index=False) if len(comps) else "no comparison has both sides")
    if args.json:
        write_json(args.json, result)
    elif whole and missing:
        keep_partial({**result, "missing": missing})
    elif mode == "full" and args.data is None and budget is not None:
        # a budget multiple (the learning curve's points) keeps whatever techniques and seeds
        # were asked for: NAME-<images seen>.json, beside the full budget's
        images = budget["max_steps"] * budget["batch_size"]
        print(f"wrote {save_study(result, images=images)}")
    elif whole and not only:
        print(f"wrote {save_study(result)}")
    return 0

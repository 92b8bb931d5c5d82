"""`sodlab notebooks`: run the notebooks with papermill and write reports/index.html.

Layer L4. ``sodlab notebooks [--quick|--full] [--only 00,03] [--data DIR] [--reports DIR]``
prints one line per notebook (status, seconds) and the path of the index page; exit code 1
if any notebook failed, 2 on bad input.
"""

from __future__ import annotations

import argparse

from sodlab.cli import add_mode_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "notebooks", help="run the notebooks (papermill) and write reports/index.html",
        description="Execute every notebooks/NN_*.ipynb in a fresh kernel, keep executed "
        "copies and HTML under the reports folder and write its index.html.")
    add_mode_arguments(
        p, quick_help="quick mode: small data and budgets, each notebook < 90 s (default)",
        full_help="full mode: the full dataset and budgets (slow)")
    p.add_argument("--only", default=None, metavar="NN,NN",
                   help="comma-separated notebook number prefixes, e.g. 00,03")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset root (train/ and val/) to use instead of the embedded one")
    p.add_argument("--reports", default="reports", metavar="DIR",
                   help="output folder (default: reports)")
    p.add_argument("--seed", type=int, default=0, help="SEED parameter (default 0)")
    p.add_argument("--timeout", type=int, default=600, metavar="S",
                   help="seconds one cell may run before the notebook fails (default 600)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sodlab.bench.notebooks import QUICK_LIMIT_S, run_notebooks

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None

    def show(res) -> None:
        flag = f"  (over {QUICK_LIMIT_S:.0f} s)" if res.slow else ""
        line = f"{res.status:6s} {res.seconds:7.1f} s  {res.stem}{flag}"
        if res.error:
            line += f"\n         {res.error}"
        print(line, flush=True)

    results = run_notebooks(quick=args.quick, only=only, data_dir=args.data,
                            reports_dir=args.reports, progress=False, seed=args.seed,
                            timeout_per_cell=args.timeout, on_result=show)
    index = Path(args.reports) / "index.html"
    n_failed = sum(not r.ok for r in results)
    print(f"{len(results) - n_failed} ok, {n_failed} failed; report: {index}")
    return 1 if n_failed else 0

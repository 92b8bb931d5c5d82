"""`sodlab bench`: run the benchmark modules side by side and write reports/bench.json.

Layer L4. ``sodlab bench [--quick|--full] [--only NAME,...] [--out reports/bench.json]``
runs ``sodlab.bench.BENCHMARKS`` in order, prints a table per benchmark and writes one JSON with provenance (threads included).
Exit code 1 if a benchmark failed, 2 on bad input.
"""

from __future__ import annotations

import argparse

from sodlab.cli import add_mode_arguments


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the speed/quality benchmarks and write reports/bench.json",
        description="Run the benchmarks one after another on this machine; ratios are "
        "measured side by side in one run.")
    add_mode_arguments(p, quick_help="quick mode: small inputs (default)",
                       full_help="full mode: the sizes the README quotes (slow)")
    p.add_argument("--only", default=None, metavar="NAME,...",
                   help="comma-separated benchmark names (default: all)")
    p.add_argument("--out", default="reports/bench.json", metavar="FILE",
                   help="JSON to write (default: reports/bench.json)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="dataset root (train/ and val/) for the benchmarks that train or load "
                   "images (default: the embedded dataset)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.set_defaults(func=run)


def _table(result: dict) -> str:
    from sodlab.bench.report import flatten, fmt

    flat = {k: v for k, v in flatten(result).items() if not k.startswith("provenance")}
    if not flat:
        return "  (no numbers)"
    width = max(len(k) for k in flat)
    return "\n".join(f"  {k:<{width}}  {fmt(v)}" for k, v in flat.items())


def run(args: argparse.Namespace) -> int:
    import torch

    from sodlab.bench import BENCHMARKS, run_benchmarks
    from sodlab.files import write_json

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    print(f"benchmarks: {', '.join(only or BENCHMARKS)} "
          f"({'quick' if args.quick else 'full'}, {torch.get_num_threads()} threads)", flush=True)

    def show(name, result, note) -> None:
        if result is None:
            print(f"\n{name}: {note}", flush=True)
        else:
            print(f"\n{name}\n{_table(result)}", flush=True)

    out = run_benchmarks(quick=args.quick, only=only, progress=args.progress, on_result=show,
                         data_root=args.data)
    write_json(args.out, out)
    print(f"\nwrote {args.out}")
    from pathlib import Path

    from sodlab.bench.notebooks import refresh_index

    if Path(args.out).name == "bench.json":
        index = refresh_index(Path(args.out).parent)
        if index is not None:
            print(f"updated {index}")
    return 1 if out["failed"] else 0

"""`sodlab bench`: run the benchmarks and write reports/bench.html, bench.json and bench.csv.

Layer L4. ``sodlab bench [--quick|--full] [--data ROOT] [--only NAME,...]
[--update-reference]`` runs ``sodlab.bench.BENCHMARKS`` in order (the ``suite`` benchmark
trains or takes from the run cache every technique the notebooks teach), prints a short
table per benchmark, writes one JSON with provenance, and beside it ``bench.html`` (the
page of ``sodlab.bench.page``), ``bench.csv`` and the plots. The page's regression check
compares the run with ``results/bench_reference.json``; ``--update-reference`` rewrites that
file from this run afterwards. Exit code 1 if a benchmark or a technique failed, 2 on bad
input.
"""

from __future__ import annotations

import argparse
import sys

from sodlab.cli import add_mode_arguments

DESCRIPTION = """\
Run the benchmarks one after another on this machine (ratios are measured side by side
in one run) and write the benchmark page. The 'suite' benchmark puts every technique the
notebooks teach on one data set and one budget: accuracy by size with bootstrap
intervals, VGA latency, training speed and memory, torchvision's SSDlite trained in the
same run, each paper's reported change beside ours, and a regression check against
results/bench_reference.json. On your own data (--data), techniques that need what the
data lacks are listed as skipped, with the reason; a technique that fails is shown as
failed and the others still run.
"""

EPILOG = """\
what it costs:
  The suite trains each technique once per seed on the shared budget (quick: 1 seed,
  250 steps x 8 images at 384 px; full: 3 seeds at the full budget of
  sodlab.engine.budgets) and takes every model that has a run record (full:
  results/runs/, committed) or is in the run cache (runs/cache) without training it.
  Quick with a filled cache: minutes; quick from an empty cache: hours on 2 cores (SNIP
  and multi-scale training cost about twice a plain model); full from no records: many
  hours on 2 cores, which records let several sessions share.

examples:
  sodlab bench --quick --only suite             the technique page on the embedded data
  sodlab bench --only suite --data mydata       the same page on your COCO folder
  sodlab bench --full --update-reference        a full run that becomes the reference
  sodlab bench --only suite --techniques fpn,SNIP --max-steps 20 --set input_size=128
"""


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmarks; write reports/bench.html, bench.json, bench.csv",
        description=DESCRIPTION,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_arguments(p, quick_help="quick mode: one seed, the quick budget (default)",
                       full_help="full mode: three seeds, the full budget (slow)")
    p.add_argument("--only", default=None, metavar="NAME,...",
                   help="comma-separated benchmark names (default: all; 'suite' is the "
                   "technique page)")
    p.add_argument("--out", default="reports/bench.json", metavar="FILE",
                   help="JSON to write; bench.html, bench.csv and the plots go beside it "
                   "(default: reports/bench.json)")
    p.add_argument("--data", default=None, metavar="ROOT",
                   help="dataset root (train/ and val/, COCO annotations) for the benchmarks "
                   "that train or load images (default: the embedded dataset)")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help="reference result for the regression check (default: "
                   "results/bench_reference.json in the repository)")
    p.add_argument("--update-reference", action="store_true",
                   help="after the page is written, rewrite the reference from this run")
    g = p.add_argument_group("suite options (a budget other than the shared one trains "
                             "models the notebooks do not share)")
    from sodlab.bench.suite import NAMES

    g.add_argument("--techniques", default=None, metavar="NAME,...",
                   help="comma-separated technique names (default: all): "
                   + ", ".join(NAMES))
    g.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="training steps per model instead of the shared budget")
    g.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="batch size with --max-steps (default 8)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="detector config override with --max-steps (repeatable), e.g. "
                   "input_size=128")
    g.add_argument("--no-speed", action="store_true",
                   help="skip the per-preset training-speed and memory subprocesses")
    g.add_argument("--vga-repeats", type=int, default=None, metavar="N",
                   help="timed VGA forwards per technique and thread count (default: quick "
                   "3, full 10)")
    g.add_argument("--ssdlite-seconds", type=float, default=None, metavar="S",
                   help="SSDlite's wall-clock training budget (default: what fpn took; at "
                   "most 30 s in quick mode)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress bars (default: when the terminal is interactive)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bars")
    p.set_defaults(func=run)


def _table(result: dict) -> str:
    from sodlab.bench.report import flatten, fmt

    flat = {k: v for k, v in flatten(result).items() if not k.startswith("provenance")}
    if not flat:
        return "  (no numbers)"
    width = max(len(k) for k in flat)
    return "\n".join(f"  {k:<{width}}  {fmt(v)}" for k, v in flat.items())


def _suite_table(suite: dict) -> str:
    from sodlab.bench.page import technique_rows

    rows = technique_rows(suite)
    if not rows:
        return "  (no techniques)"
    width = max(len(r["technique"]) for r in rows)

    def f(x, d=3):
        return "     —" if x is None else f"{x:6.{d}f}"

    lines = [f"  {'technique':<{width}}  status   AP_small AP_tiny  VGA ms (1 thread)"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"  {r['technique']:<{width}}  {r['status']:<8} {r['reason'][:70]}")
            continue
        lines.append(f"  {r['technique']:<{width}}  {r['status']:<8} {f(r['AP_small'])}  "
                     f"{f(r['AP_tiny'])}  {f(r['vga_ms_1t'], 1)}")
    return "\n".join(lines)


def _suite_options(args) -> dict:
    from sodlab.detector import parse_overrides
    from sodlab.errors import InputError

    opts: dict = {}
    if args.techniques:
        opts["techniques"] = [s.strip() for s in args.techniques.split(",") if s.strip()]
    if args.max_steps is not None:
        if args.max_steps < 1 or args.batch_size < 1:
            raise InputError("--max-steps and --batch-size must be at least 1")
        overrides = parse_overrides(args.set)
        opts["budget"] = {"max_steps": args.max_steps, "batch_size": args.batch_size,
                          "overrides": overrides}
        opts["stage_budget"] = {"max_steps": args.max_steps, "batch_size": args.batch_size}
    elif args.set:
        raise InputError("--set changes the budget's detector config: give --max-steps too")
    if args.no_speed:
        opts["speed"] = False
    if args.vga_repeats is not None:
        if args.vga_repeats < 1:
            raise InputError("--vga-repeats must be at least 1")
        opts["repeats"] = args.vga_repeats
    if args.ssdlite_seconds is not None:
        opts["ssdlite_seconds"] = args.ssdlite_seconds
    return opts


def _reference(args):
    """``(path, loaded reference or None)`` of the regression check's reference."""
    from pathlib import Path

    from sodlab.errors import InputError
    from sodlab.files import repo_root

    ref_path = Path(args.reference) if args.reference else \
        repo_root() / "results" / "bench_reference.json"
    reference = None
    if ref_path.is_file():
        from sodlab.bench.page import load_bench

        reference = load_bench(ref_path)
    elif args.reference and not args.update_reference:
        raise InputError(f"--reference {ref_path}: no such file")
    return ref_path, reference


def _show(name: str, result: dict | None, note: str | None) -> None:
    """Print one benchmark's result (or why it has none) as it finishes."""
    if result is None:
        print(f"\n{name}: {note}", flush=True)
    elif name == "suite":
        print(f"\n{name}\n{_suite_table(result)}", flush=True)
    else:
        print(f"\n{name}\n{_table(result)}", flush=True)


def _update_reference(suite: dict | None, ref_path, *, quick: bool) -> None:
    """Rewrite the reference from this run's suite, unless it did not run or failed."""
    from sodlab.files import write_json

    if suite is None:
        print("the suite did not run: the reference is unchanged", file=sys.stderr)
    elif suite.get("failed"):
        print(f"{len(suite['failed'])} technique(s) failed: the reference is unchanged "
              "(a reference holds a complete run)", file=sys.stderr)
    else:
        if quick:
            print("note: a quick-mode reference checks quick runs only; the committed "
                  "reference should come from a full run (--full)", file=sys.stderr)
        write_json(ref_path, {"benchmarks": {"suite": suite},
                              "provenance": suite.get("provenance")})
        print(f"updated the reference {ref_path}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from sodlab.bench import BENCHMARKS, run_benchmarks
    from sodlab.bench.page import suite_of, write_page
    from sodlab.errors import InputError
    from sodlab.files import write_json

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    names = only or list(BENCHMARKS)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    options = {"suite": _suite_options(args)}
    if options["suite"] and "suite" not in names:
        raise InputError("the suite options (--techniques, --max-steps, ...) need the suite: "
                         "add it to --only")
    if args.update_reference and "suite" not in names:
        raise InputError("--update-reference needs the suite: add it to --only")
    ref_path, reference = _reference(args)
    print(f"benchmarks: {', '.join(names)} ({'quick' if args.quick else 'full'}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    out = run_benchmarks(quick=args.quick, only=only, progress=progress, on_result=_show,
                         data_root=args.data, options=options)
    write_json(args.out, out)
    paths = write_page(out, Path(args.out).parent, reference=reference,
                       reference_label=str(ref_path.name), json_name=Path(args.out).name)
    print(f"\nwrote {args.out}, {paths['html']}" + (f", {paths['csv']}" if "csv" in paths
                                                   else ""))
    suite = suite_of(out)
    if args.update_reference:
        _update_reference(suite, ref_path, quick=args.quick)
    from sodlab.bench.notebooks import refresh_index

    if Path(args.out).name == "bench.json":
        index = refresh_index(Path(args.out).parent)
        if index is not None:
            print(f"updated {index}")
    failed = bool(out["failed"]) or bool((suite or {}).get("failed"))
    return 1 if failed else 0

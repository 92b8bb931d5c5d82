"""`sodlab cache`: export the run cache's trained models to one archive, import one, list them.

Layer L4. ``sodlab cache export OUT [--keys K1,K2] [--include-last] [--mode quick|full|all]``
writes ``sodlab.engine.cache_archive.export_cache``'s archive; ``sodlab cache import ARCHIVE
[--overwrite]`` puts its runs into this machine's run cache and says which were imported,
skipped or refused, and why; ``sodlab cache list`` shows each run folder (key prefix,
preset, seed, images seen, precision, size on disk). Bad input exits 2 with one line; an
import whose every run is refused exits 1.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "cache", help="share trained models: export the run cache, import it, list it",
        description="A class starts warm: the lecturer runs 'make demo' once and then "
        "'sodlab cache export class.tar', which packs every trained model of the run cache "
        "into one file. Each student runs 'sodlab cache import class.tar' before opening the "
        "notebooks, which then load those models instead of training them.")
    p.add_argument("action", choices=("export", "import", "list"),
                   help="export: write an archive; import: read one into the run cache; "
                   "list: the runs in the cache")
    p.add_argument("path", nargs="?", default=None, metavar="ARCHIVE",
                   help="the archive to write (export; .tar, or .tar.gz to compress) or read "
                   "(import)")
    p.add_argument("--keys", default=None, metavar="K1,K2",
                   help="export: only these runs (keys or unique prefixes from 'sodlab cache "
                   "list'); a second stage's base comes along")
    p.add_argument("--mode", default="quick", choices=("quick", "full", "all"),
                   help="export without --keys: the runs trained in this mode (default quick, "
                   "what 'make demo' trains)")
    p.add_argument("--include-last", action="store_true",
                   help="export: also each run's last.pt (only needed to resume training)")
    p.add_argument("--overwrite", action="store_true",
                   help="import: replace runs already in the cache")
    p.add_argument("--progress", action="store_true", help="export: a progress bar")
    p.set_defaults(func=run)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def run(args: argparse.Namespace) -> int:
    from sodlab.errors import InputError

    if args.action == "list":
        return _list()
    if not args.path:
        raise InputError(f"sodlab cache {args.action}: name the archive (sodlab cache "
                         f"{args.action} {'OUT' if args.action == 'export' else 'ARCHIVE'})")
    if args.action == "export":
        return _export(args)
    return _import(args)


def _list() -> int:
    from sodlab.engine.cache import cache_root
    from sodlab.engine.cache_archive import cache_entries

    entries = cache_entries()
    print(f"{'key':12s}  {'preset':10s} {'seed':>4s} {'images':>8s} {'precision':9s} "
          f"{'mode':5s} {'size':>9s}")
    for e in entries:
        if not e["finished"]:
            print(f"{e['key'][:12]:12s}  {'(unfinished: training, or cut off)':41s}"
                  f"{_size(e['bytes']):>9s}")
            continue
        print(f"{e['key'][:12]:12s}  {str(e['preset']):10s} {str(e['seed']):>4s} "
              f"{str(e['images_seen']):>8s} {str(e['precision']):9s} {str(e['mode']):5s} "
              f"{_size(e['bytes']):>9s}")
    done = sum(e["finished"] for e in entries)
    print(f"{done} finished run(s), {len(entries) - done} unfinished, "
          f"{_size(sum(e['bytes'] for e in entries))} in {cache_root()}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sodlab.engine.cache_archive import export_cache
    from sodlab.errors import InputError

    keys = [k for k in args.keys.split(",") if k.strip()] if args.keys else None
    if args.keys is not None and not keys:
        raise InputError("--keys: give at least one key (sodlab cache list)")
    manifest = export_cache(args.path, keys=keys, mode=args.mode,
                            include_last=args.include_last, progress=args.progress)
    for r in manifest["runs"]:
        print(f"exported {r['key'][:12]}  {r['preset']}, seed {r['seed']}, "
              f"{r['images_seen']} images, {r['precision']}")
    for r in manifest["left_out"]:
        print(f"left out {r['key'][:12]}  {r['reason']}")
    print(f"{len(manifest['runs'])} run(s), {_size(Path(args.path).stat().st_size)}: "
          f"{args.path}")
    if not manifest["runs"]:
        print("the archive holds no run: train some first (make demo), or see --mode/--keys")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sodlab.engine.cache_archive import import_cache

    report = import_cache(args.path, overwrite=args.overwrite)
    for word in ("imported", "skipped", "refused"):
        for r in report[word]:
            why = f": {r['reason']}" if r["reason"] else ""
            print(f"{word:8s} {r['key'][:12]}  {r['preset']}{why}")
    print(f"{len(report['imported'])} imported, {len(report['skipped'])} skipped, "
          f"{len(report['refused'])} refused, into {report['cache_dir']}")
    return 1 if report["refused"] and not report["imported"] and not report["skipped"] else 0

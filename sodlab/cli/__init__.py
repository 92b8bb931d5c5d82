"""The ``sodlab`` command line: one subcommand per job, each in its own module here.

Layer L4. ``main(argv)`` returns an exit code: 0 on success, 2 on bad input (an
``InputError`` or a missing file, printed as one line ``sodlab: error: ...``), never a
traceback for input a user can fix. Heavy imports (torch) happen inside the commands, so
``--help`` is quick.
"""

from __future__ import annotations

import argparse
import sys

from sodlab import __version__
from sodlab.errors import InputError

# Each module defines register(subparsers) and sets a ``func(args) -> int`` default.
_COMMANDS = ("data", "eval", "train", "detect", "notebooks", "bench", "study", "anchors", "cache")


def add_mode_arguments(parser: argparse.ArgumentParser, *, quick_help: str,
                       full_help: str) -> None:
    """``--quick`` (the default) / ``--full``, stored as ``args.quick``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help=quick_help)
    mode.add_argument("--full", dest="quick", action="store_false", help=full_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sodlab",
        description="Small-object detection: make or import data, train, detect, evaluate by "
        "object size, run the notebooks and the benchmark report.",
        epilog="Run 'sodlab COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sodlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib

    for name in _COMMANDS:
        importlib.import_module(f"sodlab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"sodlab: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"sodlab: error: no such file: {exc.filename or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sodlab: interrupted", file=sys.stderr)
        return 130

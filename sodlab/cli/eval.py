"""`sodlab eval`: not built yet."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("eval", help="(not built yet)")
    p.set_defaults(func=lambda args: print("sodlab eval: not built yet") or 1)

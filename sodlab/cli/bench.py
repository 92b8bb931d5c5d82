"""`sodlab bench`: not built yet."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("bench", help="(not built yet)")
    p.set_defaults(func=lambda args: print("sodlab bench: not built yet") or 1)

"""The README's result sections, generated from the committed results so no number is typed by hand.

Layer L4. ``README.md`` holds sections between ``<!-- generated: NAME -->`` and ``<!-- end
generated: NAME -->`` markers; ``render(name)`` writes each from ``results/``:

- ``curve``: the learning curve (``results/budget_curve.json``): AP_small per preset and
  budget multiple, the multiple the full budget was set from, the full budget in force;
- ``studies``: each notebook's study (``results/studies/NAME.json``) at the full budget: one
  line per comparison on AP_small with its paired difference and verdict, or what is
  still to run;
- ``old_results``: the committed notebook results of the earlier budget (``results/NN_*.json``),
  each notebook's headline numbers as its run recorded them.

``python -m sodlab.bench.readme`` rewrites the sections (the README's, and the learning curve
in ``docs/design.md``); ``--check`` exits 1 when a file differs from what the results give
(a test runs it). Taught nowhere: it keeps the README true.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from sodlab.errors import InputError

SECTIONS = ("curve", "studies", "old_results")


def _results() -> Path:
    from sodlab.files import repo_root

    return repo_root() / "results"


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def render_curve() -> str:
    from sodlab.bench.budget_curve import load_curve, sufficiency_sentences
    from sodlab.engine.budgets import FULL, images_seen

    curve = load_curve()
    if curve is None:
        return "No learning curve committed yet (`sodlab bench --full --only budget_curve`)."
    presets = sorted({r["preset"] for r in curve["rows"]})
    mults = sorted({r["multiple"] for r in curve["rows"]})
    by = {(r["preset"], r["multiple"]): r for r in curve["rows"]}
    lines = ["| images seen | " + " | ".join(f"{p} AP_small" for p in presets) + " |",
             "|---|" + "---|" * len(presets)]
    for m in mults:
        seen = next(r["images_seen"] for r in curve["rows"] if r["multiple"] == m)
        cells = [_fmt(by[(p, m)]["AP_small"]) if (p, m) in by else "—" for p in presets]
        lines.append(f"| {seen:,} ({m}×) | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {s}." for s in sufficiency_sentences(curve)]
    lines.append(f"- The full budget in force (`sodlab.engine.budgets.FULL`): "
                 f"{images_seen(FULL):,} images seen.")
    return "\n".join(lines)


def render_studies() -> str:
    from sodlab.bench.studies import STUDIES
    from sodlab.bench.study_view import load_study

    lines = []
    for name, st in STUDIES.items():
        res = load_study(name)
        if res is None:
            lines.append(f"- `{st.notebook}`: not yet run at the full budget "
                         f"(`sodlab study run {name} --full`).")
            continue
        seen = sorted({t["images_seen"] for t in res["techniques"].values()})
        parts = [f"{c['b']} vs {c['a']} {_fmt(c['mean'])} ({c['verdict']})"
                 for c in res["comparisons"] if c["metric"] == "AP_small"]
        lines.append(f"- `{st.notebook}` ({', '.join(f'{s:,}' for s in seen)} images seen, "
                     f"AP_small, B − A): " + "; ".join(parts) + ".")
    return "\n".join(lines)


def render_old_results() -> str:
    from sodlab.bench.report import flatten

    lines = []
    for p in sorted(_results().glob("[0-9][0-9]_*.json")):
        obj = json.loads(p.read_text())
        head = obj.get("headline") or []
        if not head:
            continue
        flat = flatten(obj.get("numbers") or {})
        seen = ((obj.get("numbers") or {}).get("budget") or {}).get("images_seen")
        vals = "; ".join(f"{k} {_fmt(flat.get(k))}" for k in head)
        lines.append(f"- `{obj['notebook']}`{f' ({seen:,} images seen)' if seen else ''}: "
                     f"{vals}.")
    return "\n".join(lines) or "No committed notebook results."


RENDER = {"curve": render_curve, "studies": render_studies, "old_results": render_old_results}


def render(name: str) -> str:
    if name not in RENDER:
        raise InputError(f"unknown README section {name!r}; known: {', '.join(SECTIONS)}")
    return RENDER[name]()


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated: {name} -->\n)(.*?)(<!-- end generated: {name} -->)",
                      re.S)


# The files with generated sections, and the sections each must hold.
FILES = {"README.md": SECTIONS, "docs/design.md": ("curve",)}


def updated(text: str, sections: tuple[str, ...] = SECTIONS) -> str:
    """``text`` (a README) with every generated section rendered anew."""
    for name in sections:
        pat = _pattern(name)
        if not pat.search(text):
            raise InputError(f"no generated section {name!r} (markers "
                             f"'<!-- generated: {name} -->' ... '<!-- end generated: {name} -->')")
        body = render(name).rstrip("\n") + "\n"
        text = pat.sub(lambda m, body=body: m.group(1) + body + m.group(3), text)
    return text


def refresh(argv: list[str] | None = None) -> int:
    from sodlab.files import repo_root

    args = list(sys.argv[1:] if argv is None else argv)
    stale = []
    for rel, sections in FILES.items():
        path = repo_root() / rel
        old = path.read_text()
        new = updated(old, sections)
        if new != old:
            stale.append(rel)
            if "--check" not in args:
                path.write_text(new)
    if "--check" in args and stale:
        print(f"{', '.join(stale)} out of date with results/: run python -m sodlab.bench.readme")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(refresh())


__all__ = ["SECTIONS", "FILES", "render", "updated", "refresh"]

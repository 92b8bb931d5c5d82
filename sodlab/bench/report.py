"""Write ``reports/index.html``: every notebook's status, time and headline numbers in one page.

Layer L4. Called by ``notebooks.run_notebooks``; read by the maintainer after each change.
One self-contained page (inline CSS, no external assets, no JavaScript):

- a row per notebook: status, run time (flagged over 90 s in quick mode), a link to its
  executed HTML, and its **headline numbers** (the three to six keys its ``record(...,
  headline=[...])`` call names; the first few numbers when it names none) in a small table:
  this run's value beside the committed full-mode value at the same key, and the verdicts
  of that committed run, each with its sentence folded under it. Both come from the
  notebook's study at the earlier budget (``results/studies/NAME-3200.json``: the headline
  numbers in its ``extras["headline"]``, the verdicts its comparisons'). Every other number
  stays in the notebook's JSON, linked;
- the errors of failed notebooks;
- committed results no notebook row names (those studies, benchmarks, ``quality.json``);
- ``reports/bench.json`` (``sodlab bench``) as one table per benchmark;
- the run's provenance (commit, versions, threads, CPU, seed, data, mode, time).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path

QUICK_LIMIT_S = 90.0
MAX_NUMBERS = 12  # numbers shown per "other committed result"; the JSON has them all
FALLBACK_HEADLINE = 6  # numbers shown for a notebook that names no headline
NOTEBOOK_STEM = re.compile(r"^[0-9][0-9]_")  # a notebook's name: NN_name

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #222; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: .6em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: #f4f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.slow { background: #fff3cd; color: #7a5a00; border-radius: 3px; padding: 0 4px;
        font-size: .85em; font-weight: 600; }
.kv { margin: 0; padding: 0; list-style: none; font-size: .9em; }
.kv li { white-space: nowrap; } .kv b { font-weight: 500; color: #555; }
.full { color: #0b5394; }
table.hl { width: auto; margin: 0; font-size: .9em; }
table.hl td, table.hl th { padding: 1px 8px 1px 0; border: 0; background: none; }
.v-up { color: #1a7f37; font-weight: 600; } .v-down { color: #cf222e; font-weight: 600; }
.v-none { color: #666; font-weight: 600; }
details { font-size: .85em; } details summary { cursor: pointer; }
pre.err { background: #fff5f5; border-left: 3px solid #cf222e; padding: .5em .8em;
          white-space: pre-wrap; font-size: .85em; margin: .3em 0; }
.note { color: #666; font-size: .9em; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px;
          font-size: .9em; } dl.prov dt { color: #555; } dl.prov dd { margin: 0; }
"""


def fmt(value) -> str:
    """A number or value as short text: floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) <= 4 and all(isinstance(v, (int, float, str)) for v in value):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return f"[{len(value)} values]"
    return str(value)


def flatten(numbers, prefix: str = "") -> dict[str, object]:
    """Nested dicts as ``{"a.b": value}``; lists stay as values."""
    out: dict[str, object] = {}
    if not isinstance(numbers, dict):
        return {prefix or "value": numbers} if numbers is not None else {}
    for key, value in numbers.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _kv_list(numbers, css: str = "", limit: int = MAX_NUMBERS) -> str:
    flat = flatten(numbers)
    if not flat:
        return '<span class="note">—</span>'
    items = list(flat.items())
    lis = [f"<li><b>{html.escape(k)}</b> {html.escape(fmt(v))}</li>" for k, v in items[:limit]]
    if len(items) > limit:
        lis.append(f'<li class="note">… {len(items) - limit} more in the JSON</li>')
    cls = f"kv {css}".strip()
    return f'<ul class="{cls}">' + "".join(lis) + "</ul>"


def _load_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _earlier_studies(results_dir: Path) -> dict[str, tuple[str, Path]]:
    """``{notebook: (study, path)}`` of the studies committed at the earlier budget
    (``<results_dir>/studies/NAME-3200.json``)."""
    from sodlab.bench.studies import STUDIES
    from sodlab.bench.study_view import earlier_images

    images = earlier_images()
    found = {st.notebook: (name, results_dir / "studies" / f"{name}-{images}.json")
             for name, st in STUDIES.items()}
    return {stem: v for stem, v in found.items() if v[1].is_file()}


def committed_results(results_dir: str | os.PathLike | None) -> dict[str, dict]:
    """The committed results by name: ``results/*.json`` by stem (benchmarks, ``quality``, the
    learning curve; each ``{"numbers": ..., "provenance": ...}`` or plain), and each
    notebook's study at the earlier budget under the notebook's stem, as ``{"file",
    "headline", "numbers"}``: the headline numbers its ``extras["headline"]`` keeps."""
    out: dict[str, dict] = {}
    if results_dir is None or not Path(results_dir).is_dir():
        return out
    for p in sorted(Path(results_dir).glob("*.json")):
        obj = _load_json(p)
        if isinstance(obj, dict) and not NOTEBOOK_STEM.match(p.stem):  # notebooks: studies
            out[p.stem] = obj
    for stem, (_, path) in _earlier_studies(Path(results_dir)).items():
        obj = _load_json(path)
        extras = obj.get("extras") if isinstance(obj, dict) else None
        head = extras.get("headline") if isinstance(extras, dict) else None
        head = head if isinstance(head, dict) else {}
        out[stem] = {"file": f"results/studies/{path.name}", "headline": list(head),
                     "numbers": dict(head)}
    return out


def _headline_keys(row: dict, committed: dict | None) -> list[str]:
    """The keys a row shows: its headline, else the committed file's, else the first few."""
    for source in (row, committed or {}):
        keys = source.get("headline")
        if isinstance(keys, list) and keys:
            return [str(k) for k in keys]
    for numbers in (row.get("numbers"), (committed or {}).get("numbers", committed)):
        flat = flatten(numbers) if isinstance(numbers, dict) else {}
        if flat:
            return list(flat)[:FALLBACK_HEADLINE]
    return []


def _headline_cell(row: dict, committed: dict | None) -> str:
    keys = _headline_keys(row, committed)
    if not keys:
        return '<span class="note">—</span>'
    live = flatten(row.get("numbers")) if isinstance(row.get("numbers"), dict) else {}
    full = committed.get("numbers", committed) if isinstance(committed, dict) else None
    full = flatten(full) if isinstance(full, dict) else {}
    head = "<tr><th></th><th>this run</th>"
    head += '<th class="full">full mode (committed)</th></tr>' if committed else "</tr>"
    lines = [f'<table class="hl">{head}']
    for k in keys:
        cells = [html.escape(k), html.escape(fmt(live[k])) if k in live else "—"]
        if committed:
            cells.append(html.escape(fmt(full[k])) if k in full else "—")
        tds = "".join(f"<td>{c}</td>" if i == 0 else f'<td class="num{" full" if i == 2 else ""}">'
                      f"{c}</td>" for i, c in enumerate(cells))
        lines.append(f"<tr>{tds}</tr>")
    lines.append("</table>")
    return "".join(lines)


def committed_verdicts(stem: str, results_dir: str | os.PathLike | None) -> list[dict]:
    """``[{"label", "verdict", "sentence"}]`` of notebook ``stem``'s study at the earlier
    budget ([] if none is committed)."""
    from sodlab.bench.study_view import load_study
    from sodlab.errors import InputError

    if results_dir is None or not Path(results_dir).is_dir():
        return []
    found = _earlier_studies(Path(results_dir)).get(stem)
    if found is None:
        return []
    name, path = found
    try:
        return [{"label": f"{c['b']} vs {c['a']}, {c['metric']}", "verdict": c["verdict"],
                 "sentence": c["sentence"]} for c in load_study(name, path)["comparisons"]]
    except (InputError, AttributeError, TypeError, KeyError, ValueError) as exc:
        # a report without verdicts is still a report: say which file is at fault
        return [{"label": f"results/studies/{path.name}", "verdict": "unreadable",
                 "sentence": f"{type(exc).__name__}: {exc}"}]


def _verdict_cell(verdicts: list[dict]) -> str:
    if not verdicts:
        return '<span class="note">—</span>'
    out = []
    for v in verdicts:
        css = {"up": "v-up", "down": "v-down"}.get(v["verdict"], "v-none")
        out.append(f'<details><summary>{html.escape(v["label"])}: <span class="{css}">'
                   f'{html.escape(v["verdict"])}</span></summary>'
                   f'{html.escape(v["sentence"])}</details>')
    return "".join(out)


def _notebook_table(rows: list[dict], full: dict[str, dict],
                    verdicts: dict[str, list[dict]] | None = None) -> str:
    verdicts = verdicts or {}
    show_full = bool(full)
    head = ["Notebook", "Status", "Time", "Headline numbers"]
    if show_full:
        head.append("Verdicts (committed full-mode results)")
    out = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        stem = html.escape(r["stem"])
        link = (f'<a href="{html.escape(r["html"])}">{stem}</a>' if r.get("html") else stem)
        if r.get("html"):
            link += f'<br><a class="note" href="{html.escape(r["html"])}">executed notebook</a>'
        if r.get("json"):
            link += f'<br><a class="note" href="{html.escape(r["json"])}">all numbers (JSON)</a>'
        status = r.get("status", "?")
        st = f'<span class="{"ok" if status == "ok" else "failed"}">{html.escape(status)}</span>'
        secs = r.get("seconds")
        time_txt = "—" if secs is None else f"{secs:.1f} s"
        if r.get("quick") and secs is not None and secs > QUICK_LIMIT_S:
            time_txt += f' <span class="slow" title="quick mode should take under ' \
                        f'{QUICK_LIMIT_S:.0f} s">over {QUICK_LIMIT_S:.0f} s</span>'
        mode = "quick" if r.get("quick") else "full"
        committed = full.get(r["stem"])
        cells = [link, st, f'{time_txt}<br><span class="note">{mode}</span>',
                 _headline_cell(r, committed)]
        if r.get("error"):
            cells[3] += f'<pre class="err">{html.escape(r["error"])}</pre>'
        if show_full:
            cells.append(_verdict_cell(verdicts.get(r["stem"], [])) if committed else
                         '<span class="note">no committed full-mode results</span>')
        tds = "".join(f'<td class="num">{c}</td>' if i == 2 else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        out.append(f"<tr>{tds}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _bench_section(bench: dict) -> str:
    parts = ["<h2>Benchmarks (<code>sodlab bench</code>)</h2>"]
    prov = bench.get("provenance") or {}
    if prov:
        parts.append(f'<p class="note">{html.escape(str(prov.get("mode")))} mode, '
                     f'{html.escape(str(prov.get("threads")))} threads, '
                     f'{html.escape(str(prov.get("time")))}, commit '
                     f'{html.escape(str(prov.get("commit")))}</p>')
    seconds = bench.get("seconds") or {}
    for name, result in (bench.get("benchmarks") or {}).items():
        if name == "suite":  # the technique suite has its own page, beside this one
            parts.append('<h3>suite</h3><p>Every technique side by side: '
                         '<a href="bench.html">bench.html</a></p>')
            continue
        secs = seconds.get(name)
        title = html.escape(name) + (f' <span class="note">({secs:.1f} s)</span>'
                                     if isinstance(secs, (int, float)) else "")
        parts.append(f"<h3>{title}</h3>")
        flat = {k: v for k, v in flatten(result).items() if not k.startswith("provenance")}
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td class=\"num\">{html.escape(fmt(v))}"
                       "</td></tr>" for k, v in flat.items())
        parts.append(f"<table><tr><th>Measure</th><th>Value</th></tr>{rows}</table>")
    for key, label in (("skipped", "skipped"), ("failed", "failed")):
        for name, note in (bench.get(key) or {}).items():
            parts.append(f'<p class="note"><b>{html.escape(name)}</b> {label}: '
                         f"{html.escape(str(note))}</p>")
    return "\n".join(parts)


def _prov_section(prov: dict) -> str:
    items = []
    for key, value in prov.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        items.append(f"<dt>{html.escape(str(key))}</dt><dd>{html.escape(str(value))}</dd>")
    return '<h2>Provenance of this run</h2><dl class="prov">' + "".join(items) + "</dl>"


def _books_section(books: dict[str, dict], verdicts: dict[str, list[dict]]) -> list[str]:
    """The committed results of notebooks no row names: their headline numbers, verdicts."""
    parts = ["<h2>Committed results of notebooks not run here</h2><table><tr>"
             "<th>File</th><th>Numbers (committed)</th><th>Verdicts</th></tr>"]
    for stem, obj in books.items():
        keys = _headline_keys({}, obj)
        nums = flatten(obj.get("numbers", obj))
        items = "".join(f"<li><b>{html.escape(k)}</b> {html.escape(fmt(nums[k]))}</li>"
                        for k in keys if k in nums)
        parts.append(f"<tr><td>{html.escape(obj.get('file', stem))}</td><td>"
                     f'<ul class="kv full">{items}</ul></td><td>'
                     f"{_verdict_cell(verdicts.get(stem, []))}</td></tr>")
    return parts + ["</table>"]


def render_index(rows: list[dict], *, provenance: dict | None = None,
                 full: dict[str, dict] | None = None, bench: dict | None = None,
                 verdicts: dict[str, list[dict]] | None = None) -> str:
    """The HTML text of the index page (see the module docstring).

    ``rows``: ``NotebookResult`` dicts, each optionally with ``headline`` (its keys);
    ``full``: committed results by stem; ``verdicts``: ``committed_verdicts`` by stem.
    """
    full = full or {}
    n_ok = sum(r.get("status") == "ok" for r in rows)
    n_slow = sum(bool(r.get("quick")) and (r.get("seconds") or 0) > QUICK_LIMIT_S
                 for r in rows)
    summary = f"{n_ok} of {len(rows)} notebooks ran"
    if n_ok < len(rows):
        summary += f', <span class="failed">{len(rows) - n_ok} failed</span>'
    if n_slow:
        summary += f', <span class="slow">{n_slow} over {QUICK_LIMIT_S:.0f} s</span>'
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>sodlab report</title>", f"<style>{CSS}</style></head><body>",
             "<h1>sodlab report</h1>", f'<p class="sub">{summary}.</p>',
             "<h2>Notebooks</h2>", _notebook_table(rows, full, verdicts)]
    if full:
        parts.append('<p class="note">Committed full-mode results come from '
                     "<code>results/studies/NAME-3200.json</code> (each notebook's run at "
                     "the earlier budget, its verdicts by the older unpaired rule) and "
                     "<code>results/*.json</code>: real runs, shown "
                     "beside this run's headline numbers. A verdict is "
                     "<code>sodlab.metrics.verdict</code>: up or down only when the 95 % "
                     "bootstrap intervals are apart and every seed agrees (without intervals: "
                     "at least three seeds, all agreeing); open one for its numbers.</p>")
        extra = {k: v for k, v in full.items() if k not in {r["stem"] for r in rows}}
        books = {k: v for k, v in extra.items() if NOTEBOOK_STEM.match(k)}
        if books:
            parts += _books_section(books, verdicts or {})
        extra = {k: v for k, v in extra.items() if k not in books}
        if extra:
            parts.append("<h2>Other committed results</h2><table><tr><th>File</th>"
                         "<th>Numbers</th></tr>")
            for stem, obj in extra.items():
                nums = obj.get("numbers", obj) if isinstance(obj, dict) else obj
                parts.append(f"<tr><td>{html.escape(stem)}</td><td>"
                             f"{_kv_list(nums, 'full', limit=30)}</td></tr>")
            parts.append("</table>")
    if bench:
        parts.append(_bench_section(bench))
    if provenance:
        parts.append(_prov_section(provenance))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_index(reports_dir: str | os.PathLike, rows: list[dict], *,
                provenance: dict | None = None,
                results_dir: str | os.PathLike | None = "results",
                bench_path: str | os.PathLike | None = None) -> Path:
    """Write ``reports_dir/index.html`` from notebook rows (``NotebookResult`` dicts)."""
    from sodlab.files import write_bytes

    bench = _load_json(Path(bench_path)) if bench_path else None
    reports = Path(reports_dir)
    rows = [_with_headline(r, reports) for r in rows]
    full = committed_results(results_dir)
    verdicts = {stem: committed_verdicts(stem, results_dir) for stem in full
                if NOTEBOOK_STEM.match(stem)}
    text = render_index(rows, provenance=provenance, full=full,
                        bench=bench if isinstance(bench, dict) else None, verdicts=verdicts)
    path = reports / "index.html"
    write_bytes(path, text.encode("utf-8"))
    return path


def _with_headline(row: dict, reports_dir: Path) -> dict:
    """The row with ``headline`` from the JSON the notebook wrote (``record(headline=)``)."""
    if row.get("headline") or not row.get("json"):
        return row
    obj = _load_json(reports_dir / row["json"])
    keys = obj.get("headline") if isinstance(obj, dict) else None
    return {**row, "headline": keys} if isinstance(keys, list) and keys else row

"""Write ``reports/bench.html``: the benchmark suite as one page, a CSV and PNG plots beside it.

Layer L4. ``sodlab bench`` calls ``write_page`` with what it wrote to ``reports/bench.json``
(``run_benchmarks``' dict; the ``suite`` benchmark, ``sodlab.bench.suite``, is the page's
body); notebook 10_benchmark_report reads the same numbers back with ``find_bench`` /
``load_bench`` and draws the same figures with the ``plot_*`` functions. The page holds:

- a row per technique: status, its notebook, AP / AP_tiny / AP_small / AP_medium /
  R50_tiny (mean over seeds, each seed, the 95 % bootstrap interval of the first seed),
  VGA latency on 1 and 2 threads, training images/s and peak memory; skipped techniques
  with the reason, failed ones with their error;
- plots (PNG files beside the page): AP_small against VGA latency with the speed-accuracy
  frontier, AP by size bucket, precision-recall per size bucket of the best model, the
  TIDE error breakdown (dAP per error type) per size bucket;
- each technique against the one it changes, and each paper's reported change beside ours
  (``sodlab.bench.papers``; the verdict is ``sodlab.metrics.verdict``);
- the regression check against a reference result (``results/bench_reference.json``):
  every number that moved beyond its interval is marked;
- the other benchmarks of the run as tables, and the run's provenance in the footer.

One self-contained HTML file (inline CSS, no JavaScript, no outside assets) plus its PNGs.
Shapes: plain dicts and lists; no tensors. Dimension legend: T techniques, S seeds.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sodlab.bench.suite import HN_KEY, KEYS, SHOWN
from sodlab.errors import InputError

PAGE = "bench.html"
CSV_NAME = "bench.csv"
PLOTS = {"frontier": "bench_frontier.png", "buckets": "bench_buckets.png",
         "pr": "bench_pr.png", "errors": "bench_errors.png"}
CI_COLUMNS = tuple(f"{k}_{end}" for k in SHOWN for end in ("lo", "hi"))
CSV_COLUMNS = ("technique", "status", "kind", "notebook", "preset", "recipe", "test", "seed",
               *KEYS, HN_KEY, "val_ms_per_image", *CI_COLUMNS, "vga_ms_1t", "vga_ms_2t",
               "train_images_per_s", "peak_rss_train_mb", "images_seen", "train_seconds",
               "cached", "moved", "reason")
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
ERROR_BUCKETS = ("tiny", "small", "medium")

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #222; margin: 2em auto; max-width: 1280px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: .6em 0; font-size: .92em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 7px; text-align: left;
         vertical-align: top; }
th { background: #f4f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: #777; font-size: .85em; display: block; }
.ok { color: #1a7f37; font-weight: 600; } .failed { color: #cf222e; font-weight: 600; }
.skipped { color: #7a5a00; font-weight: 600; }
.moved { background: #ffe3e3; } .mark { color: #cf222e; font-weight: 700; }
.v-up { color: #1a7f37; font-weight: 600; } .v-down { color: #cf222e; font-weight: 600; }
.v-none { color: #666; font-weight: 600; }
.note { color: #666; font-size: .9em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
pre.err { background: #fff5f5; border-left: 3px solid #cf222e; padding: .4em .7em;
          white-space: pre-wrap; font-size: .85em; margin: .2em 0; }
footer { margin-top: 2.5em; border-top: 1px solid #ddd; padding-top: .8em; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px;
          font-size: .9em; } dl.prov dt { color: #555; } dl.prov dd { margin: 0; }
"""


# ----------------------------------------------------------------------------- reading
def suite_of(bench: Mapping | None) -> dict | None:
    """The suite's result inside ``run_benchmarks``' dict, or ``bench`` itself when it is one."""
    if not isinstance(bench, Mapping):
        return None
    if "techniques" in bench:
        return dict(bench)
    inner = (bench.get("benchmarks") or {}).get("suite")
    return dict(inner) if isinstance(inner, Mapping) and "techniques" in inner else None


def load_bench(path: str | os.PathLike) -> dict:
    """``bench.json`` (or ``bench_reference.json``) as a dict; InputError naming the file."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such benchmark file (make it with: python -m sodlab "
                         "bench --only suite)") from None
    except ValueError as exc:
        raise InputError(f"{p}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{p}: expected a JSON object, got {type(obj).__name__}")
    return obj


def find_bench(reports_dir: str | os.PathLike = "reports",
               results_dir: str | os.PathLike = "results") -> tuple[dict | None, Path | None]:
    """The suite result to show: ``reports/bench.json`` when it holds one, else the committed
    ``results/bench_reference.json``; ``(None, None)`` when neither exists."""
    for path in (Path(reports_dir) / "bench.json", Path(results_dir) / "bench_reference.json"):
        if path.is_file():
            suite = suite_of(load_bench(path))
            if suite is not None:
                return suite, path
    return None, None


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return None if math.isnan(float(x)) else float(x)


def _metric(x) -> float | None:
    """A metric value; -1 (an empty bucket) and NaN are None."""
    v = _num(x)
    return None if v is None or v <= -1 else v


def technique_rows(suite: Mapping) -> list[dict]:
    """One flat row per technique: status, means, intervals, speed (the page's main table)."""
    rows = []
    for name in suite.get("order") or list(suite.get("techniques") or {}):
        t = (suite.get("techniques") or {}).get(name) or {}
        row = {"technique": name, "status": t.get("status"), "notebook": t.get("notebook"),
               "kind": t.get("kind")}
        mean = t.get("mean") or {}
        for k in (*SHOWN, HN_KEY):
            row[k] = _metric(mean.get(k)) if k != HN_KEY else _num(mean.get(k))
        for k in SHOWN:
            ci = (t.get("ci") or {}).get(k)
            row[f"{k}_lo"], row[f"{k}_hi"] = (_metric(ci[0]), _metric(ci[1])) if ci else (None,
                                                                                          None)
        sp = t.get("speed") or {}
        row.update(vga_ms_1t=_num(t.get("vga_ms_1t")), vga_ms_2t=_num(t.get("vga_ms_2t")),
                   train_images_per_s=_num(t.get("train_images_per_s")),
                   peak_rss_train_mb=_num(sp.get("peak_rss_train_mb")),
                   seeds=len(t.get("seeds") or {}),
                   reason=t.get("reason") or t.get("error") or "")
        rows.append(row)
    return rows


def technique_frame(suite: Mapping):
    """``technique_rows`` as a pandas DataFrame indexed by technique (for the notebook)."""
    import pandas as pd

    return pd.DataFrame(technique_rows(suite)).set_index("technique")


def paper_frame(suite: Mapping):
    """The papers' changes beside ours as a DataFrame (``suite["papers"]``)."""
    import pandas as pd

    rows = [{"technique": r["technique"], "paper": r["paper"], "metric": r["metric"],
             "paper's change": r["paper_text"], "ablation": r["ablation"],
             "ours": " \u2192 ".join(r["ours"][:2]) + f" on {r['ours'][2]}" if r.get("ours")
             else "—", "our delta": r.get("ours_delta"),
             "our interval": ci_text(r.get("ours_ci")), "outcome": r["outcome"]}
            for r in suite.get("papers") or []]
    return pd.DataFrame(rows)


def csv_rows(suite: Mapping, marks: Mapping | None = None) -> list[dict]:
    """Per technique and seed, the ``CSV_COLUMNS`` (intervals on the interval's seed's row)."""
    marks = marks or {}
    out = []
    for name in suite.get("order") or list(suite.get("techniques") or {}):
        t = (suite.get("techniques") or {}).get(name) or {}
        base = {"technique": name, "status": t.get("status"), "kind": t.get("kind"),
                "notebook": t.get("notebook"), "preset": t.get("preset"),
                "recipe": t.get("recipe"), "test": t.get("test"),
                "reason": t.get("reason") or t.get("error") or ""}
        seeds = t.get("seeds") or {}
        if not seeds:
            out.append({c: base.get(c, "") for c in CSV_COLUMNS})
            continue
        moved = ";".join(k for k, v in (marks.get(name) or {}).items() if v == "moved")
        for s, m in seeds.items():
            tr = (t.get("train") or {}).get(s) or {}
            row = {**base, "seed": s, **{k: m.get(k) for k in (*KEYS, HN_KEY,
                                                              "val_ms_per_image")},
                   "images_seen": tr.get("images_seen"), "train_seconds": tr.get("seconds"),
                   "cached": tr.get("cached")}
            if str(t.get("ci_seed")) == str(s):
                for k in SHOWN:
                    ci = (t.get("ci") or {}).get(k)
                    if ci:
                        row[f"{k}_lo"], row[f"{k}_hi"] = ci
                row.update(vga_ms_1t=t.get("vga_ms_1t"), vga_ms_2t=t.get("vga_ms_2t"),
                           train_images_per_s=t.get("train_images_per_s"),
                           peak_rss_train_mb=(t.get("speed") or {}).get("peak_rss_train_mb"),
                           moved=moved)
            out.append({c: ("" if row.get(c) is None else row.get(c)) for c in CSV_COLUMNS})
    return out


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> Path:
    """Write ``rows`` with the ``CSV_COLUMNS`` header (atomically)."""
    from sodlab.files import write_bytes

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    write_bytes(path, buf.getvalue().encode("utf-8"))
    return Path(path)


# ----------------------------------------------------------------------------- plots
def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _ok(suite: Mapping) -> list[str]:
    techs = suite.get("techniques") or {}
    return [n for n in (suite.get("order") or list(techs)) if
            (techs.get(n) or {}).get("status") == "ok"]


def plot_frontier(suite: Mapping, *, key: str = "AP_small"):
    """``key`` (mean over seeds) against VGA latency on one thread, each point labelled, the
    speed-accuracy frontier drawn through the points no other beats on both; None if empty."""
    from sodlab.bench.suite import pareto_frontier

    techs = suite.get("techniques") or {}
    pts = {n: (_num(techs[n].get("vga_ms_1t")), _metric((techs[n].get("mean") or {}).get(key)))
           for n in _ok(suite)}
    pts = {n: p for n, p in pts.items() if p[0] is not None and p[1] is not None}
    if not pts:
        return None
    fig = _figure(9, 5.5)
    ax = fig.add_subplot()
    front = pareto_frontier(pts)
    for n, (x, y) in pts.items():
        ci = (techs[n].get("ci") or {}).get(key)
        yerr = None
        if ci and ci[0] > -1:
            yerr = [[max(y - ci[0], 0)], [max(ci[1] - y, 0)]]
        ax.errorbar([x], [y], yerr=yerr, fmt="o", ms=6, capsize=2,
                    color="#1f77b4" if n in front else "#999999")
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if front:
        fx, fy = zip(*(pts[n] for n in front))
        ax.step(fx, fy, where="post", color="#1f77b4", lw=1.2, label="frontier")
        ax.legend(loc="upper left", fontsize=8)
    from matplotlib.ticker import ScalarFormatter

    ax.set_xscale("log")
    for axis in (ax.xaxis,):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("VGA (640 x 480) latency, one thread, ms (log)")
    ax.set_ylabel(f"{key} on val (mean over seeds)")
    mode = (suite.get("provenance") or {}).get("mode")
    ax.set_title(f"speed against accuracy ({mode} mode; bars: 95 % interval, first seed)")
    ax.grid(alpha=0.3)
    return fig


def plot_buckets(suite: Mapping):
    """AP by size bucket per technique as grouped bars (95 % intervals of the first seed)."""
    import numpy as np

    from sodlab.viz import BUCKET_COLORS

    names = _ok(suite)
    if not names:
        return None
    techs = suite["techniques"]
    fig = _figure(max(8, 0.6 * len(names) + 3), 4.6)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    keys = ("AP_tiny", "AP_small", "AP_medium")
    for j, k in enumerate(keys):
        mu = np.array([_metric((techs[n].get("mean") or {}).get(k)) or 0.0 for n in names])
        lo = np.array([((techs[n].get("ci") or {}).get(k) or [m, m])[0] for n, m in
                       zip(names, mu)])
        hi = np.array([((techs[n].get("ci") or {}).get(k) or [m, m])[1] for n, m in
                       zip(names, mu)])
        err = np.stack([np.clip(mu - lo, 0, None), np.clip(hi - mu, 0, None)])  # [2, T]
        err[:, lo <= -1] = 0
        ax.bar(x + (j - 1) * 0.27, mu, 0.27, yerr=err, capsize=2, label=k,
               color=BUCKET_COLORS[k.split("_")[1]])
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("AP on val (mean over seeds)")
    ax.set_title("AP by size bucket (bars: 95 % interval, first seed)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_pr(suite: Mapping):
    """Precision against recall per size bucket (IoU 0.5) of the best model; None if none."""
    from sodlab.viz import BUCKET_COLORS

    curves = suite.get("pr_curves")
    if not curves:
        return None
    fig = _figure(6.5, 4.6)
    ax = fig.add_subplot()
    rec = curves["recall"]
    for bucket, prec in curves["precision"].items():
        if max(prec, default=-1) <= -1:
            continue  # a bucket without objects
        ax.plot(rec, [max(p, 0.0) for p in prec], lw=1.6, label=bucket,
                color=BUCKET_COLORS.get(bucket, "#333333"))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{curves['technique']}: precision-recall at IoU {curves['iou']:g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_errors(suite: Mapping, buckets: Sequence[str] = ERROR_BUCKETS):
    """TIDE's dAP (AP gained by fixing one error type) per technique, one heat map per bucket."""
    import numpy as np

    techs = suite.get("techniques") or {}
    names = [n for n in _ok(suite) if techs[n].get("errors")]
    if not names:
        return None
    grids = {b: np.array([[float((techs[n]["errors"]["dAP"].get(b) or {}).get(e, -1))
                           for e in ERROR_TYPES] for n in names]) for b in buckets}  # [T, 6]
    top = max([float(g.max()) for g in grids.values()] + [0.01])  # one colour scale for all
    fig = _figure(4.0 * len(buckets) + 1.5, 0.32 * len(names) + 2.2)
    axes = fig.subplots(1, len(buckets), sharey=True, squeeze=False)[0]
    for ax, b in zip(axes, buckets):
        grid = grids[b]
        im = ax.imshow(np.where(grid < 0, np.nan, grid), aspect="auto", cmap="Reds", vmin=0,
                       vmax=top)
        for i in range(len(names)):
            for j in range(len(ERROR_TYPES)):
                v = grid[i, j]
                ax.text(j, i, "—" if v < 0 else f"{v:.2f}", ha="center", va="center",
                        fontsize=6.5, color="white" if v > 0.6 * top else "black")
        ax.set_xticks(range(len(ERROR_TYPES)), ERROR_TYPES, rotation=35, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{b}: dAP per error type", fontsize=10)
    fig.colorbar(im, ax=list(axes), shrink=0.7, label="AP gained by fixing the type")
    return fig


PLOTTERS = {"frontier": plot_frontier, "buckets": plot_buckets, "pr": plot_pr,
            "errors": plot_errors}
CAPTIONS = {
    "frontier": "AP_small against VGA latency on one thread, trained weights, each "
                "technique's own test path. The line joins the frontier: the techniques "
                "that no other is both faster and more accurate than.",
    "buckets": "AP by COCO size bucket (tiny is a subset of small), mean over seeds.",
    "pr": "Precision against recall per size bucket at IoU 0.5 for the best model (highest "
          "mean AP_small), first seed.",
    "errors": "TIDE error breakdown per size bucket, first seed: how much AP (at IoU 0.5) "
              "each technique would gain if every error of one type were fixed.",
}


def write_plots(suite: Mapping, out_dir: str | os.PathLike) -> dict[str, Path]:
    """PNG files of every plot that has data, in ``out_dir``; ``{plot: path}``."""
    from sodlab.files import write_bytes
    from sodlab.viz import figure_png

    out = {}
    for name, plot in PLOTTERS.items():
        fig = plot(suite)
        if fig is None:
            continue
        path = Path(out_dir) / PLOTS[name]
        write_bytes(path, figure_png(fig, dpi=110))
        out[name] = path
    return out


# ----------------------------------------------------------------------------- HTML
def _e(x) -> str:
    return html.escape(str(x))


def _f(x, digits: int = 3) -> str:
    v = _num(x)
    return "—" if v is None or v <= -1 else f"{v:.{digits}f}"


def ci_text(ci) -> str:
    """An interval ``[lo, hi]`` as text (signed when it reaches below zero; "—" when empty)."""
    if not ci or _num(ci[0]) is None or ci[0] <= -1 and ci[1] <= -1:
        return "—"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] < 0 else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _verdict_span(v: str | None) -> str:
    if v is None:
        return '<span class="note">—</span>'
    css = {"up": "v-up", "down": "v-down"}.get(v, "v-none")
    return f'<span class="{css}">{_e(v)}</span>'


def _outcome_span(text: str) -> str:
    css = {"direction reproduced": "v-up", "not reproduced": "v-down"}.get(text, "v-none")
    return f'<span class="{css}">{_e(text)}</span>'


def _status(s: str | None) -> str:
    return f'<span class="{_e(s or "failed")}">{_e(s or "?")}</span>'


def _metric_cell(t: Mapping, k: str, mark: str | None) -> str:
    mean = (t.get("mean") or {}).get(k)
    seeds = t.get("seeds") or {}
    per = ", ".join(f"seed {s}: {_f(m.get(k))}" for s, m in seeds.items())
    ci = (t.get("ci") or {}).get(k)
    body = _f(mean)
    if ci and _metric(ci[0]) is not None:
        body += f'<span class="ci">{ci_text(ci)}</span>'
    css = "num"
    if mark == "moved":
        css += " moved"
        body += ' <span class="mark" title="outside the reference\'s interval">moved</span>'
    return f'<td class="{css}" title="{_e(per)}">{body}</td>'


def _speed_cell(t: Mapping, k: str, mark: str | None, digits: int = 1) -> str:
    body = _f(t.get(k), digits)
    css = "num"
    if mark == "moved":
        css += " moved"
        body += ' <span class="mark" title="beyond the reference\'s tolerance">moved</span>'
    return f'<td class="{css}">{body}</td>'


def _techniques_table(suite: Mapping, marks: Mapping,
                      notebook_pages: Mapping[str, str] | None = None) -> str:
    techs = suite.get("techniques") or {}
    head = ["Technique", "Status", "Notebook", *SHOWN, "VGA ms, 1 thread", "VGA ms, 2 threads",
            "train images/s", "peak MB (train)"]
    if any(HN_KEY in (t.get("mean") or {}) for t in techs.values()):
        head.insert(3 + len(SHOWN), "hard-negative FP / image")
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for name in suite.get("order") or list(techs):
        t = techs.get(name) or {}
        m = marks.get(name) or {}
        cells = [f'<td><b>{_e(name)}</b><br><span class="note">{_e(t.get("what", ""))}'
                 "</span></td>", f"<td>{_status(t.get('status'))}</td>",
                 _notebook_cell(t.get("notebook"), notebook_pages or {})]
        if t.get("status") != "ok":
            why = t.get("reason") or t.get("error") or ""
            cells.append(f'<td colspan="{len(head) - 3}"><pre class="err">{_e(why)}</pre></td>'
                         if t.get("status") == "failed" else
                         f'<td colspan="{len(head) - 3}" class="note">{_e(why)}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
            continue
        cells += [_metric_cell(t, k, m.get(k)) for k in SHOWN]
        if "hard-negative FP / image" in head:
            cells.append(f'<td class="num">{_f((t.get("mean") or {}).get(HN_KEY), 2)}</td>')
        cells += [_speed_cell(t, "vga_ms_1t", m.get("vga_ms_1t")),
                  _speed_cell(t, "vga_ms_2t", m.get("vga_ms_2t")),
                  f'<td class="num">{_f(t.get("train_images_per_s"), 1)}</td>',
                  f'<td class="num">{_f((t.get("speed") or {}).get("peak_rss_train_mb"), 0)}'
                  "</td>"]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _notebook_cell(stem: str | None, pages: Mapping[str, str]) -> str:
    if not stem:
        return "<td>—</td>"
    if stem in pages:
        return f'<td><a href="{_e(pages[stem])}">{_e(stem)}</a></td>'
    return f"<td>{_e(stem)}</td>"


def _comparisons_table(suite: Mapping) -> str:
    comps = suite.get("comparisons") or {}
    if not comps:
        return '<p class="note">No technique and the one it changes both ran.</p>'
    head = ["Technique", "against", *SHOWN]
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for name, c in comps.items():
        cells = [f"<td>{_e(name)}</td>", f"<td>{_e(c['against'])}</td>"]
        for k in SHOWN:
            d = c.get(k) or {}
            delta = _num(d.get("delta"))
            txt = "—" if delta is None else f"{delta:+.3f}"
            cells.append(f'<td class="num" title="{_e(d.get("sentence", ""))}">{txt}'
                         f'<span class="ci">{ci_text(d.get("diff_ci"))}</span>'
                         f"{_verdict_span(d.get('verdict'))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _papers_table(suite: Mapping) -> str:
    rows = suite.get("papers") or []
    if not rows:
        return '<p class="note">No paper rows.</p>'
    head = ["Technique", "Paper", "Paper's metric and change", "Data", "Ablation",
            "Ours (B against A, metric)", "Our delta", "Interval of our delta", "Verdict",
            "Paper's direction"]
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        ours = (f"{_e(r['ours'][1])} against {_e(r['ours'][0])}, {_e(r['ours'][2])}"
                if r.get("ours") else '<span class="note">not run here</span>')
        delta = _num(r.get("ours_delta"))
        mark = "" if r.get("checked", True) else " \u2020"
        note = f'<br><span class="note">{_e(r["note"])}</span>' if r.get("note") else ""
        cells = [f"<td>{_e(r['technique'])}</td>", f"<td>{_e(r['paper'])}{mark}</td>",
                 f"<td>{_e(r['metric'])}: {_e(r['paper_text'])}<br>"
                 f'<span class="note">{_e(r.get("change", ""))}</span></td>',
                 f"<td>{_e(r['dataset'])}</td>",
                 f"<td>{'yes' if r['ablation'] else 'no (context only)'}</td>",
                 f"<td>{ours}{note}</td>",
                 f'<td class="num">{"—" if delta is None else f"{delta:+.3f}"}</td>',
                 f'<td class="num">{ci_text(r.get("ours_ci"))}</td>',
                 f'<td title="{_e(r.get("sentence") or "")}">{_verdict_span(r.get("verdict"))}'
                 "</td>", f"<td>{_outcome_span(r['outcome'])}</td>"]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    vals = suite.get("paper_values") or []
    if vals:
        out.append("<table><tr><th>Technique</th><th>Paper</th><th>What</th><th>Paper</th>"
                   "<th>Ours</th><th>Note</th></tr>")
        for v in vals:
            out.append(f"<tr><td>{_e(v['technique'])}</td><td>{_e(v['paper'])}</td>"
                       f"<td>{_e(v['what'])}</td><td class=\"num\">{v['value']:g} "
                       f"{_e(v['unit'])}</td><td class=\"num\">{_f(v.get('ours'), 1)} "
                       f"{_e(v['unit'])}</td><td class=\"note\">{_e(v.get('note', ''))}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def _regression_section(reg: Mapping, reference_label: str | None) -> str:
    parts = ["<h2>Regression check</h2>"]
    label = _e(reference_label or "the reference")
    if not reg.get("comparable"):
        parts.append(f'<p class="note">Not checked against {label}: '
                     f"{_e(reg.get('why') or 'no reference')}. Write one from a real run "
                     "with <code>sodlab bench --only suite --update-reference</code>.</p>")
        return "\n".join(parts)
    moved = reg.get("moved") or []
    speed = "" if reg.get("speed_compared") else \
        " Latencies were not compared (another CPU or thread count)."
    parts.append(f"<p>{len(moved)} of {reg.get('checked', 0)} numbers moved beyond their "
                 f"interval against {label} (accuracy: the reference's 95 % bootstrap "
                 f"interval on the same seed; latency: \u00b125 % of the reference).{speed}</p>")
    if moved:
        parts.append("<table><tr><th>Technique</th><th>Number</th><th>This run</th>"
                     "<th>Reference</th><th>Interval</th></tr>")
        for m in moved:
            parts.append(f"<tr class=\"moved\"><td>{_e(m['technique'])}</td>"
                         f"<td>{_e(m['key'])}</td><td class=\"num\">{_f(m['value'])}</td>"
                         f"<td class=\"num\">{_f(m.get('reference'))}</td>"
                         f"<td class=\"num\">{ci_text(m['interval'])}</td></tr>")
        parts.append("</table>")
    return "\n".join(parts)


def _others_section(bench: Mapping) -> str:
    from sodlab.bench.report import flatten, fmt

    others = {k: v for k, v in (bench.get("benchmarks") or {}).items() if k != "suite"}
    notes = {**{k: f"skipped: {v}" for k, v in (bench.get("skipped") or {}).items()},
             **{k: f"failed: {v}" for k, v in (bench.get("failed") or {}).items()}}
    if not others and not notes:
        return ""
    parts = ["<h2>Other benchmarks of this run</h2>"]
    for name, result in others.items():
        flat = {k: v for k, v in flatten(result).items() if not k.startswith("provenance")}
        rows = "".join(f'<tr><td>{_e(k)}</td><td class="num">{_e(fmt(v))}</td></tr>'
                       for k, v in flat.items())
        parts.append(f"<h3>{_e(name)}</h3><table><tr><th>Measure</th><th>Value</th></tr>"
                     f"{rows}</table>")
    for name, note in notes.items():
        parts.append(f'<p class="note"><b>{_e(name)}</b> {_e(note)}</p>')
    return "\n".join(parts)


def _provenance_footer(prov: Mapping) -> str:
    keys = ("commit", "mode", "time", "seconds", "seed", "data_hash", "threads",
            "torch_threads", "cpu", "cpu_count", "python", "versions")
    items = []
    for k in keys:
        if k not in prov:
            continue
        v = prov[k]
        if isinstance(v, Mapping):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        items.append(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>")
    return '<footer><h2>Provenance</h2><dl class="prov">' + "".join(items) + "</dl></footer>"


def _page_head(links: Mapping[str, str] | None) -> list[str]:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>sodlab benchmark</title>", f"<style>{CSS}</style></head><body>",
             "<h1>sodlab benchmark</h1>"]
    if links:
        parts.append('<p class="sub">' + " · ".join(f'<a href="{_e(h)}">{_e(t)}</a>'
                                                    for t, h in links.items()) + "</p>")
    return parts


def _suite_summary(suite: Mapping, prov: Mapping) -> list[str]:
    """The line under the title: mode, what ran, data, budget, seeds (and quick mode's note)."""
    b, d = suite.get("budget") or {}, suite.get("data") or {}
    techs = suite.get("techniques") or {}
    n = {s: sum(t.get("status") == s for t in techs.values())
         for s in ("ok", "skipped", "failed")}
    seeds = b.get("seeds") or []
    parts = [
        f'<p class="sub">{_e(prov.get("mode", "?"))} mode; {n["ok"]} techniques ran, '
        f'{n["skipped"]} skipped, {n["failed"]} failed; data <code>{_e(d.get("root"))}'
        f'</code> ({_e(d.get("classes"))} classes, {_e(d.get("val_images"))} val images);'
        f' budget {_e(b.get("max_steps"))} steps x {_e(b.get("batch_size"))} images per '
        f'model, overrides {_e(b.get("overrides") or "none")}; second stages '
        f'{_e((b.get("stage_two") or {}).get("max_steps"))} steps x '
        f'{_e((b.get("stage_two") or {}).get("batch_size"))}; seeds '
        f'{_e(", ".join(map(str, seeds)))}; {_e(b.get("n_boot"))} bootstrap resamples.</p>']
    if prov.get("mode") == "quick":
        parts.append('<p class="note">Quick mode: one seed and a small budget prove the '
                     "pipeline; they decide nothing.</p>")
    return parts


def _techniques_section(suite: Mapping, marks: Mapping,
                        notebook_pages: Mapping[str, str] | None) -> list[str]:
    """The techniques table with the data's notes and the skipped and failed techniques."""
    parts = ["<h2>Techniques</h2>",
             '<p class="note">Mean over seeds; below it the 95 % bootstrap interval over '
             "validation images of the first seed (hover a cell for every seed). "
             "— marks a bucket without objects. Latency: each technique's own test path "
             "on one 640 x 480 image, trained weights, fp32, median. Training images/s "
             "and peak memory: <code>measure_preset</code> of the technique's preset in a "
             "fresh process (SSDlite: its own training run).</p>",
             _techniques_table(suite, marks, notebook_pages)]
    for note in (suite.get("data") or {}).get("notes") or []:
        parts.append(f'<p class="note">{_e(note)}</p>')
    if suite.get("skipped"):
        parts.append("<h3>Skipped</h3><ul>" + "".join(
            f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in suite["skipped"].items())
            + "</ul>")
    if suite.get("failed"):
        parts.append("<h3>Failed</h3><ul>" + "".join(
            f"<li><b>{_e(k)}</b>: <code>{_e(v)}</code></li>"
            for k, v in suite["failed"].items()) + "</ul>")
    return parts


def _plots_section(plots: Mapping[str, str]) -> list[str]:
    if not plots:
        return []
    parts = ["<h2>Plots</h2>"]
    for name, file in plots.items():
        parts.append(f'<figure><img src="{_e(file)}" alt="{_e(name)} plot">'
                     f"<figcaption>{_e(CAPTIONS.get(name, ''))}</figcaption></figure>")
    return parts


def _differences_section(suite: Mapping, reg: Mapping, reference_label: str | None) -> list[str]:
    """Each technique against the one it changes, the papers beside us, the regression check."""
    return ["<h2>Each technique against the one it changes</h2>",
            '<p class="note">Mean of the paired per-seed differences (B - A); below it '
            "the paired bootstrap interval of the difference (the same image resamples "
            "for both); then the verdict of <code>sodlab.metrics.verdict</code> from "
            "the per-seed pairs and the two techniques' own intervals (hover for its "
            "sentence).</p>", _comparisons_table(suite),
            "<h2>The papers beside us</h2>",
            '<p class="note">Each paper\'s reported change on its own data and '
            "backbone beside our same change on this data and budget: only the "
            "direction compares, and only where the paper's figure is an ablation. "
            "\u2020: copied from the paper as the notebooks quote it, not checked "
            "against a second source.</p>", _papers_table(suite),
            _regression_section(reg, reference_label)]


def render_page(bench: Mapping, *, plots: Mapping[str, str] | None = None,
                reference: Mapping | None = None, reference_label: str | None = None,
                links: Mapping[str, str] | None = None,
                notebook_pages: Mapping[str, str] | None = None) -> str:
    """The HTML text of ``bench.html`` (see the module docstring).

    ``bench``: ``run_benchmarks``' dict (or a bare suite result); ``plots``: ``{plot: file
    name}`` of PNGs beside the page; ``reference``: a reference in the same form;
    ``links``: ``{text: relative href}`` shown under the title (only files that exist);
    ``notebook_pages``: ``{notebook stem: relative href}`` of executed notebooks to link.
    """
    from sodlab.bench.suite import regression

    suite = suite_of(bench)
    prov = (suite or {}).get("provenance") or bench.get("provenance") or {}
    parts = _page_head(links)
    if suite is None:
        parts.append('<p>The technique suite did not run (<code>sodlab bench --only suite'
                     "</code> runs it).</p>")
    else:
        reg = regression(suite, suite_of(reference) if reference else None)
        parts += [*_suite_summary(suite, prov),
                  *_techniques_section(suite, reg.get("marks") or {}, notebook_pages),
                  *_plots_section(plots or {}),
                  *_differences_section(suite, reg, reference_label)]
    parts.append(_others_section(bench))
    parts.append(_provenance_footer(prov))
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p) + "\n"


def write_page(bench: Mapping, out_dir: str | os.PathLike = "reports", *,
               reference: Mapping | None = None, reference_label: str | None = None,
               json_name: str | None = "bench.json") -> dict[str, Path]:
    """Write ``bench.html``, ``bench.csv`` and the plots into ``out_dir``; their paths.

    ``json_name``: the JSON beside the page to link (when it exists there).
    """
    from sodlab.bench.suite import regression
    from sodlab.files import write_bytes

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suite = suite_of(bench)
    paths: dict[str, Path] = {}
    plots: dict[str, str] = {}
    if suite is not None:
        marks = regression(suite, suite_of(reference) if reference else None).get("marks")
        paths["csv"] = write_csv(out / CSV_NAME, csv_rows(suite, marks))
        for name, p in write_plots(suite, out).items():
            paths[name] = p
            plots[name] = p.name
    links = {}
    if json_name and (out / json_name).is_file():
        links["all numbers (JSON)"] = json_name
    if "csv" in paths:
        links["table (CSV)"] = CSV_NAME
    if (out / "index.html").is_file():
        links["notebook report"] = "index.html"
    stems = {t.get("notebook") for t in ((suite or {}).get("techniques") or {}).values()}
    notebook_pages = {s: f"html/{s}.html" for s in stems
                      if s and (out / "html" / f"{s}.html").is_file()}  # sodlab notebooks' pages
    text = render_page(bench, plots=plots, reference=reference,
                       reference_label=reference_label, links=links,
                       notebook_pages=notebook_pages)
    write_bytes(out / PAGE, text.encode("utf-8"))
    paths["html"] = out / PAGE
    return paths


__all__ = ["write_page", "render_page", "write_plots", "write_csv", "csv_rows",
           "technique_rows", "technique_frame", "paper_frame", "find_bench", "load_bench", "ci_text",
           "suite_of", "plot_frontier", "plot_buckets", "plot_pr", "plot_errors",
           "CSV_COLUMNS", "PLOTS", "PAGE"]

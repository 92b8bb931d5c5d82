"""Committed full-mode results as tables: per-seed values, means, intervals, verdicts, papers.

Layer L4. ``show_results(stem)`` reads ``results/<stem>.json`` (a notebook's full-mode
run, committed) and returns a ``ShownResult``: pandas tables with the columns of the
notebook's own live table, one ``Comparison`` per question the notebook asks (B against A
on a metric), each with its ``sodlab.metrics.verdict`` and sentence computed from the JSON,
and the paper's reported change beside ours. In a notebook the last line
``show_results("03_fpn")`` renders it; ``reports/index.html`` (``sodlab.bench.report``)
takes the verdicts from ``comparisons(stem)``. A file not committed yet gives a result with
``found == False`` and a note that says how to make it. Notebooks 02-06 call it; notebook
10 (benchmark report) explains the verdict rule.

Where the numbers come from, per notebook (the committed files predate some keys, so each
reader takes the newer key when present and the older form otherwise):

- per seed: ``numbers["per_seed"]`` = ``{name: {seed: {metric: value}}}``; for 03 and 04
  without it, ``results/quality.json`` (the same checkpoints, evaluated by
  ``sodlab.bench.quality``; used only when its data hash and training commit match);
  for 06, its one seed; for 05, ``AP_small_snip_minus_mst_per_seed`` when recorded;
- intervals: ``numbers["ci"]`` or ``numbers["bootstrap_ci"]`` = ``{name: {metric: [lo,
  hi]}}`` (95 % bootstrap over images of the first seed), else quality.json's;
- papers: ``PAPERS`` below (from the notebooks' text), or ``kisantal_AP_S`` in 02's JSON.

Any other stem shows its numbers as a key/value table, and its comparisons when the JSON
holds ``numbers["compare"]`` = ``[{"a": name, "b": name, "metric": key}]`` beside
``per_seed`` (and ``ci``). Shapes: a per-seed table has one row per (name, seed); a mean
table one row per name; S seeds.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from sodlab.errors import InputError
from sodlab.files import repo_root

# The papers' reported numbers the notebooks compare with: (A, B, what), in the paper's units.
PAPERS: dict[str, dict[tuple[str, str, str], tuple[float, float, str]]] = {
    "03_fpn": {
        ("baseline", "fpn", "AP_small"): (13.2, 17.8, "AP_S %, Faster R-CNN R-50, COCO minival "
                                                       "(Lin et al. 2017)"),
        ("baseline", "fpn", "AP"): (31.6, 33.9, "AP %, Faster R-CNN R-50, COCO minival "
                                                "(Lin et al. 2017)"),
    },
    "04_ssh_receptive_fields": {
        ("baseline", "fpn", "AP_small"): (13.2, 17.8, "AP_S %, Faster R-CNN R-50, COCO minival "
                                                       "(Lin et al. 2017)"),
    },
    "05_snip_sniper": {
        ("MST (no ranges) / multi-scale test", "SNIP / multi-scale test", "AP_small"):
            (19.5, 21.4, "AP_S %, R-FCN, COCO (Singh & Davis 2018)"),
    },
}
KISANTAL_WHAT = "AP_S, Mask R-CNN, COCO (Kisantal et al. 2019)"
KISANTAL = {"none": 0.167, "oversample 3x": 0.177, "copy-paste (object alone)": 0.179,
            "3x + copy-paste (with context)": 0.179}

# The columns of each notebook's live table (the committed tables use the same).
COLUMNS = {
    "02_augmentation": ["AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "AR_small"],
    "03_fpn": ["AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "R50_tiny", "images_per_s"],
    "04_ssh_receptive_fields": ["AP_tiny", "AP_small", "AP_medium", "AP", "AP50", "AR_small"],
    "05_snip_sniper": ["AP", "AP_tiny", "AP_small", "AP_medium", "R50_tiny", "train s",
                       "test ms/img", "kpx per sample"],
    "06_dense_anchors": ["AP", "AP50", "AP_tiny", "AP_small", "AP_medium", "R50_tiny",
                         "AR_small"],
}
HOW_TO_MAKE = ("To make them: python -m sodlab notebooks --full --only {nn}, then copy "
               "reports/nb/{stem}.json to results/{stem}.json and commit it.")


def results_root() -> Path:
    """The repository's ``results/`` folder (committed full-mode results)."""
    return repo_root() / "results"


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


@dataclass
class Comparison:
    """B against A on one metric: per-seed pairs, intervals, the verdict, the paper's change."""

    a: str
    b: str
    metric: str
    per_seed: dict[str, object] = field(default_factory=dict)  # seed -> (a, b) or b - a
    intervals: tuple | None = None        # ((a_lo, a_hi), (b_lo, b_hi)) or (lo, hi) of B - A
    higher_is_better: bool = True
    paper: tuple[float, float, str] | None = None   # (A, B, what) as the paper reports them
    mean_a: float | None = None           # means when the file kept no per-seed values
    mean_b: float | None = None
    note: str = ""                        # where the numbers come from, when not obvious

    @property
    def label(self) -> str:
        return f"{self.b} vs {self.a}, {self.metric}"

    @property
    def verdict(self) -> str:
        from sodlab.metrics.verdict import verdict

        return verdict(self.per_seed, self.intervals)

    @property
    def sentence(self) -> str:
        from sodlab.metrics.verdict import verdict_sentence

        s = verdict_sentence(self.per_seed, self.intervals, metric=self.metric, a=self.a,
                             b=self.b, higher_is_better=self.higher_is_better)
        if not self.per_seed and self.mean_a is not None and self.mean_b is not None:
            s += (f" The file kept only means over seeds: {self.a} {self.mean_a:.3f}, "
                  f"{self.b} {self.mean_b:.3f} ({self.mean_b - self.mean_a:+.3f}).")
        if self.paper is not None:
            pa, pb, what = self.paper
            s += f" The paper: {pa:g} -> {pb:g} ({pb - pa:+.3g}; {what})."
        if self.note:
            s += f" {self.note}"
        return s

    def _means(self) -> tuple[float | None, float | None]:
        pairs = [v for v in self.per_seed.values() if isinstance(v, (list, tuple))]
        if pairs and len(pairs) == len(self.per_seed):
            return (sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs))
        return self.mean_a, self.mean_b

    @property
    def mean_change(self) -> float | None:
        """B - A of the means (per-seed mean when there are seeds)."""
        from sodlab.metrics.verdict import decide

        if self.per_seed:
            m = decide(self.per_seed, self.intervals).mean
            return None if math.isnan(m) else m
        if self.mean_a is not None and self.mean_b is not None:
            return self.mean_b - self.mean_a
        return None

    @property
    def against_paper(self) -> str:
        """Whether our verdict goes the paper's way ("" when the paper reports nothing)."""
        if self.paper is None:
            return ""
        change = self.paper[1] - self.paper[0]
        v = self.verdict
        if v not in ("up", "down"):
            return "not decided here"
        return "the paper's direction" if (v == "up") == (change > 0) else "against the paper"

    def row(self) -> dict:
        """One row of the verdicts table."""
        from sodlab.metrics.verdict import decide

        ma, mb = self._means()
        d = decide(self.per_seed, self.intervals)
        per = ", ".join(f"{x:+.3f}" for x in d.diffs) if d.diffs else "-"
        row = {"B": self.b, "against A": self.a, "metric": self.metric,
               "A (ours)": ma, "B (ours)": mb, "change (ours)": self.mean_change,
               "per seed": per, "verdict": self.verdict}
        if self.paper is not None:
            row.update({"paper A": self.paper[0], "paper B": self.paper[1],
                        "paper change": self.paper[1] - self.paper[0],
                        "vs paper": self.against_paper})
        return row


@dataclass
class Table:
    """Plain rows for a pandas table (built only when shown)."""

    rows: list[dict]
    index: list[str]

    def frame(self):
        import pandas as pd

        df = pd.DataFrame(self.rows)
        if not len(df):
            return df
        for c in df.columns:  # None (not measured) as NaN, so numeric columns stay numeric
            vals = [v for v in df[c] if v is not None]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                df[c] = [math.nan if v is None else v for v in df[c]]
        keep = [c for c in self.index if c in df.columns]
        return df.set_index(keep) if keep else df


@dataclass
class ShownResult:
    """What ``show_results`` returns; renders itself in a notebook (``_repr_html_``)."""

    stem: str
    path: str                       # "results/<stem>.json"
    found: bool
    summary: str                    # what the run was, or what is missing and how to make it
    tables: dict = field(default_factory=dict)         # title -> pandas DataFrame
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    numbers: dict = field(default_factory=dict)     # the committed file's numbers, as written

    @property
    def sentences(self) -> list[str]:
        return [c.sentence for c in self.comparisons]

    @property
    def verdicts(self):
        """One row per comparison: ours (means, per-seed changes), the paper's, the verdict."""
        import pandas as pd

        rows = [c.row() for c in self.comparisons]
        return pd.DataFrame(rows).set_index(["B", "against A", "metric"]) if rows else \
            pd.DataFrame()

    def verdict(self, b: str, a: str, metric: str) -> str:
        """The verdict of one comparison (``KeyError`` if the notebook asks no such question)."""
        for c in self.comparisons:
            if (c.a, c.b, c.metric) == (a, b, metric):
                return c.verdict
        raise KeyError((b, a, metric))

    def _repr_html_(self) -> str:
        parts = [f'<div class="sodlab-results"><p><b>{html.escape(self.path)}</b>: '
                 f"{html.escape(self.summary)}</p>"]
        for note in self.notes:
            parts.append(f"<p><i>{html.escape(note)}</i></p>")
        for title, df in self.tables.items():
            parts.append(f"<h4>{html.escape(title)}</h4>")
            parts.append(df.to_html(float_format=_float3, na_rep="-"))
        if self.comparisons:
            parts.append("<h4>Verdicts (sodlab.metrics.verdict)</h4>")
            parts.append(self.verdicts.to_html(float_format=_float3, na_rep="-"))
            parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in self.sentences)
                         + "</ul>")
        parts.append("</div>")
        return "\n".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.path}: {self.summary}", *self.notes]
        for title, df in self.tables.items():
            lines += ["", f"{title}:", df.to_string(float_format=_float3, na_rep="-")]
        if self.comparisons:
            lines += ["", "Verdicts:", *[f"- {s}" for s in self.sentences]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ShownResult({self.stem!r}, found={self.found}, tables={list(self.tables)}, "
                f"verdicts={[c.verdict for c in self.comparisons]})")


def _float3(x) -> str:
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.0005 else f"{x:.2g}"


# -- reading ---------------------------------------------------------------------------------

def load_result(stem: str, results_dir: str | os.PathLike | None = None) -> dict | None:
    """``results/<stem>.json`` as a dict, None if it is not there; InputError if unreadable."""
    path = Path(results_dir) if results_dir is not None else results_root()
    path = path / f"{stem}.json"
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path.parent.name}/{path.name}: invalid JSON at line {exc.lineno} "
                         f"column {exc.colno}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path.parent.name}/{path.name}: expected a JSON object")
    return obj


def _numbers(obj: dict) -> dict:
    nums = obj.get("numbers", obj)
    return nums if isinstance(nums, dict) else {}


def _seed_label(s) -> str:
    return str(s)


def _pairs(per_seed: dict, a: str, b: str, metric: str) -> dict[str, tuple[float, float]]:
    """``{seed: (a, b)}`` over the seeds both names have (in A's order)."""
    pa, pb = per_seed.get(a) or {}, per_seed.get(b) or {}
    out = {}
    for s, va in pa.items():
        vb = pb.get(s)
        if isinstance(va, dict) and isinstance(vb, dict):
            x, y = _finite(va.get(metric)), _finite(vb.get(metric))
            out[_seed_label(s)] = (math.nan if x is None else x, math.nan if y is None else y)
    return out


def _interval_pair(ci: dict, a: str, b: str, metric: str):
    ca, cb = (ci.get(a) or {}).get(metric), (ci.get(b) or {}).get(metric)
    if ca is None or cb is None:
        return None
    return (tuple(ca), tuple(cb))


def _seed_rows(per_seed: dict, keys, name: str) -> list[dict]:
    rows = []
    for n, seeds in per_seed.items():
        for s, m in (seeds or {}).items():
            rows.append({name: n, "seed": _seed_label(s),
                         **{k: _finite(m.get(k)) for k in keys}})
    return rows


def _mean_rows(per_seed: dict, keys, name: str) -> list[dict]:
    rows = []
    for n, seeds in per_seed.items():
        vals = list((seeds or {}).values())
        row = {name: n}
        for k in keys:
            xs = [_finite(v.get(k)) for v in vals]
            xs = [x for x in xs if x is not None and x != -1.0]
            row[k] = sum(xs) / len(xs) if xs else None
        row["seeds"] = len(vals)
        rows.append(row)
    return rows


def _bound(x: float) -> str:
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.0005 else f"{x:.2g}"


def _ci_rows(ci: dict, name: str) -> list[dict]:
    return [{name: n, **{k: f"{_bound(v[0])} - {_bound(v[1])}" for k, v in (m or {}).items()
                         if isinstance(v, (list, tuple)) and len(v) == 2}}
            for n, m in ci.items()]


def per_seed_table(per_seed: dict, keys, *, name: str = "name"):
    """``per_seed`` ``{name: {seed: {metric: value}}}`` as a DataFrame, one row per (name, seed).

    The notebooks build their live per-seed tables with it, so the committed ones match.
    """
    return Table(_seed_rows(per_seed, keys, name), [name, "seed"]).frame()


def mean_table(per_seed: dict, keys, *, name: str = "name"):
    """The mean over seeds of each metric per name (-1, an empty bucket, left out), and
    ``seeds``, the number of seeds: one row per name."""
    return Table(_mean_rows(per_seed, keys, name), [name]).frame()


def _budget_text(numbers: dict) -> str:
    b = numbers.get("budget") if isinstance(numbers.get("budget"), dict) else {}
    steps = b.get("max_steps", b.get("steps"))
    batch = b.get("batch_size", b.get("batch"))
    preset = b.get("preset") or numbers.get("preset")
    size = b.get("input_size") or numbers.get("input_size")
    seeds = b.get("seeds") or numbers.get("seeds") or ([b["seed"]] if "seed" in b else None)
    parts = []
    if preset:
        parts.append(f"preset {preset}")
    if steps and batch:
        parts.append(f"{steps} steps x {batch} images ({int(steps) * int(batch)} seen) per model")
    if size:
        parts.append(f"{size} px")
    if seeds:
        parts.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")
    return ", ".join(parts)


def _summary(obj: dict, numbers: dict) -> str:
    prov = obj.get("provenance") or {}
    head = [f"{prov.get('mode', '?')} mode"]
    if prov.get("commit"):
        head.append(f"commit {str(prov['commit'])[:8]}")
    if prov.get("time"):
        head.append(str(prov["time"])[:10])
    if prov.get("threads"):
        head.append(f"{prov['threads']} thread{'s' if prov['threads'] != 1 else ''}")
    budget = _budget_text(numbers)
    return ", ".join(head) + (f"; {budget}" if budget else "")


class _Ctx:
    """What a reader needs besides the numbers: the file's provenance and quality.json."""

    def __init__(self, stem: str, obj: dict, results_dir: Path):
        self.stem, self.obj, self.results_dir = stem, obj, results_dir
        self.notes: list[str] = []

    def quality(self) -> dict | None:
        """quality.json's ``presets`` when it evaluated this notebook's own checkpoints."""
        q = load_result("quality", self.results_dir)
        if q is None:
            return None
        prov, qprov = self.obj.get("provenance") or {}, q.get("provenance") or {}
        same_data = prov.get("data_hash") and prov.get("data_hash") == qprov.get("data_hash")
        same_models = q.get("trained_at_commit") == prov.get("commit")
        if not (same_data and same_models):
            self.notes.append("results/quality.json evaluated other checkpoints than this "
                              "run; its seeds and intervals are not used here.")
            return None
        self.notes.append("Per-seed values and intervals: results/quality.json, which "
                          "evaluated this run's own checkpoints (sodlab.bench.quality; "
                          "intervals: 200 bootstrap resamples of seed 0's detections).")
        return _numbers(q).get("presets") or None


def _quality_form(presets: dict, names) -> tuple[dict, dict]:
    """quality.json presets -> (per_seed, ci) in the ``{name: {seed: ...}}`` form."""
    per_seed, ci = {}, {}
    for n in names:
        r = presets.get(n)
        if not r:
            continue
        per_seed[n] = {str(i): s for i, s in enumerate(r.get("seeds", []))}
        if r.get("ci"):
            ci[n] = r["ci"]
    return per_seed, ci


def _seeds_and_ci(numbers: dict, ctx: _Ctx, names) -> tuple[dict, dict]:
    per_seed = numbers.get("per_seed") if isinstance(numbers.get("per_seed"), dict) else None
    ci = numbers.get("ci") or numbers.get("bootstrap_ci") or None
    if per_seed is None or ci is None:
        q = ctx.quality()
        if q:
            qs, qc = _quality_form(q, names)
            per_seed = per_seed if per_seed is not None else qs
            ci = ci if ci is not None else qc
    return per_seed or {}, ci or {}


def _compare(stem, per_seed, ci, a, b, metric, **kw) -> Comparison:
    return Comparison(a=a, b=b, metric=metric, per_seed=_pairs(per_seed, a, b, metric),
                      intervals=_interval_pair(ci, a, b, metric),
                      paper=PAPERS.get(stem, {}).get((a, b, metric)), **kw)


# -- one reader per notebook -----------------------------------------------------------------

def _read_02(numbers: dict, ctx: _Ctx):
    keys = COLUMNS["02_augmentation"]
    per_seed = numbers.get("per_seed") or {}
    ci = numbers.get("ci") or {}
    paper = numbers.get("kisantal_AP_S") or KISANTAL
    tables = {"per seed": Table(_seed_rows(per_seed, keys, "recipe"), ["recipe", "seed"]),
              "mean over seeds": Table(_mean_rows(per_seed, keys, "recipe"), ["recipe"])}
    if ci:
        tables["95 % intervals (bootstrap over images)"] = Table(_ci_rows(ci, "recipe"),
                                                                  ["recipe"])
    comps = []
    for r in per_seed:
        if r == "none":
            continue
        c = _compare("02_augmentation", per_seed, ci, "none", r, "AP_small")
        if r in paper and "none" in paper:
            c.paper = (float(paper["none"]), float(paper[r]), KISANTAL_WHAT)
        comps.append(c)
    probe = numbers.get("context_probe") or {}
    if probe:
        tables["context probe (seed 0)"] = Table([{"recipe": n, **v} for n, v in probe.items()],
                                                 ["recipe"])
    return tables, comps


def _read_03(numbers: dict, ctx: _Ctx):
    keys = COLUMNS["03_fpn"]
    models = ["baseline", "baseline + image pyramid", "fpn"]
    per_seed, ci = _seeds_and_ci(numbers, ctx, ["baseline", "fpn"])
    if isinstance(numbers.get("table"), list):
        rows = [{"model": r.get("model"), **{k: _finite(r.get(k)) for k in keys}}
                for r in numbers["table"]]
    else:  # the older file: a few means by name, the rest from the per-seed values
        means = {r["model"]: r for r in _mean_rows(per_seed, keys, "model")}
        rows = []
        for m in models:
            tag = {"baseline": "baseline", "fpn": "fpn", "baseline + image pyramid": "pyramid"}[m]
            row = {"model": m}
            for k in keys:
                v = _finite(numbers.get(f"{k}_{tag}"))
                row[k] = v if v is not None else (means.get(m) or {}).get(k)
            rows.append(row)
    tables = {"mean over seeds": Table(rows, ["model"])}
    if per_seed:
        tables["per seed"] = Table(_seed_rows(per_seed, keys[:-1], "model"), ["model", "seed"])
    if ci:
        tables["95 % intervals (bootstrap over images)"] = Table(_ci_rows(ci, "model"),
                                                                  ["model"])
    comps = [_compare("03_fpn", per_seed, ci, "baseline", "fpn", k)
             for k in ("AP_small", "AP_tiny", "AP")]
    if "baseline + image pyramid" in per_seed:
        comps.append(_compare("03_fpn", per_seed, ci, "baseline", "baseline + image pyramid",
                              "AP_small"))
    return tables, comps


def _read_04(numbers: dict, ctx: _Ctx):
    keys = COLUMNS["04_ssh_receptive_fields"]
    presets = ["baseline", "fpn", "ssh"]
    per_seed, ci = _seeds_and_ci(numbers, ctx, presets)
    by = numbers.get("ap_by_preset") or {}
    tables = {"mean over seeds": Table([{"preset": p, **{k: _finite(v.get(k)) for k in keys}}
                                        for p, v in by.items()], ["preset"])}
    if per_seed:
        tables["per seed"] = Table(_seed_rows(per_seed, keys, "preset"), ["preset", "seed"])
    if ci:
        tables["95 % intervals (bootstrap over images)"] = Table(_ci_rows(ci, "preset"),
                                                                  ["preset"])
    rf, branch = numbers.get("ssh_rf_px") or {}, numbers.get("ssh_branch_rf_px") or {}
    if rf:
        tables["SSH receptive fields (px)"] = Table(
            [{"module": m, **(branch.get(m) or {}), "module output": v,
              "anchors": str((numbers.get("anchors") or {}).get(m, ""))}
             for m, v in rf.items()], ["module"])
    comps = [_compare("04_ssh_receptive_fields", per_seed, ci, "baseline", "ssh", k)
             for k in ("AP_small", "AP_tiny")]
    comps.append(_compare("04_ssh_receptive_fields", per_seed, ci, "baseline", "fpn",
                          "AP_small"))
    return tables, comps


def _read_05(numbers: dict, ctx: _Ctx):
    keys = COLUMNS["05_snip_sniper"]
    rows = [{"training": r.get("training"), "test": r.get("test"),
             **{k: _finite(r.get(k)) for k in keys}} for r in numbers.get("table") or []]
    means = {f"{r['training']} / {r['test']}": r for r in rows}
    per_seed = numbers.get("per_seed") or {}
    ci = numbers.get("ci") or numbers.get("bootstrap_ci") or {}
    tables = {"mean over seeds": Table(rows, ["training", "test"])}
    if per_seed:
        tables["per seed"] = Table(_seed_rows(per_seed, keys[:5], "model"), ["model", "seed"])
    if ci:
        tables["95 % intervals, seed 0 (bootstrap over images)"] = Table(
            _ci_rows(ci, "model"), ["model"])
    snip, mst = "SNIP / multi-scale test", "MST (no ranges) / multi-scale test"
    single = "single scale / single-scale test"
    asks = [(mst, snip, "AP_small"), (mst, snip, "AP_medium"), (single, mst, "AP_small"),
            (single, snip, "AP_small"), (single, "SNIPER / multi-scale test", "AP_small")]
    seeds = [str(s) for s in numbers.get("seeds") or []]
    legacy = numbers.get("AP_small_snip_minus_mst_per_seed")
    comps = []
    for a, b, k in asks:
        if (a not in means and a not in per_seed) or (b not in means and b not in per_seed):
            continue
        c = _compare("05_snip_sniper", per_seed, ci, a, b, k)
        if not c.per_seed and (a, b, k) == (mst, snip, "AP_small") and legacy:
            labels = seeds if len(seeds) == len(legacy) else [str(i) for i in range(len(legacy))]
            c.per_seed = dict(zip(labels, [float(x) for x in legacy]))
        if not c.per_seed:
            c.mean_a, c.mean_b = (means.get(a) or {}).get(k), (means.get(b) or {}).get(k)
        comps.append(c)
    sl = numbers.get("slicing") or {}
    if sl:
        tables["sliced inference (seed 0's single-scale model)"] = Table(
            [{"variant": n, **v} for n, v in sl.items()], ["variant"])
    mis = numbers.get("mismatch") or []
    if mis:
        tables["resolution mismatch (accuracy)"] = Table(list(mis), ["factor"])
    return tables, comps


def _read_06(numbers: dict, ctx: _Ctx):
    keys = COLUMNS["06_dense_anchors"]
    by = numbers.get("ap_by_preset") or {}
    fps = numbers.get("vga_fps_1t") or {}
    rows = [{"preset": p, **{k: _finite(v.get(k)) for k in keys},
             "VGA fps (1 thread)": _finite(fps.get(p))} for p, v in by.items()]
    budget = numbers.get("budget") or {}
    per_seed = numbers.get("per_seed")
    if not isinstance(per_seed, dict):  # the committed run: one seed, its metrics
        seed = str(budget.get("seed", 0))
        per_seed = {p: {seed: v} for p, v in by.items()}
    ci = numbers.get("ci") or numbers.get("bootstrap_ci") or {}
    n_seeds = max((len(v) for v in per_seed.values()), default=0)
    tables = {"one seed" if n_seeds <= 1 else "mean over seeds": Table(rows, ["preset"])}
    if ci:
        tables["95 % intervals (bootstrap over images)"] = Table(_ci_rows(ci, "preset"),
                                                                  ["preset"])
    matched = numbers.get("matched_per_face_tiny") or {}
    unmatched = numbers.get("unmatched_share_tiny") or {}
    if matched:
        tables["matching, faces under 16 px"] = Table(
            [{"design": n, "matched per face": v, "unmatched share": unmatched.get(n)}
             for n, v in matched.items()], ["design"])
    if "faceboxes" in fps:
        tables["the paper beside us"] = Table(
            [{"result": "FaceBoxes, VGA on one CPU core (FPS)", "paper": 20.0,
              "ours": _finite(fps["faceboxes"])}], ["result"])
    comps = [_compare("06_dense_anchors", per_seed, ci, "fpn", b, k)
             for b in ("faceboxes", "s3fd") if b in by for k in ("AP_tiny", "AP_small", "R50_tiny")]
    return tables, comps


def _read_generic(numbers: dict, ctx: _Ctx):
    from sodlab.bench.report import flatten, fmt

    tables = {"numbers": Table([{"key": k, "value": fmt(v)} for k, v in flatten(numbers).items()
                                if k != "compare" and not k.startswith(("per_seed.", "ci."))],
                               ["key"])}
    per_seed = numbers.get("per_seed") or {}
    ci = numbers.get("ci") or {}
    comps = []
    for spec in numbers.get("compare") or []:
        if not isinstance(spec, dict) or not {"a", "b", "metric"} <= set(spec):
            raise InputError(f"results/{ctx.stem}.json: every 'compare' entry needs a, b "
                             f"and metric, got {spec!r}")
        c = _compare(ctx.stem, per_seed, ci, spec["a"], spec["b"], spec["metric"],
                     higher_is_better=bool(spec.get("higher_is_better", True)))
        if isinstance(spec.get("paper"), (list, tuple)) and len(spec["paper"]) == 3:
            c.paper = (float(spec["paper"][0]), float(spec["paper"][1]), str(spec["paper"][2]))
        comps.append(c)
    if per_seed:
        keys = sorted({k for seeds in per_seed.values() for m in seeds.values() for k in m})
        tables["per seed"] = Table(_seed_rows(per_seed, keys, "name"), ["name", "seed"])
    return tables, comps


READERS = {"02_augmentation": _read_02, "03_fpn": _read_03, "04_ssh_receptive_fields": _read_04,
           "05_snip_sniper": _read_05, "06_dense_anchors": _read_06}


def _read(stem: str, results_dir: str | os.PathLike | None):
    folder = Path(results_dir) if results_dir is not None else results_root()
    obj = load_result(stem, folder)
    if obj is None:
        return None, None, None, None
    ctx = _Ctx(stem, obj, folder)
    numbers = _numbers(obj)
    tables, comps = READERS.get(stem, _read_generic)(numbers, ctx)
    return obj, tables, comps, ctx


def comparisons(stem: str, results_dir: str | os.PathLike | None = None) -> list[Comparison]:
    """The verdicts the committed ``results/<stem>.json`` supports ([] when it is missing)."""
    _, _, comps, _ = _read(stem, results_dir)
    return comps or []


def show_results(stem: str, *, results_dir: str | os.PathLike | None = None) -> ShownResult:
    """The committed full-mode result ``results/<stem>.json`` as tables and verdicts.

    ``stem`` is the notebook's name (``"03_fpn"``). When the file is missing, the result has
    ``found == False`` and its summary says so and how to make it (no exception).
    """
    if not isinstance(stem, str) or not stem:
        raise InputError(f"show_results: a notebook stem like '03_fpn' is needed, got {stem!r}")
    label = f"{Path(results_dir).name if results_dir is not None else 'results'}/{stem}.json"
    obj, tables, comps, ctx = _read(stem, results_dir)
    if obj is None:
        nn = stem.split("_", 1)[0]
        return ShownResult(stem, label, False,
                           "not committed yet, so there are no full-mode numbers to show. "
                           + HOW_TO_MAKE.format(nn=nn, stem=stem))
    numbers = _numbers(obj)
    shown = ShownResult(stem, label, True, _summary(obj, numbers),
                        tables={t: tb.frame() for t, tb in tables.items() if tb.rows},
                        comparisons=comps, notes=ctx.notes,
                        provenance=dict(obj.get("provenance") or {}),
                        numbers=dict(obj.get("numbers") or {}))
    if (obj.get("provenance") or {}).get("mode") == "quick":
        shown.notes.insert(0, "This file holds a quick-mode run: its numbers prove the "
                              "pipeline and decide nothing.")
    return shown


__all__ = ["show_results", "comparisons", "ShownResult", "Comparison", "per_seed_table",
           "mean_table", "load_result", "PAPERS", "KISANTAL", "COLUMNS"]

"""What a change in AP is made of: faces found, boxes placed, false alarms ranked, from the run records.

Layer L4. AP_small averages precision over recall and over the IoU thresholds 0.5 … 0.95, so
it can rise while recall at IoU 0.5 stays flat: the boxes got tighter, or fewer false alarms
are ranked above the faces. A committed study (``results/studies/NAME.json``) names each
technique's run key per seed, and each run's record (``results/runs/``) keeps every COCO
metric and TIDE's breakdown of the AP each kind of error costs (``sodlab.metrics.tide``:
``dAP`` per size bucket). ``gain_anatomy(a, b)`` sets them side by side for two techniques
of any committed study that has both, seed by seed; ``explain_gain`` says in one generated
sentence which part moved. Taught in notebook 05 (sliced inference) and notebook 11.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sodlab.errors import InputError

# (row label, where in a record, +1: higher is better / -1: lower is better)
METRIC_ROWS = (
    ("AP_small", "metrics.AP_small", +1),
    ("AP_tiny", "metrics.AP_tiny", +1),
    ("AP at IoU 0.5, all sizes", "metrics.AP50", +1),
    ("AP at IoU 0.75, all sizes", "metrics.AP75", +1),
    ("recall at IoU 0.5, small", "metrics.R50_small", +1),
    ("recall at IoU 0.5, tiny", "metrics.R50_tiny", +1),
    ("detections kept on the validation split", "metrics.n_dets", 0),
)
TIDE_ERRORS = ("localisation", "background", "missed", "duplicate")


def _tide_rows(bucket: str) -> tuple[tuple[str, str, int], ...]:
    return tuple((f"AP_{bucket} lost to {e} errors (TIDE)", f"diagnostics.tide.dAP.{bucket}.{e}",
                  -1) for e in TIDE_ERRORS)


def _get(rec: Mapping, path: str):
    cur = rec
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def study_records(result: Mapping, technique: str) -> dict[int, dict]:
    """``{seed: record}`` of ``technique`` in a study's result, read from the committed records."""
    from sodlab.bench.studies import study
    from sodlab.engine.records import read_record

    row = result["techniques"].get(technique)
    if row is None:
        raise InputError(f"study {result['study']!r} has no technique {technique!r}")
    test = study(result["study"]).technique(technique).test
    out = {}
    for seed, key in (row.get("keys") or {}).items():
        rec = read_record(key, test=test, mode=result.get("mode", "full"))
        if rec is not None:
            out[int(seed)] = rec
    return out


def find_study(a: str, b: str, names: Sequence[str] | None = None) -> dict | None:
    """The first committed full-mode study (of ``names``, or any declared) holding ``a`` and
    ``b``; a study still running counts with what it has (``NAME.partial.json``)."""
    from sodlab.bench.studies import STUDIES
    from sodlab.bench.study_view import load_study

    for name in names or list(STUDIES):
        res = load_study(name, partial=True)
        if res is not None and a in res["techniques"] and b in res["techniques"]:
            return res
    return None


def gain_anatomy(a: str, b: str, *, result: Mapping | None = None, bucket: str = "small",
                 studies: Sequence[str] | None = None):
    """A table of ``b`` against ``a`` on each part of AP: A, B, B − A (mean over the seeds both
    have) and B − A per seed; None when no committed study holds both with a common seed.

    ``result``: a study's result to read (default: ``find_study(a, b, studies)``).
    """
    import pandas as pd

    res = result if result is not None else find_study(a, b, studies)
    if res is None:
        return None
    ra, rb = study_records(res, a), study_records(res, b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    rows = []
    for label, path, better in (*METRIC_ROWS, *_tide_rows(bucket)):
        va = [_get(ra[s], path) for s in seeds]
        vb = [_get(rb[s], path) for s in seeds]
        if any(v is None for v in va + vb):
            continue
        d = [y - x for x, y in zip(va, vb)]
        rows.append({"": label, a: sum(va) / len(va), b: sum(vb) / len(vb),
                     "B − A": sum(d) / len(d),
                     "B − A per seed": " / ".join(f"{x:+.0f}" if better == 0 else f"{x:+.3f}"
                                                  for x in d),
                     "better when": {1: "higher", -1: "lower", 0: ""}[better]})
    table = pd.DataFrame(rows).set_index("")
    table.attrs.update(study=res["study"], seeds=seeds, a=a, b=b, bucket=bucket)
    return table


def explain_gain(table) -> str:
    """Sentences, generated from ``gain_anatomy``'s table, on which part of AP moved.

    The lead metric is the bucket's AP (AP_small by default). Recall at IoU 0.5 that moved by
    less than a quarter of the lead's change reads "little of it is faces found or lost";
    AP at IoU 0.75 minus AP at IoU 0.5 of the lead's sign and at least half its size reads as
    boxes that fit more (or less) tightly. TIDE judges errors at IoU 0.5, so it sees false
    alarms, misses and boxes under half overlap, not a tighter fit above 0.5: its largest
    change comes last.
    """
    if table is None or not len(table):
        return "No committed study holds both techniques yet."
    at = table.attrs
    d = table["B − A"]
    bucket = at["bucket"]
    lead = f"AP_{bucket}" if f"AP_{bucket}" in d else "AP_small"
    n = len(at["seeds"])
    out = f"{at['b']} against {at['a']} ({at['study']} study, mean of {n} seed" \
          f"{'s' if n > 1 else ''})"
    ap, r50 = d.get(lead), d.get(f"recall at IoU 0.5, {bucket}")
    if ap is None:
        return out + ": no AP in the records."
    out += f": {lead} {ap:+.3f}"
    if r50 is not None:
        share = "little of it" if abs(r50) < 0.25 * abs(ap) else "part of it"
        out += f"; recall of {bucket} faces at IoU 0.5 {r50:+.3f}, so {share} is faces found " \
               f"or lost"
    a50, a75 = d.get("AP at IoU 0.5, all sizes"), d.get("AP at IoU 0.75, all sizes")
    if a50 is not None and a75 is not None:
        out += f". AP at IoU 0.75 moved {a75:+.3f} against {a50:+.3f} at IoU 0.5"
        gap = a75 - a50
        if abs(gap) >= 0.5 * abs(ap) and gap * ap > 0:
            out += f": the boxes fit {'more' if gap > 0 else 'less'} tightly"
    tide = {e: d.get(f"AP_{bucket} lost to {e} errors (TIDE)") for e in TIDE_ERRORS}
    tide = {e: v for e, v in tide.items() if v is not None}
    if tide:
        top = max(tide, key=lambda e: abs(tide[e]))
        out += (f". At IoU 0.5, TIDE's largest change is in the AP_{bucket} lost to {top} "
                f"errors, {abs(tide[top]):.3f} {'less' if tide[top] < 0 else 'more'} with "
                f"{at['b']} (" + ", ".join(f"{e} {v:+.3f}" for e, v in tide.items()) + ")")
    return out + "."


def show_anatomy(a: str, b: str, **kw) -> object:
    """Display ``gain_anatomy(a, b)`` with its sentence (or say which study to run); return it."""
    import pandas as pd
    from IPython.display import display

    table = gain_anatomy(a, b, **kw)
    if table is None:
        print(f"No committed full-mode study holds both {a!r} and {b!r} with a common seed yet "
              f"(sodlab study run NAME --full).")
        return None
    with pd.option_context("display.float_format", "{:.3f}".format):
        display(table)
    print(explain_gain(table))
    return table


__all__ = ["METRIC_ROWS", "TIDE_ERRORS", "explain_gain", "find_study", "gain_anatomy",
           "show_anatomy", "study_records"]

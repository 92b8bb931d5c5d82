"""A study's committed result, shown the same way for every notebook: two tables and the papers beside us.

Layer L4. ``sodlab study run NAME --full`` writes ``results/studies/<name>.json``
(``save_study``), assembled from the run records (``sodlab.engine.study``); notebooks read it
back with ``show_study(name)``: the techniques (mean over seeds, the 95 % interval over the
validation resamples, images seen), then every comparison "B against A" with its paired
difference, interval, per-seed values and verdict, and where a paper reported the same
change (``sodlab.bench.papers``), the paper's figure and whether our verdict goes its way.
``side_by_side`` puts the verdicts of the same comparisons from two results (two budgets)
next to each other. ``show_earlier(name)`` shows ``NAME-3200.json``: the notebooks' runs of
the earlier budget (3,200 images seen), converted to this format once; its comparisons were
decided by the older unpaired rule (``"rule"``), so their paired intervals are None and each
keeps the seed-0 intervals it rested on (``"unpaired_intervals"``); ``"extras"`` holds the
notebook's other evidence of that run, and in ``"headline"`` the numbers its
``record(headline=...)`` names (``reports/index.html`` sets them beside a quick run's).
Taught in notebook 10_benchmark_report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sodlab.errors import InputError


def studies_dir() -> Path:
    """``results/studies`` under the repository root (``SODLAB_STUDIES`` overrides it)."""
    from sodlab.files import repo_root

    env = os.environ.get("SODLAB_STUDIES")
    return Path(env) if env else repo_root() / "results" / "studies"


def _study_path(name: str, images: int | None, partial: bool = False) -> Path:
    if partial:
        return studies_dir() / f"{name}.partial.json"
    return studies_dir() / (f"{name}.json" if images is None else f"{name}-{images}.json")


def save_study(result: Mapping, path: str | os.PathLike | None = None, *,
               images: int | None = None) -> Path:
    """Write a study's result (``run_study``'s dict) as JSON; return the path.

    ``images``: the images seen of a budget other than the full one (the learning curve's
    multiples), kept as ``NAME-<images>.json`` beside ``NAME.json``. A result with runs
    still ``"missing"`` (a study that spans sessions) is kept as ``NAME.partial.json``: the
    techniques whose every seed is recorded and the comparisons between them; the complete
    result replaces it.
    """
    from sodlab.files import write_json

    partial = bool(result.get("missing"))
    if partial and images is not None:
        raise InputError("a partial study is kept at the full budget only")
    p = Path(path) if path else _study_path(result["study"], images, partial)
    write_json(p, dict(result))
    if path is None and images is None and not partial:
        _study_path(result["study"], None, True).unlink(missing_ok=True)
    return p


def load_study(name: str, path: str | os.PathLike | None = None, *,
               images: int | None = None, partial: bool = False) -> dict | None:
    """The committed result of study ``name`` (None when it has not been run in full);
    ``images``: at another budget than the full one (``save_study``); ``partial``: when the
    complete result is missing, the partial one (``"missing"`` lists the runs it lacks)."""
    if partial and path is None and images is None:
        return load_study(name) or load_study(name, _study_path(name, None, True))
    p = Path(path) if path else _study_path(name, images)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None


def _paper_for(a: str, b: str, metric: str):
    from sodlab.bench.papers import PAPER_CHANGES

    for change in PAPER_CHANGES:
        if change.ours == (a, b, metric):
            return change
    return None


def study_comparisons(result: Mapping, *, metrics: Sequence[str] | None = None):
    """One row per comparison and metric: B - A, paired interval, seeds, verdict, paper."""
    import pandas as pd

    from sodlab.bench.suite import outcome

    rows = []
    for c in result["comparisons"]:
        if metrics and c["metric"] not in metrics:
            continue
        paper = _paper_for(c["a"], c["b"], c["metric"])
        iv = c.get("interval")
        rows.append({
            "B against A": f"{c['b']} vs {c['a']}", "metric": c["metric"],
            "B − A": c["mean"],
            "paired 95 %": "" if iv is None else f"{iv[0]:+.3f} to {iv[1]:+.3f}",
            "per seed": " / ".join(f"{v:+.3f}" for v in c["per_seed"].values()),
            "verdict": c["verdict"],
            "paper": "" if paper is None else f"{paper.baseline} → {paper.result} "
                                              f"({paper.metric}, {paper.paper})",
            "vs paper": "" if paper is None else outcome(paper.direction, c["verdict"])})
    return pd.DataFrame(rows)


def study_techniques(result: Mapping):
    """The techniques table of a study result (``sodlab.engine.study.tables``)."""
    from sodlab.engine.study import tables

    return tables(result)[0]


def side_by_side(results: Mapping[str, Mapping], *, metric: str = "AP_small"):
    """The same comparisons' difference and verdict under each labelled result (budgets)."""
    import pandas as pd

    rows: dict[tuple[str, str], dict] = {}
    for label, res in results.items():
        for c in res["comparisons"]:
            if c["metric"] != metric:
                continue
            row = rows.setdefault((c["b"], c["a"]), {"B": c["b"], "against A": c["a"]})
            row[f"B − A ({label})"] = c["mean"]
            row[f"verdict ({label})"] = c["verdict"]
    out = pd.DataFrame(list(rows.values()))
    labels = list(results)
    if len(labels) >= 2 and len(out):
        a, b = (f"verdict ({lab})" for lab in labels[:2])
        out["changed with the budget"] = [
            "" if (x != x or y != y) else ("yes" if x != y else "")
            for x, y in zip(out.get(a, []), out.get(b, []))]
    return out


AGREES, OPPOSITE, NO_DIRECTION, NO_NUMBER = (
    "agrees", "OPPOSITE", "full run: no clear difference", "no quick number")


def agreement(quick_diff: float | None, full_verdict: str) -> str:
    """Whether a quick difference B − A goes the way the full run's verdict does.

    ``AGREES`` when the full verdict is "up" ("down") and the quick difference is above
    (below) zero; ``OPPOSITE`` when it is on the other side (zero counts as opposite: it
    shows no direction where the full run found one); ``NO_DIRECTION`` when the full run
    found no clear difference, so any quick direction is noise by the full run's
    evidence; ``NO_NUMBER`` when there is no quick difference.
    """
    from sodlab.metrics.verdict import DOWN, UP

    if quick_diff is None or quick_diff != quick_diff:
        return NO_NUMBER
    if full_verdict not in (UP, DOWN):
        return NO_DIRECTION
    return AGREES if (quick_diff > 0) == (full_verdict == UP) and quick_diff != 0 else OPPOSITE


def partial_line(result: Mapping) -> str:
    """One sentence on a partial study: what it holds and which techniques still lack runs."""
    left = list(dict.fromkeys(name for name, _ in result["missing"]))  # in study order
    return (f"partial: {len(result['techniques'])} techniques have every seed recorded and are "
            f"compared here; still to run: {', '.join(left)} "
            f"({len(result['missing'])} runs, sodlab study run {result['study']} --full)")


def seen_label(technique: Mapping) -> str:
    """A technique row's images seen: ``25,600``, or ``25,600 base + 1,600 second-stage``."""
    seen, base = technique.get("images_seen"), technique.get("base_images_seen")
    if seen is None:
        return "not recorded"
    return f"{base:,} base + {seen:,} second-stage" if base else f"{seen:,}"


def seen_labels(result: Mapping, names=None) -> str:
    """The distinct ``seen_label``s of a study's techniques (``names``: only these), joined."""
    techs = [t for n, t in result["techniques"].items() if names is None or n in names]
    labels = sorted({seen_label(t) for t in techs if t.get("images_seen")},
                    key=lambda x: (len(x), x))
    return " / ".join(labels) or "not recorded"


def _images_seen(result: Mapping, name: str) -> int | None:
    """The images a technique's model saw: its base's for a second stage (the larger part)."""
    t = result["techniques"].get(name) or {}
    return t.get("base_images_seen") or t.get("images_seen")


def _disagreement_note(c: Mapping, f: Mapping, quick: Mapping, full: Mapping, state: str) -> str:
    """One generated sentence on why a quick difference and the full verdict part ways."""
    metric, a, b = c["metric"], c["a"], c["b"]
    qi, fi = _images_seen(quick, b), _images_seen(full, b)
    n_seeds = len(f["per_seed"])
    iv = c.get("interval")
    if state == NO_DIRECTION:
        head = (f"{b} against {a}: quick mode shows {c['mean']:+.3f} {metric}, but the committed "
                f"full run ({n_seeds} seeds) finds no clear difference ({f['mean']:+.3f}).")
    else:
        head = (f"{b} against {a}: quick mode shows {c['mean']:+.3f} {metric}, the opposite of "
                f"the committed full run's verdict \"{f['verdict']}\" ({f['mean']:+.3f}, "
                f"{n_seeds} seeds).")
    why = []
    if iv is not None and iv[0] <= 0 <= iv[1]:
        why.append(f"the quick difference's own 95 % interval ({iv[0]:+.3f} to {iv[1]:+.3f}) "
                   f"contains zero")
    if qi and fi and fi > qi:
        tf = full["techniques"].get(b) or {}
        what = "base model" if tf.get("base_images_seen") else "model"
        why.append(f"each quick {what} saw {qi:,} images against {fi:,} in the full run "
                   f"({fi / qi:.3g}× fewer)")
    why.append("quick mode trains one seed on the small quick set")
    return f"{head} Why: {'; '.join(why)}. Trust the full run."


def quick_against_full(quick: Mapping, full: Mapping, *, metric: str = "AP_small"):
    """(table, notes): each comparison of both results on ``metric``, quick beside full.

    The table has the quick difference B − A (one seed), its interval over the validation
    resamples, the full run's mean difference and verdict, and ``agreement``; ``notes`` has
    one generated sentence for every comparison where they part ways.
    """
    import pandas as pd

    full_rows = {(c["a"], c["b"]): c for c in full["comparisons"] if c["metric"] == metric}
    rows, notes = [], []
    for c in quick["comparisons"]:
        f = full_rows.get((c["a"], c["b"]))
        if c["metric"] != metric or f is None:
            continue
        iv = c.get("interval")
        state = agreement(c["mean"], f["verdict"])
        rows.append({"B against A": f"{c['b']} vs {c['a']}", f"quick B − A ({metric})": c["mean"],
                     "quick 95 %": "" if iv is None else f"{iv[0]:+.3f} to {iv[1]:+.3f}",
                     "full B − A": f["mean"], "full verdict": f["verdict"],
                     "quick against full": state})
        if state in (OPPOSITE, NO_DIRECTION):
            notes.append(_disagreement_note(c, f, quick, full, state))
    return pd.DataFrame(rows), notes


def _show_quick(name: str, quick: Mapping, full: Mapping | None, metric: str) -> None:
    import pandas as pd
    from IPython.display import display

    from sodlab.engine.study import tables

    print(f"this run ({quick['mode']} mode, one seed): {name}")
    with pd.option_context("display.max_rows", 500, "display.float_format", "{:.3f}".format):
        if full is None:
            display(tables(quick)[1])
            print("no committed full-mode result to hold these quick numbers against")
            return
        table, notes = quick_against_full(quick, full, metric=metric)
        display(table)
    for line in notes:
        print(line)
    if not notes and len(table):
        print(f"every quick difference on {metric} goes the way of the committed full run")


def quick_study(name: str, root: str | os.PathLike | None = None, *,
                progress: bool = False) -> dict | None:
    """This machine's quick-mode result of study ``name`` over the techniques it has already
    trained (``sodlab.engine.study.ready``: nothing new trains); None when fewer than two are."""
    from sodlab.bench.studies import study
    from sodlab.engine.study import ready, run_study

    st = study(name)
    names = ready(st, root, mode="quick")
    if len(names) < 2:
        return None
    return run_study(st, root, mode="quick", only=names, progress=progress)


def show_study(name: str, *, metrics: Sequence[str] = ("AP_small", "AP_tiny"),
               result: Mapping | None = None, quick: Mapping | None = None) -> dict | None:
    """Display a study's committed full-mode result (or say that there is none yet).

    ``quick``: this run's quick-mode result of the same study (``run_study(..., mode="quick")``);
    it is shown after the full result, each comparison beside the full run's verdict, with a
    generated note wherever the two part ways (``quick_against_full``).
    """
    import pandas as pd
    from IPython.display import display

    res = result if result is not None else load_study(name, partial=True)
    if res is None:
        print(f"study {name!r} has no committed full-mode result yet "
              f"(sodlab study run {name} --full)")
        if quick is not None:
            _show_quick(name, quick, None, metrics[0])
        return None
    seeds = sorted({len(t["seeds"]) for t in res["techniques"].values()})
    print(f"study {name}: {res['mode']} mode, {'/'.join(map(str, seeds))} seeds, "
          f"{seen_labels(res)} images seen per model")
    if res.get("missing"):
        print(partial_line(res))
    with pd.option_context("display.max_rows", 500, "display.float_format", "{:.3f}".format):
        display(study_techniques(res))
        display(study_comparisons(res, metrics=metrics))
    for c in res["comparisons"]:
        if c["metric"] == metrics[0]:
            print(c["sentence"])
    if quick is not None:
        _show_quick(name, quick, res, metrics[0])
    return dict(res)


EARLIER_RULE = ("the older unpaired rule: a direction only when every seed agrees and the two "
                "techniques' own 95 % intervals (bootstrap over the images, seed 0) are apart; "
                "no paired resamples were kept")


def earlier_images() -> int:
    """Images seen per model at the earlier budget (``sodlab.bench.budget_curve.OLD_FULL``),
    the budget of the converted ``results/studies/NAME-<images>.json``."""
    from sodlab.bench.budget_curve import OLD_FULL
    from sodlab.engine.budgets import images_seen

    return images_seen(OLD_FULL)


def _run_time(res: Mapping) -> None:
    prov = res.get("provenance") or {}
    if prov.get("seconds"):
        print(f"the earlier-budget run took {prov['seconds'] / 60:.0f} min for the whole "
              f"notebook on {prov.get('cpu_count')} cores ({prov.get('threads')} torch "
              f"thread(s))")


def show_earlier(name: str, *, metrics: Sequence[str] | None = None) -> dict | None:
    """Display study ``name`` at the earlier budget, decided by the older unpaired rule
    (``"rule"`` in the file), then, when the full budget is committed too, both budgets'
    verdicts side by side. Returns the earlier result (its ``extras`` hold the notebook's
    other committed evidence), or None when there is none.

    ``metrics``: the comparisons shown (all of the file's metrics by default).
    """
    from IPython.display import display

    images = earlier_images()
    res = load_study(name, images=images)
    if res is None:
        print(f"study {name!r} has no committed result at the earlier budget "
              f"({images:,} images seen)")
        return None
    print(f"the earlier budget ({images:,} images seen per model), decided by {EARLIER_RULE}")
    _run_time(res)
    show_study(name, result=res, metrics=tuple(metrics or res["metrics"]))
    full = load_study(name)
    if full is not None:
        print("the same comparisons on AP_small at the earlier and at the full budget:")
        display(side_by_side({f"{images:,} images, unpaired rule": res,
                              "full budget, paired rule": full}))
    return dict(res)


__all__ = ["studies_dir", "save_study", "load_study", "study_comparisons", "study_techniques",
           "side_by_side", "show_study", "show_earlier", "earlier_images", "EARLIER_RULE",
           "quick_study", "agreement", "quick_against_full", "AGREES", "OPPOSITE",
           "NO_DIRECTION", "NO_NUMBER"]

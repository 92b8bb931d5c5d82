"""The benchmark page on a tiny fake suite result: files, links, CSV columns, regression marks.

``fake_bench`` builds the result with the suite's own statistics (``suite.finish`` on
records of hand-made detections), so no model trains; the browser test of ``bench.html``
uses it too.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from pathlib import Path

import pytest
from test_bench_suite import noisy_dets, tiny_gt

from sodlab.bench import page, suite

# name -> (keep share, box jitter, VGA ms) of the fake detections
FAKE = {"baseline": (0.4, 0.25, 20.0), "image pyramid": (0.6, 0.2, 60.0),
        "fpn": (0.9, 0.05, 35.0)}


def _with_diagnostics(rec: dict, gt: dict, dets: list[dict]) -> dict:
    """The TIDE breakdown and PR curves a record of the embedded data would carry."""
    from sodlab.metrics.coco import pr_curves
    from sodlab.metrics.tide import error_breakdown

    tide = error_breakdown(gt, dets)
    curves = pr_curves(gt, dets)
    rec["diagnostics"] = {"tide": {"counts": tide["counts"], "dAP": tide["dAP"]},
                          "pr": {"iou": curves["iou"], "precision": curves["precision"]}}
    return rec


def fake_bench() -> dict:
    """A ``run_benchmarks`` dict with a two-seed suite result and another benchmark."""
    from sodlab.metrics import evaluate
    from sodlab.provenance import provenance

    gt = tiny_gt()
    techs, recs = {}, {}
    for name, (keep, jitter, ms) in FAKE.items():
        tech = suite.BY_NAME[name]
        entry = {"status": "ok", "kind": tech.kind, "notebook": tech.notebook,
                 "preset": tech.preset, "recipe": tech.recipe, "test": tech.test,
                 "against": tech.against, "what": tech.what, "seeds": {}, "train": {},
                 "notes": [], "vga_ms_1t": ms, "vga_ms_2t": ms * 0.6,
                 "vga_fps_1t": 1000 / ms, "train_images_per_s": 12.0,
                 "speed": {"peak_rss_train_mb": 900.0}}
        recs[name] = {}
        for s in (0, 1):
            dets = noisy_dets(gt, keep=keep, jitter=jitter, seed=10 * s + len(name))
            entry["seeds"][str(s)] = {k: float(evaluate(gt, dets)[k]) for k in suite.KEYS}
            entry["train"][str(s)] = {"images_seen": 16, "seconds": 2.0, "cached": True}
            recs[name][s] = _with_diagnostics(suite.record_of_dets(gt, dets, name=name, seed=s),
                                              gt, dets)
        entry["mean"] = {k: sum(m[k] for m in entry["seeds"].values()) / 2 for k in suite.KEYS}
        techs[name] = entry
    techs["copy-paste"] = {"status": "skipped", "kind": "recipe", "notebook": "02_augmentation",
                           "reason": "copy-paste cuts objects out by their masks, and no "
                                     "training annotation has a 'segmentation'"}
    techs["SNIP"] = {"status": "failed", "kind": "recipe", "notebook": "05_snip_sniper",
                     "error": "RuntimeError: broken on purpose"}
    summary = suite.finish(techs, recs)
    result = {"techniques": techs, "order": list(techs), **summary,
              "paper_values": suite.paper_value_rows(techs),
              "frontier": suite.pareto_frontier({n: (techs[n]["vga_ms_1t"],
                                                     techs[n]["mean"]["AP_small"])
                                                 for n in FAKE}),
              "skipped": {"copy-paste": techs["copy-paste"]["reason"]},
              "failed": {"SNIP": techs["SNIP"]["error"]},
              "data": {"root": "mydata", "hash": "abc", "classes": 2, "val_images": 12,
                       "notes": ["PyramidBox: derived boxes."]},
              "budget": {"max_steps": 2, "batch_size": 2, "overrides": {}, "seeds": [0, 1],
                         "stage_two": {"max_steps": 2, "batch_size": 2}, "n_boot": 8},
              "speed": {}, "provenance": provenance(seed=0, data_hash="abc", quick=True)}
    return {"benchmarks": {"suite": result, "eval_speed": {"speedup": 7.5}}, "skipped": {},
            "failed": {}, "seconds": {"suite": 1.0}, "provenance": {"mode": "quick"}}


@pytest.fixture(scope="module")
def bench():
    return fake_bench()


def _reference(bench: dict, *, move: str = "fpn", keep: str = "baseline") -> dict:
    """A reference in which ``move``'s AP_small interval excludes this run's value and
    ``keep``'s interval holds it."""
    ref = copy.deepcopy(bench)
    techs = ref["benchmarks"]["suite"]["techniques"]
    for t in techs.values():
        if t["status"] != "ok":
            continue
        for k in suite.SHOWN:  # every number held unless named below
            v = t["seeds"]["0"][k]
            t["ci"][k] = [v - 0.01, v + 0.01]
    v = techs[move]["seeds"]["0"]["AP_small"]
    techs[move]["ci"]["AP_small"] = [v + 0.1, v + 0.2]
    assert techs[keep]["ci"]["AP_small"][0] <= techs[keep]["seeds"]["0"]["AP_small"]
    return ref


def _targets(text: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', text)


def test_page_files_exist_and_links_resolve(bench, tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    paths = page.write_page(bench, tmp_path)
    assert set(paths) == {"html", "csv", *page.PLOTS}
    for name, file in page.PLOTS.items():
        p = tmp_path / file
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    text = paths["html"].read_text()
    targets = _targets(text)
    assert {"bench.json", "bench.csv", *page.PLOTS.values()} <= set(targets)
    for t in targets:
        assert (tmp_path / t).is_file(), t
    assert "index.html" not in targets  # no notebook report beside it: no dead link
    assert "http" not in " ".join(targets)
    # an executed notebook beside the page is linked from its techniques' rows
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "03_fpn.html").write_text("<html></html>")
    (tmp_path / "index.html").write_text("<html></html>")
    targets = _targets(page.write_page(bench, tmp_path)["html"].read_text())
    assert "html/03_fpn.html" in targets and "index.html" in targets
    assert "html/05_snip_sniper.html" not in targets


def test_page_lists_skipped_and_failed_with_reasons(bench, tmp_path):
    text = page.write_page(bench, tmp_path)["html"].read_text()
    assert "copy-paste" in text and "segmentation" in text and "broken on purpose" in text
    assert "Skipped" in text and "Failed" in text
    assert "PyramidBox: derived boxes." in text
    assert "The papers beside us" in text and "Lin et al. 2017" in text
    # every paper row states its outcome; rows whose techniques did not run say so
    for row in bench["benchmarks"]["suite"]["papers"]:
        assert row["outcome"] in text
    assert "eval_speed" in text and "speedup" in text  # the other benchmark of the run
    assert "commit" in text and "data_hash" in text  # provenance footer


def test_regression_marks_a_moved_number_and_not_an_unmoved_one(bench, tmp_path):
    ref = _reference(bench)
    text = page.write_page(bench, tmp_path, reference=ref,
                           reference_label="bench_reference.json")["html"].read_text()
    assert "1 of" in text and "moved beyond their interval" in text
    rows = {r["technique"]: r for r in csv.DictReader((tmp_path / "bench.csv").open())
            if r["seed"] == "0"}
    assert rows["fpn"]["moved"] == "AP_small"
    assert rows["baseline"]["moved"] == "" and rows["image pyramid"]["moved"] == ""
    cells = re.findall(r'<td class="num moved"[^>]*>', text)
    assert len(cells) == 1
    # without a reference nothing is marked and the page says how to make one
    text = page.write_page(bench, tmp_path)["html"].read_text()
    assert "num moved" not in text and "--update-reference" in text


def test_csv_columns_and_rows(bench, tmp_path):
    page.write_page(bench, tmp_path)
    with (tmp_path / "bench.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == page.CSV_COLUMNS
        rows = list(reader)
    by = {}
    for r in rows:
        by.setdefault(r["technique"], []).append(r)
    assert [len(by[n]) for n in FAKE] == [2, 2, 2]  # one row per seed
    assert by["copy-paste"][0]["status"] == "skipped" and "masks" in by["copy-paste"][0]["reason"]
    assert by["SNIP"][0]["status"] == "failed"
    fpn0 = [r for r in by["fpn"] if r["seed"] == "0"][0]
    fpn1 = [r for r in by["fpn"] if r["seed"] == "1"][0]
    t = bench["benchmarks"]["suite"]["techniques"]["fpn"]
    assert float(fpn0["AP_small_lo"]) == pytest.approx(t["ci"]["AP_small"][0])
    assert fpn1["AP_small_lo"] == ""  # intervals only on the seed they were computed on
    assert float(fpn1["AP"]) == pytest.approx(t["seeds"]["1"]["AP"])


def test_technique_rows_and_frames(bench):
    s = page.suite_of(bench)
    rows = {r["technique"]: r for r in page.technique_rows(s)}
    assert rows["fpn"]["AP_small"] == pytest.approx(s["techniques"]["fpn"]["mean"]["AP_small"])
    assert rows["copy-paste"]["AP_small"] is None and rows["copy-paste"]["reason"]
    frame = page.technique_frame(s)
    assert list(frame.index) == s["order"]
    papers = page.paper_frame(s)
    assert len(papers) == len(s["papers"]) and "outcome" in papers


def test_find_bench_prefers_this_run_then_the_reference(bench, tmp_path):
    reports, results = tmp_path / "reports", tmp_path / "results"
    reports.mkdir()
    results.mkdir()
    assert page.find_bench(reports, results) == (None, None)
    ref = page.suite_of(bench)
    (results / "bench_reference.json").write_text(json.dumps({"benchmarks": {"suite": ref}}))
    got, path = page.find_bench(reports, results)
    assert path.name == "bench_reference.json" and got["order"] == ref["order"]
    (reports / "bench.json").write_text(json.dumps({"benchmarks": {"eval_speed": {}}}))
    assert page.find_bench(reports, results)[1].name == "bench_reference.json"  # no suite
    (reports / "bench.json").write_text(json.dumps(bench))
    assert page.find_bench(reports, results)[1] == reports / "bench.json"
    (reports / "bench.json").write_text("{not json")
    with pytest.raises(Exception, match="not JSON"):
        page.find_bench(reports, results)


def test_page_without_the_suite(tmp_path):
    other = {"benchmarks": {"eval_speed": {"speedup": 2.0}}, "skipped": {},
             "failed": {"quality": "ValueError: x"}, "provenance": {"mode": "quick"}}
    paths = page.write_page(other, tmp_path)
    text = paths["html"].read_text()
    assert set(paths) == {"html"} and "did not run" in text and "quality" in text
    for t in _targets(text):
        assert (Path(tmp_path) / t).is_file(), t

"""The generated sections of the README and the docs are what the committed results give.

No number of ours is typed by hand: ``sodlab.bench.readme`` renders them, and docs/methods.md
keeps only the papers' rows in its tables, with a generated "ours" section after them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sodlab.bench import readme
from sodlab.bench.studies import STUDIES
from sodlab.errors import InputError

METHODS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
STUDIES_DIR = METHODS.parents[1] / "results" / "studies"
GENERATED = re.compile(r"<!-- generated: (\S+) -->\n.*?<!-- end generated: \1 -->", re.S)


def test_the_readme_matches_the_committed_results():
    assert readme.refresh(["--check"]) == 0, "run: python -m sodlab.bench.readme"


def test_sections_are_rewritten_between_their_markers_and_required():
    text = "".join(f"<!-- generated: {n} -->\nstale\n<!-- end generated: {n} -->\n"
                   for n in readme.SECTIONS)
    new = readme.updated(text)
    assert "stale" not in new and new.count("<!-- generated:") == len(readme.SECTIONS)
    assert readme.updated(new) == new
    with pytest.raises(InputError, match="no generated section"):
        readme.updated("no markers")


def test_methods_has_no_typed_ours_row_and_a_section_for_every_study():
    text = METHODS.read_text(encoding="utf-8")
    typed = [line for line in GENERATED.sub("", text).splitlines()
             if line.lstrip().lower().startswith("| ours")]
    assert not typed, f"hand-typed ours rows in docs/methods.md (generate them): {typed}"
    sections = readme.FILES["docs/methods.md"]
    for name in sections:
        assert f"<!-- generated: {name} -->" in text, name
    covered = {readme.OURS[n].study for n in sections if n in readme.OURS}
    assert covered >= set(STUDIES), f"studies without an ours section: {set(STUDIES) - covered}"
    assert set(readme.OURS) <= set(sections) <= set(readme.RENDER)


def _earlier_study_only(folder: Path, name: str) -> str:
    """Copy the committed study ``name`` at the earlier budget into ``folder``; its file name."""
    from sodlab.bench.study_view import earlier_images

    file = f"{name}-{earlier_images()}.json"
    (folder / file).write_text((STUDIES_DIR / file).read_text())
    return file


def test_an_ours_section_shows_the_full_study_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    _earlier_study_only(tmp_path, "fpn")
    spec = readme.Ours("fpn")
    before = readme.render_ours(spec)
    assert "not yet run at the full budget" in before
    assert "`sodlab study run fpn --full`" in before and "older unpaired rule" in before
    tech = {"seeds": {"0": {}, "1": {}}, "images_seen": 1234, "mean": {"AP_small": 0.25}}
    comp = {"a": "baseline", "b": "fpn", "metric": "AP_small", "mean": -0.0125,
            "interval": [-0.02, -0.005], "verdict": "down"}
    (tmp_path / "fpn.json").write_text(json.dumps(
        {"study": "fpn", "notebook": "03_fpn", "mode": "full",
         "techniques": {"baseline": tech, "fpn": tech}, "comparisons": [comp]}))
    after = readme.render_ours(spec)
    assert "full budget (1,234 images seen, 2 seeds, paired rule)" in after
    assert "| fpn vs baseline | −0.013 | −0.020 to −0.005 | down |" in after
    assert "baseline 0.250, fpn 0.250" in after and "not yet run" not in after
    assert "no comparison on AP_small" in readme.render_ours(readme.Ours("fpn", only="^x"))


def test_a_partial_study_is_shown_as_partial_beside_the_earlier_budget(tmp_path, monkeypatch):
    from sodlab.bench.study_view import save_study

    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    _earlier_study_only(tmp_path, "fpn")
    tech = {"seeds": {"0": {}, "1": {}, "2": {}}, "images_seen": 1234,
            "mean": {"AP_small": 0.25}}
    comp = {"a": "baseline", "b": "image pyramid", "metric": "AP_small", "mean": 0.05,
            "interval": [0.02, 0.08], "verdict": "up"}
    path = save_study({"study": "fpn", "notebook": "03_fpn", "mode": "full",
                       "techniques": {"baseline": tech, "image pyramid": tech},
                       "comparisons": [comp], "missing": [["fpn", 0], ["fpn", 1]]})
    assert path.name == "fpn.partial.json"
    text = readme.render_ours(readme.Ours("fpn"))
    assert "`results/studies/fpn.partial.json`; partial: 2 techniques" in text
    assert "still to run: fpn (2 runs, sodlab study run fpn --full)" in text
    assert "| image pyramid vs baseline | +0.050 | +0.020 to +0.080 | up |" in text
    assert "older unpaired rule" in text  # the earlier budget's comparisons follow
    assert "(partial, 2 runs to go; 1,234 images seen" in readme.render_studies()


def test_benchmarks_and_facts_no_file_holds_are_not_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "_results", lambda: tmp_path)
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    for render in (readme.render_sliding_speed, readme.render_vga_speed,
                   readme.render_recipe_cost):
        assert render().startswith("Ours: not committed"), render
    text = readme.render_ours(readme.OURS["ours_ssh"])
    assert "No earlier-budget result is committed either" in text
    assert "px: not committed / not committed / not committed." in text


README = METHODS.parents[1] / "README.md"
# a number a run gives: a decimal, a ratio, a percentage or a rate
RUN_NUMBER = re.compile(r"\d\.\d|\d\s*(?:×|%|FPS|ms\b|s each|images/s|GFLOP/s)")


def test_the_benchmark_section_types_no_number_outside_generated_sections():
    text = README.read_text(encoding="utf-8")
    section = text.split("## The benchmark", 1)[1].split("\n## ", 1)[0]
    assert "<!-- generated: benchmarks -->" in section
    typed = [line for line in GENERATED.sub("", section).splitlines()
             if RUN_NUMBER.search(line)]
    assert not typed, f"numbers typed into README's benchmark section (generate them): {typed}"


def test_every_benchmark_has_an_item_and_a_missing_file_says_not_committed(tmp_path,
                                                                             monkeypatch):
    from sodlab.bench import BENCHMARKS

    monkeypatch.setattr(readme, "_results", lambda: tmp_path)
    text = readme.render_benchmark_results()
    for name in BENCHMARKS:
        assert (f"- `{name}`: not committed yet (`sodlab bench --full --only {name}`)."
                in text), name


def _write_bench(folder: Path, name: str, result: dict) -> None:
    """A file as ``sodlab bench --only NAME --out results/bench_NAME.json`` writes it."""
    prov = {"mode": "full", "time": "2026-12-08T01:02:03+00:00", "threads": 2,
            "cpu": "AMD EPYC", "cpu_count": 2}
    (folder / f"bench_{name}.json").write_text(json.dumps(
        {"benchmarks": {name: result}, "skipped": {}, "failed": {}, "seconds": {name: 1.0},
         "provenance": prov}))


def test_step_speed_and_data_path_render_once_their_files_land(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "_results", lambda: tmp_path)
    ops = [{"operator": f"op{i}", "ms_per_step": 1.0, "share": s, "backward": i == 1}
           for i, s in enumerate((0.1, 0.4, 0.2, 0.05))]
    _write_bench(tmp_path, "step_speed", {
        "precision": "bf16", "threads": 2, "yardstick": "resnet18",
        "yardstick_images_per_s": 40.0, "presets": {"fpn": {
            "images_per_s": 20.0, "vs_yardstick": 0.5, "phases_ms": {"backward": 9.0},
            "operators": ops}}})
    _write_bench(tmp_path, "data_path", {
        "preset": "fpn", "precision": "bf16", "images_per_s": {"compute": 50.0, "decode": 25.0},
        "vs_compute": {"compute": 1.0, "decode": 0.5}, "pixel_cache_build_s": 3.0})
    text = readme.render_benchmark_results()
    step = next(line for line in text.splitlines() if line.startswith("- `step_speed`"))
    assert "`fpn` 0.50× the yardstick's images/s" in step
    assert "`op1` 40.0 % (backward), `op2` 20.0 %, `op0` 10.0 %)" in step and "op3" not in step
    assert "`results/bench_step_speed.json`, full mode, 2026-12-08, 2 threads, AMD EPYC" in step
    assert "`decode` 0.50×" in text and "`compute` 1.00×" not in text


def test_a_bare_result_file_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setattr(readme, "_results", lambda: tmp_path)
    (tmp_path / "bench_sliding.json").write_text(json.dumps(
        {"speedup": 18.0, "overlap_ratio": 36.0, "mac_bound": 17.0, "provenance": {}}))
    item = readme._bench_item("sliding")[0]
    assert "18.00× the windows/s of crop-and-classify" in item
    assert "`results/bench_sliding.json`, unknown mode" in item


def test_pyramidbox_sections_show_the_committed_ablation_or_say_not_committed(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("SODLAB_STUDIES", str(tmp_path))
    file = _earlier_study_only(tmp_path, "pyramidbox")
    rows = readme.render("ours_pyramidbox_rows")
    assert "pyramidbox + DAS vs s3fd" in rows and f"`results/studies/{file}`" in rows
    assert "hard-negative false alarms per image" in rows and "not committed" not in rows
    (tmp_path / file).unlink()
    neck = readme.render("ours_pyramidbox_neck")
    assert "No earlier-budget result is committed either" in neck
    assert "no neck (`s3fd`): not committed / not committed / not committed." in neck

"""No number of ours is typed into a notebook's markdown (the house style).

A number that a run of ours produces — an AP, a run time, a speed, a count from our data, a
verdict's size — goes into a notebook through code: the committed studies via
``sodlab.bench.study_view`` (``show_study``, ``show_earlier``), or the live run. Markdown may type two kinds of number:

- the figures papers report, as ``docs/methods.md`` lists them in the *paper* rows of its
  tables (its tables hold no row of ours: our numbers are in its generated sections, which
  ``sodlab.bench.readme`` renders from the results and which count as no paper's);
- definitional constants, each listed in ``ALLOWED`` below with its reason.

Checked: every number in a markdown cell with a decimal point (``0.5``, ``1803.07737``), a
percent sign (``90 %``) or a unit of time or speed (``90 s``, ``28 min``, ``20 FPS``).
Integers without one (``3 seeds``, ``stride 16``, ``2,000 images``) are not checked. Inline
code spans and LaTeX math are skipped: they hold settings and formulas the reader types.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
METHODS = REPO / "docs" / "methods.md"

_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_UNIT = (r"(?:ms|s|min|h|seconds|minutes?|hours?|CPU-seconds|CPU-minutes|FPS|fps"
         r"|frames/s|images/s|windows/s)")
# a number with a unit of time or speed (a range "60–90 s" is one hit), a percentage, or a
# bare decimal
NUMBER = re.compile(
    rf"(?<![\w.]){_NUM}(?:\s*[–-]\s*{_NUM})?\s*(?:{_UNIT}(?![\w/])|%)"
    rf"|(?<![\w.])\d*\.\d+(?![\w]|\.\d)")
# what markdown holds that is not prose: code blocks, code spans, display and inline math
NOT_PROSE = re.compile(r"```.*?```|`(?:[^`\n]|\n(?!\s*\n))*`|\$\$.*?\$\$|\$[^$\n]+\$", re.S)
# units of one kind compare alike ("20 FPS" in a notebook is "20 frames/s" in methods.md)
_KIND = {"ms": "ms", "s": "s", "seconds": "s", "CPU-seconds": "s", "min": "min",
         "minute": "min", "minutes": "min", "CPU-minutes": "min", "h": "h", "hour": "h",
         "hours": "h", "FPS": "fps", "fps": "fps", "frames/s": "fps", "images/s": "images/s",
         "windows/s": "windows/s", "%": "%"}

# (notebook stem, the number as written) -> why it may be typed. "*": any notebook.
ALLOWED = {
    # the course's own constants
    ("*", "0.5"): "IoU 0.5 (AP50, matching, NMS) and score 0.5 thresholds, or the 0.5x scale",
    ("*", "0.75"): "the IoU threshold of AP75 (COCO's definition)",
    ("*", "0.95"): "the top of COCO AP's IoU range 0.50-0.95",
    ("*", "95 %"): "the level of the bootstrap intervals (and of the ERF's mass)",
    ("*", "90 s"): "docs/design.md's quick-mode run-time target once models are cached",
    ("*", "0.35"): "S3FD's matching threshold, which the method defines",
    ("*", "0.1"): "S3FD's compensation IoU, and the probe's 'touches no face' IoU bound",
    # 00: worked arithmetic of the size lesson, not measurements
    ("00_what_is_small", "2.5"): "10 / 4: cells per side of a 10 px face at stride 4",
    ("00_what_is_small", "0.31"): "10 / 32: cells per side of a 10 px face at stride 32",
    ("00_what_is_small", "0.25"): "the sub-pixel step the placement table uses",
    ("00_what_is_small", "90 %"): "1 - 10²/32²: background share of a stride-32 cell",
    ("00_what_is_small", "0.96"): "(100 - 2) / (100 + 2): IoU(s, d) for s = 100, d = 2",
    ("00_what_is_small", "0.69"): "25 / 36: a 5 px box against the true 6 px box",
    ("00_what_is_small", "0.97"): "59² / 60²: the same one-pixel mistake on a 60 px box",
    # 01
    ("01_sliding_window_pyramid", "1.33"): "1 / (1 - 1/s²) for s = 2, the pyramid's cost",
    ("01_sliding_window_pyramid", "3.4"): "1 / (1 - 1/s²) for s = ⁴√2",
    ("01_sliding_window_pyramid", "10 %"): "the positive crops' jitter, a training setting",
    ("01_sliding_window_pyramid", "0.3"): "the IoU below which a random crop is a negative",
    # 02
    ("02_augmentation", "20 %"): "Kisantal et al.'s paste scale range (±20 %)",
    ("02_augmentation", "0.8"): "the same ±20 % as copy_paste's scale range [0.8, 1.2]",
    ("02_augmentation", "1.2"): "the same ±20 % as copy_paste's scale range [0.8, 1.2]",
    ("02_augmentation", "40 %"): "the generator's visibility bound for a crowd face",
    # 03
    ("03_fpn", "90 %"): "the budget rule: the multiple reaching 90 % of AP_small at 16x",
    # 05
    ("05_snip_sniper", "2.5"): "our rescaling of SNIP's ranges: the paper's bounds / 2.5",
    ("05_snip_sniper", "1.75"): "(2² + 1² + 0.5²) / 3: the mean area of the three scales",
    # 06
    ("06_dense_anchors", "0.39"): "10² / 16²: IoU of a 10 px face and a 16 px anchor",
    # 07
    ("07_perceptual_gan", "0.25"): "1 of 4: the accuracies a batch of 4 examples can score",
    # 08
    ("08_pyramidbox", "1803.07737"): "the PyramidBox paper's arXiv identifier",
    ("08_pyramidbox", "0.3"): "a score threshold the exercise asks to try",
    ("08_pyramidbox", "0.7"): "a score threshold the exercise asks to try",
    # 09
    ("09_relation_networks", "2.3"): "the generator's spacing of group faces (2.3-3.0 widths)",
    ("09_relation_networks", "3.0"): "the generator's spacing of group faces (2.3-3.0 widths)",
    ("09_relation_networks", "1.0"): "NMS at IoU 1.0 (keeps all), and a σ / spacing to try",
    ("09_relation_networks", "1.3"): "a group spacing the exercise asks to try (1.0-1.3)",
    ("09_relation_networks", "0.3"): "a soft-NMS σ the exercise asks to try",
    ("09_relation_networks", "1 %"): "the checks' bound on overlapping neighbour pairs",
    ("09_relation_networks", "0.01"): "the std of the relation module's last layer at init",
    ("09_relation_networks", "32.6"): "paper: Hu et al. 2018, 2fc head + learned NMS, AP",
    ("09_relation_networks", "11.8"): "paper: Hu et al. 2018, 2fc head + learned NMS, AP_S",
    # 10
    ("10_benchmark_report", "2.5 %"): "the lower quantile of a 95 % percentile interval",
    ("10_benchmark_report", "97.5 %"): "the upper quantile of a 95 % percentile interval",
    ("10_benchmark_report", "0.50"): "the bottom of COCO AP's IoU range 0.50-0.95",
    ("10_benchmark_report", "25 %"): "the regression check's latency tolerance",
    ("10_benchmark_report", "20 ms"): "a latency budget the exercise sets",
}


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def _tokens(text: str) -> list[tuple[str, float]]:
    """``(kind, value)`` of each number in one hit: ``"60–90 s"`` -> ``[("s", 60), ("s", 90)]``;
    a bare decimal has kind ``""``."""
    unit = re.search(rf"(?:{_UNIT}|%)$", text)
    kind = _KIND[unit.group()] if unit else ""
    return [(kind, _value(n)) for n in re.findall(_NUM, text)]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def paper_numbers(text: str) -> set[tuple[str, float]]:
    """The checked numbers (``_tokens``) in the paper rows of docs/methods.md's tables: the
    tables whose first header is ``source``, outside the generated sections, every row but
    ``ours ...`` (which tests/test_readme.py forbids there)."""
    found: set[tuple[str, float]] = set()
    header = None
    generated = False
    for line in text.splitlines():
        if line.startswith(("<!-- generated:", "<!-- end generated:")):
            generated = line.startswith("<!-- generated:")
        if generated or not line.lstrip().startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells) or header[0].lower() != "source":
            continue
        if cells[0].lower().startswith("ours"):
            continue
        for m in NUMBER.finditer(" | ".join(cells)):
            found |= set(_tokens(" ".join(m.group().split())))
    return found


def _is_paper_figure(tokens: list[tuple[str, float]], papers: set) -> bool:
    """Every number of the hit is a paper's: the same value and unit kind, or, for a bare
    decimal, the same value with any unit."""
    values = {v for _, v in papers}
    return bool(tokens) and all((k, v) in papers or (not k and v in values) for k, v in tokens)


def _sentence(text: str, start: int, end: int) -> str:
    left = max(text.rfind(". ", 0, start), text.rfind("\n\n", 0, start))
    stops = [i for i in (text.find(". ", end), text.find("\n\n", end)) if i >= 0]
    right = min(stops) + 1 if stops else len(text)
    return " ".join(text[left + 1:right].split())


def typed_numbers(source: str):
    """(number as written, its ``_tokens``, its sentence) for each checked number of a cell."""
    masked = NOT_PROSE.sub(lambda m: " " * len(m.group()), source)
    for m in NUMBER.finditer(masked):
        text = " ".join(m.group().split())
        yield text, _tokens(text), _sentence(source, m.start(), m.end())


def _allowed(stem: str, text: str) -> bool:
    return (stem, text) in ALLOWED or ("*", text) in ALLOWED


def test_methods_tables_have_paper_numbers():
    papers = paper_numbers(METHODS.read_text(encoding="utf-8"))
    for figure in ("0.167", "17.8", "85.2", "47.6", "95.9 %", "20 FPS"):   # papers' figures
        assert _is_paper_figure(_tokens(figure), papers), figure
    for ours in ("0.409", "0.418", "0.114", "18.4"):   # ours are no paper's figures
        assert not _is_paper_figure(_tokens(ours), papers), ours
    generated = ("<!-- generated: x -->\n| source | metric |\n|---|---|\n| ours | 0.123 |\n"
                 "| fpn vs baseline | 0.456 |\n<!-- end generated: x -->\n")
    assert not paper_numbers(generated), "a generated section's numbers are no paper's"


def test_the_pattern_finds_what_it_must():
    found = [t for t, _, _ in typed_numbers(
        "AP_small 0.409 in 27 min 38 s, 3.3× lower, 0.041 → 0.002; 60–90 s; 18 % and "
        "20 FPS, 3 CPU-minutes; but not 3 seeds, stride 16, 2,000 images, a 3 second stage, "
        "`p=0.5`, `--set\nscale=0.25` or $0.5$.")]
    assert found == ["0.409", "27 min", "38 s", "3.3", "0.041", "0.002", "60–90 s", "18 %",
                     "20 FPS", "3 CPU-minutes"], found
    assert _tokens("60–90 s") == [("s", 60.0), ("s", 90.0)]


def test_allow_list_is_small_and_explained():
    assert len(ALLOWED) <= 50, "an allow-list this long lets results through: print them"
    for (stem, text), why in ALLOWED.items():
        assert stem == "*" or stem in {p.stem for p in NOTEBOOKS}, f"no notebook {stem}"
        assert len(why.split()) >= 4, (stem, text, why)


def _markdown(path: Path):
    for i, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
        if cell["cell_type"] == "markdown":
            src = cell["source"]
            yield i, "".join(src) if isinstance(src, list) else src


def test_every_allowed_number_is_still_typed():
    """An entry no notebook needs any more goes: it would let a result through later."""
    seen = {(p.stem, text) for p in NOTEBOOKS for _, src in _markdown(p)
            for text, _, _ in typed_numbers(src)}
    unused = [k for k in ALLOWED if k not in seen
              and not (k[0] == "*" and any(t == k[1] for _, t in seen))]
    assert not unused, f"remove these ALLOWED entries: {unused}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_number_of_ours_typed_in_markdown(path):
    papers = paper_numbers(METHODS.read_text(encoding="utf-8"))
    bad = []
    for i, source in _markdown(path):
        for text, tokens, sentence in typed_numbers(source):
            if _allowed(path.stem, text) or _is_paper_figure(tokens, papers):
                continue
            bad.append(f"{path.stem}, markdown cell {i}: {text!r} in: {sentence}")
    assert not bad, ("numbers typed into markdown that are neither a paper's figure "
                     "(docs/methods.md) nor an allowed constant; let a code cell print them "
                     "(sodlab.bench.study_view or the live run) and point to it in words:\n"
                     + "\n".join(bad))

"""Design rules of docs/design.md that a grep can check, and the one helpers they point to.

(a) only ``sodlab/data/coco.py`` builds COCO results records (a dict literal with both a
``"category_id"`` and a ``"score"`` key; ground-truth annotations have no score), in the
package and in the notebooks' code cells; (b) only it groups annotations by image itself
(``setdefault(...["image_id"]...)`` or ``defaultdict(list)`` indexed by an ``"image_id"``);
(c) no file cites the design notes by another name than ``docs/``; (d) no two modules
define a public function of the same name (interfaces such as ``run`` excepted); (e) no
function of the package is longer than ``MAX_FUNCTION_LINES`` lines (``def`` to its last
line; split a longer one into well-named helpers beside it).
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "sodlab"
THE_COCO_MODULE = "sodlab/data/coco.py"

# The strings of rule (c), built so that this file does not cite them itself.
CITATIONS = ("DESIGN" + ".md", "METHODS" + ".md", ".." + "/shared")

# The evaluator's loader reads results records a user gives and normalises them into the
# records COCOeval needs (ids, areas); it builds no detections, so it is not an offender.
RESULTS_PARSERS = {"sodlab/metrics/coco.py"}
# One public name per job; these names are interfaces every module of a kind defines.
INTERFACE_NAMES = {"run", "register", "explorer"}
MAX_FUNCTION_LINES = 60


# --------------------------------------------------------------------------- sources
def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def package_modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def notebooks() -> list[Path]:
    return sorted((REPO / "notebooks").glob("*.ipynb"))


def notebook_code(path: Path) -> str:
    """The code cells of a notebook as one module; IPython magics become blank lines."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        lines += ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in src.splitlines()]
        lines.append("")
    return "\n".join(lines)


def repo_files() -> list[Path]:
    """Every file of the checkout that git tracks or would track (else a walk of the tree)."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
        paths = [REPO / line for line in out.stdout.splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "runs", "reports", "__pycache__", ".pytest_cache",
                ".ruff_cache", "node_modules"}
        paths = [p for p in REPO.rglob("*")
                 if not skip.intersection(p.relative_to(REPO).parts)
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    return sorted(p for p in paths if p.is_file())


# --------------------------------------------------------------------------- checkers
def _has_image_id_key(node: ast.AST) -> bool:
    """True if ``node`` contains a subscript ``x["image_id"]``."""
    return any(isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
               and n.slice.value == "image_id" for n in ast.walk(node))


_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _scope_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of one scope (a module or a function), not those of functions inside it."""
    out, todo = [], list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, _FUNCTIONS):
            todo.extend(ast.iter_child_nodes(node))
    return out


def results_records(tree: ast.AST) -> list[int]:
    """Lines of dict literals with both a ``"category_id"`` and a ``"score"`` key."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if {"category_id", "score"} <= keys:
                out.append(node.lineno)
    return out


def groupings_by_image(tree: ast.AST) -> list[int]:
    """Lines that group records by image: ``d.setdefault(...["image_id"]..., ...)``, or a
    ``defaultdict(list)`` in a scope that indexes a dict by ``...["image_id"]``."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "setdefault" and node.args
                and _has_image_id_key(node.args[0])):
            out.append(node.lineno)
    scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, _FUNCTIONS)]
    for scope in scopes:
        nodes = _scope_nodes(scope)
        lists = [n for n in nodes if isinstance(n, ast.Call) and getattr(n.func, "id", None)
                 == "defaultdict" and n.args and getattr(n.args[0], "id", None) == "list"]
        keyed = any(isinstance(n, ast.Subscript) and not isinstance(n.slice, ast.Constant)
                    and _has_image_id_key(n.slice) for n in nodes)
        if lists and keyed:
            out += [n.lineno for n in lists]
    return sorted(set(out))


def citations(text: str) -> list[str]:
    """The forbidden citations that occur in ``text`` (case-sensitive)."""
    return [c for c in CITATIONS if c in text]


def _parse(path: Path) -> ast.AST:
    src = notebook_code(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    return ast.parse(src, filename=str(path))


def _offenders(check, paths) -> dict[str, list]:
    out = {}
    for p in paths:
        hits = check(_parse(p))
        if hits and _rel(p) != THE_COCO_MODULE:
            out[_rel(p)] = hits
    return out


@functools.lru_cache(maxsize=1)
def results_offenders() -> dict[str, list]:
    found = _offenders(results_records, package_modules() + notebooks())
    return {k: v for k, v in found.items() if k not in RESULTS_PARSERS}


@functools.lru_cache(maxsize=1)
def grouping_offenders() -> dict[str, list]:
    return _offenders(groupings_by_image, package_modules())


@functools.lru_cache(maxsize=1)
def citation_offenders() -> dict[str, list]:
    out = {}
    for p in repo_files():
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if hits := citations(text):
            out[_rel(p)] = hits
    return out


@functools.lru_cache(maxsize=1)
def shared_public_names() -> dict[str, list[str]]:
    """Public top-level function and class names defined by more than one module."""
    where = defaultdict(list)
    for p in package_modules():
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef))
                    and not node.name.startswith("_")):
                where[node.name].append(_rel(p))
    return {k: v for k, v in where.items() if len(v) > 1 and k not in INTERFACE_NAMES}


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function (methods and nested ones too) longer than ``limit``
    lines, counted from its ``def`` to its last line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                out.append((node.name, lines))
    return out


@functools.lru_cache(maxsize=1)
def long_function_offenders() -> dict[str, list[tuple[str, int]]]:
    return {_rel(p): hits for p in package_modules()
            if (hits := long_functions(_parse(p)))}


# --------------------------------------------------------------------------- the checkers work
def test_results_checker_finds_a_hand_built_record_and_not_ground_truth():
    tree = ast.parse('det = {"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": .5}\n'
                     'gt = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}\n'
                     'x = dict(category_id=1, score=2)\n')
    assert results_records(tree) == [1]


def test_grouping_checker_finds_both_forms():
    src = ("def a(coco):\n"
           "    by = {}\n"
           "    for r in coco['annotations']:\n"
           "        by.setdefault(r['image_id'], []).append(r)\n"
           "def b(anns):\n"
           "    g = defaultdict(list)\n"
           "    for r in anns:\n"
           "        g[r['image_id']].append(r)\n"
           "def c(ims):\n"
           "    sizes = {}\n"
           "    for im in ims:\n"
           "        sizes.setdefault(im['id'], 0)\n"
           "    g = defaultdict(list)\n"
           "    g['image_id'].append(1)\n")
    assert groupings_by_image(ast.parse(src)) == [4, 6]


def test_citation_checker():
    assert citations("see " + CITATIONS[0] + " and docs/design.md") == [CITATIONS[0]]
    assert citations("docs/design.md, docs/methods.md, a shared machine") == []


def test_long_function_checker_counts_def_to_last_line():
    def body(indent: int) -> str:  # 59 lines
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(59))

    src = (f"def too_long():\n{body(4)}    return 0\n"               # 61 lines
           f"class A:\n    def fits(self):\n{body(8)}\n"            # 60 lines
           f"def outer():\n    def inner():\n{body(8)}    return inner\n")  # 62 and 60
    assert long_functions(ast.parse(src)) == [("too_long", 61), ("outer", 62)]
    assert long_functions(ast.parse(src), limit=59) == [("too_long", 61), ("outer", 62),
                                                        ("fits", 60), ("inner", 60)]


def test_notebook_code_keeps_code_and_drops_markdown_and_magics(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ['{"category_id": 1, "score": 2}']},
                    {"cell_type": "code", "source": ["%matplotlib inline\n", "x = 1\n"]},
                    {"cell_type": "code", "source": 'y = {"category_id": 1, "score": 2}'}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "00_x.ipynb"
    path.write_text(json.dumps(nb))
    assert results_records(ast.parse(notebook_code(path))) == [4]


# --------------------------------------------------------------------------- the rules
def test_only_data_coco_builds_coco_results_records():
    found = results_offenders()
    assert not found, ("COCO results records built by hand (use "
                       f"sodlab.data.coco.to_coco_results): {found}")


def test_only_data_coco_groups_annotations_by_image():
    found = grouping_offenders()
    assert not found, ("annotations grouped by image by hand (use "
                       f"sodlab.data.coco.annotations_by_image): {found}")


def test_no_file_cites_the_old_design_notes():
    found = citation_offenders()
    assert not found, f"cite docs/design.md or docs/methods.md instead: {found}"


def test_the_docs_exist_and_the_readme_links_them():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/design.md", "docs/methods.md"):
        assert (REPO / doc).is_file(), doc
        assert doc in readme, f"README.md does not link {doc}"


def test_public_names_are_not_shared_across_modules():
    found = shared_public_names()
    assert not found, f"two functions, one name (give each a descriptive one): {found}"


def test_no_function_is_longer_than_the_limit():
    found = long_function_offenders()
    assert not found, (f"functions over {MAX_FUNCTION_LINES} lines (split them into "
                       f"well-named helpers beside them): {found}")


# --------------------------------------------------------------------------- the one helpers
def _touched_loop(box, height, width) -> torch.Tensor:
    """Reference: pixel (r, c) covers [c, c+1) x [r, r+1); touched iff it overlaps the box."""
    x1, y1, x2, y2 = box
    m = torch.zeros(height, width, dtype=torch.bool)
    for r in range(height):
        for c in range(width):
            m[r, c] = (c < x2 and c + 1 > x1) and (r < y2 and r + 1 > y1)
    return m


@pytest.mark.parametrize("box", [(1.0, 2.0, 4.0, 5.0), (0.5, 0.25, 3.5, 2.75), (-2.0, -1.0, 1.5, 1.0),
                                 (5.5, 3.2, 9.0, 9.0), (7.0, 1.0, 8.0, 2.0), (2.0, 2.0, 2.0, 4.0),
                                 (20.0, 1.0, 25.0, 3.0)])
def test_box_mask_is_the_pixels_the_box_touches(box):
    from sodlab.boxes import box_mask, box_slices

    H, W = 6, 8
    ref = _touched_loop(box, H, W)
    assert torch.equal(box_mask(box, H, W), ref)
    arr = np.zeros((H, W), dtype=bool)
    arr[box_slices(box, H, W)] = True
    assert np.array_equal(arr, ref.numpy())


def test_mixed_seed_is_numpys_seed_sequence_and_separates_nearby_tuples():
    from sodlab.data.dataset import item_generator, mixed_seed, seeded_generator

    ref = np.random.SeedSequence([5 & 0xFFFFFFFF, 2, 7]).generate_state(1, np.uint64)[0] >> 1
    assert mixed_seed(5, 2, 7) == int(ref)
    assert mixed_seed(-1, 0) == mixed_seed(2**32 - 1, 0)  # the seed is taken modulo 2**32
    seeds = {mixed_seed(s, e, i) for s in range(3) for e in range(3) for i in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    a = torch.rand(4, generator=seeded_generator(1, 2, 3))
    assert torch.equal(a, torch.rand(4, generator=item_generator(1, 2, 3)))
    assert not torch.equal(a, torch.rand(4, generator=seeded_generator(1, 3, 2)))


@pytest.mark.parametrize("size, antialias", [((7, 5), None), ((20, 30), None), ((7, 5), False),
                                             ((12, 9), True), ((24, 8), None)])
def test_resize_image_is_bilinear_interpolate(size, antialias):
    from sodlab.tiling import resize_image

    img = torch.rand(3, 12, 16, generator=torch.Generator().manual_seed(0))
    shrink = size[0] < 12 or size[1] < 16
    want = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                         antialias=shrink if antialias is None else antialias)[0]
    got = resize_image(img, size, antialias=antialias)
    assert got.shape == (3, *size) and torch.equal(got, want)
    batch = resize_image(torch.stack([img, img.flip(-1)]), size, antialias=antialias)
    assert batch.shape == (2, 3, *size) and torch.equal(batch[0], want)


def test_resize_image_rejects_bad_input():
    from sodlab.errors import InputError
    from sodlab.tiling import resize_image

    with pytest.raises(InputError, match="resize_image"):
        resize_image(torch.rand(12, 16), (4, 4))
    with pytest.raises(InputError, match="size"):
        resize_image(torch.rand(3, 12, 16), (0, 4))


def test_bucket_rgb_is_bucket_colors():
    from matplotlib.colors import to_rgb

    from sodlab.boxes import BUCKETS
    from sodlab.viz import BUCKET_COLORS, BUCKET_RGB

    assert set(BUCKET_COLORS) == set(BUCKET_RGB) == set(BUCKETS)
    for name, hexcol in BUCKET_COLORS.items():
        assert BUCKET_RGB[name] == tuple(round(255 * c) for c in to_rgb(hexcol))


def test_crops_at_boxes_averages_the_pixels_it_shrinks():
    from sodlab.engine.patches import crops_at_boxes

    img = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(1))
    crops = crops_at_boxes(img, torch.tensor([[0.0, 0.0, 20.0, 20.0]]), 10)
    assert crops.shape == (1, 3, 10, 10)
    # a 20-pixel box into 10 pixels: each output pixel is the mean of its 2 x 2 pixels
    want = img.reshape(3, 10, 2, 10, 2).mean((2, 4))
    torch.testing.assert_close(crops[0], want, rtol=0, atol=1e-6)
    assert crops_at_boxes(img, torch.zeros(0, 4), 10).shape == (0, 3, 10, 10)

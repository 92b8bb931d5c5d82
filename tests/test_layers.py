"""Imports only go downwards (docs/design.md): parse every module with ast and check each import."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "sodlab"

LAYER = {
    "boxes": 0, "errors": 0, "files": 0, "provenance": 0,
    "data": 1, "augment": 1, "tiling": 1, "anchors": 1, "matching": 1, "metrics": 1,
    "receptive": 1, "viz": 1, "snip": 1, "slicing": 1, "nms": 1,
    "models": 2, "losses": 2,
    "detector": 3, "anchor_fit": 3,
    "engine": 4, "bench": 4, "cli": 4, "widgets": 4, "__main__": 4, "__init__": 4,
}


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _is_module(name: str) -> bool:
    return (PKG / f"{name}.py").exists() or (PKG / name).is_dir()


def _imports(tree: ast.AST, module_path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package path
                base = list(module_path.relative_to(PKG).parent.parts)
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(["sodlab", *base] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "sodlab":  # a submodule, or a name defined in the package root
                out += [(node.lineno, f"sodlab.{a.name}" if _is_module(a.name) else
                         "sodlab.__init__") for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = {_top(p) for p in MODULES} - set(LAYER)
    assert not missing, f"add these modules to the layer map: {sorted(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_downwards(path):
    me = _top(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for lineno, name in _imports(tree, path):
        parts = name.split(".")
        if parts[0] != "sodlab" or len(parts) < 2:
            continue
        other = parts[1]
        if other == me:
            continue
        if other not in LAYER:
            bad.append(f"line {lineno}: unknown module sodlab.{other}")
        elif LAYER[other] > LAYER[me]:
            bad.append(f"line {lineno}: {me} (L{LAYER[me]}) imports {other} (L{LAYER[other]})")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    fake = PKG / "boxes.py"
    tree = ast.parse("from sodlab.detector import build_detector\nimport sodlab.engine\n")
    names = [n for _, n in _imports(tree, fake)]
    assert names == ["sodlab.detector", "sodlab.engine"]
    assert all(LAYER[n.split(".")[1]] > LAYER["boxes"] for n in names)


# --------------------------------------------------------------------------- within the engine
ENGINE = PKG / "engine"


def _engine_imports(path: Path) -> set[str]:
    """The engine modules ``path`` imports, at module level or inside a function body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for _, name in _imports(tree, path):
        parts = name.split(".")
        if parts[:2] == ["sodlab", "engine"] and len(parts) > 2:
            out.add(parts[2])
    return out - {path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_the_cycle_finder():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_engine_modules_import_each_other_without_cycles():
    """Function-level imports count too: a cycle hidden in a function body is still one."""
    graph = {p.stem: _engine_imports(p) for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    assert graph["stage_two"] >= {"predict", "stage_two_spec"}  # the checker sees them
    cycle = _cycle(graph)
    assert cycle is None, "engine import cycle: " + " -> ".join(cycle)

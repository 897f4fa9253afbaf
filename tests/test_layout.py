"""The package layout keeps its floors (README's code map): imports run only downward, no import cycles,
private modules and names stay inside their package, no package imports its own face back, no file over
600 lines. Read with ``ast`` from the source, so every import counts, inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "weightviz"

#: The floors, bottom up: a module may import its own package and anything on a lower floor.
FLOORS = {
    "errors": 0,
    "utils": 1,
    "models": 2,
    "data": 3,
    "linearize": 4,
    "expand": 5, "testing": 5,
    "stats": 6, "optvis": 6,
    "conditioned": 7,
    "figures": 8,
    "explore": 9,
    "cli": 10,
}
MAX_LINES = 600


def _modname(path: Path, root: Path = ROOT) -> str:
    parts = ["weightviz", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_modname(p, root): p for p in sorted(root.rglob("*.py"))}


MODULES = _modules(ROOT)


def _imports(path: Path, root: Path = ROOT, modules: dict[str, Path] = MODULES) -> list[tuple[str, str | None, int]]:
    """``(absolute module, imported name or None, line)`` of every weightviz import in ``path``."""
    mod = _modname(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "weightviz"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "weightviz":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                # `from pkg import submodule` imports the submodule itself
                out.append((sub, None, node.lineno) if sub in modules else (target, a.name, node.lineno))
    return out


def _floor_of(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the root face
    return parts[1], FLOORS[parts[1]]


def test_every_package_has_a_floor():
    tops = {m.split(".")[1] for m in MODULES if m != "weightviz"}
    assert tops == set(FLOORS), f"add new packages to FLOORS (and README's code map): {tops ^ set(FLOORS)}"


def _violations(root: Path = ROOT) -> dict[str, list[str]]:
    modules = _modules(root)
    found: dict[str, list[str]] = {"upward": [], "private": [], "own face": [], "root": [], "missing": []}
    for mod, path in modules.items():
        if mod == "weightviz" or path.name == "__main__.py":
            continue  # the lazy public face of everything; `python -m` entry points
        pkg, floor = _floor_of(mod)
        own_package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for target, name, line in _imports(path, root, modules):
            where = f"{path.relative_to(root.parent)}:{line} imports {target}" + (f".{name}" if name else "")
            if target == "weightviz":
                if name != "__version__":
                    found["root"].append(where)
                continue
            if target not in modules:
                found["missing"].append(where)  # a module that does not exist (left behind by a move)
                continue
            tpkg, tfloor = _floor_of(target)
            if tpkg != pkg and tfloor >= floor:
                found["upward"].append(where)
            if tpkg != pkg:
                inner = target.split(".")[2:]
                if any(p.startswith("_") for p in inner) or (name or "").startswith("_"):
                    found["private"].append(where)
            elif target == own_package and path.name != "__init__.py" and name is not None:
                found["own face"].append(where)
    return found


@pytest.mark.parametrize("rule", ["upward", "private", "own face", "root", "missing"])
def test_layout_rule(rule):
    bad = _violations()[rule]
    assert not bad, f"{rule} imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, _name, _line in _imports(path):
            if target in MODULES and target != mod and target != "weightviz":
                graph[mod].add(target)
    # a package's face imports its modules by design; a cycle through a face back into that package is not
    # a layering cycle, so faces are left out of the cycle check (the rules above keep them honest)
    faces = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m] - faces):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(set(graph) - faces):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_file_over_the_limit():
    long = {str(p.relative_to(ROOT.parent)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by concern): {long}"


def test_the_checker_sees_each_kind_of_violation(tmp_path):
    """The rules are not vacuous: a small tree with one violation of each kind is caught."""
    root = tmp_path / "weightviz"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "models/__init__.py": "from .load import load\n",
        "models/load.py": "def load():\n    from ..figures import draw\n",          # upward, inside a function
        "models/_secret.py": "",
        "figures/__init__.py": "from ._registry import FIGURES\n",
        "figures/_registry.py": "FIGURES = {}\n",
        "figures/draw.py": "from ..models import _secret\nfrom . import FIGURES\nfrom .. import load_model\n"
                            "from ..imageset import images\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = _violations(root)
    assert found["upward"] == ["weightviz/models/load.py:2 imports weightviz.figures.draw"]
    assert found["private"] == ["weightviz/figures/draw.py:1 imports weightviz.models._secret"]
    assert found["own face"] == ["weightviz/figures/draw.py:2 imports weightviz.figures.FIGURES"]
    assert found["root"] == ["weightviz/figures/draw.py:3 imports weightviz.load_model"]
    assert found["missing"] == ["weightviz/figures/draw.py:4 imports weightviz.imageset.images"]

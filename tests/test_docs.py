"""The documentation site (``make docs``) cannot drift from the code: every public name is in the API
reference, every figure kind in the gallery, every tutorial in the navigation and committed without outputs;
the quick docstring examples run as doctests. (The site itself is built by ``make docs`` in CI.)"""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

import weightviz as wv

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_docs_gen_{name}", DOCS / "_gen" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _resolve(ident: str):
    """Import an mkdocstrings identifier ``pkg.module.Qual.name`` the way griffe finds it: the longest
    importable module prefix, then attributes."""
    parts = ident.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(ident)


@pytest.mark.parametrize("module", ["weightviz", "weightviz.figures", "weightviz.objectives", "weightviz.explore"])
def test_every_public_name_is_in_the_api_reference(module):
    gen = _load("gen_api")
    pages = gen.api_pages()
    page = next(p for p, (m, _, _) in gen.PAGES.items() if m == module)
    text = pages[f"reference/{page}.md"]
    names = gen.public_names(module)
    assert names and names == list(gen.public_module(module).__all__)
    for name in names:
        assert f"### `{module}.{name}` {{ #{gen.anchor(module, name)} }}" in text, f"{module}.{name} missing"
        obj = getattr(gen.public_module(module), name)
        ident = gen.identifier(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert f"::: {ident}" in text or inspect.ismodule(obj)
            # the identifier mkdocstrings is given is the object itself (follows the code when it moves)
            assert _resolve(ident) is obj or getattr(_resolve(ident), "__wrapped__", None) is obj \
                or _resolve(ident) is getattr(obj, "__wrapped__", None), ident
        # and the overview page links to it
        assert f"({page}.md#{gen.anchor(module, name)})" in pages["reference/index.md"]


def test_every_figure_kind_is_in_the_gallery():
    gallery = _load("gen_gallery")
    assert set(wv.figures.FIGURES) <= set(gallery.GALLERY)
    gallery.check_complete()
    for kind, (_, _, call) in gallery.GALLERY.items():
        assert call.startswith("wv.figures."), kind
        fn = call.split("(")[0].removeprefix("wv.figures.")
        assert getattr(wv.figures, fn) is wv.figures.FIGURES[kind], kind
    for png, _ in gallery.REUSED.values():
        assert (DOCS / png).is_file(), png


def test_tutorials_are_committed_without_outputs_and_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    notebooks = sorted((DOCS / "tutorials").glob("*.ipynb"))
    assert len(notebooks) >= 6
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, nb_path.name
        assert f"tutorials/{nb_path.name}" in nav, nb_path.name
    for page in re.findall(r":\s+([\w/]+\.md)\s*$", nav, flags=re.M):
        generated = page.startswith("reference/") or page in ("cli.md", "gallery.md", "performance.md")
        assert generated or (DOCS / page).is_file(), page


def test_tutorials_use_only_the_public_api():
    for nb_path in sorted((DOCS / "tutorials").glob("*.ipynb")):
        source = "\n".join("".join(c["source"]) for c in json.loads(nb_path.read_text())["cells"])
        imports = re.findall(r"^\s*(?:from|import)\s+(weightviz[\w.]*)", source, flags=re.M)
        assert set(imports) <= {"weightviz"}, (nb_path.name, imports)
        assert not re.search(r"wv\._|weightviz\._", source), nb_path.name


def test_cli_reference_walks_every_command():
    paths = _load("gen_cli").command_paths()
    names = {" ".join(p) for p in paths}
    assert {"", "layers", "expand", "explore", "serve", "figure", "figure top-inputs"} <= names


# Quick docstring examples, run as doctests (the slow ones are marked +SKIP in the docstrings).
DOCTESTED = [wv, wv.rank_connections, wv.rgb_weights, wv.banding_score, wv.long_tail, wv.figures.factorize_family]


@pytest.mark.parametrize("obj", DOCTESTED, ids=lambda o: getattr(o, "__name__", str(o)))
def test_docstring_examples(obj):
    module = inspect.getmodule(obj)
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, getattr(obj, "__name__", "weightviz"), module=module,
                                    globs=dict(vars(module))) if t.examples]
    assert tests, f"no doctest examples in {obj}"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} doctest failures in {obj}"

"""Generate the API reference pages from the public names (run by mkdocs-gen-files at build time).

Every name in ``weightviz.__all__``, ``weightviz.figures.__all__``, ``weightviz.objectives.__all__`` and
``weightviz.explore.__all__`` gets a heading with its public spelling (``weightviz.expanded_weights``)
and an mkdocstrings block pointing at the place the object is *defined* (its ``__module__`` +
``__qualname__``), so the pages follow the code wherever a refactor moves it. ``tests/test_docs.py``
imports :func:`api_pages` and checks that no public name is missing.
"""

from __future__ import annotations

import importlib
import inspect
import types

# page -> (public module, its title, one-line description)
PAGES = {
    "weightviz": ("weightviz", "weightviz", "The top-level API: `import weightviz as wv; wv.<name>`."),
    "figures": ("weightviz.figures", "weightviz.figures",
                "Every figure of the article as one call returning a `Figure` (`.save(\"x.png\")`, inline in notebooks)."),
    "objectives": ("weightviz.objectives", "weightviz.objectives",
                   "Feature-visualization objectives for `wv.render` (composable with `+`, `-`, scalars)."),
    "explore": ("weightviz.explore", "weightviz.explore",
                "The circuit explorer: static sites, the live server, bulk renders and executors."),
}
# submodules documented as a whole (module docstring and their own __all__)
MODULE_PAGES = {
    "optvis": ("weightviz.optvis", "weightviz.optvis", "Feature visualization (`wv.render` lives here)."),
    "testing": ("weightviz.testing", "weightviz.testing",
                "Slow, independent references to check expanded weights on your own model."),
}


def public_module(module: str) -> types.ModuleType:
    """``"weightviz.objectives"`` -> the module object, reached as users reach it (attributes of
    ``weightviz``, which need not be the module's own import path)."""
    parts = module.split(".")
    obj = importlib.import_module(parts[0])
    for p in parts[1:]:
        obj = getattr(obj, p)
    return obj


def public_names(module: str) -> list[str]:
    """The public names of a public module, as its ``__all__`` lists them."""
    return list(public_module(module).__all__)


def identifier(module: str, name: str) -> str:
    """The mkdocstrings identifier of ``module.name``: where the object is defined when it is a class or a
    function of weightviz (so griffe finds it statically), else the public path (griffe follows the import)."""
    obj = getattr(public_module(module), name)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if (inspect.isclass(obj) or callable(obj)) and isinstance(mod, str) and mod.startswith("weightviz") \
            and isinstance(qual, str) and "<" not in qual:
        return f"{mod}.{qual}"
    return f"{module}.{name}"


def anchor(module: str, name: str) -> str:
    return f"{module}.{name}".replace(".", "-").replace("_", "-").lower().strip("-")


def _kind(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or (
            callable(obj) and str(getattr(obj, "__module__", "")).startswith("weightviz")):
        return "function"
    return "data"


def _group(module: str, name: str) -> str:
    """Section of the top-level page: the defining module's last component (models, expand, ...)."""
    obj = getattr(public_module(module), name)
    if isinstance(obj, types.ModuleType):
        return "Submodules"
    mod = getattr(obj, "__module__", None)
    if not (inspect.isclass(obj) or callable(obj)) or not isinstance(mod, str) or not mod.startswith("weightviz"):
        return "Data"
    return mod.removeprefix("weightviz.").replace("._", ".").lstrip("_") or "weightviz"


def _entry(module: str, name: str) -> str:
    obj = getattr(public_module(module), name)
    kind = _kind(obj)
    ident = identifier(module, name)
    lines = [f"### `{module}.{name}` {{ #{anchor(module, name)} }}", ""]
    if kind == "module":
        page = name if name in PAGES or name in MODULE_PAGES else None
        lines += [f"*module* `{obj.__name__}`" + (f": see [{module}.{name}]({page}.md)." if page else "."), ""]
        return "\n".join(lines)
    if kind == "data" and not ident.startswith("weightviz"):
        lines += [f"*data*: `{type(obj).__name__}` value.", ""]
        return "\n".join(lines)
    where = f"defined in `{ident.rsplit('.', 1)[0]}`" if ident != f"{module}.{name}" else ""
    lines += [f"*{kind}*" + (f", {where}" if where else ""), "", f"::: {ident}",
              "    options:", "      heading_level: 4", ""]
    return "\n".join(lines)


def api_pages() -> dict[str, str]:
    """``{path under docs/: markdown}`` for every API reference page."""
    pages: dict[str, str] = {}
    index = ["# API reference", "",
             "Every public name of weightviz, generated at build time from the modules' `__all__` "
             "(the documentation is the docstring of each object; `wv` = `import weightviz as wv`).", ""]
    for page, (module, title, blurb) in PAGES.items():
        names = public_names(module)
        index += [f"## [{title}]({page}.md)", "", blurb, "",
                  " · ".join(f"[`{n}`]({page}.md#{anchor(module, n)})" for n in names), ""]
        out = [f"# {title}", "", blurb, ""]
        mod = public_module(module)
        doc = inspect.getdoc(mod)
        if doc and page != "weightviz":
            out += [f"::: {mod.__name__}", "    options:", "      members: false", "      show_root_heading: false", ""]
        if page == "weightviz":
            groups: dict[str, list[str]] = {}
            for n in names:
                groups.setdefault(_group(module, n), []).append(n)
            order = sorted(groups, key=lambda g: (g in ("Data", "Submodules"), g))
            for g in order:
                out += [f"## {g}", ""]
                out += [_entry(module, n) for n in groups[g]]
        else:
            out += ["## Names", ""]
            out += [_entry(module, n) for n in names]
        pages[f"reference/{page}.md"] = "\n".join(out)
    index += ["## Other public submodules", ""]
    for page, (module, title, blurb) in MODULE_PAGES.items():
        index += [f"- [{title}]({page}.md): {blurb}"]
        pages[f"reference/{page}.md"] = "\n".join(
            [f"# {title}", "", blurb, "", f"::: {module}", "    options:", "      show_root_heading: false",
             "      heading_level: 2", ""])
    pages["reference/index.md"] = "\n".join(index) + "\n"
    return pages


def main() -> None:
    import mkdocs_gen_files

    for path, text in api_pages().items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)


if __name__ in ("__main__", "<run_path>"):
    main()

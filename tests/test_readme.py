"""The README's library example runs as written (feature visualizations shortened to a few steps, the only
change), and its comments about shapes hold."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import weightviz as wv

render_module = importlib.import_module("weightviz.optvis.render")  # (the package re-exports the function)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    m = re.search(r"## In a notebook: ten lines\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert m, "README lost its library example"
    return m.group(1)


def test_readme_library_example_runs(tmp_path, monkeypatch):
    code = readme_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 12
    full = render_module.render

    def quick(model, objective, **kwargs):  # 4 steps at 32 px, no disk cache: the API is what is tested
        return full(model, objective, **{**kwargs, "steps": 4, "size": 32, "cache": False, "progress": False})

    # wv first: reading wv.render resolves the lazy export, which must see the real function (patching the
    # module first made the lazy export cache `quick`, and monkeypatch restored that for every later test)
    monkeypatch.setattr(wv, "render", quick, raising=False)
    monkeypatch.setattr(render_module, "render", quick)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)
    assert tuple(ns["W"].shape) == (1152, 1, 5, 5)
    assert tuple(ns["img"].shape) == (1152, 5, 5, 3)
    assert tuple(ns["E"].shape) == (80, 40, 7, 7)
    assert len(ns["top"]) == 8 and ns["top"][0].norm >= ns["top"][-1].norm
    for name in ("top_inputs.png", "factors.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_the_readme_test_leaves_wv_render_as_it_was():
    """(runs after the test above) the lazy export is the real render again, not the shortened one."""
    assert wv.render is render_module.render and wv.render.__name__ == "render"
    assert wv.render.__module__ == "weightviz.optvis.render"


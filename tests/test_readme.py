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
    assert isinstance(ns["fv"], render_module.RenderResult) and ns["fv"].images.shape[:2] == (1, 3)
    assert "# RenderResult: fv.images [1, 3, 128, 128]" in code  # (128 px: render's default size)
    for name in ("top_inputs.png", "factors.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_the_readme_test_leaves_wv_render_as_it_was():
    """(runs after the test above) the lazy export is the real render again, not the shortened one."""
    assert wv.render is render_module.render and wv.render.__name__ == "render"
    assert wv.render.__module__ == "weightviz.optvis.render"



def test_the_readme_cases_command_reproduces_the_demo_figure():
    """The `weightviz cases` line beside fig_cases.png uses the demo's images, cases and FV settings."""
    from weightviz.cli import demo

    line = next(ln for ln in README.read_text().splitlines() if ln.startswith("weightviz cases "))
    opts = dict(re.findall(r"(--[a-z-]+) (\S+)", line.split("#")[0]))
    c, f = demo.CASES_CONFIG, demo.CASES_FIGURE
    want = {"--n-images": c["n_images"], "--image-size": c["image_size"], "--n-cases": c["n_cases"],
            "--top": c["k"], "--examples": c["n_examples"], "--size": f["size"], "--steps": f["steps"]}
    assert {k: int(opts[k]) for k in want if k in opts} == want
    assert "blocks.2.0 blocks.3.1 70" in line


def test_the_readme_code_map_lists_each_module_once():
    text = README.read_text().split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = [ln.split("|")[1] for ln in text.splitlines() if ln.startswith("| `")]
    modules = [m for row in rows for m in re.findall(r"`([^`]+)`", row)]
    assert len(modules) == len(set(modules)), sorted(m for m in modules if modules.count(m) > 1)


def test_placeholders_in_the_readme_are_marked_as_yours():
    for placeholder in ("my_weights.safetensors", "~/photos"):
        lines = [ln for ln in README.read_text().splitlines() if placeholder in ln]
        assert lines and all("your" in ln.split("#", 1)[-1] for ln in lines), lines


def test_make_demo_is_credited_only_with_the_pictures_it_makes():
    from weightviz.cli import demo

    text = README.read_text().split("## What it draws", 1)[1].split("\n## ", 1)[0]
    assert "first two by `make demo`" not in text
    made = {"fig_top_inputs", "fig_factors", "fig_cases", *[stem for stem, *_ in demo.NMF_FIGURES]}
    assert "render_grid" not in made and "docs/render_grid.png" in text

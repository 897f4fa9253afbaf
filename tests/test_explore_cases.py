"""The explorer's cases panel (weightviz.cases over the explorer's image set): the static site writes it
through its own "cases" jobs and shows it on unit pages, the live server shows the same panel, and the
panel's numbers are those of an independent ``weightviz.cases`` call."""

from __future__ import annotations

import json

import pytest
import torch

import weightviz as wv
from weightviz.explore import ExploreConfig, Explorer, SqliteCache, build_site
from weightviz.explore import paths as P
from weightviz.explore.server import ExplorerApp

CFG = ExploreConfig(size=16, steps=2, top_k=3, n_factors=2, factor_k=2, batch=32, factor_fvs=False,
                    cases=2, case_images=12, case_size=32)


@pytest.fixture(scope="module")
def model():
    from conftest import TinyNet

    torch.manual_seed(0)
    return TinyNet().eval()


def test_site_shows_cases_panel(model, tmp_path):
    ex = Explorer(model, "conv1,conv3", "0:2", config=CFG, render_cache=None, name="tiny")
    report = build_site(model, tmp_path, explorer=ex)
    assert report.run["cases"] == 2
    doc = json.loads((tmp_path / "data" / "cases" / "conv3.json").read_text())
    imgs = wv.images(model=model, size=32, n=12, seed=0)
    shown = 0
    for u in (0, 1):
        panel = doc["units"][str(u)]
        assert panel["src"] == "conv1"
        html = (tmp_path / P.unit_path("conv3", u)).read_text()
        assert "<h3>Cases" in html
        try:   # independent call of the library
            ref = wv.cases(model, "conv1", "conv3", u, imgs, 2, k=3)
        except wv.WeightvizError as e:
            assert panel["error"] == str(e) and "No cases" in html
            continue
        assert panel["explained"] == pytest.approx(ref.explained, rel=1e-5)
        assert [[c["unit"] for c in r["inputs"]] for r in panel["cases"]] == \
            [[t.channel for t in ti] for ti in ref.top_inputs]
        assert [[e["index"] for e in r["examples"]] for r in panel["cases"]] == [e.indices[:4] for e in ref.examples]
        for r in panel["cases"]:   # every input's FV was rendered and its page linked when built
            for c in r["inputs"]:
                assert (tmp_path / P.fv_path("conv1", c["unit"])).is_file()
        assert html.count('class="conn case-conn') == sum(len(r["inputs"]) for r in panel["cases"])
        shown += 1
    assert shown >= 1
    again = build_site(model, tmp_path, explorer=ex)
    assert again.run["cases"] == 0 and again.skipped["cases"] == 2


def test_server_shows_the_same_panel(model):
    ex = Explorer(model, "conv1,conv3", "0:2", config=CFG, render_cache=None, name="tiny")
    app = ExplorerApp(ex, SqliteCache(":memory:", ex.hash))
    try:
        status, _, body = app.handle("/unit/conv3/1.html")
        assert status == 200 and "<h3>Cases" in body.decode()
    finally:
        app.close()


def test_no_panel_when_disabled(model, tmp_path):
    cfg = ExploreConfig(size=16, steps=2, top_k=3, factor_fvs=False)
    assert cfg.cases == 0
    ex = Explorer(model, "conv3", "0:1", config=cfg, render_cache=None, name="tiny")
    report = build_site(model, tmp_path, explorer=ex)
    assert "cases" not in report.run
    assert "<h3>Cases" not in (tmp_path / P.unit_path("conv3", 0)).read_text()
    with pytest.raises(wv.WeightvizError, match="cases"):
        ExploreConfig(cases=9)


def test_cases_job_uses_one_data_pass_for_the_layer(model, tmp_path, monkeypatch):
    """The cases job of a layer computes all its units' gradients in ONE multi-unit data_weights call (one
    forward over the image set), and the panels are those of the per-unit calls."""
    import weightviz.conditioned as cond

    calls = []
    real = cond.data_weights

    def spy(*args, **kwargs):
        calls.append((args[2], args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(cond, "data_weights", spy)
    ex = Explorer(model, "conv1,conv3", "0:3", config=CFG, render_cache=None, name="tiny")
    build_site(model, tmp_path, explorer=ex)
    assert sorted(calls) == [("conv1", [0, 1, 2]), ("conv3", [0, 1, 2])]   # one call per layer, no per-unit calls
    doc = json.loads((tmp_path / "data" / "cases" / "conv3.json").read_text())
    imgs = wv.images(model=model, size=32, n=12, seed=0)
    for u in range(3):
        panel = doc["units"][str(u)]
        try:
            ref = wv.cases(model, "conv1", "conv3", u, imgs, 2, k=3)
        except wv.WeightvizError as e:
            assert panel["error"] == str(e)
            continue
        assert panel["explained"] == pytest.approx(ref.explained, rel=1e-5)

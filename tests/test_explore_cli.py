"""`weightviz explore` / `weightviz serve` on the command line: a small torchvision model, a process pool
giving the same site as one process, one-line errors (exit 2) before any work."""

from __future__ import annotations

import json

import pytest
import torch

from weightviz.cli import main

MODEL = "torchvision:squeezenet1_1"  # small; random weights are fine for the plumbing
SMALL = ["--layers", "features.3,features.4", "--units", "0:3", "--size", "16", "--steps", "2", "--top", "3"]


def test_explore_builds_a_site_and_a_pool_builds_the_same(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    cache = ["--cache", str(tmp_path / "renders")]
    torch.manual_seed(0)  # random init: the same weights in both runs (the pool's workers get the loaded model)
    assert main(["explore", MODEL, "-o", str(one), *SMALL, *cache]) == 0
    out = capsys.readouterr().out
    assert f"open it: file://{(one / 'index.html').resolve()}" in out
    torch.manual_seed(0)
    assert main(["explore", MODEL, "-o", str(two), *SMALL, "--jobs", "2", "--cache", str(tmp_path / "r2")]) == 0
    capsys.readouterr()
    for layer in ("features.3", "features.4"):
        a = json.loads((one / "data" / f"{layer}.json").read_text())
        b = json.loads((two / "data" / f"{layer}.json").read_text())
        assert a == b
        for u in range(3):
            page = f"unit/{layer}/{u}.html"
            assert (one / page).read_text() == (two / page).read_text()
            assert (one / f"img/fv/{layer}/{u}.png").read_bytes() == (two / f"img/fv/{layer}/{u}.png").read_bytes()
    # the second run over an existing site is a no-op
    torch.manual_seed(0)
    assert main(["explore", MODEL, "-o", str(one), *SMALL, *cache]) == 0
    assert "jobs run: 0 weights, 0 render, 0 page" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["explore", MODEL, "-o", "{file}"], "not a directory"),
    (["explore", MODEL, "-o", "{foreign}"], "not a weightviz site"),
    (["explore", MODEL, "-o", "{new}", "--layers", "features.33"], "unknown layer 'features.33'"),
    (["explore", MODEL, "-o", "{new}", "--layers", "classifier"], "cannot be explored"),  # a container
    (["explore", MODEL, "-o", "{new}", "--units", "a:b"], "cannot read units"),
    (["explore", MODEL, "-o", "{new}", "--jobs", "0"], "--jobs must be at least 1"),
    (["explore", MODEL, "-o", "{new}", "--size", "8"], "at least 16 pixels"),
    (["serve", MODEL, "--port", "70000"], "--port must be between 0 and 65535"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    args = [a.format(file=tmp_path / "file", foreign=tmp_path / "foreign", new=tmp_path / "new") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().startswith("error:") and err.strip().count("\n") == 0
    assert not (tmp_path / "new" / "index.html").exists()
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "mine"


def test_serve_announces_its_url_serves_and_stops_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightviz.cli", "serve", MODEL, "--port", "0", "--db", str(tmp_path / "x.sqlite"),
         "--size", "16", "--steps", "2", "--layers", "features.3,features.4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "layer/features.4.html", timeout=120) as r:
            assert r.status == 200 and b"features.4" in r.read()
        with urllib.request.urlopen(url + "img/fv/features.4/3.png", timeout=120) as r:
            assert r.read().startswith(b"\x89PNG")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert (tmp_path / "x.sqlite").is_file()


def test_demo_ends_with_the_explorer_and_how_to_open_it(tmp_path, capsys, monkeypatch):
    from weightviz import demo

    assert demo.STEPS[-1][0] == "explorer"  # the last step of `make demo`
    monkeypatch.setattr(demo, "EXPLORER_LAYERS", "blocks.0.0,blocks.1.0")
    monkeypatch.setattr(demo, "EXPLORER_UNITS", "0:2")
    monkeypatch.setattr(demo, "EXPLORER_CONFIG", {"size": 16, "steps": 1, "top_k": 2, "n_factors": 2})
    monkeypatch.setenv("WEIGHTVIZ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), "--only", "explorer"]) == 0
    printed = capsys.readouterr().out
    index = out / "explorer" / "index.html"
    assert f"open file://{index.resolve()}" in printed
    assert (out / "explorer" / "unit" / "blocks.1.0" / "1.html").is_file()


@pytest.mark.parametrize("args,message", [
    (["explore", MODEL, "-o", "{new}", "--executor", "dask"], "unknown --executor 'dask'"),
    (["explore", MODEL, "-o", "{new}", "--address", "auto"], "--address is for --executor ray"),
    (["explore", MODEL, "-o", "{new}", "--all", "--layers", "features.3"], "--all explores every layer"),
    (["explore", MODEL, "-o", "{new}", "--device", "tpu"], "unknown device 'tpu'"),
    (["render", MODEL, "features.3", "0:2", "-o", "{new}.png", "--executor", "ray"], "give -o a directory"),
    (["render", MODEL, "features.3", "0:2", "-o", "{file}"], "exists and is not a directory"),
    (["render", MODEL, "features.33", "0:2", "-o", "{new}"], "unknown layer 'features.33'"),
])
def test_executor_and_device_options_refuse_bad_input(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    args = [a.format(new=tmp_path / "new", file=tmp_path / "file") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["layers", MODEL, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: device 'cuda' requested but CUDA is not available here; use --device cpu or auto"]


def test_explore_all_plans_every_explorable_layer(tmp_path, capsys, monkeypatch):
    import weightviz.explore as wx
    from weightviz.explore import explorable

    seen = {}

    def fake_build(model, out, **kw):  # the planning is what --all changes; the build is tested above
        seen["ex"] = kw["explorer"]
        raise KeyboardInterrupt

    monkeypatch.setattr(wx, "build_site", fake_build)
    torch.manual_seed(0)
    main(["explore", MODEL, "-o", str(tmp_path / "s"), "--all", "--units", "0:2"])  # (the exit code of an
    ex = seen["ex"]                                               # interrupt is cli/__init__'s business)
    assert ex.layers == [r.name for r in explorable(ex.model)] and len(ex.layers) > 20
    assert all(ex.units[layer] == [0, 1] for layer in ex.layers)

"""`weightviz explore` / `weightviz serve` on the command line: a small torchvision model, a process pool
giving the same site as one process, one-line errors (exit 2) before any work."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import site_diff

from weightviz.cli import main

ARCH = "torchvision:squeezenet1_1"
MODEL = f"{ARCH}@random"  # small; random weights are fine for the plumbing
SMALL = ["--layers", "features.3,features.4", "--units", "0:3", "--size", "16", "--steps", "2", "--top", "3",
         "--example-images", "8", "--case-images", "4"]


def _without_cases(html: str) -> str:
    return re.sub(r'<section class="cases">.*?</section>', "", html, flags=re.S)


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
        data = f"data/{layer}.json"
        assert site_diff({data: (one / data).read_bytes()}, {data: (two / data).read_bytes()}) == []
        # cases panels: gradients through the real model factored by an iterative NMF; the pool's workers run
        # with fewer torch threads, so sums round differently: equal to float tolerance, not bit for bit
        ca = json.loads((one / "data" / "cases" / f"{layer}.json").read_text())["units"]
        cb = json.loads((two / "data" / "cases" / f"{layer}.json").read_text())["units"]
        assert ca.keys() == cb.keys()
        for u in ca:
            assert ("error" in ca[u]) == ("error" in cb[u])
            if "error" not in ca[u]:
                assert ca[u]["n_firing"] == cb[u]["n_firing"]
                assert ca[u]["explained"] == pytest.approx(cb[u]["explained"], rel=1e-3, abs=1e-4)
        for u in range(3):
            page = f"unit/{layer}/{u}.html"
            a_html, b_html = ((d / page).read_text() for d in (one, two))
            assert '<section class="cases">' in a_html
            assert _without_cases(a_html) == _without_cases(b_html)
            fv = f"img/fv/{layer}/{u}.png"
            assert site_diff({fv: (one / fv).read_bytes()}, {fv: (two / fv).read_bytes()}) == []
            assert "Dataset examples" in (one / page).read_text()
        ex_a = json.loads((one / "data" / "examples" / f"{layer}.json").read_text())
        assert ex_a == json.loads((two / "data" / "examples" / f"{layer}.json").read_text())
        assert all(d["n_images"] == 8 for d in ex_a.values())
    # the second run over an existing site is a no-op
    torch.manual_seed(0)
    assert main(["explore", MODEL, "-o", str(one), *SMALL, *cache]) == 0
    assert "jobs run: 0 weights, 0 render, 0 examples, 0 page" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["explore", MODEL, "-o", "{file}"], "not a directory"),
    (["explore", MODEL, "-o", "{foreign}"], "not a weightviz site"),
    (["explore", MODEL, "-o", "{new}", "--layers", "features.33"], "unknown layer 'features.33'"),
    (["explore", MODEL, "-o", "{new}", "--layers", "classifier"], "cannot be explored"),  # a container
    (["explore", MODEL, "-o", "{new}", "--units", "a:b"], "cannot read units"),
    (["serve", MODEL, "--port", "70000"], "--port must be between 0 and 65535"),
    (["explore", MODEL, "-o", "{new}", "--images", "{file}"], "is not a folder"),
    # units that select nothing, an empty image folder, --all with --units: refused before any work
    (["explore", MODEL, "-o", "{new}", "--units", "5:2"], "--units '5:2' selects no unit of layer"),
    (["explore", MODEL, "-o", "{new}", "--layers", "features.3", "--units", "200:300"],
     "--units '200:300' selects no unit of layer 'features.3' (128 units, 0..127)"),
    (["explore", MODEL, "-o", "{new}", "--layers", "features.3,features.4", "--units", "200,250"],
     "--units '200,250' selects no unit of layer 'features.3'"),
    (["explore", MODEL, "-o", "{new}", "--images", "{empty}"], "no readable images in"),
    (["serve", MODEL, "--images", "{empty}"], "no readable images in"),
    (["explore", MODEL, "-o", "{new}", "--all", "--units", "0:2"], "--all explores every unit"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    args = [a.format(file=tmp_path / "file", foreign=tmp_path / "foreign", new=tmp_path / "new",
                     empty=tmp_path / "empty") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    if err.startswith("no weights given: random initialization"):  # random init (plumbing): said first
        err = err.split("\n", 1)[1]
    assert message in err and "Traceback" not in err
    assert err.startswith("error:") and err.count("\n") == 0
    assert not (tmp_path / "new").exists()  # nothing written: checked before any work
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args, option", [
    (["explore", MODEL, "-o", "{new}", "--jobs", "0"], "'--jobs'"),
    (["explore", MODEL, "-o", "{new}", "--examples", "-1"], "'--examples'"),
    (["explore", MODEL, "-o", "{new}", "--example-images", "-1"], "'--example-images'"),
    (["explore", MODEL, "-o", "{new}", "--size", "8"], "'--size'"),
    (["explore", MODEL, "-o", "{new}", "--size", "2048"], "'--size'"),
    (["serve", MODEL, "--size", "2048"], "'--size'"),
])
def test_bad_counts_and_sizes_are_usage_errors_exit_2(tmp_path, capsys, args, option):
    args = [a.format(new=tmp_path / "new") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("Usage: weightviz") and err[1].startswith("error: Invalid value")
    assert option in err[1]
    assert not (tmp_path / "new").exists()


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
            proc.wait(timeout=300)  # generous: stopping is prompt by construction (0.1 s poll), not by timing
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert (tmp_path / "x.sqlite").is_file()


def test_serve_stops_cleanly_on_ctrl_c_while_a_render_is_in_flight(tmp_path):
    """SIGINT while a (practically endless) render runs: the render stops at its next step, the waiting
    request gets a 503, the process exits 0 (no SIGABRT from a thread left inside torch)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import urllib.error
    import urllib.request

    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightviz.cli", "serve", MODEL, "--port", "0", "--db", str(tmp_path / "x.sqlite"),
         "--size", "64", "--steps", "1000000", "--layers", "features.3,features.4", "--verbose"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    answer: list = []
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]

        def get():
            try:
                with urllib.request.urlopen(url + "img/fv/features.4/3.png", timeout=600) as r:
                    answer.append(r.status)
            except urllib.error.HTTPError as e:
                answer.append(e.code)
            except OSError as e:  # pragma: no cover - reported by the assertion below
                answer.append(repr(e))

        client = threading.Thread(target=get, daemon=True)
        client.start()
        for err_line in proc.stderr:  # the server logs (--verbose) when the render batch starts
            if "rendering" in err_line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        client.join(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "terminate called" not in err and "Traceback" not in err
    assert answer == [503]


def test_demo_ends_with_the_explorer_and_how_to_open_it(tmp_path, capsys, monkeypatch):
    from weightviz.cli import demo

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


def test_two_explore_builds_of_one_site_run_one_after_the_other(tmp_path):
    """Two `explore` processes on one directory: the second waits for the site's lock (saying so on
    stderr) and then finds everything built. The test holds the lock first, so both are seen waiting."""
    import fcntl
    import os
    import subprocess
    import sys

    import torchvision
    from safetensors.torch import save_file

    from weightviz.explore.site import LOCK

    torch.manual_seed(0)  # one weights file: both processes explore the same model
    weights = tmp_path / "squeezenet.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.squeezenet1_1().state_dict().items()}, str(weights))
    site = tmp_path / "site"
    (site / LOCK).parent.mkdir(parents=True)
    fd = os.open(site / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "weightviz.cli", "explore", f"{ARCH}@{weights}", "-o", str(site), *SMALL]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    errs = ["", ""]
    try:
        for i, p in enumerate(procs):
            for line in p.stderr:
                errs[i] += line
                if "another weightviz build is writing" in line:
                    break
            assert "another weightviz build is writing" in errs[i], errs[i]
        assert not (site / "index.html").exists()  # nothing built while the lock is held
        os.close(fd)  # release: one builds, then the other
        outs = []
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=600)
            outs.append(out)
            errs[i] += err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert [p.returncode for p in procs] == [0, 0], errs
    runs = sorted("jobs run: 0 weights, 0 render, 0 examples, 0 page" in out for out in outs)
    assert runs == [False, True], outs  # exactly one of them did the work
    assert (site / "index.html").is_file()


def test_ctrl_c_stops_an_explore_with_worker_processes_at_once(tmp_path):
    """SIGINT to the main process while workers run (practically endless) renders: the workers are
    terminated, not waited for; exit status 130 with one 'aborted' line, no index written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    site = tmp_path / "site"
    proc = subprocess.Popen(
        [sys.executable, "-m", "weightviz.cli", "explore", MODEL, "-o", str(site), "--layers", "features.3",
         "--units", "0:2", "--size", "16", "--steps", "1000000", "--jobs", "2", "--no-factor-fvs",
         "--cases", "0"],  # renders right after the weights stage (Ctrl-C in the cases stage: see b12a report)
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:  # planned: the build (and its worker pool) starts now
            if line.startswith("exploring "):
                break
        for _ in range(3000):  # the weights stage ran in the workers: renders are next (at most 600 s)
            if any(site.glob("data/*.json")):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "aborted" and "Traceback" not in err
    assert not (site / "index.html").exists()


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
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("no weights given: random initialization")]  # MODEL is random init
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
    main(["explore", MODEL, "-o", str(tmp_path / "s"), "--all"])  # (the exit code of an
    ex = seen["ex"]                                               # interrupt is cli/__init__'s business)
    assert ex.layers == [r.name for r in explorable(ex.model)] and len(ex.layers) > 20
    assert all(ex.units[layer] == list(range(ex.channels(layer))) for layer in ex.layers)


@pytest.mark.parametrize("where", ["in use", "not here"])
def test_serve_on_a_busy_port_or_a_foreign_address_is_one_line_exit_2(tmp_path, capsys, where):
    """A port another socket listens on, or an address that is not this machine's (192.0.2.1: TEST-NET,
    never assigned; binding fails locally, no traffic): one line naming the address, exit 2."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        host, port = ("127.0.0.1", busy.getsockname()[1]) if where == "in use" else ("192.0.2.1", 8000)
        code = main(["serve", MODEL, "--host", host, "--port", str(port), "--db", str(tmp_path / "x.sqlite"),
                     "--layers", "features.3,features.4", "--size", "16", "--steps", "2"])
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("no weights given: random initialization")]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on {host}:{port}: "), err
    assert "internal error" not in err[0]


def test_one_unreadable_image_is_one_warning_line(tmp_path, capsys):
    """--images with one broken file: exactly one line says it was skipped (no UserWarning, no source
    line), however many stages read the folder."""
    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "broken.jpg").write_bytes(b"not an image")
    torch.manual_seed(0)
    assert main(["explore", MODEL, "-o", str(tmp_path / "site"), "--layers", "features.3,features.4", "--units",
                 "0:2", "--size", "16", "--steps", "2", "--top", "3", "--no-factor-fvs", "--images", str(imgs),
                 "--example-images", "4", "--case-images", "4", "--cache", str(tmp_path / "renders")]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "unreadable" in line]
    assert said == [f"skipped 1 unreadable image file in {str(imgs)!r}"], err
    assert "UserWarning" not in err and "warn(" not in err


def _warning_job(state, job):
    import warnings

    from weightviz.errors import WeightvizWarning

    warnings.warn(f"{state}: job {job.inputs['i'] % 2} says so", WeightvizWarning, stacklevel=2)
    return job.inputs["i"]


def _state():
    return "worker"


def test_worker_process_warnings_reach_the_driver_once_each(recwarn):
    from weightviz.errors import WeightvizWarning
    from weightviz.explore.jobs import Job, ProcessExecutor

    jobs = [Job("page", {"i": i}, (f"{i}.html",)) for i in range(6)]
    with ProcessExecutor(2, _state) as pool:
        assert sorted(r for _, r in pool.imap(_warning_job, jobs)) == list(range(6))
    said = sorted(str(w.message) for w in recwarn if issubclass(w.category, WeightvizWarning))
    assert said == ["worker: job 0 says so", "worker: job 1 says so"]


# ------------------------------------------------------------------ worker processes and their driver
def _workers(pid: int) -> list:
    """The live processes under ``pid`` (workers, multiprocessing's resource tracker)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _still_running(procs, timeout: float = 180.0) -> list:
    """Poll (generously) until every process of ``procs`` has ended; returns those that did not (a
    zombie waiting for a reaper counts as ended: it holds no memory and runs nothing)."""
    import time

    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [p for p in procs if alive(p)]


def _wait_for(condition, proc, what: str, timeout: float = 600.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


@pytest.mark.parametrize("command,how", [
    ("explore", "SIGKILL"), ("explore", "SIGTERM"), ("render", "SIGKILL"), ("render", "SIGTERM"),
])
def test_worker_processes_end_with_their_driver(tmp_path, command, how):
    """`kill -9` or `kill` (SIGTERM) of an `explore --jobs 2` / bulk `render --jobs 2` driver while its
    workers run (practically endless) renders: no worker is left behind (they follow their driver), and
    SIGTERM is Ctrl-C: `aborted`, exit 130, only whole files."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "out"
    args = (["explore", MODEL, "-o", str(out), "--layers", "features.3", "--units", "0:2", "--no-factor-fvs",
             "--cases", "0"] if command == "explore" else
            ["render", MODEL, "features.3", "0:4", "-o", str(out), "--batch", "2", "--no-cache"])
    proc = subprocess.Popen([sys.executable, "-m", "weightviz.cli", *args, "--size", "16", "--steps", "1000000",
                             "--jobs", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    workers: list = []
    try:
        if command == "explore":  # the weights stage ran in the workers: they render now
            _wait_for(lambda: any(out.glob("data/*.json")), proc, "layer data")
        else:
            _wait_for(lambda: len([p for p in _workers(proc.pid) if "spawn_main" in " ".join(p.cmdline())]) >= 2,
                      proc, "two workers")
        workers = _workers(proc.pid)
        assert len(workers) >= 2
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        left = _still_running(workers)
        for p in left:
            p.kill()
    assert left == [], f"{len(left)} worker processes outlived their driver"
    if how == "SIGTERM":
        assert proc.returncode in (130, 143), err
        assert err.strip().splitlines()[-1] == "aborted" and "Traceback" not in err
        assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # whole files only
    else:
        assert proc.returncode == -signal.SIGKILL


def test_ctrl_c_in_the_cases_stage_with_workers_exits_130_and_a_rerun_resumes(tmp_path):
    """SIGINT while two worker processes compute the cases panels: exit 130 with one `aborted` line, no
    process left, and the same command run again resumes (the finished weights stage is not redone)."""
    import os
    import signal
    import subprocess
    import sys

    import torchvision
    from safetensors.torch import save_file

    from weightviz.explore.jobs import STAMP_DIR

    torch.manual_seed(0)  # one weights file: the re-run explores the same model
    weights = tmp_path / "squeezenet.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.squeezenet1_1().state_dict().items()}, str(weights))
    site = tmp_path / "site"
    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "weightviz.cli", "explore", f"{ARCH}@{weights}", "-o", str(site), "--layers",
           "features.3,features.4", "--units", "0:2", "--size", "16", "--steps", "2", "--top", "3",
           "--no-factor-fvs", "--example-images", "8", "--case-images", "256", "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    workers: list = []
    try:  # both weights jobs stamped: the workers compute the cases (256 images per layer) now
        _wait_for(lambda: len(list((site / STAMP_DIR).glob("weights-*"))) == 2, proc, "the weights stage")
        workers = _workers(proc.pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        left = _still_running(workers)
        for p in left:
            p.kill()
    assert len(workers) >= 2 and left == []
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "aborted" and "Traceback" not in err
    assert len(list((site / STAMP_DIR).glob("cases-*"))) < 2  # stopped inside the cases stage
    assert not (site / "index.html").exists()
    assert not [p for p in site.rglob("*") if ".tmp" in p.name]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "jobs run: 0 weights," in again.stdout, again.stdout  # resumed: the weights were done
    assert (site / "index.html").is_file()


_SLOW_SERVE = r'''
import os, sys, time
import torch
from torch import nn
import weightviz.cli as cli
import weightviz.cli.explore_cmd as cmd


class Nap(nn.Module):
    """Identity; a forward over a batch of images (the dataset-example scores) takes NAP seconds and
    cannot be cancelled: the kind of computation a stopping server must not wait for."""
    def forward(self, x):
        if x.shape[0] >= 4:
            open(os.environ["NAP_MARK"], "a").close()
            time.sleep(float(os.environ["NAP"]))
        return x


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), Nap(),
                      nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
cmd.load = lambda spec, device=None: model
sys.exit(cli.main(sys.argv[1:]))
'''


def test_serve_stops_promptly_on_ctrl_c_while_30_requests_compute_pages(tmp_path):
    """30 unit pages requested at once, each needing a pass over the images that takes 300 s and cannot be
    cancelled: Ctrl-C stops the server (exit 0, no traceback, no abort from a thread inside torch) long
    before that work could have finished (measured by polling, with a generous bound)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    import urllib.request

    script = tmp_path / "slow_serve.py"
    script.write_text(_SLOW_SERVE)
    mark = tmp_path / "napping"
    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache"), "NAP": "300", "NAP_MARK": str(mark)}
    proc = subprocess.Popen(
        [sys.executable, str(script), "serve", "slow", "--port", "0", "--db", str(tmp_path / "x.sqlite"),
         "--layers", "2,5", "--size", "16", "--steps", "2", "--cases", "0", "--example-images", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert " at http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]

        def get(unit: int) -> None:
            try:
                urllib.request.urlopen(f"{url}unit/5/{unit % 8}.html?n={unit}", timeout=600).read()
            except OSError:
                pass  # a 503 or a connection closed by the stopping server: both fine

        for u in range(30):
            threading.Thread(target=get, args=(u,), daemon=True).start()
        _wait_for(mark.exists, proc, "a computation in flight", timeout=300)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=250)  # the work in flight needs 300 s more: stopping must not wait
        stopped = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "terminate called" not in err
    assert stopped < 120, stopped  # generous on a loaded box; by construction about STOP_GRACE (1 s)

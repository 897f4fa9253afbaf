"""The explorer and bulk renders on a real local Ray cluster (``ray.init(num_cpus=2)``, no mocks).

One cluster for the module (Ray takes seconds to start on a small machine). Checked: a Ray build writes
exactly the files and bytes of a local build; a worker process killed with SIGKILL while busy is
replaced and its jobs retried, the build completing with the same site; an interrupt on the driver
leaves only whole files and a rerun resumes; bulk renders match the local executor (the same files, pixels within float rounding);
actors use no more torch threads than their CPU share; a job's own error reaches the driver as itself.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import site_diff

from weightviz.errors import WeightvizError
from weightviz.explore import ExploreConfig, Explorer, build_site, render_dir, site_executor
from weightviz.explore.jobs import STAMP_DIR, Job

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
FAST = ExploreConfig(size=16, steps=2, top_k=3, n_factors=3, factor_k=3, batch=2)
LAYERS, UNITS = "conv1,conv2,conv3", "0:6"


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU Ray instance whose workers import this checkout and the tests' TinyNet."""
    if ray.is_initialized():  # pragma: no cover - another module left one running
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), *([old] if old else [])])
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _model():
    from conftest import TinyNet

    torch.manual_seed(0)
    return TinyNet().eval()


def _explorer(model):
    return Explorer(model, LAYERS, UNITS, config=FAST, render_cache=None, name="tiny")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_site(tmp_path_factory):
    """The reference: the same site built by the local executor in this process."""
    model = _model()
    root = tmp_path_factory.mktemp("local")
    report = build_site(model, root, explorer=_explorer(model))
    assert report.executor == "local" and report.workers == 1
    return _files(root)


# (before the tests that hold the module's two actors: a 2-CPU cluster has no room for two more)
def test_bulk_render_on_ray_matches_local_bytes(cluster, tmp_path):
    model = _model()
    kw = {"size": 16, "steps": 3, "batch": 3, "cache": None}
    local = render_dir(model, "conv2", "0:7", tmp_path / "local", **kw)
    remote = render_dir(model, "conv2", "0:7", tmp_path / "ray", executor="ray", jobs=2, **kw)
    assert local.run == remote.run == 3 and remote.executor == "ray"
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    pngs = [f for f in a if f.endswith(".png")]
    assert sorted(pngs) == sorted(f"conv2_{u}.png" for u in range(7))
    assert site_diff(a, b) == []
    # a rerun renders nothing
    again = render_dir(model, "conv2", "0:7", tmp_path / "ray", **kw)
    assert again.run == 0 and again.skipped == 3


def test_cli_bulk_render_on_ray_is_the_local_bytes(cluster, tmp_path, capsys):
    from weightviz.cli import main

    args = ["render", "torchvision:squeezenet1_1@random", "features.3", "0:5", "--size", "16", "--steps", "2",
            "--batch", "2", "--no-cache"]
    torch.manual_seed(0)  # random init: the same weights in both runs (workers get the loaded model)
    assert main([*args, "-o", str(tmp_path / "local")]) == 0
    torch.manual_seed(0)
    assert main([*args, "-o", str(tmp_path / "ray"), "--executor", "ray", "--jobs", "1", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "wrote 5 PNGs of features.3" in captured.out
    assert "summary: ray executor, 1 worker: 3 jobs run" in captured.err
    assert site_diff(_files(tmp_path / "local"), _files(tmp_path / "ray")) == []


@pytest.fixture(scope="module")
def pool(cluster):
    """Two Ray actors holding the site's model, shared by the tests (actors take seconds to start)."""
    model = _model()
    executor = site_executor(_explorer(model), "ray", jobs=2)
    try:
        yield model, executor
    finally:
        executor.close()


def test_ray_build_writes_the_same_files_and_bytes_as_local(cluster, local_site, tmp_path):
    model = _model()
    report = build_site(model, tmp_path / "ray", explorer=_explorer(model), executor="ray", jobs=2)
    assert report.executor == "ray" and report.workers == 2 and report.retried == 0
    got = _files(tmp_path / "ray")
    assert sorted(got) == sorted(local_site)
    assert site_diff(got, local_site) == []   # README's promise: numbers within float32 rounding
    assert any(f.startswith("img/fv/") for f in got) and any(f.startswith("img/factor/") for f in got)
    # the cluster started by the fixture is joined, not shut down by the build
    assert ray.is_initialized()


def test_killed_busy_worker_is_replaced_and_the_build_completes(pool, local_site, tmp_path):
    model, executor = pool
    ex = _explorer(model)
    killed: list[int] = []
    # actors use their CPU share of torch threads (2 CPUs / 2 workers)
    assert executor.threads == 1
    threads = ray.get([a.run.remote(_threads, None) for a in executor._actors], timeout=300)
    assert threads == [1, 1]
    assert len(set(executor.pids())) == 2

    def progress(stage: str, done: int, total: int) -> None:
        # the first render job just finished on worker i, which has already started its next job
        # (two are queued per worker): kill that worker now, in the middle of a job
        if stage == "render" and not killed and done >= 1 and done < total - 2:
            i = next(k for k, n in enumerate(executor.done_per_worker) if n > 0)
            pid = executor.pids()[i]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    # count jobs per worker from the start of the render stage
    report = build_site(model, tmp_path / "ray", explorer=ex, executor=executor,
                        progress=_reset_counts(executor, progress))
    assert killed, "the test never killed a worker"
    assert report.retried >= 1 and executor.replaced >= 1
    assert killed[0] not in executor.pids()  # a fresh process took its place
    got = _files(tmp_path / "ray")
    assert sorted(got) == sorted(local_site)
    assert site_diff(got, local_site) == []   # README's promise: numbers within float32 rounding


def _reset_counts(executor, progress):
    """Zero the executor's per-worker counts when the render stage starts (so the kill targets the
    worker that finished the first *render* job)."""
    state = {"stage": None}

    def wrapped(stage: str, done: int, total: int) -> None:
        if stage != state["stage"]:
            state["stage"] = stage
            executor.done_per_worker[:] = [0] * len(executor.done_per_worker)
        progress(stage, done, total)

    return wrapped


def _threads(_state, _job) -> int:
    return torch.get_num_threads()


def _fail(_state, job) -> None:
    raise WeightvizError(f"bad job {job.inputs['x']}")


def test_a_jobs_own_error_reaches_the_driver_unretried(pool):
    _, executor = pool
    retried = executor.retried
    with pytest.raises(WeightvizError, match="bad job 7"):
        list(executor.imap(_fail, [Job("render", {"x": 7}, ("a.png",))]))
    assert executor.retried == retried


def test_interrupted_driver_leaves_whole_files_and_a_rerun_resumes(pool, local_site, tmp_path):
    model, executor = pool
    root = tmp_path / "site"

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == "render" and done >= 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver's main thread

    with pytest.raises(KeyboardInterrupt):
        build_site(model, root, explorer=_explorer(model), executor=executor, progress=interrupt)
    partial = _files(root)
    assert not [f for f in partial if ".tmp" in f]  # no temporary files left behind
    assert all(partial[f] == local_site[f] for f in partial)  # every file there is whole and final
    stamps = [f for f in partial if f.startswith(STAMP_DIR)]
    assert 0 < len(stamps) < len([f for f in local_site if f.startswith(STAMP_DIR)])
    for s in stamps:  # a stamped job has all its outputs
        assert all(o in partial for o in json.loads(partial[s])["outputs"])

    report = build_site(model, root, explorer=_explorer(model), executor=executor)
    assert report.skipped["weights"] == 3 and report.skipped["render"] >= 2  # resumed, not redone
    got = _files(root)
    assert sorted(got) == sorted(local_site)
    assert site_diff(got, local_site) == []   # README's promise: numbers within float32 rounding


def test_an_unreachable_address_is_one_line_fast_and_writes_nothing(tmp_path):
    """Nothing listens on 127.0.0.1:1: one `error:` line and exit 2, without Ray's retries and log lines,
    and no output folder (the check runs before any work)."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    env = {**os.environ, "WEIGHTVIZ_CACHE": str(tmp_path / "cache")}
    for args in (["explore", "torchvision:squeezenet1_1", "-o", str(site)],
                 ["render", "torchvision:squeezenet1_1", "features.3", "0:2", "-o", str(site)]):
        r = subprocess.run([sys.executable, "-m", "weightviz.cli", *args, "--executor", "ray", "--address",
                            "127.0.0.1:1"], capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot reach Ray at '127.0.0.1:1'"), r.stderr
        assert not site.exists()


def test_check_address_reads_the_forms_ray_takes():
    from weightviz.explore.ray_executor import check_address

    check_address(None)
    check_address("auto")
    for bad in ("nonsense", "host:port", "127.0.0.1:0", ":6379"):
        with pytest.raises(WeightvizError, match="cannot read --address"):
            check_address(bad)
    with pytest.raises(WeightvizError, match="cannot reach Ray at 'ray://127.0.0.1:1'"):
        check_address("ray://127.0.0.1:1")


def _slow_start(folder: str) -> str:
    """A worker state whose start-up takes a while and says where it runs (a file named by its pid)."""
    import time

    Path(folder, f"{os.getpid()}.pid").write_text("starting")
    time.sleep(4.0)
    return folder


def _square_slowly(folder: str, job: int) -> int:
    import time

    Path(folder, f"{os.getpid()}.busy").write_text(str(job))
    time.sleep(0.5)
    return job * job


def test_a_worker_killed_while_starting_and_one_killed_mid_job_are_both_retried(cluster, tmp_path):
    """A worker that dies during its start-up (here: kill -9 while its init runs) is replaced like one that
    dies mid-job; the run completes with every result."""
    import threading
    import time

    from weightviz.explore import RayExecutor

    killed: list[int] = []

    def kill_first_starter() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = sorted(int(p.stem) for p in tmp_path.glob("*.pid"))
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    t = threading.Thread(target=kill_first_starter, daemon=True)
    t.start()
    # no CPU share: the module's pool fixture may hold all of the cluster's 2 CPUs
    executor = RayExecutor(2, _slow_start, (str(tmp_path),), cpus=0, init_timeout=300)
    t.join(timeout=60)
    try:
        assert killed, "the test never killed a starting worker"
        assert executor.started_again >= 1 and killed[0] not in executor.pids()
        mid: list[int] = []
        results = {}
        for job, value in executor.imap(_square_slowly, list(range(12))):
            results[job] = value
            if not mid:  # a job just finished; the workers are busy with their next ones: kill one
                busy = sorted(int(p.stem) for p in tmp_path.glob("*.busy") if int(p.stem) in executor.pids())
                os.kill(busy[0], signal.SIGKILL)
                mid.append(busy[0])
        assert results == {j: j * j for j in range(12)}
        assert executor.retried >= 1 and executor.replaced >= 2
    finally:
        executor.close()


def _raising_start(_folder: str) -> None:
    raise ValueError("bad model spec")


def test_an_init_that_raises_stops_at_once(cluster, tmp_path):
    from weightviz.explore import RayExecutor

    with pytest.raises(WeightvizError, match="could not start.*bad model spec"):
        RayExecutor(1, _raising_start, (str(tmp_path),), cpus=0, init_timeout=300)

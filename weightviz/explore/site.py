"""The static explorer site: plain HTML/CSS/JS and PNG files that open from disk (``file://``).

The build is three stages of independent :class:`~.jobs.Job` records, each run by an
:class:`~.jobs.Executor` (serial, a process pool with ``jobs > 1``, or Ray actors with
``executor="ray"``, whose results the driver writes):

1. ``weights`` — one per explored layer: weights from each source, NMF images, top inputs/outputs,
   weight factors, banding; writes their PNGs and ``data/<layer>.json``;
2. ``render`` — FVs of every unit any page shows (and of the weight-factor directions), in batches;
3. ``examples`` — one per explored layer (unless ``config.examples == 0``): every unit scored on the image
   set in one batched pass, the dataset-example crops of its unit pages and ``data/examples/<layer>.json``;
4. ``page`` — the index, each layer page and its unit pages.

Resumable and incremental: a job is skipped when its outputs exist and its stamp
(``.weightviz/done/<kind>-<key>``) matches its key, a hash of the model weights, the settings and the
job's inputs. Re-running after an interruption, or with more layers/units, only does the missing work;
FVs also come from the shared :class:`weightviz.RenderCache`.

>>> report = build_site("lite0", "site/", layers="blocks.1.0,blocks.2.0", units="0:8")  # doctest: +SKIP
>>> report.index                                                                     # doctest: +SKIP
PosixPath('site/index.html')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from .data import ExploreConfig, Explorer
from .jobs import Job, SerialExecutor, execute, executor_name, make_executor, worker_count, write_file
from .producers import (
    _cache_arg,
    _cases_job,
    _examples_job,
    _init_worker,
    _load_cases,
    _load_data,
    _page_job,
    _render_jobs,
    _weights_job,
    _worker_spec,
    produce_job,
    run_job,
)

__all__ = ["BuildReport", "build_site", "check_root", "plan_pages", "produce_job", "run_job", "site_executor"]

MARKER = ".weightviz/site.json"
#: Held (``flock``) by the build writing the site: a second build of the same directory waits for it.
LOCK = ".weightviz/build.lock"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class BuildReport:
    """What a build did: jobs ``run`` and ``skipped`` per kind, seconds per stage, the index path."""

    root: Path
    run: dict[str, int] = field(default_factory=lambda: {"weights": 0, "render": 0, "examples": 0, "page": 0})
    skipped: dict[str, int] = field(default_factory=lambda: {"weights": 0, "render": 0, "examples": 0, "page": 0})
    seconds: dict[str, float] = field(default_factory=dict)
    pages: int = 0
    renders: int = 0
    executor: str = "local"
    workers: int = 1
    retried: int = 0

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    @property
    def wall(self) -> float:
        """Seconds of the whole build."""
        return sum(self.seconds.values())

    def jobs_per_second_per_worker(self) -> float:
        """Weights and render jobs run per second of those two stages, per worker."""
        n = self.run["weights"] + self.run["render"]
        secs = self.seconds.get("weights", 0.0) + self.seconds.get("render", 0.0)
        return n / secs / max(1, self.workers) if secs > 0 else 0.0

    def summary(self) -> str:
        ran = ", ".join(f"{v} {k}" for k, v in self.run.items())
        skipped = sum(self.skipped.values())
        return (f"{self.pages} unit pages, {self.renders} FVs; jobs run: {ran}; {skipped} up to date; "
                f"{self.wall:.1f} s")

    def stats(self) -> str:
        """The end-of-build line: executor and workers, jobs, failures retried, wall time, rate."""
        return (f"{self.executor} executor, {self.workers} worker{'s' if self.workers != 1 else ''}: "
                f"{sum(self.run.values())} jobs run, {self.retried} retried after worker failures, "
                f"wall {self.wall:.1f} s, {self.jobs_per_second_per_worker():.3g} weights/render jobs/s per worker")


# ------------------------------------------------------------------------------------- the builder
def build_site(
    model: nn.Module | str | None,
    out: str | os.PathLike,
    layers: str | Sequence[str] | None = None,
    units: Any = None,
    *,
    config: ExploreConfig | None = None,
    jobs: int | None = None,
    render_cache: Any = True,
    progress: Progress | None = None,
    name: str | None = None,
    explorer: Explorer | None = None,
    executor: Any = "local",
    address: str | None = None,
    device: str | torch.device | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build (or bring up to date) the static explorer site for ``model`` in directory ``out``.

    ``layers``: explored layers (names or ``"a,b"``; default :func:`~.data.default_layers`); ``units``:
    which units get pages (``"0:16"``, ``None`` = all); ``config``: FV size/steps, top-k, factors;
    ``executor``: ``"local"`` (``jobs`` worker processes, default 1 = this process), ``"ray"`` (``jobs``
    Ray actors, default one per cluster CPU/GPU; ``address``: ``None`` starts a local Ray instance,
    ``"auto"``/``"ray://..."`` joins a cluster) or any :class:`~.jobs.Executor` (not closed here);
    ``device``: ``"auto"``/``"cpu"``/``"cuda"`` moves the model there (``None``: where it is; Ray
    actors load it onto their own GPU share); ``render_cache``: see :class:`~.data.Explorer`;
    ``progress(stage, done, total)`` is called as jobs finish. ``out`` must be new, empty, or an earlier
    weightviz site. Returns a :class:`BuildReport`; open ``report.index`` in a browser. The files are
    the same, byte for byte, whichever executor ran the jobs.

    Two builds of one directory never run at once: a build holds a lock on the site (:data:`LOCK`); a
    second one calls ``on_wait(line)`` (default: print the line on stderr), waits, and then finds the
    finished work already done (it only builds what is missing).
    """
    from ..models import to_device

    root = Path(out)
    check_root(root)
    t0 = time.perf_counter()
    if explorer is None and isinstance(model, nn.Module):
        to_device(model, device)
    ex = explorer or Explorer(model, layers, units, config=config, render_cache=render_cache, name=name)
    to_device(ex.model, device)
    (root / LOCK).parent.mkdir(parents=True, exist_ok=True)
    with site_lock(root, on_wait):
        check_root(root)
        return _build(ex, root, jobs, progress, t0, executor, address)


@contextlib.contextmanager
def site_lock(root: Path, on_wait: Callable[[str], None] | None = None):
    """Hold the build lock of site ``root`` (``fcntl.flock`` on :data:`LOCK`; released when the block
    ends or the process dies). If another process holds it, ``on_wait(line)`` then wait for it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): builds are not serialized
        yield
        return
    path = root / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise WeightvizError(f"cannot create the build lock {str(path)!r}: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            line = f"another weightviz build is writing {str(root)!r}; waiting for it to finish"
            if on_wait is None:
                print(line, file=sys.stderr, flush=True)
            else:
                on_wait(line)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _build(ex: Explorer, root: Path, jobs: int | None, progress: Progress | None, t0: float,
           executor: Any, address: str | None) -> BuildReport:
    _write_assets(root)
    _write_marker(root, ex)
    report = BuildReport(root)
    report.seconds["setup"] = time.perf_counter() - t0
    salt = _salt(ex)
    own = isinstance(executor, str)
    if own:
        t = time.perf_counter()
        executor = site_executor(ex, executor, jobs, address)  # (Ray: waits until every worker loaded the model)
        report.seconds["workers"] = time.perf_counter() - t
    remote = bool(getattr(executor, "remote", False))
    report.executor = executor_name(executor)
    report.workers = worker_count(executor)
    try:
        # 1. weights: one job per explored layer
        t = time.perf_counter()
        wjobs = [_weights_job(ex, layer, salt) for layer in ex.layers]
        _run(executor, wjobs, root, report, "weights", progress, remote)
        report.seconds["weights"] = time.perf_counter() - t
        data = {layer: _load_data(root, layer) for layer in ex.layers}

        # 1b. cases panels (per-example gradients over the image set): one job per explored layer
        cases_docs: dict[str, dict] = {}
        if ex.config.cases:
            t = time.perf_counter()
            report.run.setdefault("cases", 0)
            report.skipped.setdefault("cases", 0)
            _run(executor, [_cases_job(ex, layer, salt) for layer in ex.layers], root, report, "cases", progress,
                 remote)
            report.seconds["cases"] = time.perf_counter() - t
            cases_docs = {layer: _load_cases(root, layer) for layer in ex.layers}

        # 2. renders: every FV a page shows, batched per layer; factor directions per (layer, source)
        t = time.perf_counter()
        pages_set = {(layer, u) for layer in ex.layers for u in ex.units[layer]}
        rjobs = [_with_vectors(j, data) for j in _render_jobs(ex, data, salt, cases_docs)]
        report.renders = sum(len(j.outputs) for j in rjobs)
        _run(executor, rjobs, root, report, "render", progress, remote)
        report.seconds["render"] = time.perf_counter() - t

        # 3. dataset examples: one job per explored layer (all its units scored in one pass)
        if ex.config.examples > 0:
            t = time.perf_counter()
            _run(executor, [_examples_job(ex, layer, salt) for layer in ex.layers], root, report, "examples",
                 progress, remote)
            report.seconds["examples"] = time.perf_counter() - t

        # 4. pages (cheap, and they read the layer data: on the driver when the workers are remote)
        t = time.perf_counter()
        link_key = hashlib.sha256(json.dumps(sorted(pages_set)).encode()).hexdigest()[:16]
        pjobs = [_page_job(ex, layer, data[layer], link_key, salt, cases_docs.get(layer)) for layer in ex.layers]
        pjobs.append(Job("page", {"page": "index", "layers": ex.layers,
                                  "units": {k: v for k, v in ex.units.items()}}, ("index.html",), salt))
        _run(SerialExecutor(ex) if remote else executor, pjobs, root, report, "page", progress, False)
        report.seconds["page"] = time.perf_counter() - t
        report.pages = len(pages_set)
    except BaseException:  # an error or Ctrl-C: do not wait for the jobs the workers are running
        report.retried = int(getattr(executor, "retried", 0))
        if own:
            getattr(executor, "abort", executor.close)()
        raise
    report.retried = int(getattr(executor, "retried", 0))
    if own:
        executor.close()
    return report


def site_executor(ex: Explorer, kind: str = "local", jobs: int | None = None, address: str | None = None):
    """The executor :func:`build_site` uses for ``ex`` (pass it as ``executor=`` to reuse or inspect it;
    the caller closes it): workers build their own :class:`Explorer` from a copy of ``ex.model`` on the
    model's device type (Ray actors ask for a GPU share when it is CUDA)."""
    from ..models import model_device

    dev = model_device(ex.model).type
    init_args = (_worker_spec(ex), ex.layers, ex._units_spec, ex.config, _cache_arg(ex), ex.name, ex.hash, dev)
    return make_executor(jobs, ex, _init_worker, init_args, kind=kind, address=address, device=dev)


def plan_pages(ex: Explorer) -> dict[str, list[int]]:
    """The unit pages a build makes: ``{layer: units}``."""
    return {layer: list(ex.units[layer]) for layer in ex.layers}


def _run(executor, jobs: list[Job], root: Path, report: BuildReport, stage: str, progress: Progress | None,
         remote: bool) -> None:
    """Run a stage: remote workers return their files (:func:`produce_job`) and this process writes
    them; local ones write them themselves (:func:`run_job`). Same function, same bytes."""
    from .jobs import is_done

    total = len(jobs)
    count = {"done": sum(is_done(root, j) for j in jobs)}
    if progress:
        progress(stage, count["done"], total)

    def on_done(job: Job) -> None:
        report.run[job.kind] += 1
        count["done"] += 1
        if progress:
            progress(stage, count["done"], total)

    fn = produce_job if remote else run_job
    ran, skipped = execute(executor, fn, [_with_root(j, root) for j in jobs], root, write=remote, on_done=on_done)
    report.skipped[stage] += skipped


def _with_root(job: Job, root: Path) -> Job:
    return Job(job.kind, {**job.inputs, "_root": str(root.resolve())}, job.outputs, job.salt, key=job.key)


def _with_vectors(job: Job, data: dict[str, dict]) -> Job:
    """A factor render job carries its direction vectors (exactly as the layer data lists them) so it
    runs without reading the site (the key is unchanged: it already hashes them)."""
    if job.inputs.get("what") != "factors":
        return job
    units = data[job.inputs["layer"]]["units"]
    vectors = []
    for u, f in job.inputs["items"]:
        s = next(s for s in units[str(u)]["sources"] if s["src"] == job.inputs["src"])
        vectors.append(next(x for x in s["factors"] if x["index"] == f)["vector"])
    return Job(job.kind, {**job.inputs, "_vectors": vectors}, job.outputs, job.salt, key=job.key)


# ------------------------------------------------------------------------------------------ checks
def check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise WeightvizError(f"output {str(root)!r} exists and is not a directory; choose a directory for the site")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file() and not (root / LOCK).is_file():
        raise WeightvizError(
            f"output directory {str(root)!r} is not empty and is not a weightviz site; choose a new or empty "
            "directory (an earlier site there is updated in place)"
        )
    parent = root.resolve().parent
    if not root.exists() and not parent.is_dir():
        raise WeightvizError(f"cannot create {str(root)!r}: directory {str(parent)!r} does not exist")
    target = root if root.exists() else parent
    if not os.access(target, os.W_OK):
        raise WeightvizError(f"cannot write to {str(target)!r}: permission denied")


def _write_assets(root: Path) -> None:
    dst = root / "static"
    dst.mkdir(exist_ok=True)
    for f in resources.files("weightviz.explore").joinpath("static").iterdir():
        if f.is_file():
            data = f.read_bytes()
            target = dst / f.name
            if not target.is_file() or target.read_bytes() != data:
                write_file(target, data)


def _write_marker(root: Path, ex: Explorer) -> None:
    from .. import __version__

    meta = {"weightviz": __version__, "model": ex.name, "model_hash": ex.hash, "layers": ex.layers,
            "config": ex.config.key()}
    p = root / MARKER
    p.parent.mkdir(parents=True, exist_ok=True)
    write_file(p, json.dumps(meta, indent=1).encode())


def _salt(ex: Explorer) -> str:
    blob = json.dumps({"model": ex.hash, "config": ex.config.key(), "layers": ex.layers}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

"""Explorer build jobs and the executors that run them.

The static site is built as a list of independent :class:`Job` records, plain picklable data: a
``kind`` (``"weights"``, ``"render"`` or ``"page"``), JSON-able ``inputs``, the ``outputs`` (paths
relative to the site root) the job writes, and a ``key`` (a hash of everything the outputs depend on).
A job runs as ``run_job(job, context)`` in whatever process an :class:`Executor` chooses: the same list
can run serially, in a local process pool, or on a Ray cluster (:mod:`.ray_executor`), because nothing
but the job record and the model crosses the process boundary.

>>> jobs = [Job("page", {"page": "index"}, ("index.html",))]
>>> [r for _, r in SerialExecutor(state="model").imap(lambda state, job: (state, job.kind), jobs)]
[('model', 'page')]
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import WeightvizError
from ..utils.io import atomic_path

__all__ = [
    "JOB_KINDS",
    "Executor",
    "Job",
    "ProcessExecutor",
    "SerialExecutor",
    "EXECUTORS",
    "chunked",
    "execute",
    "executor_name",
    "is_done",
    "job_key",
    "make_executor",
    "mark_done",
    "stamp_path",
    "worker_count",
    "write_file",
]

JOB_KINDS = ("weights", "render", "examples", "page", "cases")
# bump when the format of any output changes: every stamp then mismatches and the site rebuilds
FORMAT_VERSION = 1


def job_key(kind: str, inputs: dict[str, Any], salt: str = "") -> str:
    """A stable 16-hex-digit hash of a job's kind, inputs (JSON, sorted keys) and ``salt`` (the model
    hash and build settings)."""
    blob = json.dumps({"kind": kind, "inputs": inputs, "salt": salt, "v": FORMAT_VERSION},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One unit of work of a site build: plain data, picklable, runnable anywhere.

    ``kind``: ``"weights"`` (weights, NMF images, top inputs/outputs of one layer), ``"render"`` (feature
    visualizations of a chunk of units/directions), ``"examples"`` (dataset examples of one layer's
    units), ``"page"`` (one HTML page) or ``"cases"`` (the cases panels of one layer's units, over the
    image set). ``inputs``: JSON-able
    parameters. ``outputs``: the files (relative to the site root) it writes; the job is done when all
    exist and its stamp holds its ``key``.
    """

    kind: str
    inputs: dict[str, Any]
    outputs: tuple[str, ...]
    salt: str = ""
    key: str = field(default="", compare=False)

    def __post_init__(self):
        if self.kind not in JOB_KINDS:
            raise WeightvizError(f"unknown job kind {self.kind!r}: use one of {', '.join(JOB_KINDS)}")
        if not self.key:
            object.__setattr__(self, "key", job_key(self.kind, self.inputs, self.salt))

    @property
    def id(self) -> str:
        """A short file-name-safe id: kind + key."""
        return f"{self.kind}-{self.key}"


# ----------------------------------------------------------------------------------- resumability
STAMP_DIR = ".weightviz/done"


def stamp_path(root: Path, job: Job) -> Path:
    """Where the stamp of a finished job lives: ``ROOT/.weightviz/done/<kind>-<key>``."""
    return Path(root) / STAMP_DIR / job.id


def is_done(root: Path, job: Job) -> bool:
    """True if the job's stamp exists (its key matches: the key is the stamp's name) and every output
    file exists."""
    root = Path(root)
    return stamp_path(root, job).is_file() and all((root / o).is_file() for o in job.outputs)


def mark_done(root: Path, job: Job) -> None:
    """Record that ``job`` finished (atomically; called after all its outputs were written)."""
    p = stamp_path(root, job)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p, suffix="") as tmp:
        inputs = {k: v for k, v in job.inputs.items() if not k.startswith("_")}  # not run-time extras
        tmp.write_text(json.dumps({"kind": job.kind, "inputs": inputs, "outputs": list(job.outputs)},
                                  default=str))


# ----------------------------------------------------------------------------------------- executors
@runtime_checkable
class Executor(Protocol):
    """Runs ``fn(state, job)`` for each job and yields ``(job, result)`` as each finishes (any order).

    ``state`` is whatever the executor's ``init(*init_args)`` built once per process (e.g. the loaded
    model); ``fn`` must be a module-level function so it can be pickled. Implementations:
    :class:`SerialExecutor` (this process) and :class:`ProcessExecutor` (a local process pool). A
    distributed engine only needs the same two methods.
    """

    def imap(self, fn: Callable[[Any, Job], Any], jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Run jobs one after another in this process. ``state`` is passed to every job as is (or built
    once by ``init(*init_args)`` on first use)."""

    name = "local"
    workers = 1

    def __init__(self, state: Any = None, init: Callable[..., Any] | None = None, init_args: tuple = ()):
        self._state = state
        self._init = init
        self._init_args = init_args

    def imap(self, fn: Callable[[Any, Job], Any], jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]:
        if self._state is None and self._init is not None:
            self._state = self._init(*self._init_args)
        for job in jobs:
            yield job, fn(self._state, job)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# worker-process state, set once by the pool initializer
_WORKER: dict[str, Any] = {}


def _worker_init(init: Callable[..., Any], args: tuple, threads: int, driver: int | None = None,
                 pdeathsig: bool = True) -> None:
    import torch

    if driver is not None:
        _follow_driver(driver, pdeathsig)
    torch.set_num_threads(max(1, threads))
    with _caught() as said:
        _WORKER["state"] = init(*args)
    _WORKER["said"] = said


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL = 0.5  # seconds between two checks of the driver by a worker's watcher thread


def _follow_driver(driver: int, pdeathsig: bool = True) -> None:
    """Make this worker process die with its driver (process id ``driver``), however the driver ends
    (``kill -9``, a crash, SIGTERM): a worker left behind would hold its memory (the model) for good,
    blocked on a queue nobody writes to.

    Two independent mechanisms: on Linux the kernel's parent-death signal (``prctl(PR_SET_PDEATHSIG,
    SIGKILL)``, set only when the driver spawned the pool from its main thread: the signal follows the
    *thread* that forked), and everywhere a daemon thread that checks every :data:`WATCH_INTERVAL` s
    whether this process was re-parented (the driver is gone) and then kills it. A driver that died
    before this runs is caught by the first check."""
    import signal
    import sys
    import threading
    import time

    def orphaned() -> bool:
        return os.getppid() != driver

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watcher thread still works
            pass
    if orphaned():
        die()

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            if orphaned():
                die()

    threading.Thread(target=watch, name="weightviz-driver-watch", daemon=True).start()


@contextlib.contextmanager
def _caught() -> Iterator[list[tuple[type, str]]]:
    """Collect the :class:`~weightviz.errors.WeightvizWarning` s raised inside (as ``(category,
    message)``) for the driver to show; other warnings are shown here as usual."""
    from ..errors import WeightvizWarning

    said: list[tuple[type, str]] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeightvizWarning)
        yield said
    for w in caught:
        if isinstance(w.category, type) and issubclass(w.category, WeightvizWarning):
            said.append((w.category, str(w.message)))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)


def _worker_call(fn: Callable[[Any, Job], Any], job: Job) -> tuple[Any, list[tuple[type, str]]]:
    """Run one job in a worker: its result and the WeightvizWarnings it (or the worker's start-up) raised,
    which the driver shows (once each), so a warning reads the same with or without worker processes."""
    said = _WORKER.pop("said", [])
    with _caught() as more:
        result = fn(_WORKER["state"], job)
    return result, said + more


class ProcessExecutor:
    """Run jobs in a pool of ``workers`` processes (spawned, not forked).

    ``init(*init_args)`` runs once per worker (e.g. load the model from its spec) and its result is the
    ``state`` passed to every ``fn(state, job)``; ``init``, its arguments and ``fn`` must be picklable.
    Each worker uses ``threads`` torch threads so the pool does not oversubscribe the cores.
    """

    name = "local"

    def __init__(self, workers: int, init: Callable[..., Any], init_args: tuple = (), threads: int = 1):
        if workers < 1:
            raise WeightvizError(f"--jobs must be at least 1, got {workers}")
        self.workers = workers
        import multiprocessing as mp
        import threading

        # workers die with this process (see _follow_driver); the parent-death signal only when the
        # workers are spawned by the main thread, which lives as long as the process
        main = threading.current_thread() is threading.main_thread()
        self._pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"),
            initializer=_worker_init, initargs=(init, init_args, threads, os.getpid(), main),
        )

    def imap(self, fn: Callable[[Any, Job], Any], jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]:
        from ..errors import warn_once

        futures = {self._pool.submit(_worker_call, fn, job): job for job in jobs}
        try:
            for fut in cf.as_completed(futures):
                result, said = fut.result()
                for category, message in said:
                    warn_once(message, category)
                yield futures[fut], result
        finally:
            for fut in futures:
                fut.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop now (an error or Ctrl-C in the caller): cancel the queued jobs and terminate the workers
        instead of waiting for the jobs they run. Outputs are written atomically, so a job cut short
        leaves nothing half-written and is simply not done."""
        procs = list((getattr(self._pool, "_processes", None) or {}).values())  # CPython's worker table
        # terminate first: shutting the pool down first closes the queues a worker may be reading (one still
        # starting up then dies on EOF with a traceback on the user's terminal)
        for p in procs:
            p.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.join(timeout=60)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self.abort()


EXECUTORS = ("local", "ray")


def make_executor(workers: int | None, state: Any, init: Callable[..., Any], init_args: tuple = (), *,
                  kind: str = "local", address: str | None = None, device: str = "cpu"):
    """The executor for ``kind``:

    - ``"local"``: :class:`SerialExecutor` on ``state`` for ``workers <= 1`` (or ``None``), else a
      :class:`ProcessExecutor` whose workers build their own state with ``init(*init_args)`` and split
      the cores between them;
    - ``"ray"``: a :class:`~.ray_executor.RayExecutor` (``workers`` actors, default one per cluster
      CPU/GPU; ``address`` as there; ``device`` decides whether actors ask for GPUs).
    """
    if kind not in EXECUTORS:
        raise WeightvizError(f"unknown executor {kind!r}: use one of {', '.join(EXECUTORS)}")
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(workers, init, init_args, address=address, device=device)
    if address is not None:
        raise WeightvizError("--address is for --executor ray; drop it or add --executor ray")
    if workers is None or workers <= 1:
        if workers is not None and workers < 1:
            raise WeightvizError(f"--jobs must be at least 1, got {workers}")
        return SerialExecutor(state)
    cores = os.cpu_count() or 1
    return ProcessExecutor(workers, init, init_args, threads=max(1, cores // workers))


def worker_count(executor: Any) -> int:
    """How many workers an executor runs jobs on (1 for :class:`SerialExecutor`)."""
    return int(getattr(executor, "workers", 1))


def executor_name(executor: Any) -> str:
    """``"local"``, ``"ray"`` or the class name of a custom executor."""
    return str(getattr(executor, "name", type(executor).__name__))


def execute(executor: Any, fn: Callable[[Any, Job], Any], jobs: Sequence[Job], root: Path, *,
            write: bool = False, on_done: Callable[[Job], None] | None = None) -> tuple[int, int]:
    """Run the jobs of ``jobs`` that are not done yet (see :func:`is_done`) and stamp each as it
    finishes; returns ``(ran, skipped)``.

    ``write=True``: ``fn`` returns ``{relative path: bytes}`` and this process (the driver) writes the
    files atomically under ``root`` before stamping the job (workers on other machines need no shared
    disk). Otherwise ``fn`` wrote its outputs itself. ``on_done(job)`` is called after each stamp.
    Interrupted at any point, only whole files exist and the stamp is written last, so a rerun resumes.
    """
    root = Path(root)
    todo = [j for j in jobs if not is_done(root, j)]
    for job, result in executor.imap(fn, todo):
        if write:
            for rel, data in result.items():
                write_file(root / rel, data)
        mark_done(root, job)
        if on_done is not None:
            on_done(job)
    return len(todo), len(jobs) - len(todo)


#: significant digits of the numbers in a site's JSON files: float32 holds about 7, so digits past them are
#: float rounding noise that differs between thread counts and CPUs
JSON_DIGITS = 7


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{JSON_DIGITS}g}") if obj == obj and abs(obj) != float("inf") else obj
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def site_json(doc: Any) -> bytes:
    """``doc`` as the bytes of a site JSON file, every float rounded to :data:`JSON_DIGITS` significant
    digits (float32's precision), so files carry no noise digits.

    >>> site_json({"w": 0.1234567891, "n": [1, 2.0000001234]})
    b'{"w": 0.1234568, "n": [1, 2.0]}'
    """
    return json.dumps(_rounded(doc)).encode()


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def chunked(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive chunks of ``size`` items (the last may be shorter)."""
    for i in range(0, len(items), size):
        yield list(items[i:i + size])

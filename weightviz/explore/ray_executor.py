"""Run build jobs on a Ray cluster: a pool of actors that each hold the model once.

:class:`RayExecutor` has the :class:`~.jobs.Executor` interface (``imap(fn, jobs)`` yields
``(job, result)`` as jobs finish, ``close()``). Each actor runs ``init(*init_args)`` once (load the
model onto its device: the model travels through Ray's object store once, not with every job) and then
``fn(state, job)`` for the jobs it is given. Results come back to the driver: the caller writes them
(``remote = True`` tells the site builder that workers may not share its disk), so a multi-machine
cluster needs no shared file system.

Faults: a worker process that dies (``kill -9``, out of memory, a lost node) fails the jobs it was
running with ``RayActorError``; the executor replaces that actor by a fresh one (which loads the model
again) and resubmits those jobs, up to ``max_retries`` times per job, counting them in
:attr:`RayExecutor.retried`. An exception raised *by a job* is not retried: it is re-raised on the
driver as the original exception. No Ray-side retries are configured (``max_restarts=0``), so every
retry is visible and counted here.

Resources: with ``device="cpu"`` each actor asks for ``cpus`` CPUs and sets ``torch.set_num_threads``
to that share (at least 1); with CUDA it also asks for ``gpus`` GPUs (a fraction shares one card).

>>> ex = RayExecutor(2, init=load_state, init_args=(model,))            # doctest: +SKIP
>>> for job, result in ex.imap(run, jobs): ...                          # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import WeightvizError

__all__ = ["RayExecutor", "check_address", "import_ray"]


def import_ray():
    """``import ray``, or a one-line :class:`WeightvizError` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise WeightvizError("--executor ray needs Ray: pip install 'weightviz[ray]' (or pip install ray)") from e
    return ray


def check_address(address: str | None, timeout: float = 3.0) -> None:
    """Refuse an unusable ``--address`` in one line, fast and before anything is written.

    ``None`` (start a local instance) and ``"auto"`` (Ray finds the cluster of this machine) pass;
    ``HOST:PORT`` and ``ray://HOST:PORT`` must be readable and something must accept a TCP connection
    there within ``timeout`` seconds (Ray itself would retry for half a minute, logging as it goes).
    """
    if address is None or address == "auto":
        return
    import socket

    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port_text = hostport.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise WeightvizError(f"cannot read --address {address!r}: use auto, ray://HOST:PORT or HOST:PORT "
                             "(omit it to start a local Ray instance)")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or (str(e) or type(e).__name__)
        raise WeightvizError(f"cannot reach Ray at {address!r}: {reason}; start the cluster (`ray start --head`) "
                             "or fix --address") from None


def _init_raised(e: BaseException) -> bool:
    """Whether a Ray actor error means the actor's ``__init__`` *raised* (deterministic), not that its
    process died (a fault to retry)."""
    return bool(getattr(e, "actor_init_failed", False)) or "raised in its creation task" in str(e)


class _JobActor:
    """The actor body (wrapped by ``ray.remote`` at run time, so importing this module needs no Ray)."""

    def __init__(self, payload: tuple[Callable[..., Any], tuple], threads: int):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        init, init_args = payload
        self._state = init(*init_args)

    def pid(self) -> int:
        """The worker's process id (tests use it to kill a busy worker)."""
        return os.getpid()

    def run(self, fn: Callable[[Any, Any], Any], job: Any) -> Any:
        return fn(self._state, job)


class RayExecutor:
    """Run ``fn(state, job)`` on ``workers`` Ray actors, each holding ``state = init(*init_args)``.

    ``address``: ``None`` starts a local Ray instance (on this machine's cores and GPUs) unless Ray is
    already initialized in this process; ``"auto"`` or ``"ray://host:port"`` joins an existing cluster.
    ``workers``: actors (default: one per CPU of the cluster, or per GPU with ``device="cuda"``).
    ``device``: ``"cpu"`` or ``"cuda"``; with CUDA each actor asks for ``gpus`` GPUs (default: the
    cluster's GPUs split evenly, at most 1). ``depth``: jobs queued per actor (2 hides Ray's per-call
    latency). ``max_retries``: resubmissions of one job after worker deaths before giving up.
    ``init_timeout``: seconds to wait for all actors to start and load the model (a cluster without
    room for them raises :class:`WeightvizError` then).
    The executor shuts down the Ray instance it started on :meth:`close` (not one it joined).
    """

    name = "ray"
    remote = True  # results are returned to the driver, which writes them

    def __init__(self, workers: int | None, init: Callable[..., Any], init_args: tuple = (), *,
                 address: str | None = None, device: str = "cpu", cpus: float | None = None,
                 gpus: float | None = None, depth: int = 2, max_retries: int = 3,
                 init_timeout: float = 600.0):
        if workers is not None and workers < 1:
            raise WeightvizError(f"--jobs must be at least 1, got {workers}")
        ray = import_ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            check_address(address)  # one line at once, not Ray's half minute of retries and log lines
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING, "configure_logging": True}
            try:
                if address is None:
                    ray.init(num_cpus=os.cpu_count() or 1, **kw)
                else:
                    ray.init(address=address, **kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = address or "a local instance"
                raise WeightvizError(f"cannot start or join Ray at {where}: {str(e).splitlines()[0] if str(e) else e}") from e
            self._started = True
        res = ray.cluster_resources()
        n_cpu, n_gpu = float(res.get("CPU", 1.0)), float(res.get("GPU", 0.0))
        self.device = "cuda" if str(device).startswith("cuda") else "cpu"
        if self.device == "cuda" and n_gpu <= 0:
            self.close()
            raise WeightvizError("--device cuda on Ray, but the cluster has no GPUs; use --device cpu")
        if workers is None:
            workers = max(1, int(n_gpu) if self.device == "cuda" else int(n_cpu))
        self.workers = workers
        # each actor's CPU share (fractional when there are more actors than CPUs) and torch threads
        self.cpus = cpus if cpus is not None else (max(1, int(n_cpu // workers)) if workers <= n_cpu else n_cpu / workers)
        self.threads = max(1, int(self.cpus))
        self.gpus = 0.0 if self.device == "cpu" else (gpus if gpus is not None else min(1.0, n_gpu / workers))
        self.depth = max(1, depth)
        self.max_retries = max_retries
        self.retried = 0  # jobs resubmitted after a worker died
        self.replaced = 0  # actors started to replace dead ones
        self.started_again = 0  # actors replaced because they died while starting
        self.done_per_worker: list[int] = [0] * workers
        self._payload = ray.put((init, init_args))  # the model, once, in the object store
        self._cls = ray.remote(_JobActor).options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                                  max_task_retries=0)
        self._actors = [self._new_actor() for _ in range(workers)]
        self._gen = [0] * workers
        self._wait_ready(init_timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until every actor has started and loaded its state: a cluster without room for them
        (CPUs/GPUs held by others) or a failing ``init`` becomes one clear error, not a silent wait. An
        actor that *dies* while it starts (killed, out of memory, node lost) is a fault: it is replaced, up
        to ``max_retries`` times in all; only an exception raised by ``init`` itself stops at once (a
        fresh worker would raise it again)."""
        ray = self._ray
        from ray.exceptions import GetTimeoutError, RayActorError

        deaths = 0
        refs = [a.pid.remote() for a in self._actors]
        while True:
            try:
                ray.get(refs, timeout=timeout)
                return
            except GetTimeoutError:
                avail = ray.available_resources()
                self.close()
                raise WeightvizError(
                    f"Ray could not start {self.workers} workers of {self.cpus:g} CPU"
                    + (f" + {self.gpus:g} GPU" if self.gpus else "")
                    + f" within {timeout:g} s (free now: {avail.get('CPU', 0):g} CPU, {avail.get('GPU', 0):g} GPU); "
                    "use fewer --jobs or free the cluster") from None
            except RayActorError as e:
                if _init_raised(e) or deaths >= self.max_retries:
                    self.close()
                    raise WeightvizError(f"a Ray worker could not start: {_last_error_line(str(e))}") from e
            # replace every actor whose start-up ended in a death; the others are still starting or ready
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for i, ref in enumerate(refs):
                if ref not in ready:
                    continue
                try:
                    ray.get(ref, timeout=0)
                except RayActorError as e:
                    if _init_raised(e):
                        self.close()
                        raise WeightvizError(f"a Ray worker could not start: {_last_error_line(str(e))}") from e
                    deaths += 1
                    self._replace(i)
                    refs[i] = self._actors[i].pid.remote()
            self.started_again = deaths

    # ----------------------------------------------------------------------------------- actors
    def _new_actor(self):
        return self._cls.remote(self._payload, self.threads)

    def pids(self, timeout: float = 120.0) -> list[int]:
        """Process ids of the current actors (waits for them to start)."""
        return self._ray.get([a.pid.remote() for a in self._actors], timeout=timeout)

    def _replace(self, i: int) -> None:
        try:
            self._ray.kill(self._actors[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
        self._actors[i] = self._new_actor()
        self._gen[i] += 1
        self.replaced += 1

    # ------------------------------------------------------------------------------------- imap
    def imap(self, fn: Callable[[Any, Any], Any], jobs: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self._ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = collections.deque(jobs)
        attempts: dict[int, int] = collections.Counter()
        pending: dict[Any, tuple[int, int, Any]] = {}  # ref -> (actor index, actor generation, job)
        inflight = [0] * len(self._actors)

        def fill(i: int) -> None:
            while queue and inflight[i] < self.depth:
                job = queue.popleft()
                pending[self._actors[i].run.remote(fn, job)] = (i, self._gen[i], job)
                inflight[i] += 1

        try:
            for i in range(len(self._actors)):
                fill(i)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                i, gen, job = pending.pop(ref)
                if gen == self._gen[i]:
                    inflight[i] -= 1
                try:
                    result = ray.get(ref)
                except RayTaskError as e:  # the job itself raised: not a worker fault
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                except RayActorError as e:  # the worker died (killed, OOM, node lost) or its init failed
                    attempts[id(job)] += 1
                    msg = str(e).strip()
                    if _init_raised(e):  # init(*init_args) raised: a fresh worker would fail the same
                        raise WeightvizError(f"a Ray worker could not start: {_last_error_line(msg)}") from e
                    if attempts[id(job)] > self.max_retries:
                        raise WeightvizError(
                            f"job {getattr(job, 'id', job)} failed on {attempts[id(job)]} Ray workers in a row "
                            f"(last: {type(e).__name__}: {_last_error_line(msg)}); see the Ray logs"
                        ) from e
                    self.retried += 1
                    if gen == self._gen[i]:
                        self._replace(i)
                        inflight[i] = 0
                    queue.appendleft(job)
                    fill(i)
                    continue
                self.done_per_worker[i] += 1
                yield job, result
                fill(i)
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass

    # ------------------------------------------------------------------------------------ close
    def close(self) -> None:
        ray = self._ray
        for a in getattr(self, "_actors", []):
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        """One line: workers, resources per worker."""
        per = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"Ray: {self.workers} workers x ({per}, {self.threads} torch threads)"


def _last_error_line(msg: str) -> str:
    """The most telling line of a Ray error text: the last ``SomeError: ...`` line, else the first line."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.split(":", 1)[0].endswith(("Error", "Exception"))]
    return (errs[-1] if errs else lines[0] if lines else "")[:300]

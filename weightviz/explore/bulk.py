"""Bulk feature visualizations: many units of a layer, one PNG per unit in a directory, run as
independent render jobs (one forward batch each) on the explorer's executors: this process, local worker
processes, or Ray actors (``executor="ray"``) that each hold the model once.

The driver writes every file (atomically) from what the workers return, so the directory holds the same
bytes whichever executor ran the jobs; a job's stamp (``DIR/.weightviz/done/``) is written after its
files, so an interrupted run leaves only whole files and a rerun renders only what is missing.

>>> report = render_dir("lite0", "blocks.3.0", "0:64", "fv/", executor="ray")   # doctest: +SKIP
>>> report.files[0]                                                           # doctest: +SKIP
PosixPath('fv/blocks.3.0_0.png')
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from . import _png
from . import paths as P
from .jobs import Job, chunked, execute, executor_name, make_executor, worker_count, write_file

__all__ = ["RenderDirReport", "bulk_file", "render_dir"]

MARKER = ".weightviz/renders.json"
OBJECTIVES = ("channel", "neuron")


def bulk_file(layer: str, unit: int) -> str:
    """The file of one unit's FV inside the output directory: ``<layer>_<unit>.png``."""
    return f"{P.slug(layer)}_{int(unit)}.png"


@dataclass
class RenderDirReport:
    """What :func:`render_dir` did: the ``files`` (all units asked for), jobs ``run`` / ``skipped``
    (already done), ``workers``, jobs ``retried`` after worker failures, wall ``seconds``."""

    root: Path
    files: list[Path] = field(default_factory=list)
    run: int = 0
    skipped: int = 0
    executor: str = "local"
    workers: int = 1
    retried: int = 0
    seconds: float = 0.0

    def stats(self) -> str:
        rate = self.run / self.seconds / max(1, self.workers) if self.seconds > 0 else 0.0
        return (f"{self.executor} executor, {self.workers} worker{'s' if self.workers != 1 else ''}: {self.run} jobs run, "
                f"{self.skipped} up to date, {self.retried} retried after worker failures, wall {self.seconds:.1f} s, "
                f"{rate:.3g} jobs/s per worker")


def render_dir(
    model: nn.Module | str | None,
    layer: str,
    units: Any,
    out: str | os.PathLike,
    *,
    size: int = 128,
    steps: int | None = None,
    seed: int = 0,
    objective: str = "channel",
    batch: int = 32,
    cache: Any = True,
    executor: Any = "local",
    jobs: int | None = None,
    address: str | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RenderDirReport:
    """Render the FV of every unit in ``units`` of ``layer`` into directory ``out`` (``<layer>_<unit>.png``,
    the exact pixels ``[size, size, 3]``), ``batch`` units per job (one forward batch).

    ``executor``: ``"local"`` (``jobs`` processes, default 1 = this process), ``"ray"`` (``jobs`` actors;
    ``address`` as in :func:`~.site.build_site`) or an :class:`~.jobs.Executor`. ``device``: where the
    model computes (``None``: where it is). ``cache``: the render cache (``True`` default directory, a
    path, or ``None``). ``progress("render", done, total)`` as jobs finish. ``out`` must be new, empty,
    or an earlier output of this function.
    """
    from ..models import (
        get_module,
        input_spec,
        model_device,
        model_hash,
        parse_units,
        probe_shapes,
        resolve,
        to_device,
    )
    from ..optvis import DEFAULT_STEPS
    from ..optvis.cache import resolve_cache

    t0 = time.perf_counter()
    if objective not in OBJECTIVES:
        raise WeightvizError(f"objective must be 'channel' or 'neuron', got {objective!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise WeightvizError(f"batch must be a positive integer, got {batch!r}")
    root = Path(out)
    check_output_dir(root)
    m = to_device(resolve(model), device)
    get_module(m, layer)  # unknown layer -> close matches
    shape = probe_shapes(m, [layer], input_spec(m).channels, size)[layer]
    spec = None if isinstance(units, str) and units.strip().lower() == "all" else units
    selected = parse_units(spec, shape[0], f"layer {layer!r}")
    if not selected:
        raise WeightvizError(f"no units selected by {units!r}")
    store = resolve_cache(cache)
    salt = model_hash(m)
    settings = {"layer": layer, "size": size, "steps": steps or DEFAULT_STEPS, "seed": seed, "objective": objective}
    job_list = [Job("render", {"what": "bulk", **settings, "units": us}, tuple(bulk_file(layer, u) for u in us), salt)
                for us in chunked(selected, batch)]
    root.mkdir(parents=True, exist_ok=True)
    write_file(root / MARKER, json.dumps({"model_hash": salt, **settings}, indent=1).encode())

    report = RenderDirReport(root, [root / bulk_file(layer, u) for u in selected])
    own = isinstance(executor, str)
    if own:
        dev = model_device(m).type
        worker_model = m if dev == "cpu" else _cpu_copy(m)
        cache_arg = str(store.path) if store is not None else None
        executor = make_executor(jobs, (m, store), _bulk_init, (worker_model, cache_arg, dev),
                                 kind=executor, address=address, device=dev)
    report.executor = executor_name(executor)
    report.workers = worker_count(executor)
    done = {"n": 0}

    def on_done(_job: Job) -> None:
        done["n"] += 1
        if progress:
            progress("render", done["n"], len(job_list))

    finished = False
    try:
        from .jobs import is_done

        done["n"] = sum(is_done(root, j) for j in job_list)
        if progress:
            progress("render", done["n"], len(job_list))
        report.run, report.skipped = execute(executor, bulk_job, job_list, root, write=True, on_done=on_done)
        finished = True
    finally:
        report.retried = int(getattr(executor, "retried", 0))
        if own:  # an error, Ctrl-C or SIGTERM: stop the workers now instead of waiting for their jobs
            executor.close() if finished else getattr(executor, "abort", executor.close)()
    report.seconds = time.perf_counter() - t0
    return report


def check_output_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise WeightvizError(f"output {str(root)!r} exists and is not a directory; give a directory for one PNG per unit")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise WeightvizError(f"output directory {str(root)!r} is not empty and holds no earlier renders; "
                             "choose a new or empty directory")
    parent = root.resolve().parent
    if not root.exists() and not parent.is_dir():
        raise WeightvizError(f"cannot create {str(root)!r}: directory {str(parent)!r} does not exist")
    target = root if root.exists() else parent
    if not os.access(target, os.W_OK):
        raise WeightvizError(f"cannot write to {str(target)!r}: permission denied")


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).to("cpu")


def _bulk_init(model: nn.Module, cache: str | None, device: str = "cpu") -> tuple[nn.Module, Any]:
    """Worker state: the model on the worker's device and its render cache."""
    from ..models import to_device
    from ..optvis.cache import resolve_cache

    return to_device(model, device), resolve_cache(cache)


def bulk_job(state: tuple[nn.Module, Any], job: Job) -> dict[str, bytes]:
    """Render one job's units in one batch; returns ``{file name: PNG bytes}`` (the driver writes them)."""
    from ..optvis import objectives as obj
    from ..optvis.render import render

    model, cache = state
    inp = job.inputs
    make = obj.channel if inp["objective"] == "channel" else obj.neuron
    units: Sequence[int] = inp["units"]
    result = render(model, [make(inp["layer"], int(u)) for u in units], size=inp["size"], steps=inp["steps"],
                    seed=inp["seed"], batch=len(units), progress=False, cache=cache)
    return {bulk_file(inp["layer"], u): _png.fv_png(img) for u, img in zip(units, result.images)}

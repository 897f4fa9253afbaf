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
from . import _png, pages
from . import paths as P
from .data import ExploreConfig, Explorer, Source
from .jobs import Job, SerialExecutor, execute, executor_name, make_executor, worker_count, write_file

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
    from .._device import to_device

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
    from .._device import model_device

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
                _write_bytes(target, data)


def _write_marker(root: Path, ex: Explorer) -> None:
    from .. import __version__

    meta = {"weightviz": __version__, "model": ex.name, "model_hash": ex.hash, "layers": ex.layers,
            "config": ex.config.key()}
    p = root / MARKER
    p.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes(p, json.dumps(meta, indent=1).encode())


def _salt(ex: Explorer) -> str:
    blob = json.dumps({"model": ex.hash, "config": ex.config.key(), "layers": ex.layers}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_write_bytes = write_file


# ----------------------------------------------------------------------------------- worker state
def _worker_spec(ex: Explorer) -> nn.Module:
    """The model workers use: the loaded module itself (pickled once per worker, as a CPU copy when it
    lives on a GPU; each worker moves it to its own device), never the spec string: a spec with random
    init would give every process different weights."""
    from .._device import model_device

    if model_device(ex.model).type == "cpu":
        return ex.model
    import copy

    return copy.deepcopy(ex.model).to("cpu")


def _cache_arg(ex: Explorer):
    return str(ex.render_cache.path) if ex.render_cache is not None else None


def _init_worker(model, layers, units, config, cache, name, expected_hash, device="cpu") -> Explorer:
    from .._device import to_device

    ex = Explorer(to_device(model, device), layers, units, config=config, render_cache=cache, name=name)
    if ex.hash != expected_hash:
        raise WeightvizError(f"worker model hash {ex.hash} differs from {expected_hash}; use --jobs 1")
    return ex


# ------------------------------------------------------------------------------------------- jobs
def _data_path(layer: str) -> str:
    return f"data/{P.slug(layer)}.json"


def _weights_job(ex: Explorer, layer: str, salt: str) -> Job:
    inputs = {
        "layer": layer, "units": ex.units[layer],
        "sources": [[s.layer, s.label, s.kind] for s in ex.sources(layer)],
        "next": ex.next_layer(layer),
    }
    return Job("weights", inputs, (_data_path(layer),), salt)


def _load_data(root: Path, layer: str) -> dict[str, Any]:
    return json.loads((root / _data_path(layer)).read_text())


def _render_jobs(ex: Explorer, data: dict[str, dict], salt: str, cases_docs: dict | None = None) -> list[Job]:
    cfg = ex.config
    need: dict[str, set[int]] = {}
    for doc in (cases_docs or {}).values():   # the inputs shown by the cases panels
        for cs in doc["units"].values():
            for r in cs.get("cases", []) if cs else []:
                for c in r["inputs"]:
                    if c["layer"] is not None:
                        need.setdefault(c["layer"], set()).add(int(c["unit"]))
    factor_need: dict[tuple[str, str | None], list[list]] = {}
    for layer, d in data.items():
        need.setdefault(layer, set()).update(int(u) for u in d["units"])
        for u, ud in d["units"].items():
            for s in ud["sources"]:
                if s["src"] is not None and not s.get("error"):
                    need.setdefault(s["src"], set()).update(c["unit"] for c in s["items"])
                    for f in s["factors"]:
                        need[s["src"]].update(c["unit"] for c in f["items"])
                        if cfg.factor_fvs:
                            factor_need.setdefault((layer, s["src"]), []).append([int(u), f["index"], f["vector"]])
            if ud["outputs"]:
                need.setdefault(ud["outputs"]["layer"], set()).update(c["unit"] for c in ud["outputs"]["items"])
    fv = {"size": cfg.size, "steps": cfg.steps, "seed": cfg.seed}
    jobs = []
    for layer in sorted(need, key=lambda n: ex._order[n]):
        units = sorted(need[layer])
        # full batches of the units needed (a changed set re-runs some batches; their renders that were
        # already made come from the render cache)
        for start in range(0, len(units), cfg.batch):
            us = units[start:start + cfg.batch]
            jobs.append(Job("render", {"what": "units", "layer": layer, "units": us, **fv},
                            tuple(P.fv_path(layer, u) for u in us), salt))
    for (layer, src), items in factor_need.items():
        for start in range(0, len(items), cfg.batch):
            chunk = items[start:start + cfg.batch]
            digest = hashlib.sha256(json.dumps(chunk).encode()).hexdigest()[:16]
            jobs.append(Job("render", {"what": "factors", "layer": layer, "src": src,
                                       "items": [[u, f] for u, f, _ in chunk], "vectors": digest, **fv},
                            tuple(P.factor_path(layer, src, u, f) for u, f, _ in chunk), salt))
    return jobs


def _examples_path(layer: str) -> str:
    return f"data/examples/{P.slug(layer)}.json"


def _examples_job(ex: Explorer, layer: str, salt: str) -> Job:
    units = list(ex.units[layer])
    outputs = (_examples_path(layer),)  # the crops are listed in the JSON (how many depends on the data)
    return Job("examples", {"layer": layer, "units": units}, outputs, salt)


def _load_examples(root: Path, layer: str) -> dict[str, Any]:
    p = root / _examples_path(layer)
    return json.loads(p.read_text()) if p.is_file() else {}


def _page_job(ex: Explorer, layer: str, d: dict, link_key: str, salt: str, cases: dict | None = None) -> Job:
    units = [int(u) for u in d["units"]]
    outputs = (P.layer_path(layer), *(P.unit_path(layer, u) for u in units))
    data_key = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    inputs = {"page": "layer", "layer": layer, "units": units, "data": data_key, "links": link_key}
    if cases is not None:
        inputs["cases"] = hashlib.sha256(json.dumps(cases, sort_keys=True).encode()).hexdigest()[:16]
    return Job("page", inputs, outputs, salt)


def _cases_path(layer: str) -> str:
    return f"data/cases/{P.slug(layer)}.json"


def _cases_job(ex: Explorer, layer: str, salt: str) -> Job:
    cfg = ex.config
    inputs = {"layer": layer, "units": ex.units[layer], "src": ex.primary_source(layer), "cases": cfg.cases,
              "images": cfg.images, "n": cfg.case_images, "size": cfg.case_size}
    return Job("cases", inputs, (_cases_path(layer),), salt)


def _load_cases(root: Path, layer: str) -> dict[str, Any]:
    return json.loads((root / _cases_path(layer)).read_text())


def _produce_cases(ex: Explorer, inp: dict) -> dict[str, bytes]:
    layer = inp["layer"]
    doc = {"layer": layer, "units": {str(u): pages.cases_data(ex, layer, u) for u in inp["units"]}}
    return {_cases_path(layer): json.dumps(doc).encode()}


# ------------------------------------------------------------------------------------- running jobs
def produce_job(ex: Explorer, job: Job) -> dict[str, bytes]:
    """Compute a ``weights``, ``render``, ``examples`` or ``cases`` job on an :class:`Explorer` (in any process, on any machine:
    it reads nothing from the site) and return its files, ``{path relative to the site root: bytes}``."""
    if job.kind == "weights":
        return _produce_weights(ex, job.inputs)
    if job.kind == "render":
        return _produce_render(ex, job.inputs)
    if job.kind == "examples":
        return _produce_examples(ex, job.inputs)
    if job.kind == "cases":
        return _produce_cases(ex, job.inputs)
    raise WeightvizError(f"{job.kind} jobs read the site and run where it is written")


def run_job(ex: Explorer, job: Job) -> int:
    """Run one job on an :class:`Explorer` in a process that can write the site (``job.inputs['_root']``);
    returns the number of files written."""
    root = Path(job.inputs["_root"])
    if job.kind == "page":
        return _run_page(ex, root, job.inputs)
    files = produce_job(ex, job)
    for rel, data in files.items():
        _write_bytes(root / rel, data)
    return len(files)


def _produce_weights(ex: Explorer, inp: dict) -> dict[str, bytes]:
    layer = inp["layer"]
    sources = [Source(s, label, kind) for s, label, kind in inp["sources"]]
    files: dict[str, bytes] = {}
    units_data = {}
    for u in inp["units"]:
        d = pages.unit_data(ex, layer, u, sources)
        units_data[str(u)] = d
        for s in d["sources"]:
            src = s["src"]
            if s.get("error"):
                continue
            files[P.nmf_path(layer, src, u)] = pages.nmf_png(ex, layer, src, u)
            for c in s["items"]:
                files[P.heatmap_path(layer, src, u, c["unit"])] = pages.heatmap_png(ex, layer, src, u, c["unit"])
            for f in s["factors"]:
                files[P.fmap_path(layer, src, u, f["index"])] = pages.fmap_png(ex, layer, src, u, f["index"])
        if d["outputs"]:
            o = d["outputs"]
            for c in o["items"]:
                files[P.out_path(layer, o["layer"], u, c["unit"])] = pages.out_png(ex, layer, o["layer"], u, c["unit"])
    doc = {"layer": layer, "units": units_data}
    files[_data_path(layer)] = json.dumps(doc).encode()  # last: written after the images it lists
    return files


def _produce_render(ex: Explorer, inp: dict) -> dict[str, bytes]:
    layer = inp["layer"]
    if inp["what"] == "units":
        images = ex.render_units(layer, inp["units"])
        return {P.fv_path(layer, u): _png.fv_png(img) for u, img in zip(inp["units"], images)}
    src = inp["src"]
    vectors = [torch.tensor(v) for v in inp["_vectors"]]  # attached by the driver from the layer data
    images = ex.render_directions(src, vectors)
    return {P.factor_path(layer, src, u, f): _png.fv_png(img) for (u, f), img in zip(inp["items"], images)}


def _produce_examples(ex: Explorer, inp: dict) -> dict[str, bytes]:
    layer = inp["layer"]
    files: dict[str, bytes] = {}
    doc = {}
    for u in inp["units"]:
        d = pages.examples_data(ex, layer, u)
        if d is None:
            continue
        for j in range(len(d.get("items", []))):
            files[P.example_path(layer, u, j)] = pages.example_png(ex, layer, u, j)
        doc[str(u)] = d
    files[_examples_path(layer)] = json.dumps(doc).encode()  # last: written after the crops it lists
    return files


def _run_page(ex: Explorer, root: Path, inp: dict) -> int:
    built = {(layer, u) for layer in ex.layers for u in ex.units[layer]}

    def linker(layer: str, unit: int) -> bool:
        return (layer, unit) in built

    if inp["page"] == "index":
        _write_bytes(root / "index.html", pages.index_html(ex, ex.units, "static").encode())
        return 1
    layer = inp["layer"]
    data = _load_data(root, layer)
    primary = ex.primary_source(layer)
    nmf_ok = all(not s.get("error") for d in data["units"].values() for s in d["sources"] if s["src"] == primary)
    _write_bytes(root / P.layer_path(layer), pages.layer_html(ex, layer, inp["units"], "static", nmf=nmf_ok).encode())
    cases = _load_cases(root, layer)["units"] if "cases" in inp else {}
    examples = _load_examples(root, layer) if ex.config.examples > 0 else {}
    for u in inp["units"]:
        html = pages.unit_html(ex, data["units"][str(u)], "static", linker, cases=cases.get(str(u)),
                               examples=examples.get(str(u)))
        _write_bytes(root / P.unit_path(layer, u), html.encode())
    return 1 + len(inp["units"])


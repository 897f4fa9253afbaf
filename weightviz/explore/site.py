"""The static explorer site: plain HTML/CSS/JS and PNG files that open from disk (``file://``).

The build is three stages of independent :class:`~.jobs.Job` records, each run by an
:class:`~.jobs.Executor` (serial, or a process pool with ``jobs > 1``):

1. ``weights`` — one per explored layer: weights from each source, NMF images, top inputs/outputs,
   weight factors, banding; writes their PNGs and ``data/<layer>.json``;
2. ``render`` — FVs of every unit any page shows (and of the weight-factor directions), in batches;
3. ``page`` — the index, each layer page and its unit pages.

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

from .._io import atomic_path
from ..errors import WeightvizError
from . import _png, pages
from . import paths as P
from .data import ExploreConfig, Explorer, Source
from .jobs import Job, is_done, make_executor, mark_done

__all__ = ["BuildReport", "build_site", "check_root", "plan_pages"]

MARKER = ".weightviz/site.json"
#: Held (``flock``) by the build writing the site: a second build of the same directory waits for it.
LOCK = ".weightviz/build.lock"
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class BuildReport:
    """What a build did: jobs ``run`` and ``skipped`` per kind, seconds per stage, the index path."""

    root: Path
    run: dict[str, int] = field(default_factory=lambda: {"weights": 0, "render": 0, "page": 0})
    skipped: dict[str, int] = field(default_factory=lambda: {"weights": 0, "render": 0, "page": 0})
    seconds: dict[str, float] = field(default_factory=dict)
    pages: int = 0
    renders: int = 0

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    def summary(self) -> str:
        ran = ", ".join(f"{v} {k}" for k, v in self.run.items())
        skipped = sum(self.skipped.values())
        secs = sum(self.seconds.values())
        return (f"{self.pages} unit pages, {self.renders} FVs; jobs run: {ran}; {skipped} up to date; "
                f"{secs:.1f} s")


# ------------------------------------------------------------------------------------- the builder
def build_site(
    model: nn.Module | str | None,
    out: str | os.PathLike,
    layers: str | Sequence[str] | None = None,
    units: Any = None,
    *,
    config: ExploreConfig | None = None,
    jobs: int = 1,
    render_cache: Any = True,
    progress: Progress | None = None,
    name: str | None = None,
    explorer: Explorer | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build (or bring up to date) the static explorer site for ``model`` in directory ``out``.

    ``layers``: explored layers (names or ``"a,b"``; default :func:`~.data.default_layers`); ``units``:
    which units get pages (``"0:16"``, ``None`` = all); ``config``: FV size/steps, top-k, factors;
    ``jobs``: worker processes (1 = this process); ``render_cache``: see :class:`~.data.Explorer`;
    ``progress(stage, done, total)`` is called as jobs finish. ``out`` must be new, empty, or an earlier
    weightviz site. Returns a :class:`BuildReport`; open ``report.index`` in a browser.

    Two builds of one directory never run at once: a build holds a lock on the site (:data:`LOCK`); a
    second one calls ``on_wait(line)`` (default: print the line on stderr), waits, and then finds the
    finished work already done (it only builds what is missing).
    """
    root = Path(out)
    check_root(root)
    t0 = time.perf_counter()
    ex = explorer or Explorer(model, layers, units, config=config, render_cache=render_cache, name=name)
    (root / LOCK).parent.mkdir(parents=True, exist_ok=True)
    with site_lock(root, on_wait):
        check_root(root)
        return _build(ex, root, jobs, progress, t0)


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


def _build(ex: Explorer, root: Path, jobs: int, progress: Progress | None, t0: float) -> BuildReport:
    cfg = ex.config
    _write_assets(root)
    _write_marker(root, ex)
    report = BuildReport(root)
    report.seconds["setup"] = time.perf_counter() - t0
    salt = _salt(ex)
    executor = make_executor(jobs, ex, _init_worker, (_worker_spec(ex), ex.layers, ex._units_spec, cfg,
                                                      _cache_arg(ex), ex.name, ex.hash))
    try:
        # 1. weights: one job per explored layer
        t = time.perf_counter()
        wjobs = [_weights_job(ex, layer, salt) for layer in ex.layers]
        _run(executor, wjobs, root, report, "weights", progress)
        report.seconds["weights"] = time.perf_counter() - t
        data = {layer: _load_data(root, layer) for layer in ex.layers}

        # 1b. cases panels (per-example gradients over the image set): one job per explored layer
        cases_docs: dict[str, dict] = {}
        if cfg.cases:
            t = time.perf_counter()
            report.run.setdefault("cases", 0)
            report.skipped.setdefault("cases", 0)
            _run(executor, [_cases_job(ex, layer, salt) for layer in ex.layers], root, report, "cases", progress)
            report.seconds["cases"] = time.perf_counter() - t
            cases_docs = {layer: _load_cases(root, layer) for layer in ex.layers}

        # 2. renders: every FV a page shows, batched per layer; factor directions per (layer, source)
        t = time.perf_counter()
        pages_set = {(layer, u) for layer in ex.layers for u in ex.units[layer]}
        rjobs = _render_jobs(ex, data, salt, cases_docs)
        report.renders = sum(len(j.outputs) for j in rjobs)
        _run(executor, rjobs, root, report, "render", progress)
        report.seconds["render"] = time.perf_counter() - t

        # 3. pages
        t = time.perf_counter()
        link_key = hashlib.sha256(json.dumps(sorted(pages_set)).encode()).hexdigest()[:16]
        pjobs = [_page_job(ex, layer, data[layer], link_key, salt, cases_docs.get(layer)) for layer in ex.layers]
        pjobs.append(Job("page", {"page": "index", "layers": ex.layers,
                                  "units": {k: v for k, v in ex.units.items()}}, ("index.html",), salt))
        _run(executor, pjobs, root, report, "page", progress)
        report.seconds["page"] = time.perf_counter() - t
        report.pages = len(pages_set)
    except BaseException:  # an error or Ctrl-C: do not wait for the jobs the workers are running
        getattr(executor, "abort", executor.close)()
        raise
    executor.close()
    return report


def plan_pages(ex: Explorer) -> dict[str, list[int]]:
    """The unit pages a build makes: ``{layer: units}``."""
    return {layer: list(ex.units[layer]) for layer in ex.layers}


def _run(executor, jobs: list[Job], root: Path, report: BuildReport, stage: str, progress: Progress | None):
    todo = []
    for j in jobs:
        if is_done(root, j):
            report.skipped[j.kind] += 1
        else:
            todo.append(j)
    total = len(jobs)
    done = total - len(todo)
    if progress:
        progress(stage, done, total)
    for job, _ in executor.imap(run_job, [_with_root(j, root) for j in todo]):
        mark_done(root, job)
        report.run[job.kind] += 1
        done += 1
        if progress:
            progress(stage, done, total)


def _with_root(job: Job, root: Path) -> Job:
    return Job(job.kind, {**job.inputs, "_root": str(root.resolve())}, job.outputs, job.salt, key=job.key)


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


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ----------------------------------------------------------------------------------- worker state
def _worker_spec(ex: Explorer) -> nn.Module:
    """The model workers use: the loaded module itself (pickled once per worker), never the spec string:
    a spec with random init would give every process different weights."""
    return ex.model


def _cache_arg(ex: Explorer):
    return str(ex.render_cache.path) if ex.render_cache is not None else None


def _init_worker(model, layers, units, config, cache, name, expected_hash) -> Explorer:
    ex = Explorer(model, layers, units, config=config, render_cache=cache, name=name)
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


def _run_cases(ex: Explorer, root: Path, inp: dict) -> int:
    layer = inp["layer"]
    doc = {"layer": layer, "units": {str(u): pages.cases_data(ex, layer, u) for u in inp["units"]}}
    _write_bytes(root / _cases_path(layer), json.dumps(doc).encode())
    return 1


# ------------------------------------------------------------------------------------- running jobs
def run_job(ex: Explorer, job: Job) -> int:
    """Run one job on an :class:`Explorer` (in any process); returns the number of files written."""
    root = Path(job.inputs["_root"])
    if job.kind == "weights":
        return _run_weights(ex, root, job.inputs)
    if job.kind == "render":
        return _run_render(ex, root, job.inputs)
    if job.kind == "cases":
        return _run_cases(ex, root, job.inputs)
    return _run_page(ex, root, job.inputs)


def _run_weights(ex: Explorer, root: Path, inp: dict) -> int:
    layer = inp["layer"]
    sources = [Source(s, label, kind) for s, label, kind in inp["sources"]]
    written = 0
    units_data = {}
    for u in inp["units"]:
        d = pages.unit_data(ex, layer, u, sources)
        units_data[str(u)] = d
        for s in d["sources"]:
            src = s["src"]
            if s.get("error"):
                continue
            _write_bytes(root / P.nmf_path(layer, src, u), pages.nmf_png(ex, layer, src, u))
            for c in s["items"]:
                _write_bytes(root / P.heatmap_path(layer, src, u, c["unit"]),
                             pages.heatmap_png(ex, layer, src, u, c["unit"]))
            for f in s["factors"]:
                _write_bytes(root / P.fmap_path(layer, src, u, f["index"]),
                             pages.fmap_png(ex, layer, src, u, f["index"]))
            written += 1 + len(s["items"]) + len(s["factors"])
        if d["outputs"]:
            o = d["outputs"]
            for c in o["items"]:
                _write_bytes(root / P.out_path(layer, o["layer"], u, c["unit"]),
                             pages.out_png(ex, layer, o["layer"], u, c["unit"]))
            written += len(o["items"])
    doc = {"layer": layer, "units": units_data}
    _write_bytes(root / _data_path(layer), json.dumps(doc).encode())
    return written + 1


def _run_render(ex: Explorer, root: Path, inp: dict) -> int:
    layer = inp["layer"]
    if inp["what"] == "units":
        images = ex.render_units(layer, inp["units"])
        for u, img in zip(inp["units"], images):
            _write_bytes(root / P.fv_path(layer, u), _png.fv_png(img))
        return len(images)
    src = inp["src"]
    data = _load_data(root, layer)["units"]  # the vectors exactly as the pages list their loadings
    vectors = []
    for u, f in inp["items"]:
        s = next(s for s in data[str(u)]["sources"] if s["src"] == src)
        vectors.append(torch.tensor(next(x for x in s["factors"] if x["index"] == f)["vector"]))
    images = ex.render_directions(src, vectors)
    for (u, f), img in zip(inp["items"], images):
        _write_bytes(root / P.factor_path(layer, src, u, f), _png.fv_png(img))
    return len(images)


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
    for u in inp["units"]:
        html = pages.unit_html(ex, data["units"][str(u)], "static", linker, cases=cases.get(str(u)))
        _write_bytes(root / P.unit_path(layer, u), html.encode())
    return 1 + len(inp["units"])


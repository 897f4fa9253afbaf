"""The explorer's build jobs and what runs them: one constructor per job kind (``weights``, ``render``,
``examples``, ``cases``, ``page``), the worker's :class:`~.data.Explorer` and :func:`produce_job` /
:func:`run_job`, which turn a job's inputs into the bytes of its files. :mod:`.site` plans and orders them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from . import _png, pages
from . import paths as P
from .config import Source
from .data import Explorer
from .jobs import Job, site_json, write_file

__all__ = ["produce_job", "run_job"]


# ----------------------------------------------------------------------------------- worker state
def _worker_spec(ex: Explorer) -> nn.Module:
    """The model workers use: the loaded module itself (pickled once per worker, as a CPU copy when it
    lives on a GPU; each worker moves it to its own device), never the spec string: a spec with random
    init would give every process different weights."""
    from ..models import model_device

    if model_device(ex.model).type == "cpu":
        return ex.model
    import copy

    return copy.deepcopy(ex.model).to("cpu")


def _cache_arg(ex: Explorer):
    return str(ex.render_cache.path) if ex.render_cache is not None else None


def _init_worker(model, layers, units, config, cache, name, expected_hash, device="cpu") -> Explorer:
    from ..models import to_device

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
    if ex.config.cases:   # all the layer's units from one shared data pass
        ex.prefetch_cases(layer, inp["units"], ex.primary_source(layer))
    doc = {"layer": layer, "units": {str(u): pages.cases_data(ex, layer, u) for u in inp["units"]}}
    return {_cases_path(layer): site_json(doc)}


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
        write_file(root / rel, data)
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
    files[_data_path(layer)] = site_json(doc)  # last: written after the images it lists
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
    files[_examples_path(layer)] = site_json(doc)  # last: written after the crops it lists
    return files


def _run_page(ex: Explorer, root: Path, inp: dict) -> int:
    built = {(layer, u) for layer in ex.layers for u in ex.units[layer]}

    def linker(layer: str, unit: int) -> bool:
        return (layer, unit) in built

    if inp["page"] == "index":
        write_file(root / "index.html", pages.index_html(ex, ex.units, "static").encode())
        return 1
    layer = inp["layer"]
    data = _load_data(root, layer)
    primary = ex.primary_source(layer)
    nmf_ok = all(not s.get("error") for d in data["units"].values() for s in d["sources"] if s["src"] == primary)
    write_file(root / P.layer_path(layer), pages.layer_html(ex, layer, inp["units"], "static", nmf=nmf_ok).encode())
    cases = _load_cases(root, layer)["units"] if "cases" in inp else {}
    examples = _load_examples(root, layer) if ex.config.examples > 0 else {}
    for u in inp["units"]:
        html = pages.unit_html(ex, data["units"][str(u)], "static", linker, cases=cases.get(str(u)),
                               examples=examples.get(str(u)))
        write_file(root / P.unit_path(layer, u), html.encode())
    return 1 + len(inp["units"])


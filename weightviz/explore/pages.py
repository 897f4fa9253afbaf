"""Pages and images of the explorer, shared by the static site and the live server.

- :func:`unit_data`: everything a unit page shows, as JSON-able data (written by the site's
  ``weights`` jobs, cached by the server);
- :func:`index_html`, :func:`layer_html`, :func:`unit_html`: jinja2 pages from that data, with relative
  links; a ``linker(layer, unit)`` decides which units get a link (the static site links only units it
  built, the server links every unit);
- ``*_png`` producers: the images at the paths of :mod:`.paths`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import __version__
from ..errors import WeightvizError
from ..models import is_random_init, model_label, weights_source
from . import _png
from . import paths as P
from .config import Source
from .data import Explorer

__all__ = [
    "cases_data",
    "error_html",
    "example_png",
    "examples_data",
    "fmap_png",
    "heatmap_png",
    "index_html",
    "layer_html",
    "nmf_png",
    "out_png",
    "unit_data",
    "unit_html",
]

Linker = Callable[[str, int], bool]
_RGB = ("R", "G", "B")


@functools.lru_cache(maxsize=1)
def environment():
    """The jinja2 environment over the package's templates (autoescaped)."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("weightviz.explore", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _base(ex: Explorer, page_path: str, mode: str) -> dict[str, Any]:
    cfg = ex.config
    return {
        "root": P.relative_root(page_path),
        "mode": mode,
        "version": __version__,
        "model": {"name": model_label(ex.model, ex.name), "hash": ex.hash, "random_init": is_random_init(ex.model),
                  "weights": weights_source(ex.model)},
        "fvcfg": {"size": cfg.size, "steps": cfg.steps, "seed": cfg.seed},
    }


def _shape(info) -> str:
    return "×".join(str(v) for v in info.out_shape) if info.out_shape else "-"


# ------------------------------------------------------------------------------------------- data
def _banding_text(b: dict | None, unit: int) -> tuple[float | None, str]:
    if b is None:
        return None, "not defined for 1×1 kernels"
    s = float(b["score"][unit])
    ph, pv, alpha = float(b["p_h"][unit]), float(b["p_v"][unit]), float(b["alpha"])
    if ph < alpha:
        return s, f"horizontal bands, p = {ph:.3g} against shuffled positions"
    if pv < alpha:
        return s, f"vertical bands, p = {pv:.3g} against shuffled positions"
    return s, f"no significant banding (p ≥ {alpha:g} against shuffled positions)"


def source_data(ex: Explorer, layer: str, unit: int, source: Source) -> dict[str, Any]:
    """The inputs panel of one unit from one source (JSON-able)."""
    src = source.layer
    W = ex.weights_from(src, layer)
    conns = ex.top_inputs(layer, unit, src)
    score, text = _banding_text(ex.banding(layer, src), unit)
    factors = []
    for f in ex.factors(layer, unit, src):
        factors.append({
            "index": f["index"], "color": f["color"],
            "vector": [round(float(v), 7) for v in f["vector"]],
            "items": [{"layer": src, "unit": i, "load": load, "sign": sign} for i, load, sign in f["items"]],
        })
    return {
        "src": src,
        "label": source.label,
        "kind": ("direct connection (norm layers folded in, activations linearized)" if source.kind == "direct"
                 else "expanded weights through the layers in between (nonlinearities linearized)"),
        "c_in": int(W.shape[1]),
        "kh": int(W.shape[2]),
        "kw": int(W.shape[3]),
        "vmax": _vmax(W[unit]),
        "banding": score,
        "banding_text": text,
        "items": [{"layer": src, "unit": c.channel, "norm": c.norm, "sign": c.sign} for c in conns],
        "factors": factors,
    }


def unit_data(ex: Explorer, layer: str, unit: int, sources: Sequence[Source] | None = None) -> dict[str, Any]:
    """Everything the page of ``unit`` of ``layer`` shows, as JSON-able data: one inputs panel per
    source (default :meth:`Explorer.sources`), and the outputs panel (next explored layer)."""
    unit = ex.check_unit(layer, unit)
    sources = list(sources) if sources is not None else ex.sources(layer)
    data: dict[str, Any] = {"layer": layer, "unit": unit, "sources": [], "outputs": None, "outputs_error": None}
    for s in sources:
        try:
            data["sources"].append(source_data(ex, layer, unit, s))
        except WeightvizError as e:  # e.g. an op on the way that cannot be linearized: say so in its panel
            data["sources"].append({"src": s.layer, "label": s.label, "error": str(e)})
    try:
        top = ex.top_outputs(layer, unit)
    except WeightvizError as e:
        top, data["outputs_error"] = None, str(e)
    if top is not None:
        nxt, W, items = top
        data["outputs"] = {
            "layer": nxt, "kh": int(W.shape[2]), "kw": int(W.shape[3]), "vmax": _vmax(W[:, unit]),
            "items": [{"layer": nxt, "unit": c.channel, "norm": c.norm, "sign": c.sign} for c in items],
        }
    votes = ex.class_votes(layer)
    if votes is not None:
        from ..expand import rank_classes

        names, V = votes
        r = rank_classes(V[:, unit], names, 5)
        data["classes"] = {
            "top": [{"index": i, "value": v, "name": n} for i, v, n in r.rows()],
            "bottom": [{"index": i, "value": v, "name": n} for i, v, n in r.bottom.rows()],
        }
    return data


def examples_data(ex: Explorer, layer: str, unit: int) -> dict[str, Any] | None:
    """The dataset-examples section of a unit page (JSON-able): the ``config.examples`` images of the
    explorer's image set that activate the unit most (:meth:`Explorer.unit_examples`), or ``None`` when
    the section is off (``examples=0``). ``fires`` is False when the unit fires on none of the images."""
    if ex.config.examples < 1:
        return None
    unit = ex.check_unit(layer, unit)
    try:
        r = ex.unit_examples(layer, unit)
    except WeightvizError as e:  # e.g. images the model cannot take: say so in the section
        return {"layer": layer, "unit": unit, "error": str(e)}
    imgs = ex.example_image_set()
    return {
        "layer": layer, "unit": unit, "n_images": r.n_images, "fires": r.fires, "max_value": r.max_value,
        "source": "the embedded natural images" if ex.config.images is None else ex.config.images,
        "size": int(imgs.size), "crop": [int(v) for v in r.images.shape[-2:]],
        "items": [{"index": int(i), "value": float(v)} for i, v in zip(r.indices, r.values)],
    }


def example_png(ex: Explorer, layer: str, unit: int, j: int) -> bytes:
    """The ``j``-th dataset-example crop of ``unit`` (downscaled PNG); ``IndexError`` past the last."""
    r = ex.unit_examples(layer, unit)
    if not 0 <= j < len(r):
        raise IndexError(j)
    return _png.crop_png(r.images[j])


# ------------------------------------------------------------------------------------ cases panel
def _data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def cases_data(ex: Explorer, layer: str, unit: int) -> dict[str, Any] | None:
    """The cases panel of a unit page (JSON-able; ``None`` when ``config.cases`` is 0): the gradients of
    the unit w.r.t. its primary source over the explorer's image set, factored into cases
    (:meth:`Explorer.cases`); each case's top inputs with the case's gradient and the expanded weight as
    inline heatmaps on one scale, and the example crops that carry it. A unit that never fires on the
    images (or too few firing images) gets ``{"error": ...}``."""
    if not ex.config.cases:
        return None
    src = ex.primary_source(layer)
    out: dict[str, Any] = {"src": src}
    try:
        c = ex.cases(layer, unit, src)
    except WeightvizError as e:
        return {**out, "error": str(e)}
    P_ = c.patterns.detach().float().cpu()
    E = c.expanded.detach().float().cpu()
    shown = [[t.channel for t in ti] for ti in c.top_inputs]
    vmax = _vmax(torch.cat([P_[j, ch] for j, ch in enumerate(shown)] + [E[sum(shown, [])]]))
    rows = []
    for j, ti in enumerate(c.top_inputs):
        ex_j = c.examples[j]
        rows.append({
            "share": float(c.share[j]),
            "inputs": [{"layer": src, "unit": t.channel, "norm": t.norm, "sign": t.sign,
                        "grad": _data_uri(_png.heatmap_png(P_[j, t.channel], vmax, min_px=48)),
                        "expanded": _data_uri(_png.heatmap_png(E[t.channel], vmax, min_px=48))} for t in ti],
            "examples": [{"index": int(i), "act": float(a),
                          "img": _data_uri(_png.rgb_png(ex_j.crops[e].permute(1, 2, 0)
                                                        if ex_j.crops.shape[1] == 3 else
                                                        ex_j.crops[e].mean(0)[..., None].expand(-1, -1, 3),
                                                        min_px=48))}
                         for e, (i, a) in enumerate(zip(ex_j.indices, ex_j.activations.tolist()))],
        })
    d = c.data
    return {**out, "n_images": int(d.weights.shape[0]), "n_firing": int((d.activations > 0).sum()),
            "explained": float(c.explained), "norm_ratio": float(c.norm_ratio()), "vmax": vmax,
            "kh": int(P_.shape[-2]), "kw": int(P_.shape[-1]), "cases": rows}


def _vmax(w: torch.Tensor) -> float:
    m = float(w.abs().max()) if w.numel() else 0.0
    return m if m > 0 else 1.0


# ------------------------------------------------------------------------------------------- images
def nmf_png(ex: Explorer, layer: str, src: str | None, unit: int) -> bytes:
    """The unit's NMF image (RGB weights straight from a 3-channel input), upscaled."""
    return _png.rgb_png(ex.nmf(layer, src)["image"][unit])


def heatmap_png(ex: Explorer, layer: str, src: str | None, unit: int, inp: int) -> bytes:
    """Heatmap of ``W[unit, inp]`` (weights from ``src`` channel ``inp``), on the scale shared by all of
    the unit's slices from ``src`` (its abs max)."""
    W = ex.weights_from(src, layer)
    return _png.heatmap_png(W[unit, inp], _vmax(W[unit]))


def out_png(ex: Explorer, layer: str, nxt: str, unit: int, out: int) -> bytes:
    """Heatmap of the slice from ``unit`` of ``layer`` to unit ``out`` of ``nxt``, on the scale shared
    by all of ``unit``'s outgoing slices."""
    W = ex.weights_from(layer, nxt)
    return _png.heatmap_png(W[out, unit], _vmax(W[:, unit]))


def fmap_png(ex: Explorer, layer: str, src: str | None, unit: int, factor: int) -> bytes:
    """Spatial map of weight factor ``factor``: its colour, brightness = the factor's weight at each
    position (divided by its max)."""
    for f in ex.factors(layer, unit, src):
        if f["index"] == factor:
            m = f["map"]
            m = m / m.max().clamp(min=1e-12)
            img = m[..., None] * torch.tensor(f["rgb"])[None, None, :]
            return _png.rgb_png(img)
    raise KeyError(factor)


def factor_vector(ex: Explorer, layer: str, src: str | None, unit: int, factor: int) -> torch.Tensor:
    for f in ex.factors(layer, unit, src):
        if f["index"] == factor:
            return f["vector"]
    raise KeyError(factor)


# -------------------------------------------------------------------------------------------- pages
def _conn(c: dict, here: str, linker: Linker, n_in: int | None = None) -> dict:
    """A connection card's fields: its unit's FV, the heatmap, the link (if ``linker`` allows)."""
    src = c["layer"]
    item = dict(c)
    if src is None:  # a channel of the model input: no FV, no page
        item["fv"] = None
        item["href"] = None
        item["name"] = _RGB[c["unit"]] if n_in == 3 else f"input {c['unit']}"
    else:
        item["fv"] = P.fv_path(src, c["unit"])
        item["href"] = P.unit_path(src, c["unit"]) if linker(src, c["unit"]) else None
        item["name"] = None
    return item


def unit_html(ex: Explorer, data: dict[str, Any], mode: str, linker: Linker,
              choices: Sequence[str] = (), chosen: str | None = None, cases: dict | None = None,
              examples: dict[str, Any] | None = None) -> str:
    """The unit page from :func:`unit_data` output (and the :func:`cases_data` panel, the
    :func:`examples_data` dataset-examples section, if given)."""
    layer, unit = data["layer"], data["unit"]
    here = P.unit_path(layer, unit)
    info = ex.info(layer)
    sources = []
    for s in data["sources"]:
        src = s["src"]
        if s.get("error"):
            sources.append({**s, "layer_label": src or "the model input"})
            continue
        items = []
        for c in s["items"]:
            item = _conn(c, here, linker, s["c_in"])
            item.update(heatmap=P.heatmap_path(layer, src, unit, c["unit"]), kh=s["kh"], kw=s["kw"])
            items.append(item)
        factors = []
        for f in s["factors"]:
            factors.append({
                "color": f["color"],
                "map": P.fmap_path(layer, src, unit, f["index"]),
                "fv": P.factor_path(layer, src, unit, f["index"]) if ex.config.factor_fvs else None,
                "conns": [dict(_conn(c, here, linker, s["c_in"]), load=abs(c["load"])) for c in f["items"]],
            })
        sources.append({**s, "conns": items, "factors": factors, "nmf": P.nmf_path(layer, src, unit),
                        "layer_label": src or "the model input"})
    outputs = None
    if data["outputs"]:
        o = data["outputs"]
        items = []
        for c in o["items"]:
            item = _conn(c, here, linker)
            item.update(heatmap=P.out_path(layer, o["layer"], unit, c["unit"]), kh=o["kh"], kw=o["kw"])
            items.append(item)
        outputs = {**o, "conns": items, "kind": "expanded weights"}
    n = ex.channels(layer)
    primary = ex.primary_source(layer)
    ctx = {
        **_base(ex, here, mode),
        "layer": {"name": layer, "type": info.type, "channels": n, "out_shape": _shape(info),
                  "href": P.layer_path(layer)},
        "unit": unit,
        "fv": P.fv_path(layer, unit),
        "nmf": P.nmf_path(layer, primary, unit) if any(
            s["src"] == primary and not s.get("error") for s in data["sources"]) else None,
        "nmf_label": f"from {primary or 'the input'}",
        "self_href": here,
        "prev_href": P.unit_path(layer, unit - 1) if unit > 0 and linker(layer, unit - 1) else None,
        "next_href": P.unit_path(layer, unit + 1) if unit + 1 < n and linker(layer, unit + 1) else None,
        "sources": sources,
        "choices": list(choices),
        "chosen": chosen,
        "no_inputs": "No inputs to show.",
        "outputs": outputs,
        "classes": data.get("classes"),
        "examples": _examples_ctx(examples),
        "cases": _cases_ctx(cases, here, linker),
        "no_outputs": (f"Cannot compute the outputs: {data['outputs_error']}" if data.get("outputs_error") else
                       "This is the last explored layer; explore a later layer to see where its units lead."
                       if mode == "static" else "This is the last explored layer."),
    }
    return environment().get_template("unit.html").render(ctx)


def _examples_ctx(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None or d.get("error"):
        return d
    items = [{**it, "png": P.example_path(d["layer"], d["unit"], j)} for j, it in enumerate(d["items"])]
    return {**d, "items": items}


def _cases_ctx(cases: dict | None, here: str, linker: Linker) -> dict | None:
    """Template fields of the cases panel: FV and link of each input (as the connection cards)."""
    if cases is None or cases.get("error"):
        return cases
    rows = []
    for r in cases["cases"]:
        ins = [{**c, **{k: v for k, v in _conn(c, here, linker).items() if k in ("fv", "href", "name")}}
               for c in r["inputs"]]
        rows.append({**r, "inputs": ins})
    return {**cases, "cases": rows}


def _source_label(ex: Explorer, layer: str) -> str:
    src = ex.primary_source(layer)
    pred = ex.predecessor(layer)
    if src is None:
        return "straight from the model input"
    return f"from {src} ({'direct' if src == pred else 'expanded'})"


LAYER_PAGE_SIZE = 256  # unit cards shown at once on a layer page (explore.js pages through the rest)


def layer_html(ex: Explorer, layer: str, units: Sequence[int], mode: str, nmf: bool = True) -> str:
    """The layer page: FV and NMF image of each unit in ``units`` (``nmf=False``: the weights from the
    primary source could not be computed, show FVs only)."""
    here = P.layer_path(layer)
    info = ex.info(layer)
    src = ex.primary_source(layer)
    ctx = {
        **_base(ex, here, mode),
        "layer": {"name": layer, "type": info.type, "channels": ex.channels(layer), "out_shape": _shape(info),
                  "source_label": _source_label(ex, layer)},
        "units": [{"unit": u, "href": P.unit_path(layer, u), "fv": P.fv_path(layer, u),
                   "nmf": P.nmf_path(layer, src, u) if nmf else None} for u in units],
        "page_size": LAYER_PAGE_SIZE,
    }
    return environment().get_template("layer.html").render(ctx)


def index_html(ex: Explorer, units: dict[str, Sequence[int]], mode: str, others: Sequence[str] = (),
               preview: int = 8) -> str:
    """The index: one row per explored layer (with a strip of the first FVs), plus — on the live
    server — every other explorable layer."""
    rows = []
    for layer in ex.layers:
        info = ex.info(layer)
        us = list(units.get(layer, []))
        rows.append({
            "name": layer, "type": info.type, "channels": ex.channels(layer), "n_pages": len(us),
            "out_shape": _shape(info), "href": P.layer_path(layer), "source_label": _source_label(ex, layer),
            "preview": [{"unit": u, "href": P.unit_path(layer, u), "fv": P.fv_path(layer, u)} for u in us[:preview]],
        })
    extra = [{"name": n, "type": ex.info(n).type, "channels": ex.channels(n), "href": P.layer_path(n)}
             for n in others]
    ctx = {**_base(ex, "index.html", mode), "layers": rows, "others": extra}
    return environment().get_template("index.html").render(ctx)


def error_html(ex: Explorer, message: str, mode: str = "server", status: int = 404) -> str:
    """A not-found page (links are absolute: it may answer any path)."""
    ctx = {**_base(ex, "index.html", mode), "root": "/", "message": message, "status": status}
    return environment().get_template("404.html").render(ctx)

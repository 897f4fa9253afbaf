"""Figures of data-conditioned connections (:mod:`weightviz.conditioned`): the cases of a connection over
an image set, and per-example gradients, each input heatmap labelled by the FV of its input neuron (as
in :func:`~weightviz.figures.top_inputs`) and shown beside the expanded weight on the same scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..conditioned import STABILITY_WARN, Cases, DataWeights
from ..errors import WeightvizError
from ._core import Figure, shared_scale
from ._fv import FVBatch, FVOptions
from ._layout import EXCITATORY, INHIBITORY, LABEL_H, Canvas
from ._registry import register_figure

__all__ = ["cases", "cases_figure", "data_weights", "data_weights_figure"]


def _sign(x: float) -> tuple[str, str]:
    if x > 0:
        return "exc", EXCITATORY
    if x < 0:
        return "inh", INHIBITORY
    return "zero", "#999999"


def _crop_img(t: torch.Tensor) -> np.ndarray:
    """``[C, h, w]`` in [0, 1] -> ``[h, w, C]`` for a tile (other than 1 or 3 channels: their mean, grey)."""
    t = t.detach().float().clamp(0, 1)
    if t.shape[0] not in (1, 3):
        t = t.mean(0, keepdim=True)
    return t.permute(1, 2, 0).cpu().numpy()


def _check_pos_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise WeightvizError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _src_name(src: str | None) -> str:
    return src if src is not None else "input"


def cases_figure(
    res: Any,
    *,
    k: int = 6,
    n_examples: int = 4,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Draw a :class:`weightviz.Cases` (``weightviz.figures.cases(result)`` calls this).

    One row per case: the images that load most on it (crops of what the unit's chosen position reads),
    then its ``k`` strongest input channels, each as the FV of the ``src`` channel, the case's gradient
    pattern ``[K, K]`` and, below it, the expanded weight of the same channel, all heatmaps on ONE shared
    abs-max scale (so a case that the expanded weight cancels shows up as strong above pale).

    ``.data``: ``cases`` (per case: ``inputs``, ``signs``, ``examples``, ``share``), ``explained``,
    ``norm_ratio`` (mean per-example gradient norm / expanded-weight norm), ``vmax``.
    """
    from ..conditioned import Cases

    if not isinstance(res, Cases):
        raise WeightvizError(f"cases_figure draws a weightviz.Cases result, got {type(res).__name__}")
    k = _check_pos_int(k, "k")
    n_examples = _check_pos_int(n_examples, "n_examples")
    opts = FVOptions.of(fv, fv_options)
    d = res.data
    m: nn.Module = d.model
    src, dst, unit = d.src, d.dst, d.unit
    P = res.patterns.detach().float().cpu()                        # [n_cases, C, K, K]
    E = res.expanded.detach().float().cpu()                        # [C, K, K]
    kk = min(k, P.shape[1])
    chans = [[c.channel for c in ti[:kk]] for ti in res.top_inputs]
    vmax = shared_scale(torch.cat([P[j, chans[j]] for j in range(res.n_cases)] + [E[sum(chans, [])]]))

    fvb = FVBatch(m, opts)
    unit_key = fvb.channel(dst, unit)
    in_keys = [[fvb.channel(src, c) if src is not None else None for c in cs] for cs in chans]
    fvb.render()

    cell, gap, tile = 0.8, 0.1, 0.62
    kh, kw = P.shape[-2:]
    heat_h = cell * kh / kw
    n_ex = max((len(e.indices) for e in res.examples), default=0)
    ex_cols = 2 if n_ex > 2 else max(1, n_ex)
    x_in = ex_cols * (tile + 0.06) + 0.3
    cv = Canvas()
    cv.image(0, 0.25, 1.2, fvb[unit_key], label=f"{dst}\nunit {unit}", lines=2)
    n_img = int(d.weights.shape[0])
    n_fire = int((d.activations > 0).sum())
    ratio = res.norm_ratio()
    lines = [
        f"{res.n_cases} cases of the gradient of {dst} #{unit} w.r.t. {_src_name(src)} "
        f"({'max' if d.position == 'max' else d.position} position) over {n_img} images; the unit fires on {n_fire}",
        f"the cases explain {100 * res.explained:.0f}% of the firing-weighted gradient sum of squares",
        f"mean per-example gradient norm / expanded-weight norm = {ratio:.3g}"
        + ("  (the expanded weight cancels)" if ratio > 3 else ""),
        "rows: the images that carry each case (what the unit reads); per input: its FV, the case's",
        "gradient, and below it the expanded weight of the same input, all on one scale",
    ]
    stability = float(getattr(res, "stability", 1.0))
    if stability < STABILITY_WARN:
        lines.insert(2, f"NOTE: the cases are not unique (stability {stability:.2f} < {STABILITY_WARN}): restarts of the "
                        "factorization find other cases; they may mix the true ones")
    for i, s in enumerate(lines):
        cv.text(1.45, 0.3 + i * 0.2, s, size=7.5)
    y = 0.25 + 1.2 + 2 * LABEL_H + 0.35
    row_h = cell + 0.05 + heat_h + LABEL_H + 0.05 + heat_h + LABEL_H + 0.45
    rows = []
    for j in range(res.n_cases):
        ex = res.examples[j]
        share = float(res.share[j])
        cv.text(0, y - 0.05, f"case {j + 1}: {100 * share:.0f}% of the loadings", size=7.5, va="bottom",
                weight="bold")
        for e, idx in enumerate(ex.indices):
            r, c = divmod(e, ex_cols)
            img = _crop_img(ex.crops[e]) if ex.crops is not None else None
            cv.image(c * (tile + 0.06), y + 0.05 + r * (tile + LABEL_H + 0.04), tile, img,
                     label=f"img {idx}: {float(ex.activations[e]):.2g}")
        for i, ch in enumerate(chans[j]):
            x = x_in + i * (cell + gap)
            key = in_keys[j][i]
            cv.image(x, y + 0.05, cell, fvb[key] if key is not None else None,
                     label=None if key is not None else f"input ch {ch}")
            w = P[j, ch]
            word, colour = _sign(float(w.sum()))
            yh = y + 0.05 + cell + 0.05
            cv.heat(x, yh, cell, w, vmax, border=colour, label=f"#{ch} {word}")
            cv.heat(x, yh + heat_h + LABEL_H + 0.05, cell, E[ch], vmax,
                    label=f"expanded {float(E[ch].norm()):.2g}")
        rows.append({"inputs": chans[j], "signs": [int(np.sign(float(P[j, c].sum()))) for c in chans[j]],
                     "examples": list(ex.indices), "share": share,
                     "pattern_norms": [float(P[j, c].norm()) for c in chans[j]]})
        y += row_h
    cv.colorbar(x_in + kk * (cell + gap) + 0.1, 0.25 + 1.2 + 2 * LABEL_H + 0.45, 1.2, vmax, title="gradient")
    title = f"cases: {_src_name(src)} \u2192 {dst} unit {unit}"
    data = {
        "figure": "cases", "src": src, "dst": dst, "unit": unit, "n_cases": res.n_cases, "cases": rows,
        "explained": float(res.explained), "norm_ratio": ratio, "vmax": vmax, "n_images": n_img,
        "n_firing": n_fire, "fv": opts.enabled, "units": [unit], "stability": stability,
        "note": lines[2] if stability < STABILITY_WARN else None,
    }
    return _marked(cv.figure(data, title=title), m)


def data_weights_figure(
    d: Any,
    *,
    n_examples: int = 6,
    k: int = 6,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Draw a :class:`weightviz.DataWeights` (``weightviz.figures.data_weights(result)`` calls this): the ``n_examples``
    images on which the unit is most active, one row each (the crop it reads, then its gradient for the
    ``k`` inputs strongest on average over those rows), with the expanded weight of the same inputs as the
    last row, all on one shared scale; FVs of the inputs on top."""
    from ..conditioned import DataWeights
    from ..expand import expanded_weights

    if not isinstance(d, DataWeights):
        raise WeightvizError(f"data_weights_figure draws a weightviz.DataWeights result, got {type(d).__name__}")
    if isinstance(d.unit, list):
        raise WeightvizError(f"data_weights_figure draws one unit; this result holds {len(d.unit)} units: draw "
                             "d.for_unit(u)")
    n_examples = _check_pos_int(n_examples, "n_examples")
    k = _check_pos_int(k, "k")
    opts = FVOptions.of(fv, fv_options)
    m, src, dst, unit = d.model, d.src, d.dst, d.unit
    G = d.weights.detach().float().cpu()
    order = d.activations.argsort(descending=True, stable=True)[: min(n_examples, G.shape[0])].tolist()
    strength = G[order].flatten(2).norm(dim=2).mean(0)             # [C]
    chans = strength.argsort(descending=True, stable=True)[: min(k, G.shape[1])].tolist()
    E = expanded_weights(m, src, dst, units=[unit])[0].detach().float().cpu()
    vmax = shared_scale(torch.cat([G[order][:, chans].flatten(0, 1), E[chans]]))
    crops = d.crops(order)

    fvb = FVBatch(m, opts)
    keys = [fvb.channel(src, c) if src is not None else None for c in chans]
    unit_key = fvb.channel(dst, unit)
    fvb.render()

    cell, gap = 0.75, 0.08
    kh, kw = G.shape[-2:]
    heat_h = cell * kh / kw
    x0 = cell + 0.35
    cv = Canvas()
    cv.image(0, 0.1, cell, fvb[unit_key], label=f"{dst} #{unit}")
    for i, c in enumerate(chans):
        cv.image(x0 + i * (cell + gap), 0.1, cell, fvb[keys[i]] if keys[i] is not None else None,
                 label=f"{_src_name(src)} #{c}")
    y = 0.1 + cell + LABEL_H + 0.2
    what = "gradient x activation" if d.attribution else "gradient"
    for r, n in enumerate(order):
        cv.image(0, y, cell * 0.9, _crop_img(crops[r]), label=f"img {n}: {float(d.activations[n]):.2g}")
        for i, c in enumerate(chans):
            cv.heat(x0 + i * (cell + gap), y, cell, G[n, c], vmax)
        y += max(cell * 0.9, heat_h) + LABEL_H + 0.08
    cv.text(0, y + heat_h / 2, "expanded", va="center", width=cell)
    for i, c in enumerate(chans):
        cv.heat(x0 + i * (cell + gap), y, cell, E[c], vmax, border="#555555")
    cv.colorbar(x0 + len(chans) * (cell + gap) + 0.1, 0.1 + cell + LABEL_H + 0.3, 1.2, vmax, title=what)
    title = f"per-example {what}: {_src_name(src)} \u2192 {dst} unit {unit}"
    data = {"figure": "data-weights", "src": src, "dst": dst, "unit": unit, "examples": order, "inputs": chans,
            "vmax": vmax, "attribution": d.attribution, "fv": opts.enabled, "units": [unit]}
    return _marked(cv.figure(data, title=title), m)


def _marked(fig: Figure, model: nn.Module) -> Figure:
    """The "random init" footer of registered figures, for figures drawn from a result."""
    from ..models import is_random_init

    if is_random_init(model):
        fig.mark_random_init()
    return fig


@register_figure("cases", result=(Cases, cases_figure))
def cases(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    unit: int,
    images: Any = None,
    n_cases: int = 2,
    *,
    k: int = 6,
    n_examples: int = 4,
    position: Any = "max",
    nmf_seed: int = 0,
    batch_size: int | None = None,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """The cases of the connection ``src -> dst[unit]`` over an image set (:func:`weightviz.cases`),
    drawn by :func:`cases_figure`. ``images``: an image set, a folder or a prepared tensor (default: the
    embedded images).

    >>> cases("efficientnet_lite0", "blocks.2.0", "blocks.3.0", 5, n_cases=2).save("cases.png")  # doctest: +SKIP
    """
    opts = FVOptions.of(fv, fv_options)   # bad FV options fail before the data pass
    from ..conditioned import cases as compute

    k = _check_pos_int(k, "k")
    n_examples = _check_pos_int(n_examples, "n_examples")
    res = compute(model, src, dst, unit, images, n_cases, position=position, k=k, n_examples=n_examples,
                  seed=nmf_seed, batch_size=batch_size, progress=opts.progress)
    return cases_figure(res, k=k, n_examples=n_examples, fv=opts)


@register_figure("data-weights", result=(DataWeights, data_weights_figure))
def data_weights(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    unit: int,
    images: Any = None,
    *,
    n_examples: int = 6,
    k: int = 6,
    position: Any = "max",
    attribution: bool = False,
    batch_size: int | None = None,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Per-example connections (:func:`weightviz.data_weights`) drawn by :func:`data_weights_figure`.

    >>> data_weights("efficientnet_lite0", "blocks.2.0", "blocks.3.0", 5).save("dw.png")  # doctest: +SKIP
    """
    opts = FVOptions.of(fv, fv_options)
    from ..conditioned import data_weights as compute

    d = compute(model, src, dst, unit, images, position=position, attribution=attribution, batch_size=batch_size,
                progress=opts.progress)
    return data_weights_figure(d, n_examples=n_examples, k=k, fv=opts)



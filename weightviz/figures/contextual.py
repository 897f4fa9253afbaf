"""Contextual weight figures (article: "Contextualizing weights", "Small multiples", "Visualizing
spatial position weights", expanded weights): weights between neurons, each labelled by the feature
visualizations (FV) of the neurons it connects.

Every builder takes a model (an ``nn.Module`` or a spec such as ``"efficientnet_lite0"``), layer names
from :func:`weightviz.layers`, and either direct weights (``src=None``: the destination conv's own
weights; its inputs are the channels of the layer that feeds it) or expanded weights from a named
source layer (``src="blocks.2.0"``: :func:`weightviz.expanded_weights`). All FVs of one figure are
rendered in one batch through :func:`weightviz.render` and its disk cache; the keyword arguments
``size``, ``steps``, ``seed``, ``cache``, ``progress`` go to it, and ``fv=False`` draws grey placeholders
instead (structure only, no rendering).

Each returns a :class:`~weightviz.figures.Figure` (``.save("x.png" | "x.svg")``, inline in notebooks)
whose ``.data`` records the structure shown: which inputs, in which order, on which scale.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightvizError
from ..models import layers, resolve
from ._core import Figure, shared_scale
from ._fv import FVBatch, FVOptions
from ._layout import EXCITATORY, INHIBITORY, LABEL_H, Canvas, fade_to_white
from ._registry import register_figure
from ._wiring import connection, units_of

__all__ = ["expanded", "family_grid", "small_multiples", "spatial_positions", "top_inputs"]

_SIGN_MARK = {1: ("exc", EXCITATORY), -1: ("inh", INHIBITORY), 0: ("zero", "#999999")}


def _one_unit(model: nn.Module, layer: str, unit: Any) -> int:
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer, torch.Tensor, str)):
        raise WeightvizError(f"unit must be one channel index of {layer!r}, got {unit!r}")
    units = units_of(model, layer, unit)
    if len(units) != 1:
        raise WeightvizError(f"this figure shows one unit of {layer!r}; got {unit!r} ({len(units)} units)")
    return units[0]


def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise WeightvizError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _source_text(src: str | None, in_layer: str) -> str:
    return f"expanded weights from {src}" if src is not None else f"direct weights (inputs: {in_layer})"


# --------------------------------------------------------------------------------------------- top inputs
def _top_inputs_figure(model, layer, unit, src, k, ncols, opts, kind) -> Figure:
    from ..expand import top_inputs as rank
    from ._wiring import check_direct, input_layer

    model = resolve(model)
    unit = _one_unit(model, layer, unit)
    k = _check_k(k)
    ncols = _check_k(ncols, "ncols")
    if src is not None:
        layers(model)[src]  # unknown source names fail here with close-name suggestions
    else:
        check_direct(model, layer)
    in_layer = src if src is not None else input_layer(model, layer)
    ranked = rank(model, layer, unit, src=src, k=k)  # strongest first: channel, norm, sign, weight
    idx = [c.channel for c in ranked]
    slices = torch.stack([c.weight for c in ranked]).detach().float().cpu()  # [k, K, K]
    vmax = shared_scale(slices)

    fv = FVBatch(model, opts)
    unit_key = fv.channel(layer, unit)
    in_keys = [fv.channel(in_layer, c) for c in idx]
    fv.render()

    cell, gap = 0.95, 0.12
    big = 1.5
    cv = Canvas()
    cv.image(0, 0.25, big, fv[unit_key], label=f"{layer}\nunit {unit}", lines=2)
    x0 = big + 0.45
    cv.text(x0, 0.0, f"top {len(idx)} inputs by slice norm ({in_layer})", size=7.5)
    kh, kw = slices.shape[-2:]
    heat_h = cell * kh / kw
    row_h = cell + 0.05 + heat_h + 2 * LABEL_H + 0.25
    for j, conn in enumerate(ranked):
        c, norm = conn.channel, conn.norm
        r, col = divmod(j, ncols)
        x = x0 + col * (cell + gap)
        y = 0.25 + r * row_h
        word, colour = _SIGN_MARK[int(np.sign(conn.sign))]
        cv.image(x, y, cell, fv[in_keys[j]], border=None)
        cv.heat(x, y + cell + 0.05, cell, slices[j], vmax, border=colour,
                label=f"#{c} {word}\n\u2016w\u2016={norm:.3g}", lines=2)
    n_rows = math.ceil(len(idx) / ncols)
    bar_x = x0 + min(len(idx), ncols) * (cell + gap) + 0.15
    cv.colorbar(bar_x, 0.45, min(1.6, n_rows * row_h - 0.5), vmax)
    if kind == "expanded":
        title = f"expanded weights from {src} into {layer} unit {unit}: the {len(idx)} strongest inputs"
    else:
        title = f"top inputs: {layer} unit {unit} \u2190 {_source_text(src, in_layer)}"
    data = {
        "figure": kind, "layer": layer, "unit": unit, "src": src, "input_layer": in_layer,
        "inputs": idx, "norms": [c.norm for c in ranked], "signs": [int(c.sign) for c in ranked],
        "vmax": vmax, "slice_shape": [int(kh), int(kw)], "fv": opts.enabled,
    }
    return cv.figure(data, title=title)


@register_figure("top-inputs")
def top_inputs(
    model: nn.Module | str | None,
    layer: str,
    unit: int,
    src: str | None = None,
    k: int = 8,
    *,
    ncols: int = 8,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """A unit's FV beside its ``k`` strongest input channels: each input's FV above its weight slice.

    Inputs are ranked by the L2 norm of their slice ``W[unit, i]`` ``[kh, kw]`` (direct) or of the
    expanded slice ``[K, K]`` when ``src`` is given, as :func:`weightviz.top_inputs` ranks them. All
    slices share one abs-max colour scale (shown as a colour bar); a red frame marks an excitatory input
    (positive slice sum), a blue frame an inhibitory one.

    ``.data``: ``inputs`` (channels, strongest first), ``norms``, ``signs`` (+1/-1), ``vmax`` (the shared
    scale), ``input_layer`` (whose channels the inputs are).

    >>> fig = top_inputs("efficientnet_lite0", "blocks.3.0", 5, src="blocks.2.0", k=8)  # doctest: +SKIP
    >>> fig.data["inputs"][:3], fig.save("top_inputs.png")                            # doctest: +SKIP
    """
    opts = FVOptions.of(fv, fv_options)
    return _top_inputs_figure(model, layer, unit, src, k, ncols, opts, "top-inputs")


@register_figure("expanded")
def expanded(
    model: nn.Module | str | None,
    src: str,
    dst: str,
    unit: int,
    k: int = 16,
    *,
    ncols: int = 8,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Expanded-weight heatmaps ``[K, K]`` from the ``k`` strongest channels of ``src`` into ``unit`` of
    ``dst`` (rows of ``ncols``), each with the input's FV, one shared abs-max scale, sign frames: the
    :func:`top_inputs` layout for expanded weights (:func:`weightviz.expanded_weights`).

    >>> expanded("efficientnet_lite0", "blocks.2.0", "blocks.4.0", 7).save("expanded.png")  # doctest: +SKIP
    """
    if not isinstance(src, str):
        raise WeightvizError(f"expanded weights need a source layer name src, got {src!r}")
    opts = FVOptions.of(fv, fv_options)
    return _top_inputs_figure(model, dst, unit, src, k, ncols, opts, "expanded")


# ------------------------------------------------------------------------------------ weight grids
def _weight_grid(
    model: nn.Module,
    src: str | None,
    dst: str,
    out_units: list[int],
    in_units: list[int] | None,
    rows_are_inputs: bool,
    opts: FVOptions,
    kind: str,
    k: int,
) -> tuple[Canvas, dict[str, Any]]:
    """Grid of slices between input channels and output units, FVs on both margins, one shared scale."""
    W, in_layer = connection(model, src, dst, out_units)  # [U, C_in, K, K]
    c_in = W.shape[1]
    if in_units is None:
        # strongest inputs over the family: root-sum-square of the slice norms across the units
        strength = W.flatten(2).norm(dim=2).pow(2).sum(0)  # [C_in]
        in_units = strength.argsort(descending=True, stable=True)[: min(k, c_in)].tolist()
    else:
        bad = [i for i in in_units if not 0 <= i < c_in]
        if bad:
            raise WeightvizError(f"input unit {bad[0]} out of range: {in_layer!r} has {c_in} channels (0..{c_in - 1})")
    grid = W[:, in_units]  # [U, I, K, K]
    if rows_are_inputs:
        grid = grid.transpose(0, 1)  # [I, U, K, K]
        row_layer, row_units, col_layer, col_units = in_layer, in_units, dst, out_units
    else:
        row_layer, row_units, col_layer, col_units = dst, out_units, in_layer, in_units
    vmax = shared_scale(grid)

    fv = FVBatch(model, opts)
    row_keys = [fv.channel(row_layer, u) for u in row_units]
    col_keys = [fv.channel(col_layer, u) for u in col_units]
    fv.render()

    kh, kw = grid.shape[-2:]
    cell = 0.8 if max(len(row_units), len(col_units)) <= 10 else 0.6
    gap = 0.06
    heat_h = cell * kh / kw
    left = cell + 0.55  # row label column + row FVs
    top = cell + LABEL_H + 0.35
    cv = Canvas()
    cv.text(left, 0.0, f"{'inputs' if not rows_are_inputs else 'outputs'}: {col_layer}", size=7.5)
    for j, u in enumerate(col_units):
        cv.image(left + j * (cell + gap), 0.22, cell, fv[col_keys[j]])
        cv.text(left + j * (cell + gap) + cell / 2, 0.22 + cell + 0.02, f"#{u}", ha="center", width=cell)
    row_title = f"{'inputs' if rows_are_inputs else 'units'}: {row_layer}"
    cv.text(0.05, top + (len(row_units) * (heat_h + gap)) / 2, row_title, size=7.5, rotation=90,
            va="center", ha="left", width=0.2, height=1.0)
    for i, u in enumerate(row_units):
        y = top + i * (heat_h + gap)
        cv.image(0.3, y + (heat_h - min(cell, heat_h)) / 2, min(cell, heat_h), fv[row_keys[i]])
        cv.text(0.3 + min(cell, heat_h) + 0.04, y + heat_h / 2, f"#{u}", va="center", width=0.3, height=0.2)
        for j in range(len(col_units)):
            cv.heat(left + j * (cell + gap), y, cell, grid[i, j], vmax)
    bar_x = left + len(col_units) * (cell + gap) + 0.12
    cv.colorbar(bar_x, top + 0.2, min(1.6, max(0.8, len(row_units) * (heat_h + gap) - 0.4)), vmax)
    data = {
        "figure": kind, "src": src, "dst": dst, "input_layer": in_layer,
        "inputs": list(in_units), "units": list(out_units),
        "rows": {"layer": row_layer, "units": list(row_units)},
        "cols": {"layer": col_layer, "units": list(col_units)},
        "vmax": vmax, "slice_shape": [int(kh), int(kw)], "fv": opts.enabled,
    }
    return cv, data


@register_figure("small-multiples")
def small_multiples(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    units: Any,
    inputs: Any = None,
    *,
    k: int = 6,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Weights from several input channels to one or several units as small multiples: one row per unit
    of ``dst`` (its FV on the left), one column per input (its FV on top), one shared abs-max scale.

    ``src``: source layer for expanded weights, or ``None`` for ``dst``'s direct weights. ``units``:
    units of ``dst`` (``5``, ``"3,7"``, ``[3, 7]``). ``inputs``: input channels (of ``src``, or of the
    layer feeding ``dst``); ``None`` picks the ``k`` strongest over the units (root-sum-square of slice
    norms), strongest first.

    >>> small_multiples("efficientnet_lite0", "blocks.2.0", "blocks.3.0", [5, 9]).save("sm.png")  # doctest: +SKIP
    """
    model = resolve(model)
    out_units = units_of(model, dst, units)
    in_units = None if inputs is None else _input_units(model, src, dst, inputs)
    opts = FVOptions.of(fv, fv_options)
    cv, data = _weight_grid(model, src, dst, out_units, in_units, False, opts, "small-multiples", _check_k(k))
    title = f"small multiples: {dst} \u2190 {_source_text(src, data['input_layer'])}"
    return cv.figure(data, title=title)


@register_figure("family-grid")
def family_grid(
    model: nn.Module | str | None,
    src_units: Any,
    dst_units: Any,
    src: str | None,
    dst: str,
    *,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """The grid of weights between two families of neurons: rows = input units ``src_units`` (of
    ``src``, or of the layer feeding ``dst`` when ``src=None``), columns = output units ``dst_units`` of
    ``dst``, FVs on both margins, one shared abs-max scale (article Figure 5, curve detectors).

    >>> family_grid("efficientnet_lite0", [1, 4, 9], [5, 7], "blocks.2.0", "blocks.3.0")  # doctest: +SKIP
    """
    model = resolve(model)
    out_units = units_of(model, dst, dst_units)
    in_units = _input_units(model, src, dst, src_units)
    opts = FVOptions.of(fv, fv_options)
    cv, data = _weight_grid(model, src, dst, out_units, in_units, True, opts, "family-grid", len(in_units))
    title = f"family grid: {data['input_layer']} \u2192 {dst} ({'expanded' if src else 'direct'} weights)"
    return cv.figure(data, title=title)


def _input_units(model: nn.Module, src: str | None, dst: str, units: Any) -> list[int]:
    if src is not None:
        return units_of(model, src, units, what=f"source layer {src!r}")
    from ..models import parse_units, weights
    from ._wiring import check_direct, input_layer

    check_direct(model, dst)
    layer = input_layer(model, dst)
    n = weights(model, dst, dense=True).shape[1]
    out = parse_units(units, n, what=f"input of {dst!r} ({layer})")
    if not out:
        raise WeightvizError(f"no input units selected (got {units!r}); give e.g. 5, '0:8' or '3,7'")
    return out


# ------------------------------------------------------------------------------- spatial positions
def _best_window(norms: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of the ``size`` x ``size`` window of ``norms`` ``[K, K]`` holding the most
    squared norm (ties: the most central)."""
    K_h, K_w = norms.shape
    if K_h <= size and K_w <= size:
        return 0, 0
    sh, sw = min(size, K_h), min(size, K_w)
    e = torch.nn.functional.avg_pool2d(norms[None, None].double() ** 2, (sh, sw), stride=1)[0, 0]
    cy, cx = (e.shape[0] - 1) / 2, (e.shape[1] - 1) / 2
    best = None
    for y in range(e.shape[0]):
        for x in range(e.shape[1]):
            score = (float(e[y, x]), -((y - cy) ** 2 + (x - cx) ** 2))
            if best is None or score > best[0]:
                best = (score, (y, x))
    return best[1]


@register_figure("spatial")
def spatial_positions(
    model: nn.Module | str | None,
    layer: str,
    unit: int,
    src: str | None = None,
    *,
    max_size: int = 7,
    min_fade: float = 0.02,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """One FV per kernel position: the direction ``W[unit, :, y, x]`` over the input channels at each
    position ``(y, x)``, rendered with the ``direction`` objective, each tile faded towards white by the
    weight norm at that position relative to the largest (``fade = ‖W[unit, :, y, x]‖ / max``).

    ``src`` uses expanded weights ``[K, K]``; when ``K > max_size`` only the ``max_size`` x ``max_size``
    window with the most squared norm is shown (``.data["window"]``). Positions with
    ``fade < min_fade`` are not rendered (blank tiles).

    ``.data``: ``norms`` ``[kh][kw]`` (all positions), ``fade`` (shown window), ``window``
    ``(y0, x0, h, w)``, ``rendered`` positions, ``input_layer``.

    >>> spatial_positions("efficientnet_lite0", "blocks.3.0", 5, src="blocks.2.0").save("sp.png")  # doctest: +SKIP
    """
    model = resolve(model)
    unit = _one_unit(model, layer, unit)
    max_size = _check_k(max_size, "max_size")
    if not 0 <= float(min_fade) < 1:
        raise WeightvizError(f"min_fade must be in [0, 1), got {min_fade!r}")
    opts = FVOptions.of(fv, fv_options)
    W, in_layer = connection(model, src, layer, [unit])
    w = W[0]  # [C_in, K, K]
    norms = w.norm(dim=0)  # [K, K]
    kh, kw = norms.shape
    y0, x0 = _best_window(norms, max_size)
    h, wd = min(kh, max_size), min(kw, max_size)
    shown = norms[y0:y0 + h, x0:x0 + wd]
    top = float(norms.max())
    fade = (shown / top) if top > 0 else torch.zeros_like(shown)

    fv = FVBatch(model, opts)
    unit_key = fv.channel(layer, unit)
    keys: dict[tuple[int, int], str] = {}
    for y in range(h):
        for x in range(wd):
            if float(fade[y, x]) >= min_fade and top > 0:
                keys[(y, x)] = fv.direction(in_layer, w[:, y0 + y, x0 + x])
    fv.render()

    cell = 0.8 if max(h, wd) <= 5 else 0.62
    gap = 0.04
    big = 1.5
    cv = Canvas()
    cv.image(0, 0.25, big, fv[unit_key], label=f"{layer}\nunit {unit}", lines=2)
    gx = big + 0.5
    cv.text(gx, 0.0, f"FV of the weight vector over {in_layer} at each position", size=7.5)
    blank = np.ones((8, 8, 3), dtype=np.float32)
    for y in range(h):
        for x in range(wd):
            key = keys.get((y, x))
            img = fv[key] if key is not None else None
            a = float(fade[y, x])
            if key is None:
                tile = blank
            elif img is None:
                tile = fade_to_white(np.full((8, 8, 3), 0.55, dtype=np.float32), a)
            else:
                tile = fade_to_white(img, a)
            cv.image(gx + x * (cell + gap), 0.25 + y * (cell + gap), cell, tile)
    grid_h = h * (cell + gap)
    note = (f"tile opacity \u221d \u2016W[{unit}, :, y, x]\u2016 (max {top:.3g})"
            + (f"; window rows {y0}..{y0 + h - 1}, cols {x0}..{x0 + wd - 1} of {kh}x{kw}"
               if (h, wd) != (kh, kw) else f"; {kh}x{kw} positions"))
    cv.text(gx, 0.25 + grid_h + 0.05, note)
    title = f"spatial position weights: {layer} unit {unit} \u2190 {_source_text(src, in_layer)}"
    data = {
        "figure": "spatial", "layer": layer, "unit": unit, "src": src, "input_layer": in_layer,
        "norms": norms.tolist(), "fade": fade.tolist(), "window": (y0, x0, h, wd),
        "rendered": sorted(keys), "max_norm": top, "fv": opts.enabled,
    }
    return cv.figure(data, title=title)

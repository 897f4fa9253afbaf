"""Routes behind one expanded weight (article Figure 12: a boundary detector excited *and* inhibited by
the same early neuron through different high-low frequency detectors, which cancel in the total).

The expanded weight ``E[unit, src_unit]`` from an early unit to a late unit is the sum over the units
``m`` of an intermediate layer ``mid`` of route contributions ``c_m`` (plus routes avoiding ``mid``):
:func:`weightviz.expanded_weights` with ``via=mid``. Each route is the composition of two hops,
``src_unit -> m`` (expanded weights ``src -> mid``) and ``m -> unit`` (``mid -> dst``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightvizError
from ..models import resolve
from ._core import Figure, shared_scale
from ._fv import FVBatch, FVOptions
from ._layout import EXCITATORY, INHIBITORY, LABEL_H, Canvas
from ._registry import register_figure
from ._wiring import units_of

__all__ = ["paths"]


def _sign_colour(x: float) -> tuple[str, str]:
    if x > 0:
        return "exc", EXCITATORY
    if x < 0:
        return "inh", INHIBITORY
    return "zero", "#999999"


@register_figure("paths")
def paths(
    model: nn.Module | str | None,
    src: str,
    mid: str,
    dst: str,
    unit: int,
    src_unit: int,
    *,
    n_routes: int = 6,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """The expanded weight from ``src_unit`` of ``src`` to ``unit`` of ``dst`` beside its ``n_routes``
    strongest routes through units of ``mid``.

    Each route row shows hop 1 (expanded weight ``src_unit -> m``, ``[K1, K1]``), the FV of the mid unit
    ``m``, hop 2 (``m -> unit``, ``[K2, K2]``) and the route's contribution to the total ``[K, K]`` (a red
    / blue frame: excitatory / inhibitory by its sum). The bottom row shows the total expanded weight
    on the same scale as the contributions, and how much cancels: ``‖total‖`` against
    ``Σ_m ‖c_m‖`` over all mid units (ratio 1: routes add up; near 0: they cancel).

    ``.data``: ``routes`` (mid units, strongest first), ``route_norms``, ``route_signs``,
    ``contributions`` ``[R][K][K]``, ``hop1`` ``[R][K1][K1]``, ``hop2`` ``[R][K2][K2]``, ``total``
    ``[K][K]``, ``bypass`` (routes avoiding ``mid``), ``scales`` (``hop1``, ``hop2``, ``route``),
    ``cancellation`` (``‖total‖ / Σ‖c_m‖``).

    >>> paths("efficientnet_lite0", "blocks.2.0", "blocks.3.0", "blocks.4.0", 7, 12).save("p.png")  # doctest: +SKIP
    """
    from ..expand import expanded_weights

    model = resolve(model)
    if not all(isinstance(n, str) for n in (src, mid, dst)):
        raise WeightvizError(f"paths needs three layer names src, mid, dst; got {src!r}, {mid!r}, {dst!r}")
    if isinstance(n_routes, bool) or not isinstance(n_routes, (int, np.integer)) or n_routes < 1:
        raise WeightvizError(f"n_routes must be a positive integer, got {n_routes!r}")
    (unit,) = _single(model, dst, unit)
    (src_unit,) = _single(model, src, src_unit)
    opts = FVOptions.of(fv, fv_options)

    res = expanded_weights(model, src, dst, units=[unit], via=mid)
    contrib = res.via[0, :, src_unit].detach().float().cpu()  # [C_mid, K, K]
    total = res.total[0, src_unit].detach().float().cpu()  # [K, K]
    bypass = res.bypass[0, src_unit].detach().float().cpu()  # [K, K]
    norms = contrib.flatten(1).norm(dim=1)  # [C_mid]
    R = min(int(n_routes), contrib.shape[0])
    routes = norms.argsort(descending=True, stable=True)[:R].tolist()
    hop1 = expanded_weights(model, src, mid, units=routes)[:, src_unit].detach().float().cpu()  # [R, K1, K1]
    hop2 = expanded_weights(model, mid, dst, units=[unit])[0, routes].detach().float().cpu()  # [R, K2, K2]
    shown = contrib[routes]  # [R, K, K]
    rest = total - shown.sum(0)  # other mid units and routes avoiding mid
    s_route = shared_scale(torch.cat([shown, total[None], rest[None]]))
    s1, s2 = shared_scale(hop1), shared_scale(hop2)
    total_norm = float(total.norm())
    sum_norms = float(norms.sum())
    ratio = total_norm / sum_norms if sum_norms > 0 else float("nan")

    fvb = FVBatch(model, opts)
    k_src = fvb.channel(src, src_unit)
    k_dst = fvb.channel(dst, unit)
    k_mid = [fvb.channel(mid, m) for m in routes]
    fvb.render()

    cell, gap, arrow = 0.8, 0.1, 0.3
    step = cell + gap + arrow
    x_h1, x_mid, x_h2, x_c = 0.0, step, 2 * step, 3 * step + 0.25
    cv = Canvas()
    # header: where the routes start and end
    cv.text(x_h1, 0.0, f"from {src} #{src_unit}", size=7.5)
    cv.image(x_h1, 0.2, cell, fvb[k_src])
    cv.text(x_mid, 0.0, f"through units of {mid}", size=7.5)
    cv.text(x_c, 0.0, f"to {dst} #{unit}", size=7.5)
    cv.image(x_c, 0.2, cell, fvb[k_dst])
    head = 0.2 + cell + 0.35
    cv.text(x_h1 + cell / 2, head - 0.04, "hop 1", ha="center", va="bottom", width=cell)
    cv.text(x_h2 + cell / 2, head - 0.04, "hop 2", ha="center", va="bottom", width=cell)
    cv.text(x_c + cell / 2, head - 0.04, "route", ha="center", va="bottom", width=cell)
    row_h = cell + 2 * LABEL_H + 0.12
    for r, m in enumerate(routes):
        y = head + r * row_h
        cv.heat(x_h1, y, cell, hop1[r], s1, label=f"{float(hop1[r].sum()):+.2g} sum")
        cv.arrow(x_h1 + cell + 0.05, y + cell / 2, x_mid - 0.05, y + cell / 2)
        cv.image(x_mid, y, cell, fvb[k_mid[r]], label=f"#{m}")
        cv.arrow(x_mid + cell + 0.05, y + cell / 2, x_h2 - 0.05, y + cell / 2)
        cv.heat(x_h2, y, cell, hop2[r], s2, label=f"{float(hop2[r].sum()):+.2g} sum")
        cv.text(x_h2 + cell + (x_c - x_h2 - cell) / 2, y + cell / 2, "=", ha="center", va="center",
                size=11, width=0.2)
        word, colour = _sign_colour(float(shown[r].sum()))
        cv.heat(x_c, y, cell, shown[r], s_route, border=colour,
                label=f"{word} \u2016c\u2016={float(norms[m]):.2g}", lines=1)
    # bottom: the total, directly between the two units
    yt = head + R * row_h + 0.25
    cv.text(x_h1, yt - 0.05, "expanded weight, directly:", size=7.5, va="bottom")
    cv.image(x_h1, yt + 0.05, cell, fvb[k_src], label=f"#{src_unit}")
    cv.arrow(x_h1 + cell + 0.05, yt + 0.05 + cell / 2, x_mid - 0.05, yt + 0.05 + cell / 2)
    word, colour = _sign_colour(float(total.sum()))
    cv.heat(x_mid, yt + 0.05, cell, total, s_route, border=colour, label=f"total \u2016E\u2016={total_norm:.2g}")
    cv.arrow(x_mid + cell + 0.05, yt + 0.05 + cell / 2, x_h2 - 0.05, yt + 0.05 + cell / 2)
    cv.image(x_h2, yt + 0.05, cell, fvb[k_dst], label=f"#{unit}")
    cv.heat(x_c, yt + 0.05, cell, rest, s_route, label="all other routes")
    note = (f"\u2016total\u2016 / \u03a3 \u2016route\u2016 over all {contrib.shape[0]} units of {mid} = "
            f"{total_norm:.2g} / {sum_norms:.2g} = {ratio:.2f}"
            + ("  (routes cancel)" if ratio < 0.5 else ""))
    yn = yt + 0.05 + cell + 2 * LABEL_H + 0.1
    cv.text(x_h1, yn, note)
    # scales: one per hop column, one shared by routes, total and the rest
    yb = yn + 0.55
    bar_h = 0.7
    cv.colorbar(x_h1 + 0.05, yb, bar_h, s1, title="hop 1")
    cv.colorbar(x_h2 + 0.05, yb, bar_h, s2, title="hop 2")
    cv.colorbar(x_c + 0.05, yb, bar_h, s_route, title="route / total")
    title = f"routes from {src} #{src_unit} to {dst} #{unit} through {mid}"
    data = {
        "figure": "paths", "src": src, "mid": mid, "dst": dst, "unit": unit, "src_unit": src_unit,
        "routes": routes, "route_norms": [float(norms[m]) for m in routes],
        "route_signs": [int(np.sign(float(shown[r].sum()))) for r in range(R)],
        "contributions": shown.tolist(), "hop1": hop1.tolist(), "hop2": hop2.tolist(),
        "total": total.tolist(), "bypass": bypass.tolist(), "rest": rest.tolist(),
        "scales": {"hop1": s1, "hop2": s2, "route": s_route},
        "total_norm": total_norm, "sum_route_norms": sum_norms, "cancellation": ratio, "fv": opts.enabled,
    }
    return cv.figure(data, title=title)


def _single(model: nn.Module, layer: str, unit: Any) -> list[int]:
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise WeightvizError(f"unit of {layer!r} must be one integer, got {unit!r}")
    return units_of(model, layer, int(unit))

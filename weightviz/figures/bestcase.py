"""Best-case figure: the optimized input beside the connection it achieves and the expanded weight, on
one scale (:func:`weightviz.best_case`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..conditioned import BestCase
from ._core import Figure, shared_scale
from ._fv import FVBatch, FVOptions
from ._layout import LABEL_H, Canvas
from ._registry import register_figure

__all__ = ["best_case", "best_case_figure"]


def best_case_figure(result: Any, k: int = 8, model: nn.Module | None = None, *, fv: FVOptions | bool = False,
                     **fv_options: Any) -> Figure:
    """Draw a :class:`weightviz.BestCase`: the best-case input, and per shown ``src`` channel
    the achieved connection (gradient on the real model at that input) above the expanded weight, all
    heatmaps on one shared scale. With ``src_unit`` one pair of ``[K, K]`` maps; without, the ``k``
    channels with the largest achieved slice norm. ``fv=True`` (needs ``model``) labels each channel with
    its feature visualization (``size``, ``steps``, ``seed``, ``cache``, ``progress`` as in the other
    figures). The title gives the ratio of norms (achieved / expanded)."""
    b = result
    if b.src_unit is not None:
        channels = [b.src_unit]
        G, E = b.gradient[None], b.expanded[None]
    else:
        norms = b.gradient.flatten(1).norm(dim=1)
        channels = torch.argsort(norms, descending=True)[: max(1, int(k))].tolist()
        G, E = b.gradient[channels], b.expanded[channels]
    vmax = shared_scale(torch.stack([G, E]))
    fvs = None
    opts = FVOptions.of(fv, fv_options, size=64, progress=False)
    if opts.enabled and model is not None:
        batch = FVBatch(model, opts)
        keys = [batch.channel(b.src, c) for c in channels]
        batch.render()
        fvs = [batch[kk] for kk in keys]

    cv = Canvas()
    big, cell, gap = 1.7, 0.85, 0.12
    cv.image(0, 0.25, big, b.image.permute(1, 2, 0).numpy(),
             label=f"best-case input\n{b.size}px, {b.steps} steps, seed {b.seed}", lines=2)
    x0 = big + 0.4
    what = (f"{b.src} channel {b.src_unit} \u2192 {b.dst} unit {b.unit} (centre entry maximized)"
            if b.src_unit is not None else
            f"{b.src} \u2192 {b.dst} unit {b.unit}: the {len(channels)} channels with the strongest achieved connection")
    cv.text(x0, 0.0, what, size=7.5)
    y = 0.25
    if fvs is not None:
        for j, c in enumerate(channels):
            cv.image(x0 + j * (cell + gap), y, cell, fvs[j], label=f"#{c}")
        y += cell + LABEL_H + 0.1
    kh, kw = G.shape[-2:]
    hh = cell * kh / kw
    for j, c in enumerate(channels):
        x = x0 + j * (cell + gap)
        cv.heat(x, y, cell, G[j], vmax, label=f"#{c} achieved\n\u2016g\u2016={float(G[j].norm()):.3g}", lines=2)
        cv.heat(x, y + hh + 2 * LABEL_H + 0.12, cell, E[j], vmax,
                label=f"#{c} expanded\n\u2016w\u2016={float(E[j].norm()):.3g}", lines=2)
    bar_x = x0 + len(channels) * (cell + gap) + 0.1
    cv.colorbar(bar_x, y + 0.2, 2 * hh + 2 * LABEL_H - 0.2, vmax, title="gradient")
    gn, en = float(b.gradient.norm()), float(b.expanded.norm())
    cv.text(x0, y + 2 * (hh + 2 * LABEL_H + 0.12) + 0.02,
            f"whole connection: achieved \u2016g\u2016 = {gn:.3g}, expanded \u2016w\u2016 = {en:.3g}; "
            f"value maximized = {b.value:.3g}", size=6.5)
    head = f"{b.model_name + ': ' if b.model_name else ''}best-case excitation"
    title = f"{head} {b.src} \u2192 {b.dst} unit {b.unit}: {b.ratio:.2f}\u00d7 the expanded weight's norm"
    data = {"figure": "best-case", "src": b.src, "dst": b.dst, "unit": b.unit, "src_unit": b.src_unit,
            "channels": channels, "vmax": vmax, "ratio": b.ratio, "value": b.value, "fv": fvs is not None}
    return cv.figure(data, title=title)


@register_figure("best-case", result=(BestCase, best_case_figure))
def best_case(
    model: nn.Module | str | None,
    src: str,
    dst: str,
    unit: int,
    src_unit: int | None = None,
    k: int = 8,
    *,
    image_size: int | None = None,
    image_steps: int | None = None,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Best-case excitation of the connection ``src`` -> ``dst[unit]`` (:func:`weightviz.best_case`;
    ``image_size``/``image_steps`` go to it): the optimized input, the achieved gradient map next to the
    expanded weight on one scale (``k`` strongest channels when ``src_unit`` is None), labelled with the
    FVs of the ``src`` channels (``size``, ``steps``, ``fv=False``: none). ``.data``: ``ratio``,
    ``channels``, ``vmax``."""
    opts = FVOptions.of(fv, fv_options, size=64)
    from ..conditioned import STEPS
    from ..conditioned import best_case as compute
    from ..models import resolve

    model = resolve(model)
    b = compute(model, src, dst, unit, src_unit, size=image_size, steps=image_steps or STEPS, seed=opts.seed,
                cache=opts.cache, progress=opts.progress)
    return best_case_figure(b, k, model, fv=opts)

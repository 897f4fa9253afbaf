"""Expanded weights between token layers (ViT, Swin) drawn on the patch grid.

:func:`weightviz.expanded_weights` between token layers returns ``[U, C_src, N_src]`` (attention frozen at
its mean pattern over the image set, norms at their mean scale); this figure shows, for one ``dst`` unit at
one token, the ``k`` ``src`` channels with the largest weights, each as a heatmap over ``src``'s patch
grid (one shared scale), the class/prefix tokens' weights written under it, beside the FVs of the unit
and of each channel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightvizError
from ..models import fixed_input_size, layers, resolve
from ..models import tokens as _tokens
from ._core import Figure, shared_scale
from ._fv import FVBatch, FVOptions
from ._layout import EXCITATORY, INHIBITORY, Canvas
from ._registry import register_figure

__all__ = ["token_weights"]


@register_figure("token-weights")
def token_weights(
    model: nn.Module | str | None,
    src: str,
    dst: str,
    unit: int,
    k: int = 8,
    *,
    token: int | tuple[int, int] | None = None,
    images: Any = None,
    ncols: int = 8,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """The ``k`` strongest ``src`` channels into ``dst`` unit ``unit`` at ``token`` (default the centre patch;
    ``0``: the class token) as maps over ``src``'s patch grid, with FVs. ``images``: the image set of the
    frozen statistics (default the embedded one).

    >>> token_weights("timm:vit_tiny_patch16_224", "blocks.3", "blocks.4", 7).save("tokens.png")  # doctest: +SKIP
    """
    opts = FVOptions.of(fv, fv_options)
    from ..expand import expanded_weights

    model = resolve(model)
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
        raise WeightvizError(f"unit must be one channel index of {dst!r}, got {unit!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise WeightvizError(f"k must be a positive integer, got {k!r}")
    table = layers(model, fixed_input_size(model))
    shape = table[src].out_shape
    lay = _tokens.layout(shape, table[src].conv1d) if shape is not None else None
    if lay is None or lay.grid is None:
        raise WeightvizError(f"{src!r} has no patch grid (output {shape}); choose a token layer with one")
    E = expanded_weights(model, src, dst, units=[int(unit)], token=token, images=images)[0]   # [C_src, N]
    if E.dim() != 2:
        raise WeightvizError(f"{src!r} -> {dst!r} are not token layers ([B, N, C] or [B, H, W, C]); use the "
                             "'expanded' figure for conv layers")
    E = E.detach().float().cpu()
    norms = E.norm(dim=1)
    order = torch.argsort(norms, descending=True, stable=True)[:int(k)].tolist()
    h, w = lay.grid
    grids = E[order, lay.prefix:].reshape(len(order), h, w)
    vmax = shared_scale(grids)

    fvb = FVBatch(model, opts)
    unit_key = fvb.channel(dst, int(unit))
    keys = [fvb.channel(src, c) for c in order]
    fvb.render()

    cell, gap, big = 0.95, 0.12, 1.5
    cv = Canvas()
    where = "the centre patch" if token is None else f"token {token}"
    cv.image(0, 0.25, big, fvb[unit_key], label=f"{dst}\nunit {unit} @ {where}", lines=2)
    x0 = big + 0.45
    cv.text(x0, 0.0, f"top {len(order)} channels of {src} by weight norm, over its {h}x{w} patch grid", size=7.5)
    row_h = 2 * cell + 0.05 + 0.5
    for j, c in enumerate(order):
        r, col = divmod(j, int(ncols))
        x, y = x0 + col * (cell + gap), 0.25 + r * row_h
        s = float(E[c].sum())
        extra = "".join(f" p{i}={float(E[c, i]):+.2g}" for i in range(min(lay.prefix, 2)))
        cv.image(x, y, cell, fvb[keys[j]])
        cv.heat(x, y + cell + 0.05, cell, grids[j], vmax, border=EXCITATORY if s > 0 else INHIBITORY,
                label=f"#{c} \u2016w\u2016={float(norms[c]):.2g}\n{extra.strip() or ' '}", lines=2)
    n_rows = math.ceil(len(order) / int(ncols))
    cv.colorbar(x0 + min(len(order), int(ncols)) * (cell + gap) + 0.15, 0.45, min(1.6, n_rows * row_h - 0.5), vmax)
    data = {"figure": "token-weights", "src": src, "dst": dst, "unit": int(unit), "token": token,
            "inputs": order, "norms": [float(norms[c]) for c in order], "grid": [h, w], "prefix": lay.prefix,
            "vmax": vmax, "fv": bool(fv)}
    return cv.figure(data, title=f"expanded weights (attention and norms frozen) from {src} into {dst} unit {unit}")

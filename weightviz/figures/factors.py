"""Weight factors of a family of neurons (article: "Visualizing weight factors", high-low frequency
detectors as two factors): one-sided NMF across the family's units, the FV of each factor direction,
each unit's signed spatial map per factor, and the input neurons loading most on each factor.
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
from ._layout import LABEL_H, Canvas
from ._registry import register_figure
from ._wiring import connection, units_of

__all__ = ["factorize_family", "weight_factors"]


def factorize_family(W: torch.Tensor, n_factors: int = 2, seed: int = 0, iters: int = 400) -> dict[str, torch.Tensor]:
    """One-sided NMF of a family's weights across its units (methods.md, "Weight factors").

    ``W``: ``[N, C_in, K, K]`` (N units of one layer, direct or expanded weights). With
    ``X = concat(relu(W), relu(-W))`` over the unit axis (``[2N, C_in, K, K]``, laid out as rows
    ``(unit, y, x)`` and columns ``C_in``), :func:`weightviz.nmf` gives ``X ≈ A @ H``, ``A``
    ``[2N*K*K, F]`` and ``H`` ``[F, C_in]`` (non-negative, unit-norm rows, strongest factor first).

    Returns ``directions`` ``H`` ``[F, C_in]`` (factor directions over input channels), ``maps``
    ``[F, N, K, K]`` = ``A[:N] - A[N:]`` (each unit's signed map per factor), ``reconstruction``
    ``[N, C_in, K, K]`` = ``sum_f maps[f] ⊗ H[f]`` (= ``(A @ H)[:N] - (A @ H)[N:]``), ``A`` and ``X``.

    >>> out = factorize_family(torch.randn(15, 64, 5, 5), n_factors=2)
    >>> out["maps"].shape, out["directions"].shape
    (torch.Size([2, 15, 5, 5]), torch.Size([2, 64]))
    """
    from ..stats import nmf

    if not isinstance(W, torch.Tensor) or W.dim() != 4:
        raise WeightvizError(f"family weights must be a tensor [N, C_in, K, K], got "
                             f"{tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__}")
    W = W.detach().float()
    N, C, kh, kw = W.shape
    X = torch.cat([W.clamp(min=0), (-W).clamp(min=0)], dim=0)  # [2N, C, kh, kw]
    X = X.permute(0, 2, 3, 1).reshape(2 * N * kh * kw, C)  # rows (sign-unit, y, x), columns C_in
    A, H = nmf(X, n_factors, seed=seed, iters=iters)  # [2N*kh*kw, F], [F, C]
    A4 = A.reshape(2, N, kh, kw, n_factors)
    maps = (A4[0] - A4[1]).permute(3, 0, 1, 2).contiguous()  # [F, N, kh, kw]
    recon = torch.einsum("fnyx,fc->ncyx", maps, H)
    return {"directions": H, "maps": maps, "reconstruction": recon, "A": A, "X": X}


@register_figure("factors")
def weight_factors(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    units: Any,
    n_factors: int = 2,
    *,
    n_top: int = 4,
    nmf_seed: int = 0,
    fv: FVOptions | bool = True,
    **fv_options: Any,
) -> Figure:
    """Weight factors of a family of units of ``dst``: one row per factor with the FV of the factor
    direction (the ``direction`` objective over the input layer), the ``n_top`` input neurons loading most
    on it (their FVs and loadings ``H[f, i]``), and each unit's signed spatial map for that factor, all
    maps on one shared abs-max scale. See :func:`factorize_family` for the factorization.

    ``src``: source layer for expanded weights (``None``: ``dst``'s direct weights). ``units``: the
    family (``"0:8"``, ``[110, 180, 153]``, ...).

    ``.data``: ``units``, ``input_layer``, ``directions`` ``[F][C_in]``, ``maps`` ``[F][N][K][K]``,
    ``top_inputs`` / ``loadings`` per factor, ``vmax``, ``recon_error``
    (``‖W - Σ_f maps[f] ⊗ H[f]‖ / ‖W‖``).

    >>> weight_factors("efficientnet_lite0", "blocks.2.0", "blocks.3.0", "0:8").save("f.png")  # doctest: +SKIP
    """
    model = resolve(model)
    fam = units_of(model, dst, units)
    if isinstance(n_factors, bool) or not isinstance(n_factors, (int, np.integer)) or not 1 <= n_factors <= 12:
        raise WeightvizError(f"n_factors must be an integer in 1..12, got {n_factors!r}")
    if isinstance(n_top, bool) or not isinstance(n_top, (int, np.integer)) or n_top < 0:
        raise WeightvizError(f"n_top must be an integer >= 0, got {n_top!r}")
    opts = FVOptions.of(fv, fv_options)
    W, in_layer = connection(model, src, dst, fam)  # [N, C_in, K, K]
    if not bool(W.abs().sum() > 0):
        raise WeightvizError(f"the weights from {in_layer!r} into units {fam} of {dst!r} are all zero; "
                             "choose other units or a source layer (src=) for expanded weights")
    out = factorize_family(W, int(n_factors), seed=nmf_seed)
    H, maps = out["directions"], out["maps"]
    F = H.shape[0]
    n_top = min(int(n_top), H.shape[1])
    # the inputs loading most on each factor (only those with a positive loading)
    top = [[i for i in H[f].argsort(descending=True, stable=True)[:n_top].tolist() if float(H[f, i]) > 0]
           for f in range(F)]
    vmax = shared_scale(maps)
    err = float((W - out["reconstruction"]).norm() / W.norm())


    fv_batch = FVBatch(model, opts)
    unit_keys = [fv_batch.channel(dst, u) for u in fam]
    factor_keys = [fv_batch.direction(in_layer, H[f]) for f in range(F)]
    top_keys = [[fv_batch.channel(in_layer, i) for i in top[f]] for f in range(F)]
    fv_batch.render()

    kh, kw = maps.shape[-2:]
    cell = 0.8 if len(fam) <= 12 else 0.6
    heat_h = cell * kh / kw
    fcell, icell, gap = 0.9, 0.62, 0.06
    row_h = max(fcell, heat_h, icell) + 2 * LABEL_H + 0.12
    x_in = fcell + 0.15
    x_maps = x_in + n_top * (icell + gap) + (0.3 if n_top else 0.1)
    head = 0.22 + cell + LABEL_H + 0.15
    cv = Canvas()
    cv.text(0, 0.0, "factor direction", size=7.5)
    if n_top:
        cv.text(x_in, 0.0, f"inputs loading most ({in_layer})", size=7.5)
    cv.text(x_maps, 0.0, f"units of {dst}: signed map per factor", size=7.5)
    for j, u in enumerate(fam):
        cv.image(x_maps + j * (cell + gap), 0.22, cell, fv_batch[unit_keys[j]])
        cv.text(x_maps + j * (cell + gap) + cell / 2, 0.22 + cell + 0.02, f"#{u}", ha="center", width=cell)
    for f in range(F):
        y = head + f * row_h
        cv.image(0, y, fcell, fv_batch[factor_keys[f]], label=f"factor {f}")
        for r, i in enumerate(top[f]):
            cv.image(x_in + r * (icell + gap), y, icell, fv_batch[top_keys[f][r]],
                     label=f"#{i}\n{float(H[f, i]):.2f}", lines=2)
        for j in range(len(fam)):
            cv.heat(x_maps + j * (cell + gap), y, cell, maps[f, j], vmax)
    bar_x = x_maps + len(fam) * (cell + gap) + 0.12
    cv.colorbar(bar_x, head + 0.15, min(1.6, max(0.8, F * row_h - 0.5)), vmax)
    cv.text(x_maps, head + F * row_h, f"reconstruction error \u2016W \u2212 \u03a3 map\u2297direction\u2016/\u2016W\u2016 = "
            f"{err:.2f}; loadings = entries of the unit-norm factor direction")
    title = (f"weight factors ({F}, one-sided NMF): {len(fam)} units of {dst} \u2190 "
             + (f"expanded weights from {src}" if src else f"direct weights (inputs: {in_layer})"))
    data = {
        "figure": "factors", "src": src, "dst": dst, "input_layer": in_layer, "units": list(fam),
        "n_factors": F, "directions": H.tolist(), "maps": maps.tolist(), "top_inputs": top,
        "loadings": [[float(H[f, i]) for i in top[f]] for f in range(F)], "vmax": vmax,
        "recon_error": err, "fv": opts.enabled,
    }
    return cv.figure(data, title=title)

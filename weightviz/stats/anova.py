"""The banding score of the Weight Banding article: a two-way ANOVA of each kernel image
(:func:`anova_energies`, :func:`banding_score`).

>>> import torch, weightviz as wv
>>> bands = torch.arange(5.0)[:, None].expand(5, 5)       # rows differ, constant along x
>>> wv.banding_score(torch.stack([bands, bands.T]))        # [N] from [N, kh, kw]
tensor([ 1., -1.], dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import WeightvizError

__all__ = ["anova_energies", "banding_score"]


# ------------------------------------------------------------------------------------------ inputs
def _as_kernels(kernels: Any, channels_last: bool = True) -> torch.Tensor:
    """Any array-like of kernels -> float64 tensor ``[N, kh, kw, F]`` (validated)."""
    if isinstance(kernels, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(kernels))
    elif isinstance(kernels, torch.Tensor):
        t = kernels.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(kernels))
        except (TypeError, ValueError) as e:
            raise WeightvizError(f"kernels must be a tensor or array, got {type(kernels).__name__} ({e})") from None
    if t.dtype == torch.bool or t.is_complex():
        raise WeightvizError(f"kernels must be real numbers, got dtype {t.dtype}")
    t = t.to("cpu", torch.float64)
    if t.dim() == 3:
        t = t[..., None]
    elif t.dim() == 4:
        if not channels_last:  # [N, C, kh, kw] -> [N, kh, kw, C]
            t = t.permute(0, 2, 3, 1)
    else:
        raise WeightvizError(
            f"kernels must be [N, kh, kw] or [N, kh, kw, F] (channels last; pass channels_last=False for "
            f"PyTorch weights [C_out, C_in, kh, kw]), got shape {tuple(t.shape)}"
        )
    n, kh, kw, f = t.shape
    if n == 0 or f == 0:
        raise WeightvizError(f"no kernels to score: got shape {tuple(t.shape)}")
    if kh < 2 or kw < 2:
        raise WeightvizError(
            f"a banding score needs kernels of at least 2x2 positions, got {kh}x{kw} (shape {tuple(t.shape)}); "
            "1x1 layers have no spatial structure"
        )
    if not torch.isfinite(t).all():
        raise WeightvizError("kernels contain NaN or Inf")
    return t.contiguous()


# ------------------------------------------------------------------------------------------- ANOVA
def anova_energies(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-way ANOVA without replication of kernel images ``x [..., kh, kw, F]`` (rows = vertical position).

    Around each channel's grand mean ``g``: row effects ``r_y = mean_x(x) - g``, column effects
    ``c_x = mean_y(x) - g``, interaction ``x - g - r_y - c_x``. Returns the sums of squares
    ``(E_row, E_col, E_int)``, each ``[...]``, summed over the F channels:
    ``E_row = kw * sum r_y^2``, ``E_col = kh * sum c_x^2``, ``E_int = sum residual^2``; they add up to the
    total ``sum (x - g)^2``.
    """
    kh, kw = x.shape[-3], x.shape[-2]
    g = x.mean(dim=(-3, -2), keepdim=True)
    r = x.mean(dim=-2, keepdim=True) - g  # [..., kh, 1, F]
    c = x.mean(dim=-3, keepdim=True) - g  # [..., 1, kw, F]
    e_row = kw * r.square().sum(dim=(-3, -2, -1))
    e_col = kh * c.square().sum(dim=(-3, -2, -1))
    e_int = (x - g - r - c).square().sum(dim=(-3, -2, -1))
    return e_row, e_col, e_int


def _score_from(x: torch.Tensor, tiny: torch.Tensor | float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """S and the row share ``E_row / total`` of ``x [..., kh, kw, F]``; 0 where the kernel is constant."""
    e_row, e_col, e_int = anova_energies(x)
    total = e_row + e_col + e_int
    ok = total > tiny
    safe = torch.where(ok, total, torch.ones_like(total))
    s = torch.where(ok, (e_row - e_col) / safe, torch.zeros_like(total))
    share = torch.where(ok, e_row / safe, torch.zeros_like(total))
    return s, share


def _tiny(x: torch.Tensor) -> torch.Tensor:
    """Per-kernel threshold below which the centred energy counts as zero (a constant kernel)."""
    eps = 1e-10 if x.dtype == torch.float64 else 1e-5
    return eps * x.square().sum(dim=(-3, -2, -1)) + torch.finfo(x.dtype).tiny


def banding_score(kernels: Any, *, channels_last: bool = True) -> torch.Tensor:
    """Per-neuron banding score ``S = (E_row - E_col) / (E_row + E_col + E_int)`` in [-1, 1].

    ``kernels``: ``[N, kh, kw]`` (one signed kernel per neuron, e.g. a depthwise layer ``W[:, 0]``) or
    ``[N, kh, kw, F]``, channels last: F factors / colours per position, e.g. the one-sided NMF image of
    each neuron (:func:`weightviz.nmf_image` gives ``[C_out, kh, kw, 3]``) or the Weight Banding data's
    ``k x k x 3`` PNGs. With ``channels_last=False`` a 4-D input is PyTorch conv weights
    ``[C_out, C_in, kh, kw]`` (the C_in slices play the role of F). Rows are the vertical position.
    Tensor or array, any real dtype (uint8 images are fine: the score is scale-free).

    Method (Weight Banding article; :func:`anova_energies`): a two-way ANOVA without replication of each
    channel around its own grand mean; the energies of row means (E_row), column means (E_col) and the
    interaction (E_int) are **summed over the F channels** (each channel weighted by its own energy, so a
    nearly empty NMF factor does not count as much as the dominant one). ``+1``: all energy in rows
    (horizontal bands: the kernel varies with y only); ``-1``: vertical bands; ``0``: no preferred
    orientation (e.g. a checkerboard, a centred blob, or noise). A constant kernel scores 0.
    For a random kernel the expected row share is ``(kh-1)/(kh*kw-1)``, ``1/(k+1)`` for k x k, and
    E[S] = 0 for square kernels; use :func:`banding_test` for a calibrated decision.

    Returns ``[N]`` float64.

    >>> bands = torch.arange(3.0)[:, None].expand(3, 3)
    >>> banding_score(torch.stack([bands, bands.T, torch.ones(3, 3)])).tolist()
    [1.0, -1.0, 0.0]
    """
    x = _as_kernels(kernels, channels_last)
    s, _ = _score_from(x, _tiny(x))
    return s



"""The cases of a connection: per-example gradients (:func:`weightviz.data_weights`) factored over an image
set by one-sided NMF (:func:`cases`), and how stable that factorization is over seeded restarts.

A factorization can reconstruct the gradients exactly (``explained = 1``) and still not be THE cases:
when the gradients span fewer dimensions than there are cases (e.g. a unit that fires for six
orderings of three detectors: signed gradients of rank 2), the exact one-sided NMF is not unique and
the cases it returns are mixtures of the true ones. ``Cases.stability`` measures it: the cases are fitted
again from ``restarts`` random seeded starts and matched to the returned ones by cosine (Hungarian
matching); stability is the mean matched cosine, averaged over the restarts. Below
:data:`STABILITY_WARN` (0.9) :func:`cases` warns and the figure says so.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError, WeightvizWarning
from ..expand import Connection, expanded_weights, rank_connections
from ..models import resolve
from .per_example import DataWeights, _check_int, _crop_examples, data_weights

__all__ = ["STABILITY_WARN", "CaseExamples", "Cases", "cases"]

STABILITY_WARN = 0.9   # below this, cases() warns that the cases are not unique


@dataclass
class CaseExamples:
    """The images that load most on one case: ``indices`` into the image set, their ``loadings`` on the
    case (weighted by firing, descending), ``activations`` and ``crops`` ``[n, C, h, w]`` in [0, 1] (what
    the chosen ``dst`` position reads in each)."""

    indices: list[int]
    loadings: torch.Tensor
    activations: torch.Tensor
    crops: torch.Tensor = field(repr=False)


@dataclass
class Cases:
    """The gradients of one connection factored over an image set (:func:`cases`).

    ``patterns``: ``[n_cases, C_src, Kh, Kw]``, each case's signed gradient pattern, scaled to the
    gradient of the examples that carry it (their mean loading is 1). ``loadings``: ``[N, n_cases]``,
    non-negative: ``gradient[n] ≈ loadings[n] @ patterns`` for every image on which the unit fires
    (0 for the others). ``explained``: fraction of the firing-weighted sum of squares of the gradients
    that the cases reconstruct. ``share``: ``[n_cases]``, each case's fraction of the summed weighted
    loadings. ``top_inputs``: per case, its input channels ranked by slice norm
    (:func:`weightviz.rank_connections`). ``examples``: per case, :class:`CaseExamples`.
    ``expanded``: ``[C_src, Kh, Kw]``, the expanded weight of the same connection (for comparison).
    ``data``: the :class:`DataWeights` factored. ``stability``: in [0, 1], the agreement of the cases with
    the cases of ``restarts`` seeded random restarts of the factorization (mean cosine of the patterns
    matched one to one, averaged over restarts; 1.0 with ``restarts=0`` or one case found by every start);
    below :data:`STABILITY_WARN` the factorization is not unique and the cases may mix the true ones.
    """

    patterns: torch.Tensor
    loadings: torch.Tensor
    explained: float
    share: torch.Tensor
    top_inputs: list[list[Connection]]
    examples: list[CaseExamples]
    expanded: torch.Tensor
    data: DataWeights = field(repr=False)
    stability: float = 1.0

    @property
    def n_cases(self) -> int:
        return int(self.patterns.shape[0])

    def norm_ratio(self) -> float:
        """Firing-weighted mean of the per-example gradient norms over the expanded weight's norm (how much
        the expanded weight cancels; ``inf`` when it is exactly 0)."""
        g = self.data.weights.flatten(1).norm(dim=1)
        w = self.data.activations.clamp(min=0)
        mean = float((w * g).sum() / w.sum())
        e = float(self.expanded.norm())
        return mean / e if e > 0 else math.inf


# ------------------------------------------------------------------------------------------------ cases
def cases(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    unit: int | str | list[int],
    images: Any,
    n_cases: int = 2,
    *,
    position: str | tuple[int, int] = "max",
    k: int = 8,
    n_examples: int = 6,
    seed: int = 0,
    iters: int = 400,
    batch_size: int | None = None,
    progress: bool = False,
    data: DataWeights | None = None,
    restarts: int = 4,
) -> Cases | list[Cases]:
    """The gradients of one connection over an image set, factored into ``n_cases`` cases.

    Per image, the gradient ``g_n`` ``[C_src, K, K]`` of :func:`data_weights` (at ``position``) is
    weighted by how strongly the unit fires, ``w_n = relu(activation_n) / max``; images where it does
    not fire are left out. One-sided NMF as for a neuron's NMF image (methods.md): each weighted gradient
    is split into its positive and negative parts along the feature axis, ``X[n] = w_n * concat(relu(g_n),
    relu(-g_n))`` ``[N_fire, 2*C_src*K*K]``, and ``X ≈ A @ H`` (:func:`weightviz.nmf`, ``A >= 0``): the
    examples side stays non-negative (an example *loads* on a case), the pattern side absorbs the sign:
    ``pattern_c = H[c, :F] - H[c, F:]``. The loadings are ``A / w`` (then ``g_n ≈ loadings[n] @ patterns``
    for each firing image, the fit weighted by ``w_n``) and each case is scaled so the mean loading of its
    ``n_examples`` strongest examples is 1.

    ``k``: input channels kept per case in ``.top_inputs``; ``n_examples``: examples (with crops) per case.
    ``data``: a :class:`DataWeights` already computed for this connection (skips the data pass).
    ``restarts``: seeded random restarts of the factorization that measure ``.stability`` (0: not measured);
    a :class:`weightviz.errors.WeightvizWarning` when it is below :data:`STABILITY_WARN`.

    Several units (``unit`` a list or a spec like ``"0:32"``, or ``data`` of several units): one shared data
    pass (:func:`data_weights` with the units), then one factorization per unit; returns a list of
    :class:`Cases` in the order of the units (an error for any unit raises).

    Raises :class:`WeightvizError` (one line) when the unit never fires on the images, or ``n_cases`` is
    more than the data allows (the number of images on which the unit fires, or of distinct cases found).
    """

    n_cases = _check_int(n_cases, "n_cases", 1)
    k = _check_int(k, "k", 1)
    n_examples = _check_int(n_examples, "n_examples", 1)
    restarts = _check_int(restarts, "restarts", 0)
    if data is None:
        model = resolve(model)
        data = data_weights(model, src, dst, unit, images, position=position, batch_size=batch_size,
                            progress=progress)
    m = data.model if data.model is not None else resolve(model)
    if isinstance(data.unit, list):
        E = expanded_weights(m, data.src, data.dst, units=data.unit)
        return [_factor(data.for_unit(u), E[i], n_cases, k, n_examples, seed, iters, restarts)
                for i, u in enumerate(data.unit)]
    E = expanded_weights(m, data.src, data.dst, units=[data.unit])[0]
    return _factor(data, E, n_cases, k, n_examples, seed, iters, restarts)


def _factor(data: DataWeights, expanded: torch.Tensor, n_cases: int, k: int, n_examples: int, seed: int,
            iters: int, restarts: int) -> Cases:
    """:func:`cases` of one unit's :class:`DataWeights`."""
    from ..stats import nmf

    src, dst, unit = data.src, data.dst, data.unit
    G = data.weights.float()
    n, c, kh, kw = G.shape
    w = data.activations.float().clamp(min=0)
    fire = (w > 0).nonzero().flatten()
    where = "at its most active position" if data.position == "max" else f"at position {data.position}"
    if fire.numel() == 0:
        raise WeightvizError(f"unit {unit} of {dst!r} never fires on these {n} images (pre-activation <= 0 {where} "
                             f"in every one, max {float(data.activations.max()):.3g}); use other images or another unit")
    if n_cases > fire.numel():
        raise WeightvizError(f"n_cases={n_cases} is more than the data allows: unit {unit} of {dst!r} fires on only "
                             f"{fire.numel()} of the {n} images; use n_cases <= {fire.numel()} or more images")
    wf = w[fire] / w[fire].max()                                    # [M]
    g = G[fire].flatten(1)                                          # [M, F]
    if not bool(g.abs().sum() > 0):
        raise WeightvizError(f"the gradients of unit {unit} of {dst!r} w.r.t. {src or 'the input'!r} are 0 on every "
                             "image where it fires; nothing to factor")
    X = wf[:, None] * torch.cat([g.clamp(min=0), (-g).clamp(min=0)], dim=1)   # [M, 2F]
    A, H = nmf(X, n_cases, seed=seed, iters=iters)                  # [M, r], [r, 2F]
    f = g.shape[1]
    P = H[:, :f] - H[:, f:]                                         # [r, F] signed patterns
    L = A / wf[:, None]                                             # unweighted loadings
    empty = [j for j in range(n_cases) if not bool(A[:, j].max() > 0) or not bool(P[j].abs().max() > 0)]
    if empty:
        found = n_cases - len(empty)
        raise WeightvizError(f"n_cases={n_cases} is more than the data allows: the gradients of unit {unit} of "
                             f"{dst!r} hold only {found} distinct case(s) on these images; use n_cases <= {max(1, found)}")
    order = [A[:, j].argsort(descending=True, stable=True) for j in range(n_cases)]
    for j in range(n_cases):
        top = order[j][:n_examples]
        top = top[A[top, j] > 0]
        scale = float(L[top, j].mean())
        P[j] *= scale
        L[:, j] /= scale
    resid = (g - L @ P)
    num = float((wf[:, None] ** 2 * resid ** 2).sum())
    den = float((wf[:, None] ** 2 * g ** 2).sum())
    explained = 1.0 - num / den
    loadings = G.new_zeros(n, n_cases)
    loadings[fire] = L
    weighted = A.sum(0)
    share = weighted / weighted.sum()
    patterns = P.reshape(n_cases, c, kh, kw)
    top_inputs = [rank_connections(patterns[j], min(k, c)) for j in range(n_cases)]
    examples = []
    for j in range(n_cases):
        top = order[j][:n_examples]
        top = top[A[top, j] > 0]
        idx = [int(fire[t]) for t in top]
        crops = _crop_examples(data, idx) if data.images is not None and data.model is not None else None
        examples.append(CaseExamples(idx, L[top, j].clone(), data.activations[idx].clone(), crops))
    stability = _stability(X, H[:, :f] - H[:, f:], n_cases, seed, iters, restarts)
    if stability < STABILITY_WARN:
        warnings.warn(f"the {n_cases} cases of unit {unit} of {dst!r} are not unique: restarts of the factorization "
                      f"find other cases (stability {stability:.2f} < {STABILITY_WARN}); they may mix the true cases "
                      "even where they explain the gradients", WeightvizWarning, stacklevel=3)
    return Cases(patterns, loadings, explained, share, top_inputs, examples, expanded, data, stability)


def _stability(X: torch.Tensor, P: torch.Tensor, r: int, seed: int, iters: int, restarts: int) -> float:
    """Mean over ``restarts`` random seeded NMF starts (one batched fit) of the mean cosine between the
    signed patterns ``P`` ``[r, F]`` and the restart's patterns, matched one to one (Hungarian matching on
    the cosines); negative cosines count as 0. 1.0 without restarts."""
    if restarts == 0:
        return 1.0
    from scipy.optimize import linear_sum_assignment

    from ..stats import nmf

    f = P.shape[1]
    _, Hr = nmf(X.expand(restarts, *X.shape).contiguous(), r, seed=seed + 1, iters=iters, init="random")
    Q = Hr[:, :, :f] - Hr[:, :, f:]                                  # [R, r, F]
    Pn = torch.nn.functional.normalize(P.double(), dim=1)
    Qn = torch.nn.functional.normalize(Q.double(), dim=2)
    cos = torch.einsum("if,rjf->rij", Pn, Qn).clamp(min=0)         # [R, r, r]
    total = 0.0
    for c in cos:
        rows, cols = linear_sum_assignment(c.numpy(), maximize=True)
        total += float(c[rows, cols].mean())
    return min(1.0, max(0.0, total / restarts))

"""How concentrated a neuron's input weights are (:func:`long_tail`, :class:`LongTail`): top-k share,
k50, k90 and participation ratio beside a random Gaussian tensor of the same shape; its picture is
:func:`weightviz.figures.long_tail`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import WeightvizError

__all__ = ["DEFAULT_KS", "LongTail", "long_tail"]

# ------------------------------------------------------------------------------------- long tail
DEFAULT_KS = (1, 5, 10, 20, 50, 100)


@dataclass
class LongTail:
    """How concentrated each neuron's input weight is over its input channels.

    Per neuron (leading dim N; N=1 for a single ``[C_in, kh, kw]`` tensor): ``norms`` ``[N, C]`` slice L2
    norms sorted descending, ``order`` ``[N, C]`` the input channels in that order, ``cum_share`` ``[N, C]``
    the cumulative share of squared norm, ``top_share`` ``{k: [N]}``, ``k50`` / ``k90`` ``[N]`` (smallest
    k holding 50 % / 90 %), ``pr`` ``[N]`` participation ratio ``(sum n^2)^2 / sum n^4`` (1 = one input,
    C = all equal). ``random_*``: the same statistics for i.i.d. Gaussian tensors of the same shape,
    averaged over ``n_random`` seeded draws (floats; ``random_cum_share`` ``[C]``). Dead neurons (all-zero
    weights) get NaN.
    """

    shape: tuple[int, ...]
    norms: torch.Tensor
    order: torch.Tensor
    cum_share: torch.Tensor
    top_share: dict[int, torch.Tensor]
    k50: torch.Tensor
    k90: torch.Tensor
    pr: torch.Tensor
    random_cum_share: torch.Tensor
    random_top_share: dict[int, float]
    random_k50: float
    random_k90: float
    random_pr: float
    n_random: int

    @property
    def n_inputs(self) -> int:
        return int(self.norms.shape[1])

    def table(self, unit: int = 0) -> str:
        """The statistics of neuron ``unit`` (index into N) beside the random baseline."""
        if not 0 <= unit < self.norms.shape[0]:
            raise WeightvizError(f"unit {unit} out of range: this long tail holds {self.norms.shape[0]} neurons")
        rows = [("statistic", "weights", f"random Gaussian (mean of {self.n_random})")]
        for k, v in self.top_share.items():
            rows.append((f"share of squared norm in top {k}", f"{float(v[unit]):.1%}", f"{self.random_top_share[k]:.1%}"))
        rows.append(("k50 (inputs holding 50%)", f"{float(self.k50[unit]):.0f}", f"{self.random_k50:.1f}"))
        rows.append(("k90 (inputs holding 90%)", f"{float(self.k90[unit]):.0f}", f"{self.random_k90:.1f}"))
        rows.append(("participation ratio", f"{float(self.pr[unit]):.1f}", f"{self.random_pr:.1f}"))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join("  ".join(c.ljust(x) for c, x in zip(r, w)).rstrip() for r in rows)

    def __repr__(self) -> str:
        return (f"LongTail(N={self.norms.shape[0]} neurons x C={self.n_inputs} inputs, weights "
                f"{list(self.shape)})\n{self.table(0)}")


def _tail_stats(norms_sq: torch.Tensor, ks: Sequence[int]) -> dict[str, Any]:
    """Statistics of squared slice norms ``[N, C]`` (float64)."""
    sq, order = norms_sq.sort(dim=1, descending=True)
    total = sq.sum(1, keepdim=True)
    dead = total[:, 0] <= 0
    safe = torch.where(total > 0, total, torch.ones_like(total))
    cum = sq.cumsum(1) / safe
    cum[dead] = float("nan")
    c = sq.shape[1]
    tol = 1e-9

    def k_at(q: float) -> torch.Tensor:
        k = (cum < q - tol).sum(1).double() + 1
        return torch.where(dead, torch.full_like(k, float("nan")), k.clamp(max=c))

    pr = total[:, 0].square() / torch.where(dead, torch.ones_like(total[:, 0]), sq.square().sum(1))
    pr[dead] = float("nan")
    top = {k: cum[:, k - 1] for k in ks}
    return {"sorted_sq": sq, "order": order, "cum": cum, "top": top, "k50": k_at(0.5), "k90": k_at(0.9), "pr": pr}


def long_tail(
    W: torch.Tensor,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    n_random: int = 8,
    seed: int = 0,
) -> LongTail:
    """Long-tail statistics of a neuron's input weights, beside a random Gaussian tensor of the same shape.

    ``W``: direct or expanded weights of one neuron ``[C_in, kh, kw]`` or of several ``[C_out, C_in, kh, kw]``
    (per neuron; e.g. ``weightviz.weights(model, layer)`` or ``weightviz.expanded_weights(model, src, dst)``).
    Slice norms ``n_i = ||W[o, i]||_2`` over the ``kh x kw`` positions, sorted descending. Statistics:
    share of ``sum n^2`` in the top k (for each ``k`` of ``ks`` up to C_in), ``k50`` / ``k90`` (smallest k
    holding 50 % / 90 %), participation ratio ``(sum n^2)^2 / sum n^4``. The random baseline draws
    ``n_random`` i.i.d. N(0, 1) tensors ``[C_in, kh, kw]`` (seeded; all statistics are scale-free) and
    averages each statistic over the draws — for i.i.d. slices the expected PR is about
    ``C_in * m / (m + 2)`` with ``m = kh*kw``, so "the top 10 hold 40 %" only means something next to it.

    >>> lt = long_tail(torch.eye(4)[:, :, None, None].repeat(1, 1, 3, 3)[0])   # one-hot: one input
    >>> float(lt.pr[0]), float(lt.k50[0]), lt.top_share[1].tolist()
    (1.0, 1.0, [1.0])
    """
    if not isinstance(W, torch.Tensor):
        try:
            W = torch.as_tensor(np.asarray(W))
        except (TypeError, ValueError):
            raise WeightvizError(f"W must be a tensor [C_in, kh, kw] or [C_out, C_in, kh, kw], got {type(W).__name__}") from None
    if W.dim() == 3:
        W = W[None]
    if W.dim() != 4 or W.shape[1] == 0 or W.shape[0] == 0:
        raise WeightvizError(
            f"W must be one neuron's weights [C_in, kh, kw] or a layer's [C_out, C_in, kh, kw], got shape "
            f"{tuple(W.shape)} (for a linear layer use W[:, :, None, None])"
        )
    if W.is_complex() or W.dtype == torch.bool:
        raise WeightvizError(f"W must hold real numbers, got dtype {W.dtype}")
    W = W.detach().to("cpu", torch.float64)
    if not torch.isfinite(W).all():
        raise WeightvizError("W contains NaN or Inf")
    if not isinstance(n_random, int) or n_random < 1:
        raise WeightvizError(f"n_random must be a positive integer, got {n_random!r}")
    c = W.shape[1]
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise WeightvizError(f"ks must be positive integers, got {list(ks)}")
    ks = [k for k in ks if k <= c] or [c]
    ours = _tail_stats(W.square().sum(dim=(2, 3)), ks)
    gen = torch.Generator().manual_seed(int(seed))
    R = torch.randn(n_random, *W.shape[1:], generator=gen, dtype=torch.float64)
    rnd = _tail_stats(R.square().sum(dim=(2, 3)), ks)
    return LongTail(
        shape=tuple(W.shape[1:]) if W.shape[0] == 1 else tuple(W.shape),
        norms=ours["sorted_sq"].sqrt(), order=ours["order"], cum_share=ours["cum"], top_share=ours["top"],
        k50=ours["k50"], k90=ours["k90"], pr=ours["pr"],
        random_cum_share=rnd["cum"].mean(0), random_top_share={k: float(v.mean()) for k, v in rnd["top"].items()},
        random_k50=float(rnd["k50"].mean()), random_k90=float(rnd["k90"].mean()), random_pr=float(rnd["pr"].mean()),
        n_random=n_random,
    )

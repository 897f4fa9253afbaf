"""Non-negative matrix factorization of weights: batched NMF in torch, one-sided NMF images of neurons,
and first-layer weights shown directly as RGB.

One-sided NMF (Voss et al., 2021, "Visualizing Weights"): a neuron's weights ``W[o]`` ``[C_in, kh, kw]``
are signed, so split them into positive and negative parts along the input-channel axis,
``X = concat(relu(W[o]), relu(-W[o]))`` ``[kh*kw, 2*C_in]``, and factor ``X ≈ A @ H`` with ``A >= 0``
``[kh*kw, F]`` (spatial factors) and ``H >= 0`` ``[F, 2*C_in]`` (channel factors, which absorb the sign).
``A`` reshaped to ``[kh, kw, F]`` is the neuron's image: F = 3 factors as red, green, blue.

>>> import torch, weightviz as wv
>>> W = torch.randn(16, 8, 5, 5)             # [C_out, C_in, kh, kw]
>>> wv.nmf_image(W).shape                    # [C_out, kh, kw, 3], in [0, 1]
torch.Size([16, 5, 5, 3])
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable

import torch

from ..errors import WeightvizError

__all__ = ["factor_colors", "nmf", "nmf_error", "nmf_image", "one_sided", "rgb_weights"]

_INITS = ("nndsvda", "random")


# ------------------------------------------------------------------------------------------------- NMF
def nmf(
    X: torch.Tensor,
    rank: int,
    *,
    iters: int = 200,
    seed: int = 0,
    init: str = "nndsvda",
    restarts: int = 1,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched non-negative matrix factorization ``X ≈ A @ H`` minimizing the Frobenius error.

    ``X``: ``[B, M, N]`` (or one matrix ``[M, N]``), non-negative and finite. Returns
    ``A`` ``[B, M, rank]`` and ``H`` ``[B, rank, N]``, both non-negative (unbatched input gives unbatched
    output). All B matrices are solved at once by batched HALS (hierarchical alternating least squares,
    i.e. exact coordinate descent on one column of ``A`` / row of ``H`` at a time, the update of
    scikit-learn's ``solver="cd"``), with no Python loop over matrices. With the defaults the error
    matches scikit-learn's ``NMF`` (see ``benchmarks/nmf.py`` and the tests).

    - ``init="nndsvda"``: non-negative double SVD (Boutsidis & Gallopoulos) as in scikit-learn, but
      its zeros filled with ``mean(X)/100`` instead of ``mean(X)`` (a large fill can bury a small
      component, e.g. the lone negative weight of a depthwise kernel, which then never comes back);
      components beyond ``min(M, N)`` start random. ``init="random"``: ``sqrt(mean(X)/rank) * |N(0,1)|``.
    - Entries are kept at or above ``1e-12 * max(X)`` during the fit (exact zeros can lock a component)
      and set to 0 at the end.
    - ``restarts > 1`` adds ``restarts - 1`` random starts; each matrix keeps its best fit (NMF is
      non-convex: a second start occasionally finds a better local minimum).
    - Each matrix stops after ``iters`` iterations, or earlier once 5 iterations improve its error
      ``‖X - AH‖`` by at most the fraction ``tol`` (matrices that stopped leave the batch).
    - Normalization: every row of ``H`` has unit L2 norm (the scale is in ``A``), and components are
      sorted by decreasing ``‖A[:, f]‖`` (all-zero components last). Each matrix is fitted after
      division by its max, so ``nmf(c * X)`` gives ``(c * A, H)``.
    - Deterministic for a ``seed`` (a private ``torch.Generator``; global RNG state is untouched).

    >>> X = torch.rand(100, 25, 64)               # 100 matrices [25, 64]
    >>> A, H = nmf(X, 3)
    >>> A.shape, H.shape
    (torch.Size([100, 25, 3]), torch.Size([100, 3, 64]))
    """
    X = _check_matrix(X)
    unbatched = X.dim() == 2
    if unbatched:
        X = X[None]
    rank = _check_int(rank, "rank", 1)
    iters = _check_int(iters, "iters", 1)
    restarts = _check_int(restarts, "restarts", 1)
    if init not in _INITS:
        raise WeightvizError(f"unknown NMF init {init!r}: use one of {', '.join(_INITS)}")
    if not X.is_floating_point() or X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()
    B, M, N = X.shape
    gen = torch.Generator(device=X.device).manual_seed(int(seed))
    if B * M * N == 0:
        return (X.new_zeros(M, rank), X.new_zeros(rank, N)) if unbatched else \
            (X.new_zeros(B, M, rank), X.new_zeros(B, rank, N))
    with torch.no_grad():
        # fit each matrix scaled to max 1 (scale-free, well-conditioned in float32)
        scale = X.amax(dim=(1, 2), keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        Xs = X / scale
        Xr = Xs.repeat(restarts, 1, 1) if restarts > 1 else Xs
        starts = [_init(Xs, rank, init, gen)]
        starts += [_init(Xs, rank, "random", gen) for _ in range(restarts - 1)]
        A0 = torch.cat([a for a, _ in starts])
        H0 = torch.cat([h for _, h in starts])
        A, H = _hals(Xr, A0, H0, iters, tol)
        if restarts > 1:
            err = nmf_error(Xr, A, H).view(restarts, B)
            best = err.argmin(0)  # [B]
            idx = best * B + torch.arange(B, device=X.device)
            A, H = A[idx], H[idx]
        # values held at the positivity floor are zeros
        A = torch.where(A > 2 * _FLOOR, A, torch.zeros_like(A))
        H = torch.where(H > 2 * _FLOOR, H, torch.zeros_like(H))
        A, H = _normalize(A, H)
        A = A * scale
    return (A[0], H[0]) if unbatched else (A, H)


def nmf_error(X: torch.Tensor, A: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Frobenius reconstruction error ``‖X - A @ H‖_F`` per matrix: ``[B]`` for ``[B, M, N]`` input."""
    return torch.linalg.matrix_norm(X - A @ H)


def _check_matrix(X) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(X)
        except Exception:
            raise WeightvizError(f"nmf needs a tensor [B, M, N], got {type(X).__name__}") from None
    if X.dim() not in (2, 3):
        raise WeightvizError(
            f"nmf needs matrices [B, M, N] (or one [M, N]), got shape {tuple(X.shape)}; "
            "for conv weights [C_out, C_in, kh, kw] use nmf_image"
        )
    if X.is_complex() or X.dtype == torch.bool:
        raise WeightvizError(f"nmf needs a real tensor, got dtype {X.dtype}")
    if X.numel() and not torch.isfinite(X).all():
        raise WeightvizError("nmf input holds NaN or Inf values; clean the weights first")
    if X.numel() and bool((X < 0).any()):
        raise WeightvizError(
            f"nmf input must be non-negative, got min {float(X.min()):.3g}; split signed weights with "
            "one_sided(W) or use nmf_image"
        )
    return X


def _check_int(v, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise WeightvizError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _init(X: torch.Tensor, rank: int, init: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting ``A`` ``[B, M, rank]``, ``H`` ``[B, rank, N]`` for matrices ``X`` scaled to max 1."""
    B, M, N = X.shape
    mean = X.mean(dim=(1, 2), keepdim=True)  # [B, 1, 1]
    avg = (mean / rank).sqrt()
    # random part (scikit-learn's "random" init), drawn in any case so that init="nndsvda" with extra
    # components and init="random" use the generator the same way
    A = avg * torch.randn(B, M, rank, generator=gen, dtype=X.dtype, device=X.device).abs()
    H = avg * torch.randn(B, rank, N, generator=gen, dtype=X.dtype, device=X.device).abs()
    if init == "random":
        return A, H
    k = min(rank, M, N)
    x, S, y = _top_svd(X, k)  # [B, M, k], [B, k], [B, N, k]
    xp, xn = x.clamp(min=0), (-x).clamp(min=0)
    yp, yn = y.clamp(min=0), (-y).clamp(min=0)
    xpn, xnn = xp.norm(dim=1), xn.norm(dim=1)  # [B, k]
    ypn, ynn = yp.norm(dim=1), yn.norm(dim=1)
    mp, mn = xpn * ypn, xnn * ynn
    pos = mp > mn
    tiny = torch.finfo(X.dtype).tiny
    u = torch.where(pos[:, None], xp / xpn.clamp(min=tiny)[:, None], xn / xnn.clamp(min=tiny)[:, None])
    v = torch.where(pos[:, None], yp / ypn.clamp(min=tiny)[:, None], yn / ynn.clamp(min=tiny)[:, None])
    sigma = torch.where(pos, mp, mn)
    # the leading singular pair is non-negative up to sign: use |U0|, |V0|
    u[..., 0], v[..., 0], sigma[..., 0] = x[..., 0].abs(), y[..., 0].abs(), 1.0
    lbd = (S * sigma).clamp(min=0).sqrt()  # [B, k]
    Ak = u * lbd[:, None, :]
    Hk = (v * lbd[:, None, :]).mT
    eps = 1e-6
    fill = mean * _FILL
    Ak = torch.where(Ak < eps, fill.expand_as(Ak), Ak)
    Hk = torch.where(Hk < eps, fill.expand_as(Hk), Hk)
    A = torch.cat([Ak, A[..., k:]], dim=2)
    H = torch.cat([Hk, H[:, k:]], dim=1)
    return A, H


def _top_svd(X: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` singular triplets ``U`` ``[B, M, k]``, ``S`` ``[B, k]``, ``V`` ``[B, N, k]`` of small
    matrices, from the eigen-decomposition of the smaller Gram matrix in float64 (much faster than a
    batched SVD on CPU, and accurate enough to start NMF)."""
    Xd = X.double()
    flip = X.shape[1] > X.shape[2]
    if flip:
        Xd = Xd.mT
    evals, evecs = torch.linalg.eigh(Xd @ Xd.mT)  # ascending
    U = evecs.flip(-1)[..., :k]
    S = evals.flip(-1)[..., :k].clamp(min=0).sqrt()
    V = (Xd.mT @ U) / S.clamp(min=1e-150)[:, None, :]
    if flip:
        U, V = V, U
    return U.to(X.dtype), S.to(X.dtype), V.to(X.dtype)


# HALS keeps entries at or above this floor (X is scaled to max 1): an exact 0 in A and in H can lock a
# component at a stationary point that is not a minimum; from the floor it escapes.
_FLOOR = 1e-12
_FILL = 0.01


def _hals(X: torch.Tensor, A: torch.Tensor, H: torch.Tensor, iters: int, tol: float):
    """Batched HALS from the starts ``A``, ``H``, which are overwritten with the results. Per iteration, form ``A^T X``, ``A^T A`` and update the rows of ``H`` one at a time,
    then form ``X H^T``, ``H H^T`` and update the columns of ``A``. Every 5 iterations, matrices whose
    error improved by at most the fraction ``tol`` are frozen and dropped from the batch.

    All products are written into buffers allocated once per batch (:class:`_HalsBatch`), so an
    iteration is ~25 tensor ops on fixed views: small problems are bound by per-op overhead.
    (Several inner sweeps per product, as in "accelerated HALS", were slower here: the sweeps over
    ``[B, N]`` rows cost as much as the products on CPU.)"""
    idx = torch.arange(X.shape[0], device=X.device)
    b = _HalsBatch(X.contiguous(), A.clone(), H.clone())  # A, H (the caller's fresh starts) get the results
    prev = None
    for it in range(iters):
        b.sweep()
        if tol > 0 and (it + 1) % 5 == 0:
            err = b.error()
            if prev is not None:
                done = prev - err <= tol * err  # improved by at most the fraction tol in 5 iterations
                if bool(done.any()):
                    A[idx], H[idx] = b.A, b.H
                    keep = ~done
                    idx, err = idx[keep], err[keep]
                    if idx.numel() == 0:
                        break
                    b = _HalsBatch(b.X[keep], b.A[keep], b.H[keep], x2=b.x2[keep])
            prev = err
    if idx.numel():
        A[idx], H[idx] = b.A, b.H
    return A, H


class _HalsBatch:
    """The active matrices of :func:`_hals` (``X`` ``[b, M, N]`` contiguous, ``A`` ``[b, M, r]`` and ``H``
    ``[b, r, N]`` updated in place) with preallocated product buffers and their per-component views."""

    def __init__(self, X: torch.Tensor, A: torch.Tensor, H: torch.Tensor, x2: torch.Tensor | None = None):
        self.X, self.A, self.H = X, A.contiguous(), H.contiguous()
        # A^T @ X and H @ X^T both read a contiguous operand: batched GEMM's fast path (a transposed
        # view, e.g. one_sided's output, made A^T @ X ~10x slower; X @ H^T is ~2x slower than H @ X^T)
        self.Xt = X.mT.contiguous()
        self.x2 = (X * X).sum(dim=(1, 2)) if x2 is None else x2
        b, M, N = X.shape
        r = A.shape[-1]
        self.tiny = torch.finfo(X.dtype).tiny
        new = X.new_empty
        self.AtA, self.AtX, self.dH = new(b, r, r), new(b, r, N), new(b, r, 1)
        self.HHt, self.HXt, self.dA = new(b, r, r), new(b, r, M), new(b, 1, r)
        self.gH, self.gA = new(b, 1, N), new(b, M, 1)
        self.At = self.A.mT
        ks = range(r)
        # per component k: (row of H, its gradient terms, diagonal entry) and (column of A, ...)
        self.h_views = [(self.H[:, k:k + 1], self.AtX[:, k:k + 1], self.AtA[:, k:k + 1], self.dH[:, k:k + 1])
                        for k in ks]
        self.a_views = [(self.A[..., k:k + 1], self.HXt[:, k:k + 1].mT, self.HHt[:, :, k:k + 1],
                         self.dA[..., k:k + 1]) for k in ks]
        self.dH_src = self.AtA.diagonal(dim1=1, dim2=2)[..., None]  # [b, r, 1]
        self.dA_src = self.HHt.diagonal(dim1=1, dim2=2)[:, None, :]  # [b, 1, r]

    def sweep(self) -> None:
        """One HALS iteration: all rows of ``H``, then all columns of ``A`` (exact coordinate descent)."""
        A, H, gH, gA, floor = self.A, self.H, self.gH, self.gA, _FLOOR
        torch.bmm(self.At, A, out=self.AtA)
        torch.bmm(self.At, self.X, out=self.AtX)
        torch.clamp(self.dH_src, min=self.tiny, out=self.dH)
        for h, atx, ata, d in self.h_views:
            torch.baddbmm(atx, ata, H, alpha=-1, out=gH)
            h.addcdiv_(gH, d).clamp_(min=floor)
        torch.bmm(H, H.mT, out=self.HHt)
        torch.bmm(H, self.Xt, out=self.HXt)
        torch.clamp(self.dA_src, min=self.tiny, out=self.dA)
        for a, xht, hht, d in self.a_views:
            torch.baddbmm(xht, A, hht, alpha=-1, out=gA)
            a.addcdiv_(gA, d).clamp_(min=floor)

    def error(self) -> torch.Tensor:
        """``‖X - AH‖_F`` per matrix ``[b]`` from the buffers of the last sweep (``X H^T`` and ``H H^T``
        are current): ``‖X‖² - 2<A, X H^T> + <A^T A, H H^T>``, no ``[b, M, N]`` product."""
        A = self.A
        AtA = self.At @ A
        inner = (A * self.HXt.mT).sum(dim=(1, 2))
        return (self.x2 - 2 * inner + (AtA * self.HHt).sum(dim=(1, 2))).clamp(min=0).sqrt()


def _normalize(A: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm rows of ``H`` (scale moved into ``A``), components sorted by decreasing ``‖A[:, f]‖``."""
    n = H.norm(dim=2)  # [B, r]
    ok = n > 0
    H = torch.where(ok[..., None], H / n.clamp(min=torch.finfo(H.dtype).tiny)[..., None], H)
    A = torch.where(ok[:, None, :], A * n[:, None, :], torch.zeros_like(A))
    energy = A.norm(dim=1)  # [B, r]
    order = energy.argsort(dim=1, descending=True, stable=True)
    A = A.gather(2, order[:, None, :].expand_as(A))
    H = H.gather(1, order[..., None].expand_as(H))
    return A, H


# -------------------------------------------------------------------------------------- one-sided NMF
def one_sided(W: torch.Tensor) -> torch.Tensor:
    """Per-neuron one-sided matrices: ``W`` ``[C_out, C_in, kh, kw]`` -> ``X`` ``[C_out, kh*kw, 2*C_in]``.

    Row ``p = y*kw + x`` is kernel position ``(y, x)``; columns ``0..C_in-1`` hold ``relu(W[o, i, y, x])``
    and columns ``C_in..2*C_in-1`` hold ``relu(-W[o, i, y, x])``.
    """
    W = _check_weights(W)
    C_out, C_in, kh, kw = W.shape
    X = torch.cat([W.clamp(min=0), (-W).clamp(min=0)], dim=1)  # [C_out, 2C_in, kh, kw]
    return X.reshape(C_out, 2 * C_in, kh * kw).mT


def _check_weights(W, what: str = "weights") -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        raise WeightvizError(
            f"{what} must be a torch tensor [C_out, C_in, kh, kw], got {type(W).__name__}; "
            "get one with weightviz.weights(model, layer)"
        )
    if W.dim() != 4:
        raise WeightvizError(
            f"{what} must have shape [C_out, C_in, kh, kw], got {tuple(W.shape)}; "
            "weightviz.weights(model, layer) returns that layout (linear layers as [out, in, 1, 1])"
        )
    if W.is_complex() or not (W.is_floating_point() or W.dtype in (torch.int8, torch.int16, torch.int32,
                                                                   torch.int64, torch.uint8)):
        raise WeightvizError(f"{what} must be real numbers, got dtype {W.dtype}")
    W = W.detach()
    if not W.is_floating_point() or W.dtype in (torch.float16, torch.bfloat16):
        W = W.float()
    if W.numel() and not torch.isfinite(W).all():
        raise WeightvizError(f"{what} hold NaN or Inf values")
    return W


def factor_colors(n: int) -> torch.Tensor:
    """Colours ``[n, 3]`` of the factors: 1 factor white (greyscale image), 3 factors pure red, green,
    blue (plain RGB), otherwise ``n`` hues evenly spaced on the colour wheel starting at red."""
    n = _check_int(n, "n_factors", 1)
    if n == 1:
        return torch.ones(1, 3)
    return torch.tensor([colorsys.hsv_to_rgb(i / n, 1.0, 1.0) for i in range(n)], dtype=torch.float32)


def _to_rgb(A: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """``A`` ``[C, kh*kw, F]`` -> images ``[C, kh, kw, 3]``: hue mixture, each image divided by its max."""
    colors = factor_colors(A.shape[-1]).to(A)
    img = (A @ colors).reshape(A.shape[0], kh, kw, 3)
    m = img.amax(dim=(1, 2, 3), keepdim=True)
    img = torch.where(m > 0, img / m.clamp(min=torch.finfo(img.dtype).tiny), torch.zeros_like(img))
    return img.clamp_(0, 1)


def nmf_image(
    W: torch.Tensor,
    n_factors: int = 3,
    shared: bool = False,
    seed: int = 0,
    *,
    iters: int = 200,
    restarts: int = 1,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    return_factors: bool = False,
):
    """One-sided NMF images of all neurons of a layer: ``W`` ``[C_out, C_in, kh, kw]`` ->
    ``[C_out, kh, kw, 3]`` float in [0, 1].

    Per neuron ``o``: ``X = concat(relu(W[o]), relu(-W[o]))`` over input channels, ``[kh*kw, 2*C_in]``,
    factored as ``X ≈ A @ H`` with ``n_factors`` components (see :func:`nmf`; ``H`` rows unit norm,
    components sorted by strength, the strongest red). The image is ``A`` ``[kh, kw, F]`` mixed into RGB
    with :func:`factor_colors` (F = 3: red, green, blue; other F: hue mixture; F = 1: grey) and divided
    by its max. All-zero kernels give black images.

    - ``shared=False``: each neuron has its own factors, so its colours only mean something inside
      that neuron. Neurons are fitted in batches of ``batch_size`` (no Python loop per neuron).
    - ``shared=True``: the channel factors ``H`` are fitted once on all neurons of the layer (their
      matrices stacked along positions, ``[C_out*kh*kw, 2*C_in]``), and each neuron's ``A`` is its block
      of rows of that joint fit (the non-negative least-squares fit given ``H``), so a colour means the
      same input-channel direction in every neuron.
    - At most ``min(kh*kw, 2*C_in)`` factors are fitted (that many already fit exactly; more would only
      split them): the rest stay zero. A depthwise kernel (``C_in = 1``) thus shows its stronger sign part
      in red and the other in green; a 1x1 kernel is a single red pixel.
    - Depthwise / grouped convs: pass either the raw tensor ``[C_out, C_in/groups, kh, kw]`` or the dense
      expansion (``weightviz.weights(model, layer, dense=True)``): the expansion only adds all-zero
      columns to ``X``, which do not change the factorization of the spatial side, so the raw tensor is
      the cheap, equivalent choice (used by the figures and the CLI).
    - ``iters``, ``restarts``: passed to :func:`nmf`.
    - ``progress(n)`` is called after each batch with the number of neurons done in it.
    - ``return_factors=True`` also returns ``A`` ``[C_out, kh*kw, F]`` and ``H`` (``[C_out, F, 2*C_in]``,
      or ``[F, 2*C_in]`` when shared).

    Deterministic for a ``seed``.

    >>> W = torch.randn(32, 16, 3, 3)
    >>> nmf_image(W).shape, nmf_image(W, n_factors=5, shared=True).shape
    (torch.Size([32, 3, 3, 3]), torch.Size([32, 3, 3, 3]))
    """
    W = _check_weights(W)
    n_factors = _check_int(n_factors, "n_factors", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    C_out, C_in, kh, kw = W.shape
    if C_out == 0 or C_in == 0 or kh == 0 or kw == 0:
        raise WeightvizError(f"weights of shape {tuple(W.shape)} are empty: nothing to factor")
    X = one_sided(W)  # [C_out, P, 2C_in]
    P = kh * kw
    if shared:
        # a [M, N] non-negative matrix has an exact NMF with min(M, N) factors: more only split factors
        F = min(n_factors, C_out * P, 2 * C_in)
        A, H = nmf(X.reshape(1, C_out * P, 2 * C_in), F, iters=iters, seed=seed, restarts=restarts)
        A = A.reshape(C_out, P, F)
        H = H[0]
        if progress is not None:
            progress(C_out)
    else:
        F = min(n_factors, P, 2 * C_in)
        As, Hs = [], []
        for start in range(0, C_out, batch_size):
            a, h = nmf(X[start:start + batch_size], F, iters=iters, seed=seed + start, restarts=restarts)
            As.append(a)
            Hs.append(h)
            if progress is not None:
                progress(a.shape[0])
        A, H = torch.cat(As), torch.cat(Hs)
    if F < n_factors:  # unused factors stay empty (zero), so the colours keep their meaning
        A = torch.cat([A, A.new_zeros(*A.shape[:-1], n_factors - F)], dim=-1)
        H = torch.cat([H, H.new_zeros(*H.shape[:-2], n_factors - F, H.shape[-1])], dim=-2)
    img = _to_rgb(A, kh, kw)
    return (img, A, H) if return_factors else img


def rgb_weights(W: torch.Tensor) -> torch.Tensor:
    """First-layer weights shown directly as colour: ``W`` ``[C_out, 3, kh, kw]`` -> ``[C_out, kh, kw, 3]``
    in [0, 1].

    Each weight is centred at 0 and scaled by the layer's absolute max: ``0.5 + W / (2 * max|W|)``, so
    0 is mid grey, the most positive weight of the layer is 1 and the most negative 0 in its channel.
    An all-zero layer is uniformly grey.

    >>> rgb_weights(torch.randn(32, 3, 3, 3)).shape
    torch.Size([32, 3, 3, 3])
    """
    W = _check_weights(W)
    if W.shape[1] != 3:
        raise WeightvizError(
            f"rgb_weights needs a first layer with 3 input channels [C_out, 3, kh, kw], got "
            f"{tuple(W.shape)}; use nmf_image for other layers"
        )
    m = float(W.abs().max()) if W.numel() else 0.0
    img = 0.5 + W / (2 * m) if m > 0 else torch.full_like(W, 0.5)
    return img.permute(0, 2, 3, 1).clamp(0, 1).contiguous()

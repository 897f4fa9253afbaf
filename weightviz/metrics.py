"""Weight statistics: the banding score of the Weight Banding article and the long tail of a neuron's inputs.

- :func:`banding_score` — per-neuron score ``S`` in [-1, 1] from a two-way ANOVA of a kernel image
  (+1 horizontal bands, -1 vertical bands, 0 neither);
- :func:`banding_test` — the layer-level decision "banded / not banded", calibrated against a permutation
  null (positions shuffled within each kernel);
- :func:`scan_banding` — that test for every conv layer with kernels of at least 3x3, plus a plot across depth;
- :func:`long_tail` — how concentrated a neuron's input weights are (top-k share, k50, k90, participation
  ratio), each beside the same statistic for a random Gaussian tensor of the same shape.

>>> import torch, weightviz as wv
>>> bands = torch.arange(5.0)[:, None].expand(5, 5)       # rows differ, constant along x
>>> wv.banding_score(torch.stack([bands, bands.T]))        # [N] from [N, kh, kw]
tensor([ 1., -1.], dtype=torch.float64)
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import WeightvizError

__all__ = [
    "BandingResult",
    "BandingScan",
    "LayerBanding",
    "LongTail",
    "anova_energies",
    "banding_layers",
    "banding_score",
    "banding_test",
    "long_tail",
    "scan_banding",
]

#: Default per-neuron significance level of the banding test.
ALPHA = 0.01
#: Default share of neurons that must be individually banded (one direction) for a layer to count as banded.
MAJORITY = 2 / 3
#: Default number of permutations of the null.
N_PERM = 1000


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


# ------------------------------------------------------------------------------ permutation test
@dataclass
class BandingResult:
    """Layer-level banding decision for N kernels (see :func:`banding_test` for the rule).

    Per neuron (``[N]``): ``scores`` S, ``p_horizontal`` / ``p_vertical`` (one-sided permutation p-values
    of S against that neuron's own shuffled kernels), ``row_share`` (``E_row / total``).
    Per layer: ``median`` S, ``p_value`` (two-sided permutation p-value of the median), the
    ``fraction_horizontal`` / ``fraction_vertical`` of neurons individually banded at ``alpha``,
    ``null_median`` (2.5 %, 97.5 % quantiles of the median under the null), ``label``
    (``"horizontal"``, ``"vertical"`` or ``"none"``).
    """

    scores: torch.Tensor
    p_horizontal: torch.Tensor
    p_vertical: torch.Tensor
    row_share: torch.Tensor
    median: float
    p_value: float
    fraction_horizontal: float
    fraction_vertical: float
    null_median: tuple[float, float]
    null_row_share: float
    kernel: tuple[int, int]
    n_perm: int
    alpha: float
    majority: float
    label: str
    exact: bool = False

    @property
    def banded(self) -> bool:
        """True when the layer is banded (either orientation)."""
        return self.label != "none"

    @property
    def fraction_banded(self) -> float:
        """Share of neurons individually banded in the layer's dominant direction (sign of the median)."""
        return self.fraction_horizontal if self.median >= 0 else self.fraction_vertical

    @property
    def n(self) -> int:
        return int(self.scores.numel())

    def __repr__(self) -> str:
        return (f"BandingResult({self.label}: N={self.n}, {self.kernel[0]}x{self.kernel[1]}, median S="
                f"{self.median:+.3f} (null 95%: {self.null_median[0]:+.3f}..{self.null_median[1]:+.3f}, "
                f"p={self.p_value:.3g}), banded neurons: {self.fraction_horizontal:.0%} horizontal, "
                f"{self.fraction_vertical:.0%} vertical at p<{self.alpha:g}; rule: >= {self.majority:.0%})")


def _chunk_rows(n: int, per_row: int, budget: int = 1 << 22) -> int:
    return max(1, min(n, budget // max(1, per_row)))


def _centred(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-centred kernels ``[N, kh, kw, F]`` as ``[N*F, kh*kw]`` and ``1/total`` energy ``[N]`` (0 for a
    constant kernel). Shuffling positions leaves the total unchanged."""
    n, kh, kw, f = x.shape
    xc = x - x.mean(dim=(1, 2), keepdim=True)
    total = xc.square().sum(dim=(1, 2, 3))
    inv = torch.where(total > _tiny(x), 1.0 / total.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(total))
    return xc.reshape(n, kh * kw, f).transpose(1, 2).reshape(n * f, kh * kw), inv


def _block_energy(flat: torch.Tensor, ind: torch.Tensor, f: int, size: int) -> torch.Tensor:
    """``sum_f sum_blocks blocksum^2 / size`` of centred kernels ``flat [N*F, kk]`` for 0/1 block
    indicators ``ind [M, B, kk]`` -> ``[N, M]``. With centred values this is E_row (blocks = rows of an
    arrangement, size kw) or E_col (blocks = columns, size kh)."""
    m, b, kk = ind.shape
    n = flat.shape[0] // f
    sums = flat @ ind.reshape(m * b, kk).T  # [N*F, M*B]
    e = sums.square_().reshape(n * f * m, b).sum(dim=1).reshape(n, f, m)  # contiguous reductions are fastest
    return (e.sum(dim=1) if f > 1 else e[:, 0]).div_(size)


def _null_scores(x: torch.Tensor, perms: torch.Tensor) -> tuple[torch.Tensor, float]:
    """S of each kernel ``x [N, kh, kw, F]`` with its positions shuffled by each permutation of
    ``perms [M, kh*kw]`` (all F channels of a position move together): ``[M, N]``; and the mean null row share.

    With channel-centred values ``E_row = (1/kw) sum_y rowsum_y^2`` and ``E_col = (1/kh) sum_x colsum_x^2``;
    the row/column sums of a shuffled kernel are one 0/1 matrix product per permutation, so the null is two
    matmuls, not M ANOVAs (checked against shuffling + :func:`anova_energies` in the tests).
    """
    n, kh, kw, f = x.shape
    kk = kh * kw
    m = perms.shape[0]
    pos = torch.arange(kk)
    # rows[m, y, q] = 1 when the value at source position q lands in row y under permutation m
    rows = torch.zeros(m, kh, kk, dtype=x.dtype)
    rows[torch.arange(m)[:, None], (pos // kw)[None, :].expand(m, kk), perms] = 1
    cols = torch.zeros(m, kw, kk, dtype=x.dtype)
    cols[torch.arange(m)[:, None], (pos % kw)[None, :].expand(m, kk), perms] = 1
    flat, inv = _centred(x)
    out = torch.empty(m, n, dtype=x.dtype)
    share = 0.0
    step = _chunk_rows(n, f * m * max(kh, kw))
    for i in range(0, n, step):
        j = min(n, i + step)
        blk = flat[i * f:j * f]
        e_row = _block_energy(blk, rows, f, kw)
        e_col = _block_energy(blk, cols, f, kh)
        out[:, i:j] = ((e_row - e_col) * inv[i:j, None]).T
        share += float((e_row.mean(1) * inv[i:j]).sum())
    return out, share / n


#: Kernels with at most this many distinct arrangements (up to row and column order) get an exact test.
EXACT_LIMIT = 20000


def _set_partitions(labels: tuple[int, ...], size: int) -> Iterator[tuple[tuple[int, ...], ...]]:
    """All partitions of ``labels`` into unordered blocks of ``size`` (each block sorted, blocks by first label)."""
    if not labels:
        yield ()
        return
    first, rest = labels[0], labels[1:]
    for others in itertools.combinations(rest, size - 1):
        block = (first, *others)
        remaining = tuple(v for v in rest if v not in others)
        for tail in _set_partitions(remaining, size):
            yield (block, *tail)


@functools.lru_cache(maxsize=16)
def _orbits(kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Every arrangement of ``kh*kw`` positions up to the order of rows and of columns (which leave S
    unchanged), as pairs (row partition, column partition), or None when there are more than
    :data:`EXACT_LIMIT`. Returns ``row_ind [R, kh, kk]``, ``col_ind [Q, kw, kk]`` 0/1 block indicators and
    ``pairs [O, 2]``. Each orbit holds ``kh! * kw!`` of the ``(kh*kw)!`` permutations, so a uniform draw over
    orbits is a uniform draw over permutations (3x3: 10080 orbits of 36)."""
    kk = kh * kw
    if math.factorial(kk) // (math.factorial(kh) * math.factorial(kw)) > EXACT_LIMIT:
        return None
    labels = tuple(range(kk))
    row_parts = list(_set_partitions(labels, kw))  # kh blocks of kw labels
    col_parts = list(_set_partitions(labels, kh))  # kw blocks of kh labels
    col_index = {p: i for i, p in enumerate(col_parts)}
    pairs = []
    for i, rows in enumerate(row_parts):
        # columns are unordered: the first row fixes their names, the other rows assign their labels freely
        for perms in itertools.product(itertools.permutations(range(kw)), repeat=kh - 1):
            cols = [[v] for v in rows[0]]
            for blk, perm in zip(rows[1:], perms):
                for v, c in zip(blk, perm):
                    cols[c].append(v)
            key = tuple(sorted(tuple(sorted(c)) for c in cols))
            pairs.append((i, col_index[key]))

    def indicator(parts: list, nblocks: int) -> torch.Tensor:
        ind = torch.zeros(len(parts), nblocks, kk, dtype=torch.float64)
        for i, part in enumerate(parts):
            for b, blk in enumerate(part):
                ind[i, b, list(blk)] = 1
        return ind

    return indicator(row_parts, kh), indicator(col_parts, kw), torch.tensor(pairs, dtype=torch.long)


def _exact_null(x: torch.Tensor, orbits) -> tuple[torch.Tensor, float]:
    """S of each kernel ``[N, kh, kw, F]`` in every arrangement of :func:`_orbits`: ``[O, N]``; and the mean
    null row share (each row partition occurs equally often among the orbits)."""
    row_ind, col_ind, pairs = orbits
    f = x.shape[-1]
    flat, inv = _centred(x)
    e_row = _block_energy(flat, row_ind.to(x.dtype), f, x.shape[2]).T.contiguous()  # [R, N]
    e_col = _block_energy(flat, col_ind.to(x.dtype), f, x.shape[1]).T.contiguous()  # [Q, N]
    # gathering whole rows of the [partitions, N] layout is a memcpy per orbit (fast)
    s = e_row.index_select(0, pairs[:, 0]).sub_(e_col.index_select(0, pairs[:, 1])).mul_(inv[None, :])
    return s, float((e_row.mean(0) * inv).mean())


def banding_test(
    kernels: Any,
    *,
    n_perm: int = N_PERM,
    seed: int = 0,
    alpha: float = ALPHA,
    majority: float = MAJORITY,
    channels_last: bool = True,
    exact: bool = True,
) -> BandingResult:
    """Decide whether a layer's kernels are banded, calibrated against a permutation null.

    ``kernels``: as in :func:`banding_score` (``[N, kh, kw]`` or ``[N, kh, kw, F]``).

    Null: each kernel's ``kh*kw`` positions shuffled (all F channels of a position move together); this
    keeps each neuron's values and removes only their spatial arrangement.

    - Small kernels (3x3, 2xk; at most :data:`EXACT_LIMIT` arrangements up to row and column order,
      which leave S unchanged) with ``exact=True``: the neuron-level p-values are **exact**, over all
      ``(kh*kw)!`` shuffles (3x3: 10080 distinct arrangements of 36 shuffles each).
    - Larger kernels: ``n_perm`` random shuffles (one seeded pool, applied to every neuron), p-value
      ``(1 + #{null S >= S}) / (n_perm + 1)``.
    - The null of the layer median: in each of ``n_perm`` draws every neuron takes an independent random
      shuffle (from the exact set or the pool), seeded by ``seed``.

    Rule (one global rule, not tuned per layer):

    1. a neuron is *horizontally banded* when its one-sided permutation p-value (share of shuffles of its
       own kernel with S at least as high) is below ``alpha``; *vertically banded*: as low;
    2. a layer is banded in the direction of the sign of its median S when **at least ``majority`` (2/3)
       of its neurons are individually banded in that direction** and the median S itself lies outside
       its null (two-sided permutation p-value of the median ``< alpha``).

    Why not a cut on S, or on the median's p-value alone: with hundreds of neurons, any systematic
    orientation preference gives a tiny p-value for the median, even the weak residual ones of networks
    the Weight Banding article calls *not* banded (AlexNet conv5 median S = +0.23, p < 0.001); the median S
    also depends on the kernel size (3x3 vs 5x5 nulls differ). Counting neurons that are individually
    significant against their own null is scale- and size-calibrated. Why 2/3 rather than 1/2: banding is
    a layer-wide phenomenon; on the article's data (``tests/data/weight-banding``, alpha=0.01) every layer
    it calls banded has >= 76 % banded neurons, while the fc-only ResNet50 and InceptionV1 layers, which
    keep some row preference but lose the bands by eye (ResNet50's middle factor becomes a centre blob,
    InceptionV1's kernels look scattered), have 57-59 %. The 2/3 cut sits in that gap; it was chosen
    knowing these data, as one global threshold (labels are the same for other seeds). ``alpha`` and
    ``majority`` were calibrated together: with alpha=0.005 the same labels come out, with alpha=0.02
    ResNet50 fc-only reaches 73 % and would need majority 3/4 — the fc-only ResNet50 layer is the
    borderline case of these data (median S = +0.55). Not used: the row
    share ``E_row / total`` against the null's ``1/(k+1)``. NMF images are non-negative and nearly
    separable, so main effects dominate even without bands (Simplified fc-only: median row share 0.48
    vs 0.17 under the null), and that share does not separate the article's classes.

    Note: for 3x3 kernels a perfectly banded neuron reaches p of about 0.003 at best (only ~30 of the 10080
    arrangements score as high), so ``alpha`` must stay above ~0.005 for 3x3 layers; for Monte Carlo
    nulls ``n_perm`` should be >= 500 for alpha=0.01.

    >>> _ = torch.manual_seed(0)
    >>> bands = torch.randn(64, 5, 1).expand(64, 5, 5) + 0.1 * torch.randn(64, 5, 5)
    >>> banding_test(bands).label, banding_test(bands.transpose(1, 2)).label, banding_test(torch.randn(64, 5, 5)).label
    ('horizontal', 'vertical', 'none')
    """
    if not isinstance(n_perm, int) or n_perm < 19:
        raise WeightvizError(f"n_perm must be an integer >= 19 (p-values need permutations), got {n_perm!r}")
    if not 0 < alpha < 1:
        raise WeightvizError(f"alpha must be in (0, 1), got {alpha!r}")
    if not 0 < majority <= 1:
        raise WeightvizError(f"majority must be in (0, 1], got {majority!r}")
    x = _as_kernels(kernels, channels_last)
    n, kh, kw, _ = x.shape
    scores, row_share = _score_from(x, _tiny(x))
    gen = torch.Generator().manual_seed(int(seed))
    orbits = _orbits(kh, kw) if exact else None
    tol = 1e-9  # ties (row/column permutations leave S unchanged) count as extreme
    if orbits is not None:  # exact: every arrangement once (up to row/column order, which keeps S)
        null_s, null_share = _exact_null(x, orbits)  # [O, N]
        m = null_s.shape[0]
        p_h = (null_s >= scores[None, :] - tol).sum(0).double() / m
        p_v = (null_s <= scores[None, :] + tol).sum(0).double() / m
    else:  # Monte Carlo: one seeded pool of n_perm shuffles
        perms = torch.rand(n_perm, kh * kw, generator=gen).argsort(dim=1)
        null_s, null_share = _null_scores(x, perms)  # [P, N]: every neuron under every shuffle of the pool
        p_h = ((null_s >= scores[None, :] - tol).sum(0) + 1).double() / (n_perm + 1)
        p_v = ((null_s <= scores[None, :] + tol).sum(0) + 1).double() / (n_perm + 1)
    frac_h = float((p_h < alpha).double().mean())
    frac_v = float((p_v < alpha).double().mean())
    median = float(scores.median())  # the lower middle value for even N, as for the null medians
    # null of the layer median: every neuron shuffled independently (a random member of the null each), n_perm times
    pick = torch.randint(null_s.shape[0], (n_perm, n), generator=gen)
    null_med = null_s.gather(0, pick).median(dim=1).values  # [P]
    p_med = float(((null_med.abs() >= abs(median) - tol).sum() + 1) / (n_perm + 1))
    lo, hi = (float(v) for v in null_med.quantile(torch.tensor([0.025, 0.975], dtype=torch.float64)))
    label = "none"
    if p_med < alpha:
        if median > 0 and frac_h >= majority:
            label = "horizontal"
        elif median < 0 and frac_v >= majority:
            label = "vertical"
    return BandingResult(
        scores=scores, p_horizontal=p_h, p_vertical=p_v, row_share=row_share, median=median, p_value=p_med,
        fraction_horizontal=frac_h, fraction_vertical=frac_v, null_median=(lo, hi),
        null_row_share=null_share, kernel=(kh, kw), n_perm=n_perm, alpha=alpha,
        majority=majority, label=label, exact=orbits is not None,
    )


# ------------------------------------------------------------------------------------ model scan
@dataclass
class LayerBanding:
    """One row of :class:`BandingScan`: a layer, the image its score used, and its :class:`BandingResult`."""

    layer: str
    depth: int
    weight_shape: tuple[int, ...]
    image: str  # "raw" (the kernel itself, channels as colours) or "nmf" (one-sided NMF image)
    result: BandingResult


@dataclass
class BandingScan:
    """Banding of every k>=3 conv layer of a model, in depth order. ``rows``: :class:`LayerBanding`.

    ``repr`` is a table; :meth:`plot` the figure across depth; :meth:`to_dicts` plain numbers.
    """

    model: str
    rows: list[LayerBanding] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str) -> LayerBanding:
        if isinstance(key, str):
            for r in self.rows:
                if r.layer == key:
                    return r
            from .errors import suggest

            raise WeightvizError(f"layer {key!r} is not in this scan.{suggest(key, [r.layer for r in self.rows])}")
        return self.rows[key]

    @property
    def layers(self) -> list[str]:
        return [r.layer for r in self.rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per layer (for JSON / tables)."""
        out = []
        for r in self.rows:
            b = r.result
            out.append({
                "layer": r.layer, "depth": r.depth, "kernel": f"{b.kernel[0]}x{b.kernel[1]}", "n": b.n,
                "image": r.image, "median": b.median, "p_value": b.p_value,
                "fraction_horizontal": b.fraction_horizontal, "fraction_vertical": b.fraction_vertical,
                "banded": b.label,
            })
        return out

    def table(self) -> str:
        head = ("layer", "kernel", "N", "image", "median S", "null 95%", "p", "horiz.", "vert.", "banded")
        lines = [head]
        for r in self.rows:
            b = r.result
            lines.append((
                r.layer, f"{b.kernel[0]}x{b.kernel[1]}", str(b.n), r.image, f"{b.median:+.3f}",
                f"{b.null_median[0]:+.2f}..{b.null_median[1]:+.2f}", f"{b.p_value:.3f}",
                f"{b.fraction_horizontal:.0%}", f"{b.fraction_vertical:.0%}", b.label,
            ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
        if self.rows:
            b = self.rows[0].result
            text += (f"\nbanded = >= {b.majority:.0%} of neurons with permutation p < {b.alpha:g} in the median's "
                     f"direction (horiz./vert. columns) and median p < {b.alpha:g}; neuron p-values exact for 3x3 "
                     f"kernels (all shuffles), from {b.n_perm} shuffles otherwise")
        return text

    def __repr__(self) -> str:
        return f"BandingScan of {self.model}: {len(self.rows)} layers\n{self.table()}"

    def plot(self, title: str | None = None):
        """Median S per layer across depth (with the null's 95 % band) above the share of individually
        banded neurons (horizontal up, vertical down, with the majority line). Returns a
        :class:`weightviz.figures.Figure` (``.save('x.png' | 'x.svg')``)."""
        from .figures._core import Figure, new_figure

        if not self.rows:
            raise WeightvizError("nothing to plot: the scan has no layer with kernels of at least 3x3")
        n = len(self.rows)
        xs = np.arange(n)
        med = np.array([r.result.median for r in self.rows])
        lo = np.array([r.result.null_median[0] for r in self.rows])
        hi = np.array([r.result.null_median[1] for r in self.rows])
        fh = np.array([r.result.fraction_horizontal for r in self.rows])
        fv = np.array([r.result.fraction_vertical for r in self.rows])
        labels = [r.result.label for r in self.rows]
        maj = self.rows[0].result.majority
        fig = new_figure(max(6.0, 0.42 * n + 2.0), 6.2)
        gs = fig.add_gridspec(2, 1, height_ratios=(3, 2), left=0.09, right=0.98, top=0.88, bottom=0.28, hspace=0.08)
        ax = fig.add_subplot(gs[0])
        ax.axhline(0, color="0.6", lw=0.8)
        ax.fill_between(xs, lo, hi, color="0.8", step="mid", label="null median, 95% band")
        colors = {"horizontal": "#ca0020", "vertical": "#0571b0", "none": "0.45"}
        ax.plot(xs, med, "-", color="0.3", lw=1)
        for lab in ("horizontal", "vertical", "none"):
            sel = [i for i in range(n) if labels[i] == lab]
            if sel:
                ax.scatter(xs[sel], med[sel], s=36, color=colors[lab], zorder=3,
                           label=f"banded {lab}" if lab != "none" else "not banded")
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlim(-0.6, n - 0.4)
        ax.set_ylabel("median banding score S\n(+1 horizontal, -1 vertical)", fontsize=8)
        ax.tick_params(labelsize=7, labelbottom=False)
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, ncol=4, borderaxespad=0.2)
        fig.suptitle(title or f"Weight banding across depth: {self.model}", fontsize=10, y=0.985)
        ax2 = fig.add_subplot(gs[1], sharex=ax)
        ax2.bar(xs, fh, color="#f4a582", width=0.7, label="horizontally banded neurons")
        ax2.bar(xs, -fv, color="#92c5de", width=0.7, label="vertically banded neurons")
        for y in (maj, -maj):
            ax2.axhline(y, color="0.3", ls="--", lw=0.8)
        ax2.axhline(0, color="0.6", lw=0.8)
        ax2.set_ylim(-1.05, 1.05)
        ax2.set_yticks([-1, -maj, 0, maj, 1])
        ax2.set_yticklabels(["100%", f"{maj:.0%}", "0", f"{maj:.0%}", "100%"])
        ax2.set_ylabel(f"neurons banded\n(p<{self.rows[0].result.alpha:g})", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.legend(fontsize=7, loc="lower right", frameon=False, ncol=2)
        ax2.set_xticks(xs)
        ax2.set_xticklabels([f"{r.layer} ({r.result.kernel[0]}x{r.result.kernel[1]})" for r in self.rows],
                            rotation=60, ha="right", fontsize=7)
        return Figure(fig, {"layers": self.layers, "median": med.tolist(), "banded": labels})


def banding_layers(model: nn.Module, min_kernel: int = 3) -> list[str]:
    """Names of the 2-D conv layers whose kernels are at least ``min_kernel`` in both directions, in
    definition order (those :func:`scan_banding` scores)."""
    from .models import layers

    out = []
    for r in layers(model).with_weights():
        if r.kernel is not None and len(r.kernel) == 2 and r.weight_shape is not None and len(r.weight_shape) == 4:
            if min(r.kernel) >= min_kernel:
                out.append(r.name)
    return out


def _layer_image(w: torch.Tensor, image: str, n_factors: int, seed: int) -> tuple[torch.Tensor, str]:
    """Kernels ``[C_out, kh, kw, F]`` of one layer's weights ``[C_out, C_in, kh, kw]`` and their kind."""
    c_in = w.shape[1]
    if image == "raw" or (image == "auto" and c_in <= 3):
        return w.permute(0, 2, 3, 1), "raw"
    from .factor import nmf_image

    _, A, _ = nmf_image(w, n_factors=n_factors, shared=False, seed=seed, return_factors=True)
    return A.reshape(w.shape[0], w.shape[2], w.shape[3], -1), "nmf"  # the factor maps, before colouring


def scan_banding(
    model: nn.Module | str | None = None,
    layers: Iterable[str] | None = None,
    *,
    image: str = "auto",
    n_factors: int = 3,
    n_perm: int = N_PERM,
    seed: int = 0,
    alpha: float = ALPHA,
    majority: float = MAJORITY,
    progress: Callable[[], Any] | None = None,
) -> BandingScan:
    """Run :func:`banding_test` on every conv layer with kernels >= 3x3 (or the given ``layers``).

    Per layer, the kernel image of each output neuron ``[C_out, kh, kw, F]`` comes from the weights
    ``[C_out, C_in/groups, kh, kw]``:

    - ``image="auto"`` (default): layers with at most 3 input channels per group (depthwise convs, the
      RGB stem) use the kernel itself, input channels as colours (signed values are fine for the ANOVA);
      the others use the one-sided NMF image :func:`weightviz.nmf_image` (``n_factors`` spatial factor
      maps ``[kh, kw, n_factors]`` per neuron, fitted per neuron with ``seed``, taken before they are mixed
      into colours), as the Weight Banding article does;
    - ``image="raw"``: always the kernel itself, energies summed over all input channels (no NMF; every
      input slice counts by its energy);
    - ``image="nmf"``: always the NMF image.

    ``progress`` is called once per finished layer. The model is only read (no hooks, no mode change).

    >>> scan = scan_banding("efficientnet_lite0")          # doctest: +SKIP
    >>> scan["blocks.5.3.conv_dw"].result.label            # doctest: +SKIP
    >>> scan.plot().save("banding.png")                    # doctest: +SKIP
    """
    from .models import LayerTable, model_name, resolve, weights
    from .models import layers as layer_table

    if image not in ("auto", "raw", "nmf"):
        raise WeightvizError(f"image must be 'auto', 'raw' or 'nmf', got {image!r}")
    model = resolve(model)
    candidates = banding_layers(model)
    if layers is None:
        names = candidates
    else:
        if isinstance(layers, str):
            layers = [layers]
        table: LayerTable = layer_table(model)
        names = []
        for name in layers:
            info = table[name]  # unknown names raise with close matches
            if name not in candidates:
                raise WeightvizError(
                    f"layer {name!r} ({info.type}, kernel {info.kernel}) is not a 2-D conv with kernels of at least "
                    f"3x3; banding layers of this model: {', '.join(candidates[:6])}{'...' if len(candidates) > 6 else ''}"
                )
            names.append(name)
    order = {n: i for i, n in enumerate(candidates)}
    scan = BandingScan(model=model_name(model))
    for name in names:
        w = weights(model, name)
        kernels, kind = _layer_image(w, image, n_factors, seed)
        res = banding_test(kernels, n_perm=n_perm, seed=seed, alpha=alpha, majority=majority)
        scan.rows.append(LayerBanding(layer=name, depth=order[name], weight_shape=tuple(w.shape), image=kind,
                                      result=res))
        if progress is not None:
            progress()
    return scan


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

    def plot(self, unit: int = 0, title: str | None = None):
        """Sorted cumulative share of squared norm vs number of inputs, neuron ``unit`` vs random Gaussian.
        Returns a :class:`weightviz.figures.Figure`."""
        from .figures._core import Figure, new_figure

        if not 0 <= unit < self.norms.shape[0]:
            raise WeightvizError(f"unit {unit} out of range: this long tail holds {self.norms.shape[0]} neurons")
        c = self.n_inputs
        ks = np.arange(1, c + 1)
        ours = self.cum_share[unit].numpy()
        rnd = self.random_cum_share.numpy()
        fig = new_figure(6.4, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(ks, ours, color="#ca0020", lw=1.8, label=f"weights (PR {float(self.pr[unit]):.1f})")
        ax.plot(ks, rnd, color="0.45", lw=1.4, ls="--", label=f"random Gaussian (PR {self.random_pr:.1f})")
        log = c > 20
        for q, kq, kr in ((0.5, self.k50[unit], self.random_k50), (0.9, self.k90[unit], self.random_k90)):
            ax.axhline(q, color="0.8", lw=0.7)
            ax.plot([float(kq)], [q], "o", color="#ca0020", ms=4)
            ax.plot([kr], [q], "o", color="0.45", ms=3)
            at = math.log(max(float(kq), 1)) / math.log(c) if log else (float(kq) - 1) / max(c - 1, 1)
            right = at > 0.55  # keep the label inside the axes
            ax.annotate(f"k{int(q * 100)}={float(kq):.0f} (random {kr:.1f})", (float(kq), q),
                        textcoords="offset points", xytext=(-6 if right else 6, 5), fontsize=7,
                        ha="right" if right else "left")
        if log:
            ax.set_xscale("log")
        ax.set_xlim(1, c)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("number of strongest input channels k" + (" (log)" if log else ""), fontsize=8)
        ax.set_ylabel("share of squared weight norm", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=8, loc="lower right", frameon=False)
        ax.set_title(title or f"Long tail of input weights ({c} inputs, slices {self.shape[-2]}x{self.shape[-1]})",
                     fontsize=10)
        fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.13)
        return Figure(fig, {"unit": unit, "k50": float(self.k50[unit]), "k90": float(self.k90[unit]),
                            "pr": float(self.pr[unit]), "random_pr": self.random_pr})


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

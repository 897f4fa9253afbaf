"""The permutation null of the banding test: shuffled positions as 0/1 block products (random
permutations), and the exact null over all arrangements of small kernels up to row and column order."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator

import torch

from .anova import _tiny


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



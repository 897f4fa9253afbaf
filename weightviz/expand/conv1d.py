"""Expanded weights between 1-D conv maps (``[B, C, L]`` outputs of ``Conv1d`` layers, and of the layers after
one that keep that shape): ``[U, C_src, K]``, the weight from ``src`` channel ``c`` at field position ``k`` to
``dst`` unit ``u`` at the target position, like a ``Conv1d`` weight ``W[o, i, k]``.

The field is measured like the 2-D one (:mod:`.field`): a structural forward/backward (float64, positive
weights, norms dividing by 1) gives the span of ``src`` positions that reach the target ``(L_dst - 1) // 2``;
the input grows until that span touches no border and a larger input agrees on its size. The weights are the
exact Jacobian of one linearized forward at that size (``torch.func.vjp``, one-hot cotangents batched with
``torch.func.vmap``), cropped to the field. The input is a sequence ``[1, C, n]`` for a model that takes
sequences (:func:`weightviz.models.sequence_channels`), else an ``n x n`` image (a 2-D stem flattened into a
1-D map).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WeightvizError
from ..linearize import DEFAULT_GATE
from ..linearize import norms as _norms
from ..models import device_dtype, sequence_channels

__all__ = ["Field1d", "conv1d_expanded", "field_1d"]

_MAX_IMAGE = 1024       # largest image side tried (a 2-D stem flattened into the 1-D map)
_MAX_SEQUENCE = 1 << 16  # largest sequence length tried (a model that takes sequences)


@dataclass(frozen=True)
class Field1d:
    """The field of ``dst``'s target position over ``src``: ``start``/``size`` in ``src`` positions,
    ``target`` (a ``dst`` position), ``stride`` (``src`` positions per ``dst`` step, ``None`` if unknown),
    ``input_size`` (sequence length or image side), ``truncated`` (touches a border of ``src``)."""

    size: int
    start: int
    target: int
    stride: int | None
    input_size: int
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    truncated: bool


def _probe(model, src, dst, n: int, forward: Callable) -> Field1d | None:
    with _norms.using(_norms.FrozenStats(mode="unit", measured=True, reach=True)):
        trace = forward(model, src, dst, n, gate=DEFAULT_GATE, structural=True)
    out, z = trace.dst_out, trace.z
    if out is None or z is None or out.dim() != 3 or z.dim() != 3:
        raise WeightvizError(f"1-D expanded weights need two 1-D conv maps [B, C, L]: {src or 'the input'!r} gives "
                             f"{list(z.shape) if z is not None else None}, {dst!r} gives "
                             f"{list(out.shape) if out is not None else None}")
    t = (out.shape[-1] - 1) // 2
    spans = []
    for p in (t, t + 1) if t + 1 < out.shape[-1] else (t,):
        g = torch.autograd.grad(out[0, :, p].sum(), z, retain_graph=True)[0]
        nz = g[0].ne(0).any(0).nonzero()
        spans.append((int(nz.min()), int(nz.max()) + 1) if nz.numel() else None)
    if spans[0] is None:
        return None
    (l0, l1), ls = spans[0], z.shape[-1]
    stride = spans[1][0] - l0 if len(spans) > 1 and spans[1] is not None else None
    return Field1d(l1 - l0, l0, t, stride, n, tuple(z.shape[1:]), tuple(out.shape[1:]), l0 == 0 or l1 == ls)


def field_1d(model: nn.Module, src: str | None, dst: str, input_size: int | None, forward: Callable) -> Field1d:
    """The field at ``input_size``, or the smallest doubling of 32 at which it touches no border (and a larger
    input agrees on its size: a truncation can hide inside the map)."""
    if input_size is not None:
        f = _probe(model, src, dst, input_size, forward)
        if f is None:
            raise WeightvizError(f"at input_size={input_size} the target position of {dst!r} reads only padding; "
                                 "use a larger input_size")
        return f
    limit = _MAX_SEQUENCE if sequence_channels(model) is not None else _MAX_IMAGE
    n = 32
    while n <= limit:
        f = _probe(model, src, dst, n, forward)
        if f is not None and not f.truncated:
            big = _probe(model, src, dst, 2 * n, forward) if 2 * n <= limit else None
            if big is None or big.truncated or big.size == f.size:
                return f
        n *= 2
    raise WeightvizError(f"the field of {dst!r} over {src or 'the input'!r} does not fit in an input of {limit}; "
                         "pass input_size= to accept a truncated field")


def conv1d_expanded(model: nn.Module, src: str | None, dst: str, units: list[int], f: Field1d, *, gate: float,
                    forward: Callable, chunk: int = 64) -> torch.Tensor:
    """``[U, C_src, K]``: the exact Jacobian of the linearized forward at ``f.input_size`` from ``src``'s map to
    ``dst``'s units at ``f.target``, cropped to the field."""
    device, dtype = device_dtype(model)

    def rows(z):
        return forward(model, src, dst, f.input_size, gate=gate, z=z).dst_out[0, :, f.target][units]

    z0 = torch.zeros(1, *f.src_shape, device=device, dtype=dtype)
    y, fn = torch.func.vjp(rows, z0)
    out = y.new_empty(len(units), f.src_shape[0], f.size)
    for s in range(0, len(units), chunk):
        b = min(chunk, len(units) - s)
        cots = y.new_zeros(b, len(units))
        cots[torch.arange(b), torch.arange(s, s + b)] = 1
        with torch.no_grad():
            (g,) = torch.func.vmap(fn)(cots)            # [b, 1, C_src, L_src]
        out[s:s + b] = g[:, 0, :, f.start:f.start + f.size].detach()
    return out

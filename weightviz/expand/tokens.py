"""Expanded weights between token layers (``[B, N, C]`` / ``[B, H, W, C]`` outputs): the exact Jacobian of
one linearized forward, read at a target token."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..models.tokens import rows, to_channels_tokens

__all__ = ["token_expanded"]


def token_expanded(model: nn.Module, src: str | None, dst: str, units, *, token, size: int, gate: float,
           forward: Callable, chunk: int = 32) -> torch.Tensor:
    """Expanded weights between token layers: ``[U, C_src, N_src]``, the weight from ``src`` channel ``c`` at
    token ``t`` (raw token order of ``src``) to ``dst`` unit ``u`` (``units``: a list of ints) at the target
    token. ``forward`` is
    :func:`._trace.forward` (one linearized forward from ``src`` to ``dst`` at input ``size``,
    with the frozen statistics active); the map is its exact Jacobian (``torch.func.vjp``, cotangents
    batched with ``torch.func.vmap``)."""
    first = forward(model, src, dst, size, gate=gate)
    z_shape, out = tuple(first.z.shape), first.dst_out
    rows(out, token)   # validates the token before the vjp

    def f(z):
        trace = forward(model, src, dst, size, gate=gate, z=z)
        return rows(trace.dst_out, token)[units]

    z0 = torch.zeros(z_shape, dtype=first.z.dtype, device=first.z.device)
    y, fn = torch.func.vjp(f, z0)
    result = None
    for s in range(0, len(units), chunk):
        b = min(chunk, len(units) - s)
        cots = y.new_zeros(b, len(units))
        cots[torch.arange(b), torch.arange(s, s + b)] = 1
        with torch.no_grad():
            (g,) = torch.func.vmap(fn)(cots)            # [b, 1, *src_shape]
        g = to_channels_tokens(g[:, 0]).detach()        # [b, C_src, N_src]
        if result is None:
            result = g.new_empty(len(units), *g.shape[1:])
        result[s:s + b] = g
    return result

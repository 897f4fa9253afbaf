"""Token layers: where the channels and positions of a layer's output are, and expanded weights between
token layers (ViT, Swin, the channels-last insides of ConvNeXt blocks).

Layouts of one item's output shape (the batch axis removed), all for square inputs:

- ``(C, H, W)``: ``"nchw"`` (conv maps), unless ``H == W != C`` ... see ``(H, W, C)``;
- ``(H, W, C)`` with ``H == W`` and ``C != H``: ``"nhwc"`` (Swin stages, ConvNeXt's channels-last MLP);
- ``(N, C)``: ``"tokens"`` (ViT): ``N = P + h*w`` with ``P`` prefix tokens (class / register tokens, first)
  followed by an ``h x w`` patch grid; ``P`` is what remains above the largest square (197 = 1 + 14*14);
- ``(C,)``: ``"flat"``;
- ``(C, L)`` of a layer known to output a 1-D conv map (``conv1d=True``: a ``Conv1d``, or a layer after one
  that keeps its ``[B, C, L]``, see :attr:`weightviz.LayerInfo.conv1d`): ``"ncl"``, never tokens (expanded
  weights between two of them are ``[U, C_src, K]``; fields and renders refuse them in one line).

Only the producing module tells a 1-D conv map ``[B, C, L]`` from tokens ``[B, N, C]``: callers that read a
layer's shape pass ``conv1d`` from the layer table.

Objectives read channels from these layouts (channel: mean over the *patch* tokens, the class token
excluded; neuron: a patch position, or one token by its index, ``token=0`` = the class token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import WeightvizError

__all__ = ["Layout", "at", "layout", "patches", "rows", "to_channels_tokens"]


@dataclass(frozen=True)
class Layout:
    """``kind`` ("nchw" / "nhwc" / "tokens" / "flat" / "ncl"), ``channels``, patch ``grid`` ``(h, w)`` (``None`` for
    flat or a token count without a square grid) and ``prefix`` tokens before the grid."""

    kind: str
    channels: int
    grid: tuple[int, int] | None
    prefix: int = 0

    @property
    def n_tokens(self) -> int:
        """Positions/tokens of one item (``prefix + h*w``; 1 for flat)."""
        return self.prefix + (self.grid[0] * self.grid[1] if self.grid else 0) if self.kind != "flat" else 1

    @property
    def is_token(self) -> bool:
        return self.kind in ("tokens", "nhwc")


def layout(shape: Sequence[int], conv1d: bool = False) -> Layout:
    """The layout of one item's output ``shape`` (no batch axis); see the module docstring. ``conv1d``: the
    layer's module makes 1-D conv maps (:attr:`weightviz.LayerInfo.conv1d`), so ``(C, L)`` is ``"ncl"``."""
    shape = tuple(int(s) for s in shape)
    if conv1d and len(shape) == 2:
        return Layout("ncl", shape[0], None)
    if len(shape) == 1:
        return Layout("flat", shape[0], None)
    if len(shape) == 2:
        n, c = shape
        g = math.isqrt(n)
        return Layout("tokens", c, (g, g) if g > 0 else None, n - g * g)
    if len(shape) == 3:
        a, b, c = shape
        if a == b and c != a:
            return Layout("nhwc", c, (a, b))
        return Layout("nchw", a, (b, c))
    raise WeightvizError(f"cannot read channels and positions from an output of shape {list(shape)}")


def canonical_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """``(C, h, w)`` of the patch grid (``(C,)`` for flat) for any layout."""
    lay = layout(shape)
    return (lay.channels,) if lay.grid is None else (lay.channels, *lay.grid)


def patches(a: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, C, h*w]``: the channels at every patch position (prefix tokens dropped)."""
    lay = layout(a.shape[1:])
    if lay.kind == "flat":
        return a[:, :, None]
    if lay.kind == "nchw":
        return a.reshape(a.shape[0], a.shape[1], -1)
    if lay.kind == "nhwc":
        return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
    return a[:, lay.prefix:].transpose(1, 2)


def to_channels_tokens(a: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, C, N]``, every token (prefix tokens first), in the layer's own token order."""
    lay = layout(a.shape[1:])
    if lay.kind == "tokens":
        return a.transpose(1, 2)
    return patches(a)


def _token_index(lay: Layout, token, x: int | None = None, y: int | None = None) -> int:
    """Raw token index: ``token`` (int, raw order incl. prefix), else patch ``(y, x)`` (centre by default)."""
    n = lay.n_tokens
    if token is not None:
        if not 0 <= token < n:
            raise WeightvizError(f"token {token} out of range: the layer has {n} tokens (0..{n - 1})")
        return int(token)
    if lay.grid is None:
        raise WeightvizError(f"this layer has no patch grid ({n} tokens); choose token=INDEX")
    h, w = lay.grid
    r = (h - 1) // 2 if y is None else y
    c = (w - 1) // 2 if x is None else x
    if not (0 <= r < h and 0 <= c < w):
        raise WeightvizError(f"position (x={c}, y={r}) outside the {h}x{w} patch grid; use 0 <= x < {w}, 0 <= y < {h}")
    return lay.prefix + r * w + c


def at(a: torch.Tensor, x: int | None = None, y: int | None = None, token: int | None = None) -> torch.Tensor:
    """``[B, ...]`` -> ``[B, C]`` at patch position ``(y, x)`` (centre by default) or at raw ``token``."""
    lay = layout(a.shape[1:])
    if lay.kind == "flat":
        return a
    return to_channels_tokens(a)[:, :, _token_index(lay, token, x, y)]


def rows(out: torch.Tensor, token=None) -> torch.Tensor:
    """``dst`` output of one item ``[1, ...]`` -> ``[C]`` at the target token (``token``: an int raw index,
    a ``(y, x)`` patch position, or ``None``: the centre patch)."""
    if isinstance(token, (tuple, list)):
        if len(token) != 2:
            raise WeightvizError(f"token must be an int or a (y, x) pair, got {token!r}")
        return at(out, x=int(token[1]), y=int(token[0]))[0]
    return at(out, token=token)[0]

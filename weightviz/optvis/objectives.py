"""Objectives for feature visualization: small composable values that say what to *maximize*.

An objective knows the layers it reads (:attr:`Objective.layers`) and maps their activations to one
value per batch item ``[B]``. Compose with ``+``, ``-``, unary ``-``, scalar ``*`` and ``/`` and
``sum(...)``; a *list* of objectives passed to :func:`weightviz.render` renders as one batch, one image
per objective.

Activations are ``[B, C, H, W]`` (conv layers; ``y`` indexes H, ``x`` indexes W), ``[B, C]`` (linear), or
token layers: ``[B, N, C]`` (ViT: class/prefix tokens first, then the patch grid) and channels-last
``[B, H, W, C]`` (Swin), see :mod:`weightviz.models.tokens`. Positions ``x``, ``y`` default to the centre
``((H - 1) // 2, (W - 1) // 2)`` of the layer's output (of the patch grid for tokens); channel and
direction objectives average over the patch positions, the class token excluded; ``token=i`` in
:func:`neuron` / :func:`direction_neuron` selects one token by index instead (``token=0``: the class token).

>>> from weightviz import objectives as obj
>>> o = obj.channel("blocks.4.0", 7) - 0.5 * obj.neuron("blocks.5.0", 3)
>>> o.layers
('blocks.4.0', 'blocks.5.0')
>>> o
channel('blocks.4.0', 7) - 0.5 * neuron('blocks.5.0', 3)
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Mapping

import torch

from ..errors import WeightvizError
from ..models import tokens as _tokens

__all__ = ["Objective", "channel", "direction", "direction_neuron", "neuron"]

Acts = Mapping[str, torch.Tensor]


class Objective:
    """``fn(acts) -> [B]`` values to maximize, with the layers it reads and a canonical ``key``.

    ``check(shapes)`` (optional) validates against the measured output shapes ``{layer: (C, H, W)}``
    (or ``(C,)``) before any optimization and raises :class:`WeightvizError`. ``key`` identifies the
    objective in the render cache: two objectives with equal keys must compute the same thing.
    """

    __slots__ = ("_check", "fn", "key", "layers")

    def __init__(
        self,
        fn: Callable[[Acts], torch.Tensor],
        layers: tuple[str, ...] | list[str],
        key: str,
        check: Callable[[Mapping[str, tuple[int, ...]]], None] | None = None,
    ) -> None:
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.key = key
        self._check = check

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def check(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Validate against output shapes ``{layer: (C, H, W)}``; raises :class:`WeightvizError`."""
        if self._check is not None:
            self._check(shapes)

    def __repr__(self) -> str:
        return self.key

    # -------------------------------------------------------------------------------- composition
    def _combine(self, other: Objective, sign: float) -> Objective:
        a, b = self, other

        def check(shapes):
            a.check(shapes)
            b.check(shapes)

        op = "+" if sign > 0 else "-"
        rhs = f"({b.key})" if sign < 0 and (" + " in b.key or " - " in b.key) else b.key
        return Objective(lambda acts: a(acts) + sign * b(acts), a.layers + b.layers, f"{a.key} {op} {rhs}", check)

    def __add__(self, other):
        if isinstance(other, Objective):
            return self._combine(other, 1.0)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            if other == 0:
                return self
            c = float(other)
            return Objective(lambda acts: self(acts) + c, self.layers, f"{self.key} + {c:g}", self.check)
        return NotImplemented

    __radd__ = __add__  # lets sum([...]) start at 0

    def __sub__(self, other):
        if isinstance(other, Objective):
            return self._combine(other, -1.0)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self + (-float(other))
        return NotImplemented

    def __rsub__(self, other):
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return (-self) + float(other)
        return NotImplemented

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, other):
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            c = float(other)
            inner = f"({self.key})" if (" + " in self.key or " - " in self.key) else self.key
            return Objective(lambda acts: c * self(acts), self.layers, f"{c:g} * {inner}", self.check)
        if isinstance(other, Objective):
            raise WeightvizError(
                f"cannot multiply two objectives ({self.key!r} * {other.key!r}); "
                "objectives combine with +, - and multiplication by a number"
            )
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other):
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            if other == 0:
                raise WeightvizError(f"cannot divide objective {self.key!r} by zero")
            return self * (1.0 / float(other))
        return NotImplemented


# ------------------------------------------------------------------------------------------ helpers
def _layer(layer) -> str:
    if not isinstance(layer, str) or not layer:
        raise WeightvizError(f"layer must be a non-empty layer name (see `weightviz layers MODEL`), got {layer!r}")
    return layer


def _index(v, what: str, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 0:
        raise WeightvizError(f"{what} must be a non-negative integer, got {v!r}")
    return int(v)


def _vector(vector, layer: str) -> torch.Tensor:
    try:
        v = torch.as_tensor(vector, dtype=torch.float32).detach().cpu()
    except Exception:
        raise WeightvizError(f"direction for {layer!r} must be a 1-D vector of numbers, got {type(vector).__name__}") from None
    v = v.squeeze() if v.dim() > 1 else v
    if v.dim() != 1 or v.numel() == 0:
        raise WeightvizError(f"direction for {layer!r} must be a 1-D vector [C], got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise WeightvizError(f"direction for {layer!r} contains NaN or Inf")
    if not (v != 0).any():
        raise WeightvizError(f"direction for {layer!r} is all zeros; give a non-zero vector")
    return v.contiguous()


def _vector_key(v: torch.Tensor) -> str:
    return hashlib.sha256(v.numpy().tobytes()).hexdigest()[:12]


def _shape(shapes, layer: str) -> tuple[int, ...]:
    if layer not in shapes:
        raise WeightvizError(f"layer {layer!r} produced no tensor output in the forward pass")
    return tuple(shapes[layer])


def _check_channel(layer: str, n: int):
    def check(shapes):
        c = _tokens.canonical_shape(_shape(shapes, layer))[0]
        if n >= c:
            raise WeightvizError(f"unit {n} out of range: layer {layer!r} has {c} channels (0..{c - 1})")

    return check


def _check_position(layer: str, x: int | None, y: int | None, token: int | None = None):
    def check(shapes):
        raw = _shape(shapes, layer)
        shape = _tokens.canonical_shape(raw)
        if token is not None:
            if x is not None or y is not None:
                raise WeightvizError(f"give either token= or x/y for layer {layer!r}, not both")
            n = _tokens.layout(raw).n_tokens
            if len(shape) < 3 or token >= n:
                raise WeightvizError(f"token {token} out of range: layer {layer!r} has {n} tokens (0..{n - 1})")
            return
        if x is None and y is None:
            return
        if len(shape) < 3:
            raise WeightvizError(f"layer {layer!r} has no spatial positions (output {list(shape)}); drop x/y")
        h, w = shape[-2:]
        if (y is not None and y >= h) or (x is not None and x >= w):
            raise WeightvizError(
                f"position (x={x}, y={y}) outside layer {layer!r} output of height {h}, width {w} "
                f"at this image size; use 0 <= x < {w}, 0 <= y < {h}"
            )

    return check


def _check_vector(layer: str, v: torch.Tensor):
    def check(shapes):
        c = _tokens.canonical_shape(_shape(shapes, layer))[0]
        if v.numel() != c:
            raise WeightvizError(f"direction has length {v.numel()} but layer {layer!r} has {c} channels")

    return check


def _at(a: torch.Tensor, x: int | None, y: int | None, token: int | None = None) -> torch.Tensor:
    """``[B, C, H, W]`` (or a token layout) -> ``[B, C]`` at position (y, x) (centre by default) or at
    ``token``; ``[B, C]`` passes through."""
    if a.dim() == 4 and token is None and _tokens.layout(a.shape[1:]).kind == "nchw":
        h, w = a.shape[-2:]
        return a[..., (h - 1) // 2 if y is None else y, (w - 1) // 2 if x is None else x]
    return _tokens.at(a, x, y, token)


def _flat(a: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (or a token layout) -> ``[B, C, N]``, the N patch positions last (no class token)."""
    return _tokens.patches(a)


def _both(*checks):
    def check(shapes):
        for c in checks:
            c(shapes)

    return check


def _pos_key(x, y, token=None) -> str:
    if token is not None:
        return f", token={token}"
    return "" if x is None and y is None else f", x={x}, y={y}"


# ------------------------------------------------------------------------------------------ objectives
def channel(layer: str, n: int) -> Objective:
    """Mean activation of channel ``n`` of ``layer`` over all positions: ``acts[:, n].mean((H, W))`` -> ``[B]``."""
    layer, n = _layer(layer), _index(n, "unit")
    return Objective(lambda acts: _flat(acts[layer])[:, n].mean(-1), (layer,), f"channel({layer!r}, {n})",
                     _check_channel(layer, n))


def neuron(layer: str, n: int, x: int | None = None, y: int | None = None, token: int | None = None) -> Objective:
    """Activation of channel ``n`` at one position ``acts[:, n, y, x]`` (centre by default; on a token layer
    the patch at ``(y, x)``, or token number ``token``, ``0`` = the class token of a ViT) -> ``[B]``."""
    layer, n = _layer(layer), _index(n, "unit")
    x, y, token = _index(x, "x", True), _index(y, "y", True), _index(token, "token", True)
    return Objective(lambda acts: _at(acts[layer], x, y, token)[:, n], (layer,),
                     f"neuron({layer!r}, {n}{_pos_key(x, y, token)})",
                     _both(_check_channel(layer, n), _check_position(layer, x, y, token)))


def _dir_value(a: torch.Tensor, v: torch.Tensor, cosine_power: float) -> torch.Tensor:
    """``a`` ``[B, C, N]`` · ``v`` ``[C]`` -> ``[B, N]``: dot, times ``max(cos, 0.1) ** p`` if ``p > 0``."""
    v = v.to(device=a.device, dtype=a.dtype)
    dot = torch.einsum("bcn,c->bn", a, v)
    if cosine_power:
        cos = dot / (a.norm(dim=1) * v.norm() + 1e-6)
        dot = dot * cos.clamp(min=0.1) ** cosine_power
    return dot


def _power(p) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or p < 0:
        raise WeightvizError(f"cosine_power must be a number >= 0, got {p!r}")
    return float(p)


def direction(layer: str, vector, cosine_power: float = 0.0) -> Objective:
    """Dot product of the activation vector (over channels) with ``vector`` ``[C]``, mean over positions.

    With ``cosine_power = p > 0`` each position's dot is multiplied by ``max(cos, 0.1) ** p`` (cosine
    between the activation vector and ``vector``), which favours the direction over sheer magnitude.
    A one-hot ``vector`` at ``n`` with ``p = 0`` is exactly :func:`channel` ``(layer, n)``. -> ``[B]``
    """
    layer, v, p = _layer(layer), _vector(vector, layer), _power(cosine_power)
    key = f"direction({layer!r}, <{v.numel()}:{_vector_key(v)}>{f', cosine_power={p:g}' if p else ''})"
    return Objective(lambda acts: _dir_value(_flat(acts[layer]), v, p).mean(-1), (layer,), key,
                     _check_vector(layer, v))


def direction_neuron(layer: str, vector, x: int | None = None, y: int | None = None,
                     cosine_power: float = 0.0, token: int | None = None) -> Objective:
    """Like :func:`direction`, at one position ``(y, x)`` (centre by default; or at ``token``) instead of
    the mean. -> ``[B]``"""
    layer, v, p = _layer(layer), _vector(vector, layer), _power(cosine_power)
    x, y, token = _index(x, "x", True), _index(y, "y", True), _index(token, "token", True)
    key = (f"direction_neuron({layer!r}, <{v.numel()}:{_vector_key(v)}>{_pos_key(x, y, token)}"
           f"{f', cosine_power={p:g}' if p else ''})")
    return Objective(lambda acts: _dir_value(_at(acts[layer], x, y, token)[..., None], v, p)[:, 0], (layer,), key,
                     _both(_check_vector(layer, v), _check_position(layer, x, y, token)))

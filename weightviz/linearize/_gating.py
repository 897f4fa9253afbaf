"""Gate rules of the linearizer (private): self-gating products and reductions that feed only a gate.

- A self-gating product ``x * g(x)`` (hand-written SiLU ``x * sigmoid(x)``, hardswish
  ``x * relu6(x + 3) / 6``, quick-GELU ``x * sigmoid(1.702 * x)``) becomes ``limit * x``: the linear piece
  the product follows for large positive ``x``, as the fused ops (``F.silu``, ``F.hardswish``) become the
  identity. Gates of ``x``: sigmoid/hardsigmoid (limit 1) and clamps to ``[0, hi]`` (relu6,
  hardtanh(0, hi), clamp(0, hi); limit ``hi``) of ``a * x + b`` with ``a > 0``, times or divided by positive
  numbers. A gate of another tensor (squeeze-excite) stays the frozen constant.
- amax/amin/max/min/maximum/minimum on a tracked tensor run as they are, and their results are marked
  *gate-only*: allowed where they feed nothing but a sigmoid gate (timm CBAM attention: the gate is a
  constant, so that branch drops out); a gate-only tensor reaching the measured layer raises the error.

:class:`GateRules` is a mixin of :class:`weightviz.linearize.Linearizer` (it uses its ``is_tracked``,
``_run`` and ``_fail``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import WeightvizError
from ..utils.calls import arg as _arg
from ..utils.calls import inplace_method as _inplace_method
from ..utils.calls import leaves as _leaves

# Gates of x: sigmoid/hardsigmoid (limit 1) and clamps to [0, hi] (relu6, hardtanh(0, hi), clamp(0, hi); limit
# hi) of ``a * x + b`` with a > 0, times/divided by positive numbers; ``x * g(x)`` becomes ``limit * x``, the
# linear piece the product follows for large positive x (as F.silu and F.hardswish -> identity).
SELF_GATE_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_GATE_SIGMOID = {"sigmoid", "hardsigmoid"}
_GATE_CLAMP = {"relu6": (1, None), "hardtanh": (1, 2), "clamp": (1, 2), "clip": (1, 2)}  # min/max positions
_AFFINE_NUMBER = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__isub__", "sub_",
                  "mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply", "div", "__truediv__",
                  "__itruediv__", "div_", "true_divide", "divide"}
# Nonlinear reductions allowed only where their result feeds nothing but a sigmoid gate (frozen to a
# constant, so the gate's input branch drops out: timm CbamModule / LightCbamModule). Their results are
# tracked as "gate-only"; such a tensor reaching the layer whose weights are measured raises the error.
GATE_ONLY = {"amax", "amin", "max", "min", "maximum", "minimum", "fmax", "fmin", "aminmax"}


class GateRules:
    """Self-gating products and gate-only reductions (see the module docstring)."""

    def _init_gates(self) -> None:
        # id -> (tensor, x, x's version[, limit]) for t = a*x + b (a > 0), and for gates g(x)
        self._affine: dict[int, tuple] = {}
        self._gates: dict[int, tuple] = {}
        # gate-only results (amax, ...): id -> (tensor, error message)
        self._gate_only: dict[int, tuple] = {}

    def _clear_gates(self) -> None:
        self._affine.clear()
        self._gates.clear()
        self._gate_only.clear()

    def check_result(self, out: Any) -> None:
        """Raise :class:`WeightvizError` if a tensor of ``out`` depends on a nonlinear reduction that was
        allowed only in front of a sigmoid gate (see the op table)."""
        for t in _leaves(out):
            hit = self._gate_only.get(id(t))
            if hit is not None and hit[0] is t and self.is_tracked(t):
                raise WeightvizError(hit[1])

    def _gate_only_message(self, tracked) -> str | None:
        for t in tracked:
            hit = self._gate_only.get(id(t))
            if hit is not None and hit[0] is t:
                return hit[1]
        return None

    def _gate_only_op(self, func, args, kwargs):
        """amax/max/...: run as is and mark the result gate-only (it must not reach the measured layer)."""
        msg = str(self._fail(func, "it is nonlinear; it is allowed only where its result feeds nothing but "
                                   "a sigmoid gate or a softmax (frozen, so that branch drops out)"))
        out = self._run(func, args, kwargs)
        for t in _leaves(out):
            if self.is_tracked(t):
                self._gate_only[id(t)] = (t, msg)
        return out

    def _root(self, t: Any):
        """``(x, x._version)`` when tracked ``t`` is ``a * x + b`` with a > 0 (``t`` itself: a = 1, b = 0)."""
        if not self.is_tracked(t):
            return None
        hit = self._affine.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1], hit[2]
        return t, t._version

    def _note_gate(self, key: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Remember affine images ``a*x + b`` (a > 0) of tracked tensors and gate functions of them."""
        if not isinstance(out, torch.Tensor) or not args:
            return
        base = key[:-1] if _inplace_method(key) else key
        x = args[0]
        if key in _AFFINE_NUMBER:
            other = _arg(args, kwargs, 1, "other")
            if not isinstance(other, (int, float)) or isinstance(other, bool) or not math.isfinite(other):
                return
            scaling = base in ("mul", "__mul__", "__rmul__", "__imul__", "multiply", "div", "__truediv__",
                               "__itruediv__", "true_divide", "divide")
            if scaling and other <= 0:
                return
            gate = self._gates.get(id(x))
            if scaling and gate is not None and gate[0] is x:   # a gate times/divided by a positive number
                limit = gate[3] * other if "mul" in base else gate[3] / other
                self._gates[id(out)] = (out, gate[1], gate[2], limit)
                return
            root = self._root(x)
            if root is not None and self.is_tracked(out) and out is not x:
                self._affine[id(out)] = (out, *root)
            return
        root = self._root(x)
        if root is None or out is x and base in _GATE_SIGMOID:
            return
        if base in _GATE_SIGMOID:
            self._gates[id(out)] = (out, *root, 1.0)
        elif base in _GATE_CLAMP:
            i_lo, i_hi = _GATE_CLAMP[base]
            lo = _arg(args, kwargs, i_lo, "min_val" if base == "hardtanh" else "min", 0.0 if base == "relu6" else None)
            hi = 6.0 if base == "relu6" else _arg(args, kwargs, i_hi, "max_val" if base == "hardtanh" else "max",
                                                  1.0 if base == "hardtanh" else None)
            if base == "hardtanh" and lo is None:
                lo = -1.0
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo == 0 and 0 < hi < math.inf:
                self._gates[id(out)] = (out, *root, float(hi))

    def _self_gated(self, key: str, args: tuple, kwargs: dict):
        """``x * g(x)`` with ``g`` a recorded gate of ``x`` (either order): ``limit * x``, else ``None``."""
        a = args[0] if args else kwargs.get("input")
        b = _arg(args, kwargs, 1, "other")
        for x, g, first in ((a, b, True), (b, a, False)):
            hit = self._gates.get(id(g)) if isinstance(g, torch.Tensor) else None
            if hit is None or hit[0] is not g or hit[1] is not x or x._version != hit[2] or not self.is_tracked(x):
                continue
            if _inplace_method(key) or key == "__imul__":
                if not first:
                    return None   # g *= x: the result must land in g; leave it to the ordinary rule
                return self._run(torch.Tensor.mul_, (x, hit[3]), {})
            return self._run(torch.mul, (x, hit[3]), {})
        return None

"""The linearizer's stand-ins for normalization layers and attention (a mixin of
:class:`weightviz.linearize.Linearizer`; the rule and the statistics are in :mod:`weightviz.linearize.norms`).

- ``layer_norm`` / ``rms_norm`` over the channels of each position or token: ``(x - mean_C(x)) / s * w + b``
  (RMS norm: ``x / s * w``), ``s`` the frozen scale of that call;
- ``group_norm`` and norms over several dims (statistics over positions): ``(x - m) / s * w + b`` with ``m``
  and ``s`` both frozen (a per-channel affine map, composed like eval batch norm);
- ``softmax`` of tracked values, or of *pending* attention logits (a ``matmul`` of two tracked tensors,
  carried untracked through scaling / masking / reshapes): the frozen mean pattern, a constant;
- ``scaled_dot_product_attention``: ``P @ v``, ``P`` frozen when ``q`` or ``k`` depends on the source.

In structural mode (reach only) weights are made positive and, without statistics, a softmax becomes
all ones (every token reaches every other one, as a softmax's positive probabilities do).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import WeightvizError
from . import compose as _compose
from . import norms as _norms

# ops that carry pending attention logits on to the softmax that freezes them
LOGIT_PASS = {
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__", "add",
    "add_", "__add__", "__radd__", "__iadd__", "sub", "__sub__", "view", "reshape", "transpose", "permute",
    "unsqueeze", "squeeze", "contiguous", "clone", "to", "float", "half", "double", "bfloat16", "type_as",
    "masked_fill", "masked_fill_", "expand", "dropout", "__getitem__", "flatten", "unflatten",
}
# products of two tracked tensors that may be attention logits
LOGIT_PRODUCTS = {"matmul", "__matmul__", "__rmatmul__", "bmm", "einsum"}


class FrozenOps:
    """Mixin: needs the Linearizer's ``track``, ``is_tracked``, ``node_of``, ``_run``, ``_fail``,
    ``_only_first``, ``tape``, ``structural``, ``const_dtype``, ``stats``, ``froze``, ``mixes``, ``_call``,
    ``_pending`` and the static helpers ``_op_name``, ``_keyf``, ``_leaves_of``, ``_shape_only``."""

    def _stats(self) -> _norms.FrozenStats:
        if self.stats is None:   # structural mode without statistics: only the pattern of reach matters
            self.stats = _norms.FrozenStats(mode="unit", measured=True)
        return self.stats

    def _frozen(self, func, name: str, args: tuple, kwargs: dict):
        x = args[0] if args else kwargs.get("input", kwargs.get("query"))
        call = self._call or self._op_name(func)
        self.froze = True    # this forward's values depend on the statistics
        if name == "softmax":
            if not self.is_tracked(x):
                raise self._fail(func, "a softmax whose other arguments depend on it is not linear")
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return self._pattern(call, x, channels=isinstance(dim, int) and dim in (1, 1 - x.dim()))
        if name == "scaled_dot_product_attention":
            return self._attention(func, call, args, kwargs)
        if not self.is_tracked(x):
            raise self._fail(func, "a normalization whose parameters depend on it is not linear")
        self._only_first(func, args, kwargs)
        p = _norms.norm_args(name, args, kwargs)
        stats = self._stats()
        s = stats.scale(call)
        w, b = p["weight"], p["bias"]
        if self.structural:     # reach only: positive weights, the mean subtraction as an addition
            w = w.abs() if isinstance(w, torch.Tensor) else w
            y = x if p["spatial"] or not p["center"] else x + x.mean(p["dims"], keepdim=True)
        elif p["spatial"]:
            y = x - stats.mean(call)
        else:
            y = x - x.mean(p["dims"], keepdim=True) if p["center"] else x
        y = y / s
        cshape = (1, -1) + (1,) * (x.dim() - 2) if p["groups"] is not None else None
        if isinstance(w, torch.Tensor):
            y = y * (w.reshape(cshape) if cshape else w)
        if isinstance(b, torch.Tensor) and not self.structural:
            y = y + (b.reshape(cshape) if cshape else b)
        self.track(y)
        if self.tape is not None:
            if p["groups"] is not None and x.dim() == 4:   # a per-channel scale: composed like batch norm
                f = w.detach() if isinstance(w, torch.Tensor) else torch.ones(x.shape[1], dtype=x.dtype,
                                                                               device=x.device)
                _compose.scale(self.tape, self.node_of(x), self.node_of(y), f / s)
            else:
                self.tape.add("unsupported", [self.node_of(x)], self.node_of(y), op=name)
        return y

    def _pattern(self, call: str, x: torch.Tensor, channels: bool = False) -> torch.Tensor:
        """The frozen probabilities of a softmax over ``x`` (tracked or pending logits); untracked.
        ``channels``: a softmax over dim 1 (the channels of a conv map)."""
        dtype = self.const_dtype or x.dtype
        self.froze = True
        if not channels:
            self.mixes = True
        if self.structural and (self.stats is None or not self.stats.patterns) \
                or self.stats is not None and self.stats.reach and call not in self.stats.patterns:
            # reach only: every token reaches every other one, as a softmax's positive probabilities do
            return torch.ones(x.shape, dtype=dtype, device=x.device)
        pat = self._stats().pattern(call)
        if channels and pat.numel() != x.numel() and pat.dim() == x.dim() >= 3 and pat.shape[:2] == x.shape[:2]:
            # a softmax over the channels of a conv map measured at another input size (the weights are taken
            # at the size of the receptive field): its mean over the positions, the same at every position
            pat = pat.mean(tuple(range(2, pat.dim())), keepdim=True).expand(x.shape)
        if pat.numel() != x.numel():
            n = self.stats.size if self.stats is not None else None
            size, fix = (f" at input size {n}", f"; pass input_size={n}") if n else ("", "")
            raise WeightvizError(
                f"the attention pattern of {call!r} was measured{size} with {list(pat.shape)} probabilities, this "
                f"forward has {list(x.shape)}: models with attention are linearized at the input size of the "
                f"statistics{fix}")
        return pat.reshape(x.shape).to(device=x.device, dtype=dtype).detach()

    def _attention(self, func, call: str, args: tuple, kwargs: dict):
        """``F.scaled_dot_product_attention(q, k, v, ...)`` -> ``P @ v``: ``P`` frozen when ``q`` or ``k``
        depends on the source, else the exact probabilities (the op is then linear in ``v``)."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        a: dict[str, Any] = dict(zip(names, args))
        a.update(kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        if self.is_tracked(a.get("attn_mask")):
            raise self._fail(func, "an attention mask that depends on it is not linear")
        if self.is_tracked(q) or self.is_tracked(k):
            p = self._pattern(call, q.new_empty((*q.shape[:-1], k.shape[-2])))
        else:
            p = _norms.attention_probs(q, k, a.get("attn_mask"), bool(a.get("is_causal", False)), a.get("scale"),
                                       bool(a.get("enable_gqa", False))).detach()
        if not self.is_tracked(v):
            return (p.to(v.dtype) @ v).detach()
        return self._run(torch.matmul, (p.to(v.dtype), v), {})

    def _pend(self, func, args: tuple, kwargs: dict):
        """A product of two tracked tensors: its value, untracked and *pending* (attention logits)."""
        with torch.no_grad():
            out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            self._pending[id(out)] = (out, func)
        return out

    def _pending_in(self, args: tuple, kwargs: dict) -> list:
        return [t for t in self._leaves_of((args, kwargs)) if self._pending.get(id(t), (None,))[0] is t]

    def _logits(self, func, args: tuple, kwargs: dict, tracked: list, pending: list):
        """An op on pending attention logits: carried on by reshapes / masks / scaling, frozen by a softmax."""
        key = self._keyf(func)
        origin = self._pending[id(pending[0])][1]
        if key == "softmax" and (args[0] if args else kwargs.get("input")) is pending[0]:
            return self._pattern(self._call or self._op_name(func), pending[0])
        if key in self._shape_only:
            return func(*args, **kwargs)
        if key in LOGIT_PASS and not tracked:
            with torch.no_grad():
                out = func(*args, **kwargs)
            for t in self._leaves_of(out):
                self._pending[id(t)] = (t, origin)
            return out
        raise self._fail(origin, f"a product of two tensors that both depend on it is not linear (it then goes "
                                 f"into {self._op_name(func)}; only attention logits that go into a softmax are "
                                 "frozen)")

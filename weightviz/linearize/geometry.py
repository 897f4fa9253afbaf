"""Map geometry of one traced forward, re-evaluated at other input sizes without running the model.

The receptive-field search needs the field of one ``dst`` position over ``src`` at several input sizes.
Each real probe is a forward at a new size (and on a CPU every new size costs backend set-up time). One
traced forward at a first size records everything the field depends on:

- the *prefix* (model input -> ``src``): every op on a tensor computed from the input, reduced to its
  effect on the map size (:class:`PrefixRecorder`: conv/pool windows, pads, and ops that keep the size);
- the *route* (``src`` -> ``dst``): the recorded linear ops of the tape (:mod:`weightviz.linearize.compose`).

:class:`Geometry` then computes, for any input size ``n``, every map size on the way, the ``dst``
position at the centre and the box of ``src`` positions that reach it (the tape's own box propagation,
:func:`weightviz.linearize.compose.field_box`, run on the sizes and paddings of ``n``). TF-"SAME" padding is
computed from the input size by the model (``F.pad`` before a conv or pool without padding); a pad whose
amounts are the SAME amounts of the conv it feeds at the traced size is re-computed per size, any other
pad is kept. Anything the recorder cannot size (interpolation, reshapes, an op that changes the map size
in another way) makes :meth:`Geometry.build` return ``None``; the caller then probes with real forwards.
The caller also checks the result against a real forward at the traced size and at the size it picks.

Shapes are ``(H, W)`` map sizes; boxes are half-open ``(r0, r1, c0, c1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..utils.calls import arg
from . import compose as _compose
from .cone import pair


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002 (torch's names)
    """``F.conv2d`` for a forward that only needs shapes (``shapes_only``): zeros ``[B, C_out, H_out, W_out]``
    (no kernel runs, so no backend set-up for a new input size)."""
    k = weight.shape[-2:]
    s, d = pair(stride), pair(dilation)
    p = (0, 0) if padding == "valid" else pair(padding)
    if s is None or d is None or (p is None and padding != "same"):
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    hw = input.shape[-2:] if padding == "same" else [
        (input.shape[-2 + i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in (0, 1)]
    if min(hw) < 1 or input.shape[-3] != weight.shape[1] * groups:
        return F.conv2d(input, weight, bias, stride, padding, dilation, groups)   # torch's own error
    return input.new_zeros(*input.shape[:-3], weight.shape[0], *hw)


_POOLS = {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d"}
_PADS = {"pad", "constant_pad_nd"}


@dataclass
class GeoOp:
    """One op's effect on map sizes: ``kind`` ``"window"`` (conv or pool: ``k``, ``s``, ``p``, ``d``, ``ceil``),
    ``"pad"`` (``pads`` = left, right, top, bottom), ``"same"`` (the size of input ``ins[0]``) or
    ``"unknown"``; ``ins``/``out`` are node ids."""

    kind: str
    ins: list
    out: int
    params: dict = field(default_factory=dict)


def _window(key: str, args: tuple, kwargs: dict) -> dict | None:
    """Window parameters of a conv2d / 2-d pool call (``None`` if not plain numbers)."""
    if key == "conv2d":
        w = arg(args, kwargs, 1, "weight")
        if not isinstance(w, torch.Tensor) or w.dim() != 4:
            return None
        k = tuple(int(v) for v in w.shape[-2:])
        s, p, d = (pair(arg(args, kwargs, i, n, 1 if n != "padding" else 0))
                   for i, n in ((3, "stride"), (4, "padding"), (5, "dilation")))
        ceil = False
    else:
        k = pair(arg(args, kwargs, 1, "kernel_size"))
        stride = arg(args, kwargs, 2, "stride", None)
        s = k if stride is None or (isinstance(stride, (list, tuple)) and not stride) else pair(stride)
        p = pair(arg(args, kwargs, 3, "padding", 0))
        d = pair(arg(args, kwargs, 4, "dilation", 1)) if key != "avg_pool2d" else (1, 1)
        ceil = bool(arg(args, kwargs, 5 if key != "avg_pool2d" else 4, "ceil_mode", False))
    if None in (k, s, p, d):
        return None
    return {"k": k, "s": s, "p": p, "d": d, "ceil": ceil}


class PrefixRecorder:
    """Records, during a forward, the size effect of every op on tensors computed from the model input,
    until :meth:`finish` is called with ``src``'s output (used by the Linearizer for untracked ops)."""

    def __init__(self) -> None:
        self.ops: list[GeoOp] = []
        self.shapes: dict[int, tuple[int, int]] = {}
        self.input_node: int | None = None
        self.src_node: int | None = None
        self.active = False
        self._nodes: dict[int, tuple[torch.Tensor, int]] = {}
        self._next = 0

    def _new(self, t: torch.Tensor) -> int:
        node = self._next
        self._next += 1
        self._nodes[id(t)] = (t, node)
        self.shapes[node] = tuple(t.shape[-2:]) if t.dim() == 4 else None
        return node

    def node_of(self, t: Any) -> int | None:
        hit = self._nodes.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t else None

    def start(self, x: torch.Tensor) -> None:
        self.input_node = self._new(x)
        self.active = True

    def finish(self, out: Any) -> None:
        """``src``'s output: the end of the prefix."""
        self.src_node = self.node_of(out)
        self.active = False
        self._nodes.clear()   # no references kept to the forward's tensors

    def run(self, func, key: str, args: tuple, kwargs: dict, leaves: list) -> Any:
        """Run ``func`` and record it if it reads a tensor of the prefix."""
        ins = [n for n in (self.node_of(t) for t in leaves) if n is not None]
        out = func(*args, **kwargs)
        if not ins or not self.active:
            return out
        outs = [t for t in _compose_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        x = args[0] if args else None
        base = key[:-1] if key.endswith("_") and not key.startswith("__") else key
        first = self.node_of(x)
        first = first if first is not None else ins[0]
        for t in outs:
            node = self._new(t)   # an in-place op returns its input: a new node for the new version
            if base in _PADS and t is outs[0]:
                pads = arg(args, kwargs, 1, "pad")
                if isinstance(pads, (list, tuple)) and len(pads) in (2, 4) and all(isinstance(v, int) for v in pads):
                    pads = tuple(int(v) for v in pads) + (0, 0) * (len(pads) == 2)
                    self.ops.append(GeoOp("pad", [first], node, {"pads": pads}))
                else:
                    self.ops.append(GeoOp("unknown", [first], node))
            elif base in ("conv2d", *_POOLS) and t is outs[0]:
                win = _window(base, args, kwargs)
                self.ops.append(GeoOp("window", [first], node, win) if win else GeoOp("unknown", [first], node))
            else:
                same = [n for n in ins if self.shapes.get(n) is not None and self.shapes[n] == self.shapes[node]]
                self.ops.append(GeoOp("same", same[:1], node) if same else GeoOp("unknown", [first], node))
        return out


def _compose_leaves(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _compose_leaves(o)


def _same_pads(h: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF-"SAME" padding (before, after) of a window ``k`` (stride ``s``, dilation ``d``) on ``h`` rows,
    split as timm's ``pad_same`` does (the extra row after)."""
    total = max((math.ceil(h / s) - 1) * s + (k - 1) * d + 1 - h, 0)
    return total // 2, total - total // 2


def _window_out(h: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    span = h + 2 * p - d * (k - 1) - 1
    if span < 0:
        raise RuntimeError("the map is smaller than a window at this input size")
    if not ceil:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= h + p:
        out -= 1
    return out


class Geometry:
    """Map sizes and the field box of one ``dst`` position at any input size (see the module docstring).

    ``ops``: prefix and route as one list of :class:`GeoOp` in execution order (tape nodes offset by
    ``_off`` so they do not clash with prefix nodes), ``route_ops``: the tape ops from ``src`` to ``dst``
    in execution order (tape node ids), ``src``/``dst``: offset node ids."""

    def __init__(self, ops: list[GeoOp], input_node: int, route_ops: list, src: int, dst: int,
                 channels: tuple[int, int], dynamic: set[int]):
        self.ops = ops
        self.input_node = input_node
        self.route_ops = route_ops
        self.src, self.dst = src, dst
        self.channels = channels
        self.dynamic = dynamic    # ids (index in ops) of pads re-computed as TF-SAME

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def build(cls, prefix: PrefixRecorder | None, tape: _compose.Tape, src_node: int, dst_node: int,
              size: int) -> Geometry | None:
        """From the prefix recorded during the traced forward at ``size`` (``None`` when ``src`` is the
        model input) and the tape; ``None`` if some map size on the way cannot be derived."""
        if tape.tainted:
            return None
        off = 1 + (max(prefix.shapes) if prefix is not None and prefix.shapes else 0)
        ops: list[GeoOp] = []
        if prefix is not None:
            if prefix.src_node is None or prefix.input_node is None:
                return None
            ops.extend(prefix.ops)
            input_node = prefix.input_node
            bridge = [GeoOp("same", [prefix.src_node], off + src_node)]
        else:
            input_node = off + src_node
            bridge = []
        ops.extend(bridge)
        needed = _compose._needed(tape, src_node, dst_node)
        if needed is None:
            return None
        for op in tape.ops:
            ins = [None if n is None else off + n for n in op.ins]
            known = [n for n in ins if n is not None]
            if op.kind == "conv":
                p = op.params
                ops.append(GeoOp("window", known[:1], off + op.out,
                                 {"k": tuple(p["w"].shape[-2:]), "s": p["stride"], "p": p["padding"],
                                  "d": p["dilation"], "ceil": bool(p.get("ceil", False))}))
            elif op.kind == "pad":
                ops.append(GeoOp("pad", known[:1], off + op.out, {"pads": op.params["pads"]}))
            elif op.kind in ("identity", "scale", "add", "cat"):
                ops.append(GeoOp("same", known[:1], off + op.out))
            else:
                ops.append(GeoOp("unknown", known[:1], off + op.out))
        src_shape, dst_shape = tape.shapes.get(src_node), tape.shapes.get(dst_node)
        if src_shape is None or dst_shape is None or len(src_shape) != 4 or len(dst_shape) != 4:
            return None
        geo = cls(ops, input_node, list(reversed(needed)), off + src_node, off + dst_node,
                  (src_shape[1], dst_shape[1]), set())
        geo._off = off
        # TF-SAME pads: amounts equal to those the consuming window would get from pad_same at this size
        traced = geo._sizes(size, check=False)
        if traced is None:
            return None
        consumers: dict[int, list[GeoOp]] = {}
        for op in ops:
            for n in op.ins:
                consumers.setdefault(n, []).append(op)
        for i, op in enumerate(ops):
            if op.kind != "pad":
                continue
            use = consumers.get(op.out, [])
            if len(use) != 1 or use[0].kind != "window" or use[0].params["p"] != (0, 0) or use[0].params["ceil"]:
                continue
            h, w = traced[op.ins[0]]
            (kh, kw), (sh, sw), (dh, dw) = use[0].params["k"], use[0].params["s"], use[0].params["d"]
            top, bottom = _same_pads(h, kh, sh, dh)
            left, right = _same_pads(w, kw, sw, dw)
            if op.params["pads"] == (left, right, top, bottom):
                geo.dynamic.add(i)
                op.params = {**op.params, "window": (kh, kw, sh, sw, dh, dw)}
        # the recorded sizes must be reproduced at the traced size
        again = geo._sizes(size, check=False)
        for n, shape in tape.shapes.items():
            if len(shape) == 4 and (off + n) in again and again[off + n] is not None \
                    and again[off + n] != tuple(shape[-2:]) and (off + n) in geo._route_nodes():
                return None
        return geo

    def _route_nodes(self) -> set[int]:
        need = {self.src, self.dst}
        for op in self.route_ops:
            need.add(self._off + op.out)
            need.update(self._off + n for n in op.ins if n is not None)
        return need

    # -- evaluation ---------------------------------------------------------------------------------
    def _sizes(self, n: int, check: bool = True) -> dict[int, tuple[int, int] | None] | None:
        """Map size of every node at input size ``n`` (``None``: unknown)."""
        sizes: dict[int, tuple[int, int] | None] = {self.input_node: (n, n)}
        self._pads_at: dict[int, tuple[int, int, int, int]] = {}
        for i, op in enumerate(self.ops):
            hw = sizes.get(op.ins[0]) if op.ins else None
            if hw is None:
                sizes[op.out] = None
                continue
            if op.kind == "same":
                sizes[op.out] = hw
            elif op.kind == "pad":
                pads = op.params["pads"]
                if i in self.dynamic:
                    kh, kw, sh, sw, dh, dw = op.params["window"]
                    top, bottom = _same_pads(hw[0], kh, sh, dh)
                    left, right = _same_pads(hw[1], kw, sw, dw)
                    pads = (left, right, top, bottom)
                self._pads_at[op.out] = pads
                sizes[op.out] = (hw[0] + pads[2] + pads[3], hw[1] + pads[0] + pads[1])
            elif op.kind == "window":
                p = op.params
                sizes[op.out] = (_window_out(hw[0], p["k"][0], p["s"][0], p["p"][0], p["d"][0], p["ceil"]),
                                 _window_out(hw[1], p["k"][1], p["s"][1], p["p"][1], p["d"][1], p["ceil"]))
                if sizes[op.out][0] < 1 or sizes[op.out][1] < 1:
                    raise RuntimeError("a map is empty at this input size")
            else:
                sizes[op.out] = None
        return sizes

    def field(self, n: int, target: tuple[int, int] | None):
        """At input size ``n``: ``(box, next_box, target, src_shape, dst_shape)`` as the tape probe gets
        them (``src_shape``/``dst_shape`` as ``(C, H, W)``); ``None`` if a size on the way is unknown.
        Raises ``RuntimeError`` when a map is empty at ``n`` (as the model's forward would)."""
        sizes = self._sizes(n)
        hs, hd = sizes.get(self.src), sizes.get(self.dst)
        if hs is None or hd is None:
            return None
        shapes = {}
        for node, hw in sizes.items():
            if node >= self._off and hw is not None:
                shapes[node - self._off] = (1, 0, *hw)
        ops = []
        for op in self.route_ops:
            if op.kind == "pad":
                pads = self._pads_at.get(self._off + op.out, op.params["pads"])
                ops.append(_compose.Op("pad", op.ins, op.out, {"pads": pads}))
            else:
                ops.append(op)
        for op in ops:
            for m in [*op.ins, op.out]:
                if m is not None and m not in shapes:
                    return None
        tape = _compose.Tape(ops=ops, shapes=shapes)
        src, dst = self.src - self._off, self.dst - self._off
        t = target if target is not None else ((hd[0] - 1) // 2, (hd[1] - 1) // 2)
        if not (0 <= t[0] < hd[0] and 0 <= t[1] < hd[1]):
            raise RuntimeError("target outside the dst map")
        box = _compose.field_box(tape, src, dst, t)
        nxt = None
        if box and t[0] + 1 < hd[0] and t[1] + 1 < hd[1]:
            nxt = _compose.field_box(tape, src, dst, (t[0] + 1, t[1] + 1))
        if box is False or nxt is False:
            return None
        return box, nxt, t, (self.channels[0], *hs), (self.channels[1], *hd)

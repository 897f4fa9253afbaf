"""Expanded weights by composing recorded linear ops backwards on cropped tensors (no autograd).

During the linearized forward from ``src`` to ``dst`` the :class:`~weightviz.linearize.Linearizer` records
every op on a tracked tensor into a :class:`Tape` (``conv``, per-channel ``scale`` such as eval
BatchNorm, ``avgpool``, zero ``pad``, ``add``, channel ``cat``, ``identity``; anything else is recorded
as ``unsupported``). :func:`compose` then walks the tape backwards from one-hot cotangents of the
target ``dst`` units, exactly like a batched backward, but every cotangent is kept only on its box
(the window of positions that can reach the target): a conv's input cotangent is ``conv_transpose2d``
of the box, clipped to the input map. No full-size gradient maps, no autograd or functorch overhead.

It is an optimization with a strict fallback: if the route from ``dst`` back to ``src`` reaches a node
that has no recorded producer, or an ``unsupported`` op, :func:`compose` returns ``None`` and
:func:`weightviz.expanded_weights` uses the autograd path (which handles every linearizable op).
Shapes: a cotangent is ``(g, r0, c0)`` with ``g`` ``[U, C, h, w]`` covering rows ``r0..r0+h-1`` and
columns ``c0..c0+w-1`` of its tensor's ``[1, C, H, W]`` map.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .cone import clip_window, conv_geometry, pair

_CHUNK_BYTES = 64 * 2**20  # largest cotangent of a chunk of units (bytes), bounds memory


@dataclass
class Op:
    """One recorded op: ``kind``, input ``ins`` (node per operand, ``None`` for untracked operands),
    output node ``out`` and the parameters its backward needs."""

    kind: str
    ins: list
    out: int
    params: dict = field(default_factory=dict)


@dataclass
class Tape:
    """The ops of one linearized forward, in execution order, and the shape of every node."""

    ops: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    #: set when an in-place op changed memory shared with another tracked tensor: nothing can be composed
    tainted: bool = False
    _next: int = 0

    def new_node(self, t: torch.Tensor) -> int:
        node = self._next
        self._next += 1
        self.shapes[node] = tuple(t.shape)
        return node

    def add(self, kind: str, ins: list, out: int, **params: Any) -> None:
        self.ops.append(Op(kind, list(ins), out, params))


# ------------------------------------------------------------------------------------- recording
_IDENTITY_KEYS = {"clone", "contiguous", "to", "float", "double", "type", "cpu", "cuda", "requires_grad_",
                  "retain_grad", "__pos__", "positive", "dropout", "dropout1d", "dropout2d", "dropout3d",
                  "alpha_dropout", "feature_alpha_dropout", "feature_dropout"}
_ADD_KEYS = {"add": 1, "add_": 1, "__add__": 1, "__radd__": 1, "__iadd__": 1,
             "sub": -1, "sub_": -1, "__sub__": -1, "__isub__": -1}
_MUL_KEYS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIV_KEYS = {"div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__", "__div__"}
_CAT_KEYS = {"cat", "concat", "concatenate"}


def _get(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _channel_factor(f: Any, out: torch.Tensor) -> Any:
    """A factor that multiplies a ``[1, C, H, W]`` tensor by a number or per-channel values: the number,
    or a ``[C]`` tensor; ``None`` otherwise (spatially varying, or broadcasting the batch)."""
    if isinstance(f, numbers.Number) and not isinstance(f, bool):
        return float(f)
    if not isinstance(f, torch.Tensor) or out.dim() != 4:
        return None
    if f.numel() == 1:
        return f.detach().reshape(())
    C = out.shape[1]
    shape = tuple(f.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape = shape[1:]
    if shape in ((C, 1, 1),) and f.numel() == C:
        return f.detach().reshape(C)
    return None


def record(tape: Tape, key: str, args: tuple, kwargs: dict, node_of, out: Any, out_node: int | None) -> None:
    """Record a generic op ``key`` (the Linearizer's ``_run``): ``node_of(t)`` is the node of a tracked
    input *before* the op (``None`` if untracked)."""
    if out_node is None or not isinstance(out, torch.Tensor):
        return
    x = args[0] if args else None
    if key == "conv2d":
        w = _get(args, kwargs, 1, "weight")
        geom = conv_geometry(w, _get(args, kwargs, 3, "stride", 1), _get(args, kwargs, 4, "padding", 0),
                             _get(args, kwargs, 5, "dilation", 1)) if isinstance(w, torch.Tensor) else None
        if geom is None or x.dim() != 4:
            return tape.add("unsupported", [node_of(x)], out_node, op=key)
        return conv(tape, node_of(x), out_node, w, *geom, int(_get(args, kwargs, 6, "groups", 1)))
    if key in _IDENTITY_KEYS:
        return tape.add("identity", [node_of(x)], out_node)
    if key in ("pad", "constant_pad_nd"):
        pads = _get(args, kwargs, 1, "pad")
        mode = _get(args, kwargs, 2, "mode", "constant") if key == "pad" else "constant"
        if mode != "constant" or x.dim() != 4 or not isinstance(pads, (tuple, list)) or len(pads) not in (2, 4):
            return tape.add("unsupported", [node_of(x)], out_node, op=key)
        pads = [int(v) for v in pads] + [0, 0] * (len(pads) == 2)
        return tape.add("pad", [node_of(x)], out_node, pads=tuple(pads))
    if key == "avg_pool2d":
        k = pair(_get(args, kwargs, 1, "kernel_size"))
        stride = _get(args, kwargs, 2, "stride", None)
        s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else pair(stride)
        p = pair(_get(args, kwargs, 3, "padding", 0))
        ceil = bool(_get(args, kwargs, 4, "ceil_mode", False))
        include = bool(_get(args, kwargs, 5, "count_include_pad", True))
        div = _get(args, kwargs, 6, "divisor_override", None)
        if None in (k, s, p) or div is not None or (not include and p != (0, 0)) or x.dim() != 4:
            return tape.add("unsupported", [node_of(x)], out_node, op=key)
        return avg_pool(tape, node_of(x), out_node, x, out, k, s, p, ceil)
    if key in _ADD_KEYS:
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", 1)
        if not isinstance(alpha, numbers.Number) or isinstance(alpha, bool):
            return tape.add("unsupported", [node_of(a)], out_node, op=key)
        ins, coef = [], []
        for t, c in ((a, 1.0), (b, _ADD_KEYS[key] * float(alpha))):
            n = node_of(t)
            if n is not None:
                if tuple(t.shape) != tuple(out.shape):   # broadcast: not a plain sum of maps
                    return tape.add("unsupported", [n], out_node, op=key)
                ins.append(n)
                coef.append(c)
        return tape.add("add", ins, out_node, coef=coef)
    if key in _MUL_KEYS or key in _DIV_KEYS:
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        if key in _DIV_KEYS and (node_of(b) is not None or kwargs.get("rounding_mode") is not None):
            return tape.add("unsupported", [node_of(a), node_of(b)], out_node, op=key)
        t, f = (a, b) if node_of(a) is not None else (b, a)
        factor = _channel_factor(f, out)
        if factor is None or tuple(t.shape) != tuple(out.shape):
            return tape.add("unsupported", [node_of(t)], out_node, op=key)
        if key in _DIV_KEYS:
            factor = 1.0 / factor
        return tape.add("scale", [node_of(t)], out_node, factor=factor)
    if key in ("neg", "negative", "__neg__"):
        return tape.add("scale", [node_of(x)], out_node, factor=-1.0)
    if key in _CAT_KEYS:
        seq = args[0] if args else kwargs.get("tensors")
        dim = _get(args, kwargs, 1, "dim", 0)
        if out.dim() != 4 or dim not in (1, -3):
            return tape.add("unsupported", [node_of(t) for t in seq], out_node, op=key)
        return tape.add("cat", [node_of(t) for t in seq], out_node, sizes=[int(t.shape[1]) for t in seq])
    tape.add("unsupported", [node_of(t) for t in (args[:1] if args else ())], out_node, op=key)


def conv(tape: Tape, x_node, out_node, w, stride, padding, dilation, groups) -> None:
    tape.add("conv", [x_node], out_node, w=w.detach(), stride=tuple(stride), padding=tuple(padding),
             dilation=tuple(dilation), groups=int(groups))


def avg_pool(tape: Tape, x_node, out_node, x, out, k, s, p, ceil) -> None:
    """Average pooling counting the padding, as a depthwise conv with weights ``1/(kh*kw)``. With
    ``ceil_mode`` a last window may stick out of the padded input; PyTorch then divides by the part of
    the window inside it, so those output positions get the factor ``kh*kw / that size``."""
    H, W = x.shape[-2:]
    C = x.shape[1]
    w = torch.full((C, 1, *k), 1.0 / (k[0] * k[1]), dtype=x.dtype, device=x.device)
    tape.add("conv", [x_node], out_node, w=w, stride=tuple(s), padding=tuple(p), dilation=(1, 1), groups=C,
             ceil=bool(ceil))
    if ceil:
        Ho, Wo = out.shape[-2:]
        rows = torch.clamp(H + p[0] - torch.arange(Ho) * s[0] + p[0], max=k[0]).to(x.dtype)
        cols = torch.clamp(W + p[1] - torch.arange(Wo) * s[1] + p[1], max=k[1]).to(x.dtype)
        factor = (k[0] * k[1]) / (rows[:, None] * cols[None, :])
        if bool((factor != 1).any()):
            tape.ops[-1].params["out_factor"] = factor.to(x.device)


def scale(tape: Tape, x_node, out_node, factor) -> None:
    tape.add("scale", [x_node], out_node, factor=factor)


# ----------------------------------------------------------------------------------------- reverse
def _needed(tape: Tape, src_node: int, dst_node: int) -> list[Op] | None:
    """The ops on routes back from ``dst`` (reverse execution order), or ``None`` if a needed node has no
    producer (other than ``src``) or a needed op is unsupported."""
    if tape.tainted:
        return None
    producer = {op.out: op for op in tape.ops}
    need, todo = {dst_node}, [dst_node]
    while todo:
        n = todo.pop()
        if n == src_node:
            continue
        op = producer.get(n)
        if op is None or op.kind == "unsupported" or not any(i is not None for i in op.ins):
            return None
        for i in op.ins:
            if i is not None and i not in need:
                need.add(i)
                todo.append(i)
    return [op for op in reversed(tape.ops) if op.out in need]


def _backward(op: Op, g: torch.Tensor, r0: int, c0: int, shapes: dict):
    kind, p = op.kind, op.params
    if kind == "identity":
        return [(op.ins[0], g, r0, c0)]
    if kind == "scale":
        f = p["factor"]
        if isinstance(f, torch.Tensor) and f.dim() == 1:
            f = f.to(g.dtype).view(1, -1, 1, 1)
        return [(op.ins[0], g * f, r0, c0)]
    if kind == "add":
        return [(n, g if c == 1.0 else g * c, r0, c0) for n, c in zip(op.ins, p["coef"])]
    if kind == "cat":
        res, off = [], 0
        for n, size in zip(op.ins, p["sizes"]):
            if n is not None:
                res.append((n, g[:, off:off + size], r0, c0))
            off += size
        return res
    (n,) = op.ins
    hw = shapes[n][-2:]
    if kind == "pad":
        left, _right, top, _bottom = p["pads"]
        hit = clip_window(g, r0 - top, c0 - left, hw)
        return [] if hit is None else [(n, *hit)]
    if kind == "conv":
        w, (sh, sw), (ph, pw), dil, groups = p["w"], p["stride"], p["padding"], p["dilation"], p["groups"]
        if "out_factor" in p:  # avg-pool windows cut by the padded border (ceil_mode)
            f = p["out_factor"][r0:r0 + g.shape[-2], c0:c0 + g.shape[-1]]
            g = g * f.to(g.dtype)
        if w.shape[-2:] == (1, 1) and groups == 1 and (sh, sw) == (1, 1):
            gi = torch.einsum("oi,bohw->bihw", w[:, :, 0, 0].to(g.dtype), g)
        else:
            if groups > 1:  # depthwise/grouped: the channels-last kernel is ~2x faster on CPU
                g = g.contiguous(memory_format=torch.channels_last)
            gi = F.conv_transpose2d(g, w.to(g.dtype), stride=(sh, sw), dilation=dil, groups=groups)
        hit = clip_window(gi, r0 * sh - ph, c0 * sw - pw, hw)
        return [] if hit is None else [(n, *hit)]
    raise AssertionError(f"internal: no backward for {kind}")


def _accumulate(cot: dict, node: int, g: torch.Tensor, r0: int, c0: int) -> None:
    old = cot.get(node)
    if old is None:
        cot[node] = (g, r0, c0)
        return
    g1, a0, b0 = old
    R0, C0 = min(a0, r0), min(b0, c0)
    R1 = max(a0 + g1.shape[-2], r0 + g.shape[-2])
    C1 = max(b0 + g1.shape[-1], c0 + g.shape[-1])
    if (R0, C0, R1, C1) == (a0, b0, a0 + g1.shape[-2], b0 + g1.shape[-1]) and g.shape == g1.shape:
        cot[node] = (g1 + g, R0, C0)
        return
    acc = g.new_zeros(*g.shape[:-2], R1 - R0, C1 - C0)
    acc[..., a0 - R0:a0 - R0 + g1.shape[-2], b0 - C0:b0 - C0 + g1.shape[-1]] += g1
    acc[..., r0 - R0:r0 - R0 + g.shape[-2], c0 - C0:c0 - C0 + g.shape[-1]] += g
    cot[node] = (acc, R0, C0)


def _fold_scales(ops: list[Op], keep: tuple[int, ...]) -> list[Op]:
    """Fold each per-channel ``scale`` (eval BatchNorm) into the conv that produces its input, when that
    conv output feeds nothing else: ``scale(conv(x, w)) = conv(x, w * s[:, None, None, None])``, so the
    backward multiplies a small weight instead of every cotangent. ``ops`` in reverse execution order."""
    uses: dict[int, int] = {}
    for op in ops:
        for n in op.ins:
            if n is not None:
                uses[n] = uses.get(n, 0) + 1
    producer = {op.out: op for op in ops}
    folded: set[int] = set()   # outputs of convs merged into a scale
    out = []
    for op in ops:
        if op.kind == "scale":
            (n,) = op.ins
            conv = producer.get(n)
            f = op.params["factor"]
            if conv is not None and conv.kind == "conv" and uses.get(n) == 1 and n not in keep:
                w = conv.params["w"]
                if isinstance(f, torch.Tensor) and f.dim() == 1:
                    f = f.to(w.dtype).view(-1, 1, 1, 1)
                elif isinstance(f, torch.Tensor):
                    f = f.to(w.dtype)
                out.append(Op("conv", list(conv.ins), op.out, {**conv.params, "w": w * f}))
                folded.add(n)
                continue
        if op.kind == "conv" and op.out in folded:
            continue
        out.append(op)
    return out


def compose(tape: Tape, src_node: int, dst_node: int, target: tuple[int, int], units: list[int],
            start: tuple[int, int], size: tuple[int, int], dtype: torch.dtype,
            device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Expanded weights ``[U, C_src, Kh, Kw]`` (field at ``start``, ``size`` in ``src`` positions) of the
    ``dst`` units ``units`` at ``target``, from the tape; ``None`` when the tape cannot be composed."""
    ops = _needed(tape, src_node, dst_node)
    dst_shape, src_shape = tape.shapes.get(dst_node), tape.shapes.get(src_node)
    if ops is None or dst_shape is None or src_shape is None or len(dst_shape) != 4 or len(src_shape) != 4:
        return None
    ops = _fold_scales(ops, (src_node, dst_node))
    widest = max(s[1] * s[2] * s[3] for s in tape.shapes.values() if len(s) == 4)
    chunk = max(1, min(len(units), _CHUNK_BYTES // max(1, widest * torch.empty((), dtype=dtype).element_size())))
    out = torch.zeros(len(units), src_shape[1], *size, dtype=dtype, device=device)
    for s in range(0, len(units), chunk):
        us = units[s:s + chunk]
        g0 = torch.zeros(len(us), dst_shape[1], 1, 1, dtype=dtype, device=device)
        g0[torch.arange(len(us), device=device), torch.tensor(us, device=device), 0, 0] = 1
        cot = {dst_node: (g0, target[0], target[1])}
        for op in ops:
            hit = cot.pop(op.out, None)
            if hit is None:
                continue
            for node, gi, ri, ci in _backward(op, *hit, tape.shapes):
                _accumulate(cot, node, gi, ri, ci)
        hit = cot.pop(src_node, None)
        if hit is None:
            continue
        g, r0, c0 = hit
        cut = clip_window(g, r0 - start[0], c0 - start[1], size)
        if cut is not None:
            g, a, b = cut
            out[s:s + len(us), :, a:a + g.shape[-2], b:b + g.shape[-1]] = g
    return out


# --------------------------------------------------------------------------------- field (boxes only)
def _back_box(op: Op, box: tuple[int, int, int, int], shapes: dict):
    """Input boxes ``(node, (r0, r1, c0, c1))`` of ``op`` for an output box (half-open rows/columns)."""
    r0, r1, c0, c1 = box
    if op.kind in ("identity", "scale", "add", "cat"):
        return [(n, box) for n in op.ins if n is not None]
    (n,) = op.ins
    H, W = shapes[n][-2:]
    if op.kind == "pad":
        left, _right, top, _bottom = op.params["pads"]
        r0, r1, c0, c1 = r0 - top, r1 - top, c0 - left, c1 - left
    else:  # conv
        p = op.params
        (sh, sw), (ph, pw), (dh, dw) = p["stride"], p["padding"], p["dilation"]
        kh, kw = p["w"].shape[-2:]
        r0, r1 = r0 * sh - ph, (r1 - 1) * sh - ph + dh * (kh - 1) + 1
        c0, c1 = c0 * sw - pw, (c1 - 1) * sw - pw + dw * (kw - 1) + 1
    r0, r1, c0, c1 = max(r0, 0), min(r1, H), max(c0, 0), min(c1, W)
    return [] if r1 <= r0 or c1 <= c0 else [(n, (r0, r1, c0, c1))]


def field_box(tape: Tape, src_node: int, dst_node: int, target: tuple[int, int]):
    """The box of ``src`` positions that reach ``dst`` at ``target`` (geometry only: every tap of every
    recorded op counts, as in the structural probe), ``None`` if none does, or ``False`` when the tape
    cannot tell (an op it does not know on the way)."""
    ops = _needed(tape, src_node, dst_node)
    if ops is None:
        return False
    boxes = {dst_node: (target[0], target[0] + 1, target[1], target[1] + 1)}
    for op in ops:
        b = boxes.pop(op.out, None)
        if b is None:
            continue
        for n, nb in _back_box(op, b, tape.shapes):
            old = boxes.get(n)
            boxes[n] = nb if old is None else (min(old[0], nb[0]), max(old[1], nb[1]), min(old[2], nb[2]),
                                                max(old[3], nb[3]))
    return boxes.get(src_node)

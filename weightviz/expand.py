"""Expanded weights: the linear map between two layers that are not adjacent, on any model.

The expanded weights from layer ``src`` to layer ``dst`` are the weights of the *linear* map from the
output channels of ``src`` to the output of ``dst`` at one position, obtained "by multiplying adjacent
weight matrices, ignoring non-linearities" (Voss et al. 2021): every nonlinear op between the two is
replaced by its closest linear op (:mod:`weightviz.linear`: ReLU-like -> identity, max-pool -> avg-pool,
sigmoid gates -> 0.5, BatchNorm eval -> its affine map, dropout/LRN -> identity). Biases never enter.

How it is computed (exact, not sampled):

1. :func:`receptive_field` measures the field of one ``dst`` position over ``src`` (the window of every
   recorded op traced back from the target; for ops the recorder does not know, a structural probe: one
   forward/backward in float64 with all weights made positive, so nothing cancels) and picks the
   smallest input size whose field is not truncated by any border (asymmetric TF-"SAME" padding
   included, because it is measured on the real forward, not derived from the layer list).
2. One linearized forward at that size, with ``src``'s output replaced by a zero tensor that requires
   grad (so only the ``src -> dst`` map is measured) and the forward stopped right after ``dst``.
3. The forward records its ops from ``src`` on (:mod:`weightviz._compose`); the weights are composed
   backwards from one-hot cotangents of all requested units at once, each cotangent kept only on the
   window of positions that reach the target (never one backward per unit, no full-size maps).
4. If the route meets an op the tape does not know: batched backwards instead (``torch.func.vjp`` of
   that forward, ``torch.func.vmap`` over one-hot cotangents in cache-sized chunks), every conv's input
   gradient computed only inside the target's cone (:mod:`weightviz._cone`). Both are cropped to the field.

Index convention: ``E[u, c, i, j]`` is the weight from ``src`` channel ``c`` at position
``(r0 + i, c0 + j)`` to ``dst`` unit ``u`` at the target position, where ``(r0, c0)`` is the first
row/column of the target's field - exactly the convention of a conv weight ``W[o, i, kh, kw]``. So for
``dst`` directly after ``src`` the result *is* ``weights(model, dst, dense=True)`` (a dilated conv shows
its dilated kernel, zeros between taps). For an even ``K`` there is no centre tap; the kernel is aligned
like a conv kernel of that size (first tap = first field position), not re-centred. The target position is
the centre ``((H-1)//2, (W-1)//2)`` of ``dst``'s output map at the chosen input size.

>>> import weightviz as wv
>>> m = wv.load_model()                                                   # embedded lite0
>>> E = wv.expanded_weights(m, "blocks.2.0", "blocks.3.0.conv_pwl")       # doctest: +SKIP
>>> E.shape                                      # [C_dst, C_src, K, K]   # doctest: +SKIP
torch.Size([80, 40, 7, 7])
"""

from __future__ import annotations

import dataclasses
import functools
import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import _compose, _cone, _norms, _tokens
from .errors import WeightvizError
from .linear import DEFAULT_GATE, linearized
from .models import fixed_input_size, get_module, input_spec, layers, parse_units, resolve, weights

__all__ = ["Connection", "Expanded", "ReceptiveField", "expanded_weights", "rank_connections", "receptive_field",
           "top_inputs"]

_MAX_SIZE = 1024        # largest input side tried when searching for an untruncated field
_MAX_PATHS = 64         # per-path contributions: most routes enumerated
_COMPOSE = True         # compose recorded ops on cropped tensors when possible (else: autograd path)
# what a composer failure can raise: then the autograd path (the reference) or the structural probe runs
_COMPOSE_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, AssertionError)
_GRAD_BUDGET = 16 * 2**20    # bytes of batched gradient buffers per chunk of units on a CPU (cache-sized)


# ------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ReceptiveField:
    """Field of one ``dst`` position over ``src`` (all in ``src`` output positions, h before w).

    ``size``: ``(Kh, Kw)``, the extent of the positions of ``src`` that can reach the target.
    ``stride``: step in ``src`` positions between adjacent ``dst`` positions (``None`` if ``dst`` has no
    neighbour at this size). ``start``: first ``src`` row/column of the target's field. ``target``: the
    ``dst`` position used (``None`` if ``dst`` has no spatial axes). ``input_size``: side of the square
    model input. ``truncated``: the field touches the border of ``src`` (only possible when
    ``input_size`` was given by the caller).
    """

    size: tuple[int, int]
    stride: tuple[int, int] | None
    start: tuple[int, int]
    target: tuple[int, int] | None
    input_size: int
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    truncated: bool = False
    #: per conv on the way, the box of output positions that reach the target (see weightviz._cone)
    cones: tuple = field(default=(), repr=False, compare=False)


@dataclass
class Expanded:
    """Expanded weights with their decomposition (``paths=True`` and/or ``via=MID``).

    ``total``: ``[U, C_src, Kh, Kw]``. ``units``: the ``dst`` units (rows of ``total``).
    ``paths``: route label -> ``[U, C_src, Kh, Kw]``, summing to ``total``. A label lists, for each sum or
    concatenation between ``src`` and ``dst`` that the route passes, ``"<module running the merge>:<module
    that produced the operand taken>"`` joined by ``" > "`` (e.g. ``"layer1.1:layer1.1.bn2"`` = the residual
    branch of block ``layer1.1``, ``"layer1.1:layer1.0"`` = its skip connection from ``layer1.0``).
    ``via``: ``[U, M, C_src, Kh, Kw]``, contribution of each unit of layer ``via_layer`` (all ``M = C_mid``
    units, or the top ``M = k`` by L2 norm per row with their indices in ``via_units`` ``[U, k]``).
    ``bypass``: ``[U, C_src, Kh, Kw]``, routes that avoid ``via_layer`` (zero when every route passes it).
    ``remainder``: ``total - via.sum(1)`` (bypass plus the units left out by top-k).
    """

    total: torch.Tensor
    units: list[int]
    field: ReceptiveField
    paths: dict[str, torch.Tensor] | None = None
    via_layer: str | None = None
    via: torch.Tensor | None = None
    via_units: torch.Tensor | None = None
    bypass: torch.Tensor | None = None
    remainder: torch.Tensor | None = None


@dataclass(frozen=True)
class Connection:
    """One input channel of a unit: ``channel``, ``norm`` (L2 of its slice), ``sign`` (+1 excitatory /
    -1 inhibitory / 0, the sign of the slice sum) and ``weight``, the slice ``[kh, kw]``."""

    channel: int
    norm: float
    sign: int
    weight: torch.Tensor = field(repr=False)


# ------------------------------------------------------------------------------------- the forward
def _grad_capable(fn):
    """Run ``fn`` outside inference mode (callers may be in ``torch.inference_mode()``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper


class _Stop(Exception):
    """Raised from a hook to end the forward after ``dst`` (private control flow)."""


class _NewMerge(_Stop):
    """Raised at the first route split not yet decided (per-path enumeration)."""


@dataclass
class _Trace:
    z: torch.Tensor | None = None
    dst_out: torch.Tensor | None = None
    captures: dict[str, torch.Tensor] = field(default_factory=dict)
    act_numel: int = 0
    lin: object = None
    src_node: int | None = None   # tape nodes (weightviz._compose) of src's output and dst's output
    dst_node: int | None = None


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _forward(
    model: nn.Module,
    src: str | None,
    dst: str,
    size: int,
    *,
    gate: float,
    structural: bool = False,
    capture: Sequence[str] = (),
    merge=None,
    producers: dict | None = None,
    z: torch.Tensor | None = None,
    dm: dict[str, torch.Tensor] | None = None,
    cones: list | None = None,
    tape: _compose.Tape | None = None,
) -> _Trace:
    """One linearized forward on a zero image ``[1, C, size, size]`` with ``src``'s output replaced by
    ``z`` (default: a zero leaf that requires grad; under ``torch.func.vjp`` the transform's input); stops
    after ``dst``. ``capture`` records the first output of those layers after ``src`` (``dm[name]`` is
    added to it, to take gradients w.r.t. it). ``producers`` (a dict to fill) turns on module-stack and
    producer tracking for route labels. ``cones``: structural mode records the conv cones into it (a
    :class:`weightviz._cone.ConeRecord`); value mode restricts each conv's backward to them. ``tape``:
    record the ops from ``src`` on (:mod:`weightviz._compose`)."""
    device, dtype = _device_dtype(model)
    x = torch.zeros(1, input_spec(model).channels, size, size, device=device, dtype=dtype)
    zdtype = torch.float64 if structural else None
    trace = _Trace()
    handles = []
    where = f"layer {src!r}" if src else "the model input"

    def src_hook(_m, _inp, out):
        if trace.z is not None:
            raise WeightvizError(f"layer {src!r} runs more than once in one forward (a reused module); choose "
                                 "a layer that runs once")
        if not isinstance(out, torch.Tensor) or out.dim() not in (2, 3, 4):
            raise WeightvizError(f"layer {src!r} must output a tensor [B, C, H, W], [B, N, C] or [B, C], got "
                                 f"{_describe(out)}; choose another src")
        torch.set_grad_enabled(True)  # layers before src ran without autograd (their values do not matter)
        trace.lin.const_dtype = out.dtype
        if z is None:
            trace.z = torch.zeros(out.shape, dtype=zdtype or out.dtype, device=out.device, requires_grad=True)
        elif tuple(z.shape) != tuple(out.shape):
            raise WeightvizError(f"internal: {src!r} output {list(out.shape)} != {list(z.shape)}")
        else:
            trace.z = z
        y = trace.z.clone()  # a non-leaf, so the model may modify it in place
        trace.lin.track(y)
        trace.src_node = trace.lin.node_of(y)
        if producers is not None:
            producers[id(y)] = (y, src)
        return y

    def dst_hook(_m, _inp, out):
        if trace.z is None:
            raise WeightvizError(f"layer {dst!r} runs before {src!r} in the forward: expanded weights go from an "
                                 "earlier layer (src) to a later one (dst); swap them")
        if not isinstance(out, torch.Tensor):
            raise WeightvizError(f"layer {dst!r} must output a tensor, got {_describe(out)}")
        if not trace.lin.is_tracked(out):
            raise WeightvizError(f"layer {dst!r} does not depend on {where}: no route leads from {src!r} to "
                                 f"{dst!r} (parallel branches, or only through a sigmoid gate, which is frozen to a constant)")
        trace.dst_out = out
        trace.dst_node = trace.lin.node_of(out)
        trace.act_numel = sum(t.numel() for t in trace.lin._tracked.values())
        raise _Stop

    def capture_hook(name):
        def hook(_m, _inp, out):
            if trace.z is None or name in trace.captures:
                return None
            if not isinstance(out, torch.Tensor) or not trace.lin.is_tracked(out):
                raise WeightvizError(f"layer {name!r} does not depend on {where}: via= must name a layer on a "
                                     f"route from {src!r} to {dst!r}")
            trace.captures[name] = out
            # a copy flows on, so later in-place ops (x += skip) do not change the captured tensor
            y = out.clone() if dm is None or name not in dm else out + dm[name]
            trace.lin.track(y)
            return y

        return hook

    stack: list[str] = []

    def pre(name):
        def hook(_m, _inp):
            stack.append(name)

        return hook

    def post(name):
        def hook(_m, _inp, out):
            if stack and stack[-1] == name:
                stack.pop()
            if isinstance(out, torch.Tensor) and trace.lin is not None and trace.lin.is_tracked(out):
                old = producers.get(id(out))
                # keep the innermost producer, unless this module contains it (a Sequential branch)
                if old is None or old[1] is None or old[1].startswith(name + "."):
                    producers[id(out)] = (out, name)
            return None

        return hook

    try:
        if src is not None:
            handles.append(get_module(model, src).register_forward_hook(src_hook))
        for name in capture:
            handles.append(get_module(model, name).register_forward_hook(capture_hook(name)))
        handles.append(get_module(model, dst).register_forward_hook(dst_hook))
        if producers is not None:
            for name, m in model.named_modules():
                if name:
                    handles.append(m.register_forward_pre_hook(pre(name)))
                    handles.append(m.register_forward_hook(post(name)))
        merge_fn = None if merge is None else (lambda op, operands: merge(op, operands, trace, stack, producers))
        with torch.inference_mode(False), torch.enable_grad(), linearized(
            model, gate=gate, track_inputs=False, source=where, require_grad=True, merge=merge_fn,
            structural=structural, cones=cones, tape=tape,
        ) as lin:
            trace.lin = lin
            if src is None:
                trace.z = z if z is not None else torch.zeros(x.shape, dtype=zdtype or x.dtype, device=x.device,
                                                                requires_grad=True)
                lin.const_dtype = x.dtype
                x = trace.z.clone()
                lin.track(x)
                trace.src_node = lin.node_of(x)
                if producers is not None:
                    producers[id(x)] = (x, "input")
            torch.set_grad_enabled(src is None)
            try:
                model(x)
            except _Stop:  # includes _NewMerge
                pass
            finally:
                torch.set_grad_enabled(True)
    finally:
        for h in handles:
            h.remove()
    if trace.dst_out is None and merge is None:
        if trace.z is None:
            raise WeightvizError(f"layer {src!r} did not run in the forward pass; choose a layer listed by "
                                 "`weightviz layers MODEL` that is used")
        raise WeightvizError(f"layer {dst!r} did not run after {src!r} in the forward pass")
    return trace


def _describe(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {list(out.shape)}"
    return type(out).__name__


def _target_rows(out: torch.Tensor, target: tuple[int, int] | None) -> torch.Tensor:
    """``dst`` output ``[1, C, H, W]`` -> ``[C]`` at ``target``; ``[1, C]`` -> ``[C]``."""
    if out.dim() == 4:
        return out[0, :, target[0], target[1]]
    if out.dim() == 2:
        return out[0]
    raise WeightvizError(f"dst output must be [B, C, H, W] or [B, C], got {list(out.shape)}")


class _Pullback:
    """A linearized forward under ``torch.func.vjp``: outputs ``rows`` (``dst`` units at the target, ``[U]``)
    and, with ``mid``, the ``mid`` output at ``mid_pos`` (``[C_mid]``); inputs ``z`` (``src``'s output) and,
    with ``mid``, ``dm`` (added to ``mid``'s output, so its gradient is d rows / d mid). :meth:`pull`
    evaluates many one-hot cotangents at once with ``torch.func.vmap`` (one batched backward)."""

    def __init__(self, model, src, dst, rf, gate, units, *, merge=None, producers=None, mid=None,
                 mid_shape=None, mid_pos=None):
        # cone-restricted conv backward: exact for cotangents at the target (and any subset of its routes);
        # not for via=, whose cotangents also start at the mid layer
        cones = list(rf.cones) if rf.cones and mid is None else None
        device, dtype = _device_dtype(model)
        primals = [torch.zeros(1, *rf.src_shape, device=device, dtype=dtype)]
        if mid is not None:
            primals.append(torch.zeros(1, *mid_shape, device=device, dtype=dtype))
        self.trace: _Trace | None = None

        def f(*ins):
            trace = _forward(model, src, dst, rf.input_size, gate=gate, merge=merge, producers=producers,
                             z=ins[0], capture=[mid] if mid is not None else (),
                             dm={mid: ins[1]} if mid is not None else None, cones=cones)
            self.trace = trace
            if trace.dst_out is None:       # stopped at an undecided route split (paths)
                return (ins[0].sum() * 0,)
            outs = [_target_rows(trace.dst_out, rf.target)[units]]
            if mid is not None:
                if mid not in trace.captures:
                    raise WeightvizError(f"layer {mid!r} does not run between {src!r} and {dst!r}; via= must "
                                         "name a layer on a route between them")
                ym = trace.captures[mid]
                outs.append(ym[0, :, mid_pos[0], mid_pos[1]] if ym.dim() == 4 else ym[0])
            return tuple(outs)

        self.outs, self.fn = torch.func.vjp(f, *primals)
        self.stopped = self.trace.dst_out is None

    def pull(self, which: int = 0, chunk: int | None = None) -> Iterable[tuple[int, tuple[torch.Tensor, ...]]]:
        """Gradients of each entry of output ``which`` w.r.t. every input: yields ``(offset, grads)`` with
        ``grads[i]`` ``[B, *input_i.shape]``, ``chunk`` cotangents per batched backward."""
        out = self.outs[which]
        n = out.shape[0]
        chunk = chunk or _chunk_size(self.trace, n, out.dtype)
        for s in range(0, n, chunk):
            b = min(chunk, n - s)
            cots = tuple(o.new_zeros(b, *o.shape) for o in self.outs)
            cots[which][torch.arange(b), torch.arange(s, s + b)] = 1
            with torch.no_grad():  # do not record the backward itself (parameters require grad)
                grads = torch.func.vmap(self.fn)(cots)
            yield s, tuple(g.detach() for g in grads)


def _chunk_size(trace: _Trace, n: int, dtype: torch.dtype) -> int:
    """Cotangents per batched backward: their gradient buffers (about the size of the activations
    between src and dst, per cotangent) should stay around ``_GRAD_BUDGET`` on a CPU: larger chunks fall
    out of the caches and get slower (measured: lite0 blocks.4.0 -> blocks.5.0, 9 MB per cotangent, is
    fastest at 4 per chunk; googlenet inception3a -> inception3b, 0.3 MB, at 32-64). GPUs get 64x more."""
    per = max(1, trace.act_numel) * torch.empty((), dtype=dtype).element_size()
    budget = _GRAD_BUDGET if trace.dst_out is None or trace.dst_out.device.type == "cpu" else 64 * _GRAD_BUDGET
    return int(max(1, min(n, max(4, budget // per), 128 if budget == _GRAD_BUDGET else 1024)))


def _crop(g: torch.Tensor, rf: ReceptiveField) -> torch.Tensor:
    """``[B, 1, C, H, W]`` (or ``[B, 1, C]``) -> ``[B, C, Kh, Kw]`` at the field (a view)."""
    g = g[:, 0]
    if g.dim() == 2:
        return g[:, :, None, None]
    (r0, c0), (kh, kw) = rf.start, rf.size
    return g[:, :, r0:r0 + kh, c0:c0 + kw]


def _collect(pb: _Pullback, which: int, rf: ReceptiveField) -> torch.Tensor:
    """All rows of output ``which``, cropped: ``[n, C, Kh, Kw]``. The result is allocated once up front:
    small tensors kept between the large, freed chunk buffers would fragment the heap (glibc keeps the
    freed chunks, so memory would grow with every chunk)."""
    out = None
    for s, g in pb.pull(which):
        c = _crop(g[0], rf)
        if out is None:
            out = c.new_empty(pb.outs[which].shape[0], *c.shape[1:])
        out[s:s + c.shape[0]] = c
    return out


# ----------------------------------------------------------------------------------- receptive field
_RF_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _probe(model, src, dst, size, target=None) -> ReceptiveField:
    """Field of ``dst[target]`` over ``src`` at input ``size`` (see :func:`receptive_field`): from the boxes
    of the recorded ops (:func:`weightviz._compose.field_box`, one plain forward) when the tape knows every
    op on the way, else from the structural probe."""
    if _COMPOSE:
        rf = _tape_probe(model, src, dst, size, target)
        if rf is not None:
            return rf
    return _structural_probe(model, src, dst, size, target)


def _tape_probe(model, src, dst, size, target=None) -> ReceptiveField | None:
    tape = _compose.Tape()
    trace = _forward(model, src, dst, size, gate=DEFAULT_GATE, tape=tape)
    out, z = trace.dst_out, trace.z
    if out.dim() != 4 or z is None or z.dim() != 4 or trace.src_node is None or trace.dst_node is None:
        return None
    t = _target_position(out, target, dst)
    try:
        box = _compose.field_box(tape, trace.src_node, trace.dst_node, t)
        nxt = None
        if box and t[0] + 1 < out.shape[-2] and t[1] + 1 < out.shape[-1]:
            nxt = _compose.field_box(tape, trace.src_node, trace.dst_node, (t[0] + 1, t[1] + 1))
    except _COMPOSE_ERRORS:
        return None
    if box is False:
        return None
    src_shape, dst_shape = tuple(z.shape[1:]), tuple(out.shape[1:])
    if box is None:   # the target reads only padding at this input size
        return _padding_only(t, size, src_shape, dst_shape)
    return _rf_from_box(box, nxt, t, size, src_shape, dst_shape)


def _structural_probe(model, src, dst, size, target=None) -> ReceptiveField:
    """Structural field of ``dst[target]`` over ``src`` at input ``size``: one float64 forward/backward
    with positive weights (also records the conv cones of the autograd path)."""
    record = _cone.ConeRecord()
    trace = _forward(model, src, dst, size, gate=DEFAULT_GATE, structural=True, cones=record)
    out, z = trace.dst_out, trace.z
    dst_shape = tuple(out.shape[1:])
    src_shape = tuple(z.shape[1:])
    if out.dim() == 4:
        t = _target_position(out, target, dst)
        ys = [out[0, :, t[0], t[1]].sum()]
        if t[0] + 1 < out.shape[-2] and t[1] + 1 < out.shape[-1]:
            ys.append(out[0, :, t[0] + 1, t[1] + 1].sum())
    elif out.dim() == 2:
        t = None
        ys = [out[0].sum()]
    else:
        raise WeightvizError(f"dst {dst!r} must output [B, C, H, W] or [B, C], got {list(out.shape)}")
    g = []
    for y in ys:   # each like z: [1, C, H, W]; the first backward also records the conv cones
        g.append(torch.autograd.grad(y, z, retain_graph=True)[0])
        record.active = False
    cones = tuple(record)
    if z.dim() == 2:
        if not (g[0] != 0).any():
            raise WeightvizError(f"layer {dst!r} does not depend on {src!r}")
        return ReceptiveField((1, 1), (1, 1) if len(ys) > 1 else None, (0, 0), t, size, src_shape, dst_shape,
                              cones=cones)
    boxes = [_cone.box_of(gk) for gk in g]
    if None in boxes:   # the target (or its neighbour) reads only padding at this input size
        return _padding_only(t, size, src_shape, dst_shape, cones)
    return _rf_from_box(boxes[0], boxes[1] if len(boxes) > 1 else None, t, size, src_shape, dst_shape, cones)


def _target_position(out: torch.Tensor, target, dst: str) -> tuple[int, int]:
    """The ``dst`` position whose field is measured: ``target``, or the centre of the ``[1, C, H, W]`` map."""
    hd, wd = out.shape[-2:]
    t = target if target is not None else ((hd - 1) // 2, (wd - 1) // 2)
    if not (0 <= t[0] < hd and 0 <= t[1] < wd):
        raise WeightvizError(f"target position {t} is outside {dst!r}'s output map {hd}x{wd}")
    return t


def _rf_from_box(box, nxt, t, size, src_shape, dst_shape, cones=()) -> ReceptiveField:
    """The field from the half-open box ``(r0, r1, c0, c1)`` of ``src`` positions reaching ``dst[t]`` and
    the box of the next position ``t + (1, 1)`` (``None``: no stride known)."""
    r0, r1, c0, c1 = box
    hs, ws = src_shape[-2:]
    touching = r0 == 0 or c0 == 0 or r1 == hs or c1 == ws
    stride = (nxt[0] - r0, nxt[2] - c0) if nxt else None
    return ReceptiveField((r1 - r0, c1 - c0), stride, (r0, c0), t, size, src_shape, dst_shape, touching,
                          cones=cones)


def _padding_only(t, size, src_shape, dst_shape, cones=()) -> ReceptiveField:
    """The field of a target that reads only padding at this input size (empty, truncated)."""
    return ReceptiveField((0, 0), None, (0, 0), t, size, src_shape, dst_shape, True, cones=cones)


def _structure_stamp(model: nn.Module) -> int:
    return hash(tuple((n, type(m).__name__) for n, m in model.named_modules()))


def _check_layers(model: nn.Module, *names: str | None) -> None:
    for name in names:
        if name is not None:
            get_module(model, name)


@_grad_capable
def receptive_field(
    model: nn.Module | str | None,
    dst: str,
    src: str | None = None,
    *,
    input_size: int | None = None,
    target: tuple[int, int] | None = None,
) -> ReceptiveField:
    """Measure the receptive field of one position of layer ``dst`` over layer ``src`` (the model input if
    ``src`` is None), and the smallest square input size at which it is not truncated by any border.

    The field is *measured* on one linearized forward: the windows of the recorded ops traced back from
    the target (or, for ops the recorder does not know, a forward/backward in float64 with every weight
    replaced by a positive constant, so no route can cancel) give the exact box of ``src`` positions that
    reach the target ``dst`` position (default: the centre ``((H-1)//2, (W-1)//2)``). Asymmetric TF-"SAME" padding,
    strides, dilations, pooling, branches and skips are all accounted for. Without ``input_size``, the
    input grows until the field touches no border of ``src`` and its size is stable, then shrinks to the
    smallest size (multiple of 4) that still holds it.

    >>> import weightviz as wv
    >>> rf = wv.receptive_field(wv.load_model(), "blocks.2.0.conv_dw", "blocks.2.0.bn1")  # doctest: +SKIP
    >>> rf.size, rf.stride                                                                 # doctest: +SKIP
    ((5, 5), (2, 2))
    """
    model = resolve(model)
    _check_layers(model, src, dst)
    if src is not None and src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    # the field depends on no value: norms divide by 1 unless statistics are active
    with _norms.using(_norms.active() or _norms.FrozenStats(mode="unit", measured=True)):
        return _field(model, src, dst, input_size, target)


def _field(model, src, dst, input_size, target=None) -> ReceptiveField:
    cache = _RF_CACHE.setdefault(model, {})
    stamp = _structure_stamp(model)
    key = (stamp, src, dst, input_size, target)
    if key in cache:
        return cache[key]
    def probe(n):
        return _probe(model, src, dst, n, target)

    if input_size is not None:
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise WeightvizError(f"input_size must be a positive int, got {input_size!r}")
        rf = probe(input_size)
        if rf.size == (0, 0):
            raise WeightvizError(f"at input_size={input_size} the target position of {dst!r} reads only padding; "
                                 "use a larger input_size")
    else:
        rf = _search(probe, src, dst)
    cache[key] = rf
    return rf


def _try(probe, n, errors: list | None = None):
    try:
        return probe(n)
    except WeightvizError:
        raise
    except (RuntimeError, ValueError, IndexError) as e:  # e.g. the input is too small for the model
        if errors is not None:
            errors.append(f"{type(e).__name__} at input size {n}: {str(e).strip().splitlines()[0][:200]}")
        return None


def _search(probe, src, dst) -> ReceptiveField:
    """Double the input (from 32) until the field touches no border of ``src``; then look for a smaller
    input (estimated from the free margin, multiple of 4) giving the same field. Two differently aligned
    inputs must agree on the field size, because a truncation can hide inside the map without reaching
    the border (e.g. a dilated conv padded less than its dilation); if no smaller one agrees, a larger
    one must. Few distinct sizes are probed: each new input size costs backend set-up time."""
    n, bad = 32, 0
    errors: list[str] = []
    rf = _try(probe, n, errors)
    if rf is not None and len(rf.src_shape) == 3 and rf.src_shape[1:] == (1, 1):
        big = _try(probe, 2 * n, errors)
        if big is not None and big.src_shape[1:] == (1, 1):   # src is globally pooled: nothing to truncate
            return dataclasses.replace(rf, size=(1, 1), start=(0, 0), truncated=False)
    if rf is not None and rf.target is None and len(rf.src_shape) == 3:
        raise WeightvizError(
            f"{dst!r} has no spatial axes (global pooling or a fully connected layer after {src!r}): its field is "
            "the whole input, so it grows with the input size; pass input_size= to fix it (the weights then "
            "cover the whole src map)"
        )
    while True:
        while rf is None or rf.truncated:
            bad, n = n, n * 2
            if n > _MAX_SIZE:
                if errors and rf is None:
                    raise WeightvizError(f"the forward from {src!r} to {dst!r} failed: {errors[-1]}")
                raise WeightvizError(
                    f"the field of {dst!r} over {src or 'the input'!r} does not fit in a {_MAX_SIZE}-pixel input "
                    "(global pooling or a fully connected layer between them?); pass input_size= to accept a "
                    "truncated field"
                )
            rf = _try(probe, n, errors)
        hs, ws = rf.src_shape[-2:] if len(rf.src_shape) == 3 else (1, 1)
        (r0, c0), (kh, kw) = rf.start, rf.size
        margin = min(r0, c0, hs - r0 - kh, ws - c0 - kw)
        est = int(math.ceil((n - 2 * (margin - 1) * n / max(hs, ws)) / 4)) * 4
        for m in dict.fromkeys([est, ((max(est, bad) + n) // 2 + 3) // 4 * 4]):
            if bad < m < n:
                cand = _try(probe, m)
                if cand is not None and not cand.truncated and cand.size == rf.size:
                    return cand
        n2 = n + max(16, n // 16 * 4)
        if n2 > _MAX_SIZE:
            return rf
        big = _try(probe, n2)
        if big is None or big.truncated or big.size == rf.size:
            return rf
        bad, n, rf = n, n2, big      # the field grew: it was truncated inside the map at n


# ------------------------------------------------------------------------------------ main function
def _expand(model, src, dst, units, rf, gate) -> torch.Tensor:
    if _COMPOSE:
        tape = _compose.Tape()
        trace = _forward(model, src, dst, rf.input_size, gate=gate, tape=tape)
        W = _composed(trace, tape, units, rf)
        if W is not None:
            return W
    pb = _Pullback(model, src, dst, rf, gate, units)
    return _collect(pb, 0, rf).detach()


def _composed(trace: _Trace, tape: _compose.Tape, units, rf: ReceptiveField) -> torch.Tensor | None:
    """Expanded weights from the recorded ops of a forward (:func:`weightviz._compose.compose`), or
    ``None`` if they cannot be composed (then the autograd path runs)."""
    if trace.dst_out is None or trace.src_node is None or trace.dst_node is None or rf.target is None:
        return None
    if trace.dst_out.dim() != 4 or trace.z is None or trace.z.dim() != 4:
        return None
    try:
        return _compose.compose(tape, trace.src_node, trace.dst_node, rf.target, list(units), rf.start, rf.size,
                                trace.dst_out.dtype, trace.dst_out.device)
    except _COMPOSE_ERRORS:
        return None  # an op combination the composer does not handle: the autograd path is the reference


@_grad_capable
def expanded_weights(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    units: int | str | Iterable[int] | slice | None = None,
    *,
    input_size: int | None = None,
    paths: bool = False,
    via: str | None = None,
    top: int | None = None,
    gate: float = DEFAULT_GATE,
    norm_scale: str | dict = "data",
    images=None,
    token: int | tuple[int, int] | None = None,
) -> torch.Tensor | Expanded:
    """Expanded weights from layer ``src`` to layer ``dst``: ``[U, C_src, K, K]``.

    ``U = len(units)`` (default: all ``C_dst`` units of ``dst``), ``C_src`` = output channels of ``src``
    (``src=None``: the model's input channels), ``K`` = the receptive-field size of one ``dst`` position
    over ``src`` (``[Kh, Kw]`` if not square), measured by :func:`receptive_field`. Entry ``[u, c, i, j]``
    is the weight of the linearized map from ``src`` channel ``c`` at field position ``(i, j)`` to unit
    ``u`` of ``dst``'s output (pre-activation for a conv ``dst``); see the module docstring for the
    linearization and index conventions. ``dst`` directly after ``src`` gives exactly
    ``weights(model, dst, dense=True)``.

    ``paths=True`` or ``via=MID`` return an :class:`Expanded` instead of a tensor:

    - ``paths=True``: ``.paths`` maps each route (through residual adds and concatenations) to its
      contribution; they sum to ``.total``.
    - ``via=MID``: ``.via`` ``[U, C_mid, C_src, K, K]`` is the contribution of each unit of layer ``MID``
      (``top=k``: only the k strongest per unit by L2 norm, indices in ``.via_units`` ``[U, k]``);
      ``.bypass`` holds the routes avoiding ``MID`` and ``.remainder = total - via.sum(1)``.

    ``gate`` is the constant that sigmoid gates (squeeze-excite) are frozen to. ``input_size`` forces the
    input side (the field may then be truncated: ``Expanded.field.truncated``).

    Norm layers (layer/group/RMS norm) and attention are frozen at statistics measured on ``images``
    (a tensor ``[N, C, H, W]`` prepared for the model, an ImageSet or a folder; default the first 32
    embedded images), see :mod:`weightviz.linear`: ``norm_scale="data"`` divides by the mean per-position
    std of each norm call, ``"unit"`` by 1, a dict ``{norm call: scale}`` by your own.

    Token layers (``[B, N, C]`` ViT tokens, ``[B, H, W, C]`` channels-last Swin / ConvNeXt insides) as
    ``src`` or ``dst``: the result is ``[U, C_src, N_src]``, the weight from ``src`` channel ``c`` at every
    token ``t`` (``src``'s own token order, class token first) to ``dst`` unit ``u`` at the target token
    (``token``: a raw token index, ``0`` = the class token, or a ``(y, x)`` patch position; default the
    centre patch), at the model's fixed input size (attention patterns are frozen at that size).

    Raises :class:`WeightvizError` for unknown layers (with close names), units out of range, ``dst``
    not after ``src``, no route between them, or an op on the way that cannot be linearized.

    >>> import weightviz as wv
    >>> m = wv.load_model()                                                        # doctest: +SKIP
    >>> wv.expanded_weights(m, "blocks.2.0", "blocks.3.0.conv_pwl", units=[3]).shape  # doctest: +SKIP
    torch.Size([1, 40, 7, 7])
    >>> r = wv.expanded_weights(m, "blocks.1.0", "blocks.2.0", units=[0], paths=True)   # doctest: +SKIP
    >>> list(r.paths)                        # residual branch, skip connection           # doctest: +SKIP
    ['blocks.1.1:blocks.1.1.bn3', 'blocks.1.1:blocks.1.0']
    """
    model = resolve(model)
    _check_layers(model, src, dst, via)
    if src is not None and src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    if via is not None and via in (src, dst):
        raise WeightvizError(f"via={via!r} must be a layer strictly between src and dst")
    if top is not None and (via is None or not isinstance(top, int) or top < 1):
        raise WeightvizError(f"top={top!r} needs via=LAYER and a positive int")
    if not isinstance(gate, (int, float)) or not math.isfinite(gate):
        raise WeightvizError(f"gate must be a finite number, got {gate!r}")
    fixed = fixed_input_size(model)
    stats = _norms.resolve(model, norm_scale, images, size=fixed)
    while True:
        try:
            with _norms.using(stats):
                return _expanded(model, src, dst, units, input_size, paths, via, top, gate, token, stats)
        except _norms.NeedStats:   # a norm/attention call the statistics were not measured for yet
            if stats.measured:
                raise WeightvizError("internal: frozen statistics incomplete after measuring") from None
            stats = _norms.measured(stats, model, images, fixed)


def _expanded(model, src, dst, units, input_size, paths, via, top, gate, token, stats):
    size = input_size or fixed_input_size(model) or (stats.size if stats.patterns else None)
    # token layers occur in models with norm / attention modules (others skip the shape probe)
    table = layers(model, size) if _norms.needs_stats(model) else None
    shapes = [table[n].out_shape if n in table else None for n in (src, dst) if n is not None] if table else []
    if any(sh is not None and _tokens.layout(sh).is_token for sh in shapes):
        if paths or via is not None:
            raise WeightvizError("paths= and via= are not available between token layers; drop them")
        size = size or input_spec(model).size
        lay = _tokens.layout(table[dst].out_shape)
        units = parse_units(units, lay.channels, what=f"layer {dst!r}")
        return _tokens.expand(model, src, dst, units, token=token, size=size, gate=gate, forward=_forward)
    if token is not None:
        raise WeightvizError(f"token={token!r} is for token layers ([B, N, C] or [B, H, W, C]); {dst!r} outputs a "
                             "conv map: drop token")
    rf = _field(model, src, dst, input_size)
    units = parse_units(units, rf.dst_shape[0], what=f"layer {dst!r}")
    total = _expand(model, src, dst, units, rf, gate)
    if not paths and via is None:
        return total
    result = Expanded(total=total, units=units, field=rf)
    if paths:
        result.paths = _paths(model, src, dst, units, rf, gate)
    if via is not None:
        _via(result, model, src, dst, via, units, rf, gate, top)
    return result


# ------------------------------------------------------------------------------------------- paths
def _paths(model, src, dst, units, rf, gate) -> dict[str, torch.Tensor]:
    """Enumerate routes depth-first: at each sum/concat of two or more src-dependent tensors, keep one
    operand's dependence (detach the others); every complete choice is one route."""
    results: dict[str, torch.Tensor] = {}
    pending: list[list[int]] = [[]]
    while pending:
        choices = pending.pop()
        state = {"k": 0, "labels": [], "new": None}

        def merge(op, operands, trace, stack, producers, choices=choices, state=state):
            lin = trace.lin
            idx = [j for j, t in enumerate(operands) if lin.is_tracked(t)]
            k = state["k"]
            state["k"] += 1
            where = stack[-1] if stack else "model"
            if k < len(choices):
                j = idx[choices[k]]
                hit = producers.get(id(operands[j]))
                label = hit[1] if hit is not None and hit[0] is operands[j] else f"{op}[{j}]"
                state["labels"].append(f"{where}:{label}")
                return j
            state["new"] = len(idx)
            raise _NewMerge

        tape = _compose.Tape() if _COMPOSE else None
        trace = _forward(model, src, dst, rf.input_size, gate=gate, merge=merge, producers={}, tape=tape)
        if state["new"] is not None:
            if len(results) + len(pending) + state["new"] > _MAX_PATHS:
                raise WeightvizError(f"more than {_MAX_PATHS} routes lead from {src!r} to {dst!r}; choose "
                                     "layers closer together for paths=True")
            pending.extend(choices + [j] for j in reversed(range(state["new"])))
            continue
        on = _on_route(model, src, dst, rf, gate, choices)
        if any(c != 0 and not o for c, o in zip(choices, on)):
            continue  # the same route as with choice 0 at a merge it does not pass (counted there)
        label = " > ".join(lab for lab, o in zip(state["labels"], on) if o) or "direct"
        while label in results:
            label += "'"
        W = _composed(trace, tape, units, rf) if tape is not None else None
        if W is None:
            state.update(k=0, labels=[], new=None)
            W = _collect(_Pullback(model, src, dst, rf, gate, units, merge=merge, producers={}), 0, rf).detach()
        results[label] = W
    return results


def _on_route(model, src, dst, rf, gate, choices: list[int]) -> list[bool]:
    """For a complete choice of operands at every merge, which merges the route passes: those whose kept
    operand ``dst``'s target depends on (a merge can lie on another branch only, e.g. a residual add
    inside one input of a later concatenation; choosing its operands then changes nothing)."""
    kept: list[torch.Tensor] = []
    state = {"k": 0}

    def merge(op, operands, trace, stack, producers):
        idx = [j for j, t in enumerate(operands) if trace.lin.is_tracked(t)]
        j = idx[choices[state["k"]]]
        state["k"] += 1
        kept.append(operands[j])
        return j

    trace = _forward(model, src, dst, rf.input_size, gate=gate, merge=merge, producers={})
    rows = _target_rows(trace.dst_out, rf.target)
    gen = torch.Generator(device=rows.device).manual_seed(0)
    y = (rows * torch.randn(rows.shape, generator=gen, device=rows.device, dtype=rows.dtype)).sum()
    grads = torch.autograd.grad(y, kept, allow_unused=True) if kept else ()
    return [g is not None and bool(g.ne(0).any()) for g in grads]


# --------------------------------------------------------------------------------------------- via
def _via(result: Expanded, model, src, dst, mid, units, rf, gate, top) -> None:
    """Per-unit contributions of layer ``mid``: compose E1 = d mid[p] / d src (one ``mid`` position p, all
    ``mid`` units) with G2 = d dst[target] / d mid (all ``mid`` positions), unit by unit of ``mid``
    (a grouped transposed convolution with ``mid``'s stride over ``src``), all at the same input size."""
    n = rf.input_size
    f2 = _field(model, mid, dst, n, rf.target)                 # field of dst[target] over mid
    spatial = len(f2.src_shape) == 3
    if spatial:   # p: middle of that field, so p's own field over src lies inside dst's field
        p = (f2.start[0] + (f2.size[0] - 1) // 2, f2.start[1] + (f2.size[1] - 1) // 2)
        f1 = _field(model, src, mid, n, p)
        if f1.truncated or f1.stride is None:
            raise WeightvizError(f"the field of {mid!r} over {src!r} is truncated at input size {n}; pass a "
                                 "larger input_size")
    else:
        p = None
        f1 = _field(model, src, mid, n, None)
    pb = _Pullback(model, src, dst, rf, gate, units, mid=mid, mid_shape=f2.src_shape, mid_pos=p)
    c_mid = f2.src_shape[0]
    e1 = _collect(pb, 1, f1)                                           # [C_mid, C_src, K1h, K1w]
    kh, kw = rf.size
    c_src = result.total.shape[1]
    keep = min(top if top is not None else c_mid, c_mid)
    u = len(units)
    via = result.total.new_zeros(u, keep, c_src, kh, kw)
    via_units = torch.zeros(u, keep, dtype=torch.long, device=via.device)
    bypass = result.total.clone()
    for s, g in pb.pull(0, chunk=max(1, min(u, 2**26 // max(1, c_mid * c_src * kh * kw)))):
        g2 = _crop(g[1], f2)                                           # [B, C_mid, K2h, K2w]
        b = g2.shape[0]
        if spatial:
            comp = F.conv_transpose2d(g2, e1, stride=f1.stride, groups=c_mid)   # [B, C_mid*C_src, Hc, Wc]
            comp = comp.view(b, c_mid, c_src, *comp.shape[-2:])
            off = (f1.start[0] + (f2.start[0] - p[0]) * f1.stride[0] - rf.start[0],
                   f1.start[1] + (f2.start[1] - p[1]) * f1.stride[1] - rf.start[1])
            hc, wc = comp.shape[-2:]
            if off[0] < 0 or off[1] < 0 or off[0] + hc > kh or off[1] + wc > kw:
                raise WeightvizError(f"internal: routes through {mid!r} reach outside the field of {dst!r}")
            full = comp.new_zeros(b, c_mid, c_src, kh, kw)
            full[..., off[0]:off[0] + hc, off[1]:off[1] + wc] = comp
        else:
            full = g2[:, :, 0, 0, None, None, None] * e1[None]             # [B, C_mid, C_src, K1h, K1w]
            if tuple(full.shape[-2:]) != (kh, kw):
                raise WeightvizError(f"internal: field mismatch between {mid!r} and {dst!r}")
        bypass[s:s + b] -= full.sum(1)
        if top is None:
            via[s:s + b] = full
        else:
            idx = full.flatten(2).norm(dim=2).topk(keep, dim=1).indices    # [B, k]
            via[s:s + b] = torch.gather(full, 1, idx[:, :, None, None, None].expand(-1, -1, *full.shape[2:]))
            via_units[s:s + b] = idx
    result.via_layer = mid
    result.via = via.detach()
    result.via_units = via_units if top is not None else None
    result.bypass = bypass.detach()
    result.remainder = (result.total - via.sum(1)).detach()


# -------------------------------------------------------------------------------------- top inputs
@_grad_capable
def top_inputs(
    model: nn.Module | str | None,
    dst: str,
    unit: int,
    src: str | None = None,
    k: int = 10,
    *,
    gate: float = DEFAULT_GATE,
) -> list[Connection]:
    """The ``k`` input channels of ``dst`` unit ``unit`` with the largest L2 norm of their weight slice.

    With ``src=None`` the slices are ``dst``'s own weights (dense for grouped/depthwise convs:
    ``weights(model, dst, dense=True)[unit]``, ``[C_in, kh, kw]``); otherwise the expanded weights from
    ``src`` (``[C_src, K, K]``). Each :class:`Connection` has ``channel``, ``norm``, ``sign`` (sign of the
    slice sum: +1 excitatory, -1 inhibitory) and ``weight`` ``[kh, kw]``; sorted by norm, descending.

    >>> import weightviz as wv
    >>> m = wv.load_model()                                                     # doctest: +SKIP
    >>> [c.channel for c in wv.top_inputs(m, "blocks.3.0.conv_pwl", 5, "blocks.2.0", k=3)]  # doctest: +SKIP
    [3, 12, 1]
    """
    model = resolve(model)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise WeightvizError(f"k must be a positive int, got {k!r}")
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise WeightvizError(f"unit must be one int, got {unit!r}")
    if src is None:
        w_all = weights(model, dst, dense=True)
        (u,) = parse_units(unit, w_all.shape[0], what=f"layer {dst!r}")
        w = w_all[u]
    else:
        w = expanded_weights(model, src, dst, units=[unit], gate=gate)[0]
    return rank_connections(w, k)


def rank_connections(w: torch.Tensor, k: int | None = None) -> list[Connection]:
    """Rank the slices of one unit's (direct or expanded) weights ``w`` ``[C_in, kh, kw]`` (or token
    maps ``[C_in, N]`` between token layers) by L2 norm,
    descending, as :class:`Connection` (the ranking of :func:`top_inputs`, for weights already computed,
    e.g. one row of a batched :func:`expanded_weights` call). ``k``: keep the first k (default all).

    >>> import torch, weightviz as wv
    >>> w = torch.zeros(3, 1, 1); w[1] = -2.0; w[2] = 1.0
    >>> [(c.channel, c.sign) for c in wv.rank_connections(w, 2)]
    [(1, -1), (2, 1)]
    """
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3):
        raise WeightvizError(f"rank_connections needs one unit's weights [C_in, kh, kw] (or a token map "
                             f"[C_in, N]), got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise WeightvizError(f"k must be a positive int, got {k!r}")
    flat = w.detach().flatten(1)
    norms = flat.norm(dim=1)
    sums = flat.sum(1)
    order = torch.argsort(norms, descending=True, stable=True)[:k]
    return [Connection(int(c), float(norms[c]), int(torch.sign(sums[c]).item()), w[c].detach().clone())
            for c in order]

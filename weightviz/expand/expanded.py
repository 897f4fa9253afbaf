"""Expanded weights: the linear map between two layers that are not adjacent, on any model.

The expanded weights from layer ``src`` to layer ``dst`` are the weights of the *linear* map from the
output channels of ``src`` to the output of ``dst`` at one position, obtained "by multiplying adjacent
weight matrices, ignoring non-linearities" (Voss et al. 2021): every nonlinear op between the two is
replaced by its closest linear op (:mod:`weightviz.linearize.linearizer`: ReLU-like -> identity, max-pool -> avg-pool,
sigmoid gates -> 0.5, BatchNorm eval -> its affine map, dropout/LRN -> identity). Biases never enter.

How it is computed (exact, not sampled):

1. :func:`receptive_field` measures the field of one ``dst`` position over ``src`` (the window of every
   recorded op traced back from the target; for ops the recorder does not know, a structural probe: one
   forward/backward in float64 with all weights made positive, so nothing cancels) and picks the
   smallest input size whose field is not truncated by any border (asymmetric TF-"SAME" padding
   included, because it is measured on the real forward, not derived from the layer list).
2. One linearized forward at that size, with ``src``'s output replaced by a zero tensor that requires
   grad (so only the ``src -> dst`` map is measured) and the forward stopped right after ``dst``.
3. The forward records its ops from ``src`` on (:mod:`weightviz.linearize.compose`); the weights are composed
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

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightvizError
from ..linearize import DEFAULT_GATE
from ..linearize import compose as _compose
from ..linearize import norms as _norms
from ..models import (
    conv1d_map,
    device_dtype,
    fixed_input_size,
    get_module,
    has_conv1d,
    input_spec,
    layers,
    parse_units,
    resolve,
    sequence_channels,
    weights,
)
from ..models import tokens as _tokens
from . import _trace
from ._trace import _grad_capable, _NewMerge, _Trace
from ._trace import forward as _forward
from .conv1d import conv1d_expanded, field_1d
from .field import ReceptiveField, _check_layers, _field, receptive_field
from .tokens import token_expanded

__all__ = ["Connection", "Expanded", "ReceptiveField", "expanded_weights", "rank_connections", "receptive_field",
           "top_inputs"]

_MAX_PATHS = 64         # per-path contributions: most routes enumerated
_GRAD_BUDGET = 16 * 2**20    # bytes of batched gradient buffers per chunk of units on a CPU (cache-sized)


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
        device, dtype = device_dtype(model)
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


# ------------------------------------------------------------------------------------ main function
def _expand(model, src, dst, units, rf, gate, kept=None) -> torch.Tensor:
    """``kept``: ``(trace, tape)`` of a value-mode forward (gate 0.5) at ``rf.input_size`` (from the field
    search of this call), used instead of a new forward."""
    if _trace.COMPOSE:
        if kept is not None and gate == DEFAULT_GATE:     # the field search's forward (first call on a pair)
            trace, tape = kept
        else:
            tape = _compose.Tape()
            trace = _forward(model, src, dst, rf.input_size, gate=gate, tape=tape)
        W = _composed(trace, tape, units, rf)
        if W is not None:
            return W
    pb = _Pullback(model, src, dst, rf, gate, units)
    return _collect(pb, 0, rf).detach()


def _composed(trace: _Trace, tape: _compose.Tape, units, rf: ReceptiveField) -> torch.Tensor | None:
    """Expanded weights from the recorded ops of a forward (:func:`weightviz.linearize.compose.compose`), or
    ``None`` if they cannot be composed (then the autograd path runs)."""
    if trace.dst_out is None or trace.src_node is None or trace.dst_node is None or rf.target is None:
        return None
    if trace.dst_out.dim() != 4 or trace.z is None or trace.z.dim() != 4:
        return None
    try:
        return _compose.compose(tape, trace.src_node, trace.dst_node, rf.target, list(units), rf.start, rf.size,
                                trace.dst_out.dtype, trace.dst_out.device)
    except _trace.COMPOSE_ERRORS:
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
    embedded images), see :mod:`weightviz.linearize.linearizer`: ``norm_scale="data"`` divides by the mean per-position
    std of each norm call, ``"unit"`` by 1, a dict ``{norm call: scale}`` by your own.

    Token layers (``[B, N, C]`` ViT tokens, ``[B, H, W, C]`` channels-last Swin / ConvNeXt insides) as
    ``src`` or ``dst``: the result is ``[U, C_src, N_src]``, the weight from ``src`` channel ``c`` at every
    token ``t`` (``src``'s own token order, class token first) to ``dst`` unit ``u`` at the target token
    (``token``: a raw token index, ``0`` = the class token, or a ``(y, x)`` patch position; default the
    centre patch), at the model's fixed input size (attention patterns are frozen at that size).

    1-D conv maps (``[B, C, L]`` of a ``Conv1d``, or of a layer after one that keeps it; never read as tokens)
    as ``src`` and ``dst``: ``[U, C_src, K]``, like a ``Conv1d`` weight (exact: adjacent layers give the kernel),
    measured at the centre ``(L - 1) // 2`` of ``dst`` (:mod:`.conv1d`); a 1-D and a 2-D/token layer are refused.

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
            if sequence_channels(model) is not None:
                raise WeightvizError("the norms of a model that takes [B, C, L] sequences cannot be measured on "
                                     "images: pass norm_scale='unit' or a dict {norm call: scale}") from None
            stats = _norms.measured(stats, model, images, fixed)


def _expanded(model, src, dst, units, input_size, paths, via, top, gate, token, stats):
    size = input_size or fixed_input_size(model) or (stats.size if stats.patterns else None)
    # token layers occur in models with norm / attention modules (others skip the shape probe)
    table = layers(model, size) if _norms.needs_stats(model) else None
    if has_conv1d(model):   # a [B, C, L] map is never read as tokens: the module producing it tells
        table = table or layers(model, size)
        ones = [conv1d_map(model, n, table) for n in (src, dst)]
        if via is not None and conv1d_map(model, via, table):
            ones.append(True)
        if any(ones):
            return _expanded_1d(model, src, dst, units, input_size, paths, via, gate, token, table)
    lays = [_tokens.layout(table[n].out_shape, table[n].conv1d) for n in (src, dst)
            if table is not None and n is not None and n in table and table[n].out_shape is not None]
    if any(lay.is_token for lay in lays):
        if paths or via is not None:
            raise WeightvizError("paths= and via= are not available between token layers; drop them")
        size = size or input_spec(model).size
        lay = _tokens.layout(table[dst].out_shape)
        units = parse_units(units, lay.channels, what=f"layer {dst!r}")
        return token_expanded(model, src, dst, units, token=token, size=size, gate=gate, forward=_forward)
    if token is not None:
        raise WeightvizError(f"token={token!r} is for token layers ([B, N, C] or [B, H, W, C]); {dst!r} outputs a "
                             "conv map: drop token")
    kept: list = []
    rf = _field(model, src, dst, input_size, keep=kept)
    units = parse_units(units, rf.dst_shape[0], what=f"layer {dst!r}")
    total = _expand(model, src, dst, units, rf, gate, kept[0] if kept else None)
    if not paths and via is None:
        return total
    result = Expanded(total=total, units=units, field=rf)
    if paths:
        result.paths = _paths(model, src, dst, units, rf, gate)
    if via is not None:
        _via(result, model, src, dst, via, units, rf, gate, top)
    return result


def _expanded_1d(model, src, dst, units, input_size, paths, via, gate, token, table) -> torch.Tensor:
    """Between two 1-D conv maps: ``[U, C_src, K]`` (:mod:`.conv1d`); anything else is refused in one line."""
    def what(n):
        return "the model input" if n is None else f"{n!r} ({type(get_module(model, n)).__name__})"

    for n in (src, dst):
        if not conv1d_map(model, n, table):
            other = dst if n is src else src
            raise WeightvizError(f"1-D convolutions are not supported across a 1-D and a 2-D/token layer: {what(n)} "
                                 f"is not a 1-D conv map [B, C, L] like {what(other)}; choose two 1-D conv layers")
    if paths or via is not None or token is not None:
        raise WeightvizError("paths=, via= and token= are not available between 1-D conv layers; drop them")
    f = field_1d(model, src, dst, input_size, _forward)
    units = parse_units(units, f.dst_shape[0], what=f"layer {dst!r}")
    return conv1d_expanded(model, src, dst, units, f, gate=gate, forward=_forward)


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

        tape = _compose.Tape() if _trace.COMPOSE else None
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

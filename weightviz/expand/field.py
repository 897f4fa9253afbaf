"""Receptive fields: which ``src`` positions reach one ``dst`` position, and the smallest input size at
which that field is not truncated by any border (used by :func:`weightviz.expanded_weights`).

The field of a target is measured on a linearized forward (:mod:`weightviz.expand._trace`): the boxes of the
recorded ops traced back from the target (:func:`weightviz.linearize.compose.field_box`) or, for ops the recorder
does not know, a structural probe (one float64 forward/backward with all weights made positive, so
nothing cancels).

The search for the border-free size (:func:`_search`) asks for the field at several input sizes. By
default those fields come from one traced forward at 32 px in which no convolution runs
(:mod:`weightviz._geometry` re-derives every map size, TF-"SAME" padding and box at any size), and one
real forward at the size found checks the result and is kept for the weights (so a first
:func:`weightviz.expanded_weights` call costs about two forwards, not one per size probed). Where the
geometry cannot tell (an op it cannot size, a tape that cannot be composed) or a check fails, the search
runs on real probes at every size. Models with a fixed input size (:func:`weightviz.fixed_input_size`: ViT,
Swin) are probed at that size only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import WeightvizError, WeightvizWarning
from ..linearize import DEFAULT_GATE
from ..linearize import compose as _compose
from ..linearize import cone as _cone
from ..linearize import geometry as _geometry
from ..linearize import norms as _norms
from ..models import fixed_input_size, get_module, input_spec, layers, refuse_conv1d, resolve
from . import _trace
from ._trace import _grad_capable

__all__ = ["ReceptiveField", "receptive_field"]

_MAX_SIZE = 1024        # largest input side tried when searching for an untruncated field


@dataclass(frozen=True)
class ReceptiveField:
    """Field of one ``dst`` position over ``src`` (all in ``src`` output positions, h before w).

    ``size``: ``(Kh, Kw)``, the extent of the positions of ``src`` that can reach the target.
    ``stride``: step in ``src`` positions between adjacent ``dst`` positions (``None`` if ``dst`` has no
    neighbour at this size). ``start``: first ``src`` row/column of the target's field. ``target``: the
    ``dst`` position used (``None`` if ``dst`` has no spatial axes). ``input_size``: side of the square
    model input. ``truncated``: the field touches the border of ``src`` (only possible when
    ``input_size`` was given by the caller, or with ``whole``).
    ``whole``: the field is the whole input (attention on the route mixes every position), so no input
    size holds it: it was measured at the model's default input size (:func:`weightviz.input_spec`), with a
    :class:`~weightviz.WeightvizWarning`.
    """

    size: tuple[int, int]
    stride: tuple[int, int] | None
    start: tuple[int, int]
    target: tuple[int, int] | None
    input_size: int
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]
    truncated: bool = False
    whole: bool = False
    #: an attention pattern over positions was frozen on the route (its positions all reach each other)
    mixes: bool = field(default=False, repr=False, compare=False)
    #: per conv on the way, the box of output positions that reach the target (see weightviz._cone)
    cones: tuple = field(default=(), repr=False, compare=False)


_RF_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _probe(model, src, dst, size, target=None) -> ReceptiveField:
    """Field of ``dst[target]`` over ``src`` at input ``size`` (see :func:`receptive_field`): from the boxes
    of the recorded ops (:func:`weightviz.linearize.compose.field_box`, one plain forward) when the tape knows every
    op on the way, else from the structural probe."""
    if _trace.COMPOSE:
        rf = _tape_probe(model, src, dst, size, target)
        if rf is not None:
            return rf
    return _structural_probe(model, src, dst, size, target)


def _tape_probe(model, src, dst, size, target=None) -> ReceptiveField | None:
    tape = _compose.Tape()
    trace = _trace.forward(model, src, dst, size, gate=DEFAULT_GATE, tape=tape)
    return _from_tape(trace, tape, dst, size, target)


def _from_tape(trace: _trace._Trace, tape: _compose.Tape, dst, size, target=None) -> ReceptiveField | None:
    """The field from the tape of a traced forward at ``size`` (``None``: the tape cannot tell)."""
    out, z = trace.dst_out, trace.z
    if out is None or out.dim() != 4 or z is None or z.dim() != 4 or trace.src_node is None \
            or trace.dst_node is None:
        return None
    t = _target_position(out, target, dst)
    if trace.lin is not None and trace.lin.mixes:
        return None     # attention on the route: the structural probe tells its reach
    try:
        box = _compose.field_box(tape, trace.src_node, trace.dst_node, t)
        nxt = None
        if box and t[0] + 1 < out.shape[-2] and t[1] + 1 < out.shape[-1]:
            nxt = _compose.field_box(tape, trace.src_node, trace.dst_node, (t[0] + 1, t[1] + 1))
    except _trace.COMPOSE_ERRORS:
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
    trace = _trace.forward(model, src, dst, size, gate=DEFAULT_GATE, structural=True, cones=record)
    out, z = trace.dst_out, trace.z
    dst_shape = tuple(out.shape[1:])
    src_shape = tuple(z.shape[1:])
    if out.dim() == 3 or z.dim() == 3:   # tokens, or a 1-D conv map: only the producing module tells
        refuse_conv1d(model, src, dst, table=layers(model, size), by=" by receptive_field (expanded_weights "
                      "gives [U, C_src, K] between two 1-D conv layers)")
    if out.dim() == 4:
        t = _target_position(out, target, dst)
        ys = [out[0, :, t[0], t[1]].sum()]
        if t[0] + 1 < out.shape[-2] and t[1] + 1 < out.shape[-1]:
            ys.append(out[0, :, t[0] + 1, t[1] + 1].sum())
    elif out.dim() == 2:
        t = None
        ys = [out[0].sum()]
    else:
        raise WeightvizError(f"dst {dst!r} must output [B, C, H, W] or [B, C], got {list(out.shape)} (a token "
                             "layer has no receptive field: expanded_weights gives maps over all its tokens)")
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
    rf = _rf_from_box(boxes[0], boxes[1] if len(boxes) > 1 else None, t, size, src_shape, dst_shape, cones)
    return dataclasses.replace(rf, mixes=True) if trace.lin.mixes else rf


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
    smallest size (multiple of 4) that still holds it (sizes derived from one traced forward where
    possible, see the module docstring). A model with a fixed input size (ViT, Swin: see
    :func:`weightviz.fixed_input_size`) is measured at that size only (``truncated=True`` if the field
    touches a border there) and refuses another ``input_size``.

    >>> import weightviz as wv
    >>> rf = wv.receptive_field(wv.load_model(), "blocks.2.0.conv_dw", "blocks.2.0.bn1")  # doctest: +SKIP
    >>> rf.size, rf.stride                                                                 # doctest: +SKIP
    ((5, 5), (2, 2))
    """
    model = resolve(model)
    _check_layers(model, src, dst)
    refuse_conv1d(model, src, dst, by=" by receptive_field (expanded_weights gives [U, C_src, K] between two 1-D "
                  "conv layers)")
    if src is not None and src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    return _field(model, src, dst, input_size, target)


def _field(model, src, dst, input_size, target=None, keep: list | None = None) -> ReceptiveField:
    """The (cached) field; ``keep``: a list that receives ``(trace, tape)`` of the real value-mode forward
    (gate 0.5) at the size found when the search ran one and it froze no norm or attention call (so the
    caller's weights need no second forward)."""
    cache = _RF_CACHE.setdefault(model, {})
    stamp = _structure_stamp(model)
    key = (stamp, src, dst, input_size, target)
    if key in cache:
        return _said(cache[key], src, dst)
    # the field depends on no value: every forward of the search (geometry trace, tape and structural probes)
    # runs with norms dividing by 1 and unmeasured attention patterns all ones, whatever statistics the caller
    # (expanded_weights) has active; so no statistics are measured for it, and no pattern measured at one
    # input size is asked for at another
    with _norms.using(_norms.FrozenStats(mode="unit", measured=True, reach=True)):
        rf = _search_field(model, src, dst, input_size, target, keep)
    cache[key] = rf
    return _said(rf, src, dst)


def _said(rf: ReceptiveField, src, dst) -> ReceptiveField:
    """A field that is the whole input says so (a :class:`WeightvizWarning` on every call)."""
    if rf.whole:
        warnings.warn(f"the field of {dst!r} over {src or 'the input'!r} is the whole input (attention on the "
                      f"route mixes every position): measured at the model's default input size "
                      f"{rf.input_size}px; pass input_size= to choose another", WeightvizWarning, stacklevel=4)
    return rf


def _search_field(model, src, dst, input_size, target, keep) -> ReceptiveField:
    """The field at ``input_size``, at the model's fixed size, or from the search for the border-free size."""

    def probe(n):
        return _probe(model, src, dst, n, target)

    fixed = fixed_input_size(model)
    if input_size is not None:
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
            raise WeightvizError(f"input_size must be a positive int, got {input_size!r}")
        if fixed is not None and input_size != fixed:
            raise WeightvizError(f"input_size={input_size}: this model takes only {fixed}x{fixed} inputs (a fixed "
                                 f"input size); pass input_size={fixed} or leave it out")
        rf = _one_probe(probe, input_size, src, dst)
        if rf.size == (0, 0):
            raise WeightvizError(f"at input_size={input_size} the target position of {dst!r} reads only padding; "
                                 "use a larger input_size")
    elif fixed is not None:
        # the model runs at one size only: the field at that size (truncated=True if it touches a border)
        rf = _one_probe(probe, fixed, src, dst)
        if rf.size == (0, 0):
            raise WeightvizError(f"the target position of {dst!r} reads only padding at the model's fixed input "
                                 f"size {fixed}")
    else:
        rf = _fast_search(model, src, dst, target, keep) if _trace.COMPOSE and _trace.FAST_FIELD else None
        if rf is None:
            try:
                rf = _search(probe, src, dst)
            except _Whole:
                rf = _whole_field(model, probe, src, dst)
    return rf


class _Whole(Exception):
    """The field covers the whole input through attention (private control flow of :func:`_search`)."""


def _covers_all(rf: ReceptiveField | None) -> bool:
    """The field spans the whole ``src`` map through frozen attention on the route: it grows with the
    input, so no input size holds it."""
    if rf is None or not rf.mixes or rf.target is None or len(rf.src_shape) != 3 or rf.size == (0, 0):
        return False
    return rf.start == (0, 0) and rf.size == tuple(rf.src_shape[1:])


def _whole_field(model, probe, src, dst) -> ReceptiveField:
    """The field at the model's default input size (its config's ``input_size``, the size its attention
    statistics are measured at), marked ``whole``, with a warning that says so."""
    n = input_spec(model).size
    return dataclasses.replace(_one_probe(probe, n, src, dst), stride=None, truncated=True, whole=True)


def _one_probe(probe, n: int, src, dst) -> ReceptiveField:
    """``probe(n)``; a failing forward becomes one line naming the pair and the size."""
    errors: list[str] = []
    rf = _try(probe, n, errors)
    if rf is None:
        raise WeightvizError(f"the forward from {src or 'the input'!r} to {dst!r} failed: {errors[-1]}")
    return rf


# --------------------------------------------------------------- the search from one traced forward
def _traced(model, src, dst, n, prefix=None):
    """A value-mode traced forward at input ``n``: ``(trace, tape)``, or ``None`` if the model fails. With
    ``prefix`` (the geometry trace) convolutions only produce zeros of their shape: no kernel runs."""
    tape = _compose.Tape()
    try:
        trace = _trace.forward(model, src, dst, n, gate=DEFAULT_GATE, tape=tape, prefix=prefix,
                               shapes_only=prefix is not None)
    except WeightvizError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError):
        return None
    return trace, tape


def _fast_search(model, src, dst, target, keep: list | None = None) -> ReceptiveField | None:
    """:func:`_search` on fields computed from one traced forward (:class:`weightviz._geometry.Geometry`):
    the map sizes, SAME paddings and field boxes at every size it asks for, without running the model.
    Checked against real forwards at the traced size and at the size found (that forward goes to ``keep``
    for the weights); ``None`` when the geometry cannot tell or a check fails (then real probes run)."""
    n0 = 32
    prefix = _geometry.PrefixRecorder()
    hit = _traced(model, src, dst, n0, prefix)
    if hit is None:
        return None
    trace, tape = hit
    real = _from_tape(trace, tape, dst, n0, target)
    if real is None:
        return None
    try:
        geo = _geometry.Geometry.build(prefix if src is not None else None, tape, trace.src_node, trace.dst_node, n0)
    except _trace.COMPOSE_ERRORS:
        return None
    if geo is None:
        return None

    def analytic(n):
        got = geo.field(n, target)
        if got is None:
            raise _Unknown
        box, nxt, t, src_shape, dst_shape = got
        if box is None:
            return _padding_only(t, n, src_shape, dst_shape)
        return _rf_from_box(box, nxt, t, n, src_shape, dst_shape)

    try:
        if analytic(n0) != real:
            return None
        rf = _search(analytic, src, dst)
    except _Unknown:
        return None
    # the geometry trace ran no convolution: the real forward at the size found checks the field, and is kept
    hit = _traced(model, src, dst, rf.input_size)
    if hit is None:
        return None
    trace, tape = hit
    if _from_tape(trace, tape, dst, rf.input_size, target) != rf:
        return None
    if keep is not None and not trace.lin.froze:   # values under the field's unit stats: kept only if no norm
        keep.append((trace, tape))                 # or attention call was frozen in it
    return rf


class _Unknown(Exception):
    """The geometry cannot tell a map size (private control flow)."""


def _try(probe, n, errors: list | None = None):
    try:
        return probe(n)
    except WeightvizError:
        raise
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:  # e.g. the input is too small
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
    if _covers_all(rf):   # attention mixes every position: growing the input would only grow the field
        raise _Whole
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
            if _covers_all(rf):
                raise _Whole
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


"""The linearized forward behind expanded weights and receptive fields (private).

:func:`forward` runs a model once on a zero image ``[1, C, n, n]`` inside :func:`weightviz.linearized`,
replaces ``src``'s output by a zero tensor (or the caller's) that the linear map is measured from, and
stops right after ``dst``. Optionally it records the ops from ``src`` on (a :class:`weightviz.linearize.compose.Tape`),
structural float64 values with conv cones (:mod:`weightviz._cone`), captures of middle layers and route
producers. Both :mod:`weightviz.expand.field` (the field search) and :mod:`weightviz.expand.expanded` build on it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from ..linearize import compose as _compose
from ..linearize import linearized
from ..models import device_dtype, get_module, input_spec, sequence_channels

#: compose recorded ops on cropped tensors when possible (else: the autograd path and structural fields)
COMPOSE = True
#: read receptive fields off the op tape when possible (else: the structural float64 probe)
FAST_FIELD = True
#: what a composer failure can raise: then the autograd path (the reference) or the structural probe runs
COMPOSE_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, AssertionError)


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
    src_node: int | None = None   # tape nodes (weightviz.linearize.compose) of src's output and dst's output
    dst_node: int | None = None


def forward(
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
    prefix: Any = None,
    shapes_only: bool = False,
) -> _Trace:
    """One linearized forward on a zero image ``[1, C, size, size]`` with ``src``'s output replaced by
    ``z`` (default: a zero leaf that requires grad; under ``torch.func.vjp`` the transform's input); stops
    after ``dst``. ``capture`` records the first output of those layers after ``src`` (``dm[name]`` is
    added to it, to take gradients w.r.t. it). ``producers`` (a dict to fill) turns on module-stack and
    producer tracking for route labels. ``cones``: structural mode records the conv cones into it (a
    :class:`weightviz._cone.ConeRecord`); value mode restricts each conv's backward to them. ``tape``:
    record the ops from ``src`` on (:mod:`weightviz.linearize.compose`). ``prefix``: a
    :class:`weightviz._geometry.PrefixRecorder` for the map sizes of the ops before ``src``. ``shapes_only``:
    convolutions output zeros of their shape (a forward traced for its geometry, values unused)."""
    device, dtype = device_dtype(model)
    seq = sequence_channels(model)   # a model of 1-D convs takes a sequence [1, C, size]
    x = torch.zeros(1, seq, size, device=device, dtype=dtype) if seq is not None else \
        torch.zeros(1, input_spec(model).channels, size, size, device=device, dtype=dtype)
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
        if prefix is not None:
            prefix.finish(out)
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
        trace.lin.check_result(out)
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
            trace.lin.check_result(out)
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
            structural=structural, cones=cones, tape=tape, prefix=prefix, shapes_only=shapes_only,
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
            if prefix is not None and src is not None:
                prefix.start(x)
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


@contextlib.contextmanager
def reference_paths(weights: bool = True, field: bool = True):
    """Within the context, expanded weights and receptive fields run on the slower reference paths the fast
    ones are checked against: ``weights``: autograd with batched cotangents instead of composing the
    recorded op tape; ``field``: the structural float64 probe instead of reading the field off the tape.
    Results are equal up to float rounding (the tests check it); this is for checking a model of your own
    and for benchmarks. Not thread-safe (a process-wide switch, restored on exit).

    >>> with weightviz.expand.reference_paths():                                   # doctest: +SKIP
    ...     ref = wv.expanded_weights(model, "blocks.2.0", "blocks.3.0")
    """
    global COMPOSE, FAST_FIELD
    old = COMPOSE, FAST_FIELD
    COMPOSE, FAST_FIELD = (old[0] and not weights), (old[1] and not field)
    try:
        yield
    finally:
        COMPOSE, FAST_FIELD = old


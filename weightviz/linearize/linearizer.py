"""Automatic, reversible linearization of a model's forward pass (for expanded weights).

Inside :func:`linearized`, a :class:`torch.overrides.TorchFunctionMode` watches every torch call that
touches a *tracked* tensor (one that depends on the model input, or on a tensor handed to
:meth:`Linearizer.track`) and replaces each nonlinear op by its closest linear stand-in. Because it
intercepts torch calls, not modules, it also catches functional calls (``F.relu(x)``, ``torch.relu``,
``x.relu_()``, ``x.clamp(min=0)``), activation modules reused several times in one forward (torchvision
ResNet), activations hidden inside other modules (timm ``BatchNormAct2d``) and TF-"SAME" padding
(``F.pad`` is linear and kept as is).

Replacements (each activation becomes the linear piece it follows for large positive inputs):

======================================================  =========================================
op (module, functional, method and in-place forms)      stand-in
======================================================  =========================================
relu, relu6, hardtanh, clamp/clip/clamp_min/clamp_max,  identity (in-place forms return the input
threshold, leaky_relu, prelu, rrelu, elu, celu, gelu,   unchanged)
silu, mish, hardswish, softplus
dropout (all variants), local_response_norm             identity
sigmoid, hardsigmoid (squeeze-excite gates)             the constant ``gate`` (default 0.5 = their
                                                        value at zero input); the gate's own input
                                                        branch therefore drops out
``x * g(x)``: self-gating product, g = sigmoid,       ``limit * x``, the fused op's stand-in
hardsigmoid or relu6/clamp(0, hi) of ``a*x + b``        (hand-written SiLU ``x * sigmoid(x)`` and
(a > 0), optionally scaled by a positive number          hardswish ``x * relu6(x + 3) / 6`` give the
                                                        same map as ``F.silu`` / ``F.hardswish``)
amax, amin, max, min, maximum, minimum                  allowed only where the result feeds nothing but
                                                        a sigmoid gate (CBAM attention): the gate is a
                                                        constant, so that branch drops out; reaching
                                                        the measured layer otherwise raises
max_pool{1,2,3}d, adaptive_max_pool{1,2,3}d             avg_pool / adaptive_avg_pool of the same
                                                        window, stride and padding (zero padding
                                                        counted, never -inf)
batch_norm with running statistics (eval)               kept: it is affine
layer_norm, rms_norm over the last dim (per position /  ``(x - mean_C(x)) / s * w + b`` (RMS norm:
token); functional and module forms, timm LayerNorm2d   ``x / s * w``): the mean over the channels
                                                        of each position stays (linear), the std
                                                        becomes a frozen scale ``s``, one per norm
                                                        call = mean over the image set of the
                                                        per-position std (``norm_scale="data"``;
                                                        ``"unit"``: s = 1; or a dict of your own)
group_norm, layer_norm over several dims (statistics    ``(x - m) / s * w + b`` with mean ``m`` and
over positions)                                         std ``s`` both frozen at their image-set
                                                        means (like batch norm's running statistics:
                                                        a mean over the map has no finite field)
softmax, scaled_dot_product_attention (attention)       the frozen pattern: the mean over the image
                                                        set of its probabilities (like the sigmoid
                                                        gate, its input branch drops out); SDPA
                                                        becomes ``P_mean @ V``. ``Q @ K^T`` (a
                                                        product of two tracked tensors) is allowed
                                                        only on its way into such a softmax
======================================================  =========================================

The two self-gating / gate-only rows are implemented in :mod:`weightviz._gating`.
Frozen statistics (:mod:`weightviz.linearize.norms`, stand-ins in :mod:`weightviz.linearize._frozen`) are measured by one
pass of the real model over an image set (default: the first 32 embedded images), cached per model hash
and image set; calls are named by the module that runs them (``blocks.0.norm1``, ``blocks.0.attn``).

Linear ops (conv, linear, avg-pool, pad, interpolate, reshapes, slicing, add/sub/cat/stack, products
and divisions where only one factor is tracked, ...) run unchanged. Any other op on a tracked tensor
(tanh, a product of two tracked tensors that does not feed a softmax, ...) raises
:class:`~weightviz.WeightvizError` naming the op. Ops on untracked tensors (everything computed before
the tracked source, or independent of it) are never touched.

While the context is active the model runs in eval mode; afterwards every module's train/eval flag is
restored and nothing else of the model is changed (no hooks remain, weights untouched).

>>> import torch, weightviz as wv
>>> model = wv.load_model("torchvision:resnet18")                    # doctest: +SKIP
>>> x = torch.randn(1, 3, 64, 64)
>>> with wv.linearized(model):                                       # doctest: +SKIP
...     y = model(x)          # the ReLU-free, avg-pooled, affine version of resnet18
>>> y.shape                                                          # doctest: +SKIP
torch.Size([1, 1000])
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import WeightvizError
from ..utils.calls import arg as _arg
from ..utils.calls import inplace_method as _inplace_method
from ..utils.calls import leaves as _leaves
from . import compose as _compose
from . import cone as _cone
from . import geometry as _geometry
from . import norms as _norms
from ._frozen import LOGIT_PRODUCTS, FrozenOps
from ._gating import GATE_ONLY, SELF_GATE_MUL, GateRules
from ._linear_ops import LinearOps
from .ops import (
    ADAPTIVE_MAX_POOLS,
    ADD_BINARY,
    CAT,
    GATE_INPLACE_ARG,
    IDENTITY_INPLACE_ARG,
    LINEAR_FIRST,
    MAX_POOLS,
    MULTILINEAR,
    OTHER_ADDITIVE,
    SHAPE_ONLY,
    SHAPE_SECOND,
    WEIGHTED,
    Merge,
    op_key,
    op_name,
)

__all__ = ["DEFAULT_GATE", "Linearizer", "linearized"]

#: Value that sigmoid-like gates are frozen to (sigmoid(0) = hardsigmoid(0) = 0.5).
DEFAULT_GATE = 0.5

def _to_f64(mode: Linearizer, obj: Any, positive: bool) -> Any:
    """Untracked floating tensors -> float64 (absolute values if ``positive``); numbers -> abs if positive."""
    if isinstance(obj, torch.Tensor):
        if mode.is_tracked(obj) or not obj.is_floating_point():
            return obj
        obj = obj.detach().double()
        return obj.abs() if positive else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_f64(mode, o, positive) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_f64(mode, v, positive) for k, v in obj.items()}
    if positive and isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return abs(obj)
    return obj


def _is_inplace(key: str, inplace_index: int | None, args: tuple, kwargs: dict) -> bool:
    """An activation/gate call that works in place: ``x.relu_()``, or ``inplace=True`` (keyword, or
    positional at ``inplace_index``)."""
    return _inplace_method(key) or (inplace_index is not None
                                    and bool(_arg(args, kwargs, inplace_index, "inplace", False)))


class Linearizer(GateRules, FrozenOps, LinearOps, TorchFunctionMode):
    """The torch-function mode behind :func:`linearized` (see the module docstring for the op table).

    Tracked tensors are those passed to :meth:`track` and every result computed from them. ``merge``,
    if given, is called for each sum/concatenation of two or more tracked tensors with the op name and
    the tracked operands; it returns the index of the one operand whose dependence to keep (the others
    are detached: used by per-path expanded weights) or ``None`` to keep all.
    """

    def __init__(self, gate: float = DEFAULT_GATE, source: str = "the model input",
                 require_grad: bool = False, merge: Merge | None = None, structural: bool = False,
                 cones: list | None = None, tape: _compose.Tape | None = None, prefix: Any = None,
                 shapes_only: bool = False, stats: _norms.FrozenStats | None = None,
                 names: _norms.CallNames | None = None):
        super().__init__()
        #: convolutions output zeros of their shape (a forward traced for its geometry only: values unused)
        self.shapes_only = shapes_only
        #: a weightviz._geometry.PrefixRecorder: records map-size effects of the untracked ops before src
        self.prefix = prefix
        # frozen statistics of norms and attention (weightviz.linearize.norms, weightviz.linearize._frozen), their call namer
        self.stats = stats
        self.names = names
        #: a norm or attention call was frozen in this forward (its values depend on ``stats``)
        self.froze = False
        #: an attention pattern over positions/tokens that depend on the source was frozen in this forward
        #: (the positions it mixes all reach each other: a field through it spans the attention's extent)
        self.mixes = False
        self._call: str | None = None
        self._pending: dict[int, tuple[torch.Tensor, Any]] = {}
        self.gate = float(gate)
        self.source = source
        self.require_grad = require_grad
        self.merge = merge
        self.structural = structural
        # conv cones (weightviz._cone): structural mode appends one ConeEntry per conv2d on a tracked tensor
        # and fills its box from the backward; value mode reads them in the same call order
        self.cones = cones
        self._conv_calls = 0
        # value mode with a tape (weightviz.linearize.compose): every op on tracked tensors is recorded, tensors
        # get a node per version (an in-place op makes a new node of the same object)
        self.tape = None if structural else tape
        #: dtype of constants that replace tracked values (gates); set by the caller (default: the input's)
        self.const_dtype: torch.dtype | None = None
        self._nodes: dict[int, int] = {}
        self._tracked: dict[int, torch.Tensor] = {}
        self._init_gates()

    # -- tracking ---------------------------------------------------------------------------------
    def track(self, *tensors: Any) -> None:
        """Mark tensors (and, from now on, everything computed from them) as inputs of the linear map."""
        for t in _leaves(tensors):
            self._tracked[id(t)] = t
            if self.tape is not None:
                self._nodes[id(t)] = self.tape.new_node(t)

    def node_of(self, t: Any) -> int | None:
        """The tape node of a tracked tensor's current version (``None``: untracked or no tape)."""
        return self._nodes.get(id(t)) if self.is_tracked(t) else None

    def untrack(self, t: torch.Tensor) -> None:
        self._tracked.pop(id(t), None)

    def is_tracked(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and self._tracked.get(id(t)) is t

    def clear(self) -> None:
        self._tracked.clear()
        self._nodes.clear()
        self._clear_gates()
        self._pending.clear()

    # helpers of the FrozenOps mixin
    _op_name = staticmethod(op_name)
    _keyf = staticmethod(op_key)
    _leaves_of = staticmethod(_leaves)
    _shape_only = SHAPE_ONLY

    # -- the mode -----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.shapes_only and func is F.conv2d:
            func = _geometry.conv2d
        if self.names is not None:  # every norm/attention call is named, tracked or not (same names each run)
            kind = _norms.KINDS.get(getattr(func, "__name__", ""))
            self._call = self.names.call(kind) if kind is not None else None
        leaves = list(_leaves((args, kwargs)))
        tracked = [t for t in leaves if self.is_tracked(t)]
        if self._pending:
            pending = self._pending_in(args, kwargs)
            if pending:
                return self._logits(func, args, kwargs, tracked, pending)
        if not tracked:
            if self.prefix is not None and self.prefix.active:   # map sizes before src (weightviz._geometry)
                return self.prefix.run(func, op_key(func), args, kwargs, leaves)
            return func(*args, **kwargs)
        key = op_key(func)
        if key.startswith("__get__:"):
            out = func(*args, **kwargs)
            if key in LINEAR_FIRST:
                self.track(out)
            return out
        if key in SHAPE_ONLY:
            return func(*args, **kwargs)
        if self.require_grad and not torch.is_grad_enabled():
            raise WeightvizError(
                f"cannot linearize {op_name(func)}: it runs with autograd disabled inside the model (a custom "
                "autograd.Function or a no_grad block), so gradients through it would not be those of the "
                "linearized op; choose src/dst around that layer"
            )
        if key in GATE_ONLY:
            return self._gate_only_op(func, args, kwargs)
        if key in SELF_GATE_MUL:
            out = self._self_gated(key, args, kwargs)
            if out is not None:
                return out
        gate_only = self._gate_only_message(tracked)
        try:
            if self.structural:
                out = self._structural(func, key, args, kwargs, tracked)
            else:
                out = self._dispatch(func, key, args, kwargs, tracked)
        except WeightvizError:
            # the root cause is the reduction further up (unless a frozen softmax/norm, which may take it, failed)
            if gate_only is not None and key not in _norms.KINDS:
                raise WeightvizError(gate_only) from None
            raise
        if gate_only is not None:
            for t in _leaves(out):
                if self.is_tracked(t):
                    self._gate_only[id(t)] = (t, gate_only)
        self._note_gate(key, args, kwargs, out)
        return out

    # -- structural mode: which positions can reach which (no values, nothing may cancel) -----------
    def _structural(self, func, key, args, kwargs, tracked):
        """Same op table, but every weight becomes positive float64 (conv/linear: 1/fan_in, batch norm:
        identity, other factors: their absolute value, subtractions: additions), so the gradient of a
        sum of outputs is nonzero exactly on the positions that can reach them."""
        name = key
        x = args[0] if args else None
        if name in WEIGHTED and self.is_tracked(x):
            self._only_first(func, args, kwargs)
            w = _arg(args, kwargs, 1, "weight")
            if name == "batch_norm":
                return self._run(torch.Tensor.clone, (x,), {})
            fan = max(1, w[0].numel())
            pos = torch.full(w.shape, 1.0 / fan, dtype=torch.float64, device=w.device)
            rest = list(args[3:])
            kw = {k: v for k, v in kwargs.items() if k not in ("weight", "bias")}
            out = self._run(func, (x, pos, None, *rest), kw)
            if name == "conv2d" and self.cones is not None:  # one entry per call, in call order
                entry = _cone.ConeEntry(tuple(x.shape[-2:]) if x.dim() == 4 else None, tuple(w.shape))
                self.cones.append(entry)
                if x.dim() == 4 and out.requires_grad:
                    out.register_hook(functools.partial(_cone.record_box, self.cones, entry))
            return out
        args, kwargs = _to_f64(self, args, positive=name in MULTILINEAR), _to_f64(self, kwargs,
                                                                                   positive=name in MULTILINEAR)
        if name in ADD_BINARY and len(tracked) > 1:
            a, b = args[0], args[1]
            if name in ("add_", "sub_", "__iadd__", "__isub__"):
                return self._run(torch.Tensor.add_, (a, b), {})
            return self._run(torch.add, (a, b), {})
        if name in ("add", "add_", "sub", "sub_", "__rsub__", "rsub", "subtract") and "alpha" in kwargs:
            kwargs = {**kwargs, "alpha": abs(kwargs["alpha"])}
        return self._dispatch(func, key, args, kwargs, tracked)

    def _fail(self, func: Any, why: str) -> WeightvizError:
        return WeightvizError(
            f"cannot linearize {op_name(func)} applied to a tensor that depends on {self.source}: {why}. "
            "Expanded weights replace ReLU-like activations by the identity, sigmoid gates by a constant, "
            "max-pool by avg-pool; choose src/dst so that no route between them passes through this op"
        )

    def _dispatch(self, func, key, args, kwargs, tracked):
        name = key
        x = args[0] if args else None
        # -- activations -> identity
        base = name[:-1] if _inplace_method(name) else name
        if base in IDENTITY_INPLACE_ARG and self.is_tracked(x):
            self._only_first(func, args, kwargs)
            if _is_inplace(name, IDENTITY_INPLACE_ARG[base], args, kwargs):
                return x
            out = x.clone()
            self.track(out)
            if self.tape is not None:
                self.tape.add("identity", [self.node_of(x)], self.node_of(out))
            return out
        # -- gates -> constant
        if base in GATE_INPLACE_ARG and self.is_tracked(x):
            self._only_first(func, args, kwargs)
            if _is_inplace(name, GATE_INPLACE_ARG[base], args, kwargs):
                try:
                    x.detach_()
                except RuntimeError:
                    raise self._fail(func, "an in-place gate on a view cannot be frozen") from None
                with torch.no_grad():
                    x.fill_(self.gate)
                self.untrack(x)
                return x
            # the model's own dtype: in structural mode x is float64, but the constant multiplies untracked
            # tensors of the model (a float64 gate would turn them, and then the next conv, to float64)
            return torch.full_like(x, self.gate, dtype=self.const_dtype or x.dtype).detach()
        # -- max pooling -> average pooling
        if name in MAX_POOLS and self.is_tracked(x):
            self._only_first(func, args, kwargs)
            return self._avg_pool(func, name, args, kwargs)
        if name in ADAPTIVE_MAX_POOLS and self.is_tracked(x):
            self._only_first(func, args, kwargs)
            if name.endswith("_with_indices") or _arg(args, kwargs, 2, "return_indices", False):
                raise self._fail(func, "max-pool indices have no linear counterpart")
            nd = ADAPTIVE_MAX_POOLS[name]
            fn = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[nd - 1]
            out = fn(x, _arg(args, kwargs, 1, "output_size"))
            self.track(out)
            return out
        # -- norms and attention -> frozen statistics (weightviz.linearize._frozen)
        if name in _norms.KINDS:
            return self._frozen(func, name, args, kwargs)
        # -- linear ops
        if name in LINEAR_FIRST:
            self._only_first(func, args, kwargs)
            if name == "batch_norm" and bool(_arg(args, kwargs, 5, "training", False)):
                raise self._fail(func, "batch_norm with batch statistics (training mode or "
                                       "track_running_stats=False) is not linear")
            if name == "batch_norm" and func is F.batch_norm:
                return self._affine_batch_norm(args, kwargs)
            if name == "conv2d" and not self.shapes_only:
                box = self._cone_box(x, _arg(args, kwargs, 1, "weight"))
                out = self._pointwise_conv(args, kwargs, box)
                if out is None and box is not None:
                    out = self._cone_conv(args, kwargs, box)
                if out is not None:
                    if self.tape is not None:
                        _compose.record(self.tape, "conv2d", args, kwargs, self.node_of, out, self.node_of(out))
                    return out
            return self._run(func, args, kwargs)
        if name in SHAPE_SECOND:
            if not self.is_tracked(x):
                return func(*args, **kwargs)
            return self._run(func, args, kwargs)
        if name in MULTILINEAR:
            if len(tracked) > 1:
                if name in LOGIT_PRODUCTS:
                    return self._pend(func, args, kwargs)   # attention logits, if a softmax follows
                raise self._fail(func, "a product of two tensors that both depend on it is not linear")
            return self._run(func, args, kwargs)
        if name in ADD_BINARY:
            return self._add(func, name, args, kwargs)
        if name in CAT:
            return self._cat(func, name, args, kwargs)
        if name in OTHER_ADDITIVE:
            if name == "where" and self.is_tracked(_arg(args, kwargs, 0, "condition")):
                raise self._fail(func, "a selection that depends on the values is not linear")
            if self.merge is not None and len(tracked) > 1 and name != "where":
                raise self._fail(func, "routes cannot be separated at this op (per-path weights)")
            if name == "where" and self.merge is not None and len(tracked) > 1:
                ops = [args[1], args[2]]
                keep = self.merge(op_name(func), ops)
                if keep is not None:
                    args = (args[0], *(t if i == keep else t.detach() for i, t in enumerate(ops)), *args[3:])
            return self._run(func, args, kwargs)
        raise self._fail(func, "it is nonlinear (or unknown to weightviz) and has no linear stand-in")

    def _only_first(self, func, args, kwargs) -> None:
        rest = [t for t in _leaves((args[1:], kwargs)) if self.is_tracked(t)]
        if rest:
            raise self._fail(func, "it is linear only in its first argument, but another argument depends on it "
                                   "too (e.g. a weight computed from the activations)")

    def _run(self, func, args, kwargs):
        if self.tape is None:
            out = func(*args, **kwargs)
            self.track(out)
            return out
        before = {id(t): self._nodes.get(id(t)) for t in _leaves((args, kwargs)) if self.is_tracked(t)}
        key = op_key(func)
        if (_inplace_method(key) or key.startswith("__i") or key == "__setitem__") \
                and self._shares_storage(args[0] if args else None):
            # an in-place op on a tensor that shares memory with another tracked tensor (a view, or the base
            # of one) changes that one too, which the tape cannot follow: the autograd path must be used
            self.tape.tainted = True
        out = func(*args, **kwargs)
        self.track(out)
        out_node = self.node_of(out) if isinstance(out, torch.Tensor) else None
        _compose.record(self.tape, key, args, kwargs,
                        lambda t: before.get(id(t)) if isinstance(t, torch.Tensor) else None, out, out_node)
        return out

    def _shares_storage(self, t: Any) -> bool:
        """Whether tracked ``t`` shares its memory with another tracked tensor object."""
        if not self.is_tracked(t):
            return False
        ptr = t.untyped_storage().data_ptr()
        return any(o is not t and o.untyped_storage().data_ptr() == ptr for o in self._tracked.values())



@contextlib.contextmanager
def linearized(
    model: nn.Module,
    *,
    gate: float = DEFAULT_GATE,
    track_inputs: bool = True,
    source: str | None = None,
    require_grad: bool = False,
    merge: Merge | None = None,
    structural: bool = False,
    cones: list | None = None,
    tape: _compose.Tape | None = None,
    prefix: Any = None,
    shapes_only: bool = False,
    norm_scale: Any = "data",
    images: Any = None,
) -> Iterator[Linearizer]:
    """Run ``model`` linearized inside the ``with`` block (eval mode; restored afterwards).

    Every nonlinear op applied to a tensor that depends on the model input is replaced by its linear
    stand-in (table in :mod:`weightviz.linearize.linearizer`): ReLU-like activations -> identity, sigmoid gates ->
    the constant ``gate`` (0.5 by default, the gate's value at zero input), max-pool -> avg-pool,
    dropout/LRN -> identity, batch norm keeps its affine eval form. Unknown nonlinear ops raise
    :class:`~weightviz.WeightvizError` naming the op. The result of ``model(x)`` is then an affine
    function of ``x`` (``[B, C, H, W]`` in, whatever the model returns out).

    Norm layers and attention are frozen at statistics measured on ``images`` (``norm_scale="data"``,
    default: the embedded image set; ``"unit"``; or a dict ``{norm call: scale}``); inside
    :func:`weightviz.expanded_weights` the statistics it measured are used.

    With ``track_inputs=False`` nothing is tracked until :meth:`Linearizer.track` is called (used by
    :func:`weightviz.expanded_weights` to linearize only what depends on layer ``src``).

    >>> import torch, weightviz as wv
    >>> m = wv.load_model("torchvision:resnet18")                    # doctest: +SKIP
    >>> with wv.linearized(m):                                       # doctest: +SKIP
    ...     y = m(torch.zeros(1, 3, 64, 64))
    >>> y.shape                                                      # doctest: +SKIP
    torch.Size([1, 1000])
    """
    if not isinstance(model, nn.Module):
        raise WeightvizError(f"linearized() needs an nn.Module, got {type(model).__name__}")
    stats = _norms.active()
    outer = stats is not None    # statistics set by the caller (expanded_weights measures them on NeedStats)
    if stats is None and not structural:
        stats = _norms.resolve(model, norm_scale, images)
    # calls are named only where statistics exist to look up (an unmeasured lookup raises NeedStats)
    names = _norms.CallNames(model).attach() if stats is not None and stats.has_entries() else None
    mode = Linearizer(gate=gate, source=source or "the model input", require_grad=require_grad, merge=merge,
                      structural=structural, cones=cones, tape=tape, prefix=prefix, shapes_only=shapes_only,
                      stats=stats, names=names)
    flags = [(m, m.training) for m in model.modules()]
    handle = None
    if track_inputs:
        def pre_hook(_module, args, kwargs):
            mode.track(args, kwargs)

        handle = model.register_forward_pre_hook(pre_hook, with_kwargs=True)
        out_handle = model.register_forward_hook(lambda _m, _args, out: mode.check_result(out))
    try:
        if any(flag for _, flag in flags):  # (setting flags on every module costs ~2 ms on lite0)
            model.eval()
        with _norms.fast_norms(model), mode:
            yield mode
    except _norms.NeedStats as e:
        if outer:
            raise
        raise WeightvizError(f"the norm/attention call {e.args[0]!r} needs frozen statistics measured on images; "
                             "pass images= (or norm_scale='unit' / a dict)") from None
    finally:
        if names is not None:
            names.detach()
        if handle is not None:
            handle.remove()
            out_handle.remove()
        for m, flag in flags:
            if m.training != flag:
                m.training = flag
        mode.clear()

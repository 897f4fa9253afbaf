"""Private: read layer outputs with hooks that live only inside a context, stop the forward early,
keep the user's model as it was, and the ReLU gradient redirect."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import WeightvizError
from ..models import get_module

__all__ = ["Capture", "RedirectReLU", "frozen"]


class _StopForward(BaseException):
    """Raised by the last hook to end the forward pass after the deepest target layer.

    A ``BaseException`` so that a model's own ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter inside; both restored in ``finally``.

    Parameters not requiring grad make the backward skip all weight gradients (the image is the only
    thing optimized) and guarantee the weights are never touched.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


class Capture:
    """Forward hooks on the named layers, registered on ``__enter__`` and removed in ``finally``.

    ``run(x)`` feeds ``x`` through the model and returns ``{layer: output}``. The forward stops (private
    exception from the hook) as soon as every target layer has produced its output, so nothing after
    the deepest target layer is computed. Outputs are *cloned* while later layers still run, because a
    later in-place op (``ReLU(inplace=True)`` in torchvision/timm, timm's ``BatchNormAct2d`` applying its
    activation in place to the tensor its ``drop`` submodule returned) would overwrite the tensor the
    hook saw; the last captured layer is never followed by anything, so it needs no copy.
    A module called several times in one forward reports its *first* call.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str]) -> None:
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.modules = {name: get_module(model, name) for name in self.layers}
        self._handles: list = []
        self._store: dict[str, torch.Tensor] = {}
        self._active = False  # hooks act only inside run(): another forward of the same model is untouched

    def __enter__(self) -> Capture:
        try:
            for name, m in self.modules.items():
                self._handles.append(m.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._store = {}

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            store = self._store
            if not self._active or name in store:
                return None
            if not isinstance(output, torch.Tensor):
                raise WeightvizError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer with a tensor "
                    "output (e.g. one of its submodules)"
                )
            last = len(store) == len(self.layers) - 1
            store[name] = output if last else output.clone()
            if last:
                raise _StopForward
            return None

        return hook

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` until all target layers have run; returns ``{layer: output}`` (``[B, C, H, W]``)."""
        if not self._handles:
            raise RuntimeError("Capture.run outside its context")
        self._store = {}
        self._active = True
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            self._active = False
        out, self._store = self._store, {}
        missing = [n for n in self.layers if n not in out]
        if missing:
            raise WeightvizError(
                f"layer {missing[0]!r} did not run in the model's forward pass; choose a layer that the "
                "forward uses (see `weightviz layers MODEL`)"
            )
        return out


def activations(model: nn.Module, x: torch.Tensor, layers: str | Iterable[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for input ``x`` (model input space, ``[B, C, H, W]``), with a forward that
    stops after the deepest of them; the model is left unchanged (no hooks, same mode)."""
    names = [layers] if isinstance(layers, str) else list(layers)
    with frozen(model), Capture(model, names) as cap:
        return cap.run(x)


# ------------------------------------------------------------------------------------ ReLU redirect
class _RedirectedClamp(torch.autograd.Function):
    """``clamp(x, lo, hi)`` (ReLU: ``hi = None``; ReLU6/hardtanh: both) with Lucid's redirected gradient.

    Backward, per batch item: if the ordinary gradient (``g`` where ``lo < x < hi``) is zero everywhere,
    pass ``g`` through wherever it would move ``x`` *towards* the active range instead (``x <= lo`` and
    the loss gradient is negative, i.e. gradient descent raises ``x``; symmetrically above ``hi``).
    The loss gradient ``g`` is that of the loss being minimized (minus the objective).
    """

    @staticmethod
    def forward(ctx, x, lo, hi):
        out = x.clamp(lo, hi)
        # saves the output, not the input (as torch's own relu/clamp do): the model may change the input in
        # place afterwards (``a = conv(x); y = f(relu(a)); a.add_(y)``). The clamp is monotone, so the output
        # tells the same regions: x <= lo iff out <= lo, x >= hi iff out >= hi, lo < x < hi iff lo < out < hi
        ctx.save_for_backward(out)
        ctx.lo, ctx.hi = lo, hi
        return out

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors   # the clamped output (see forward)
        lo, hi = ctx.lo, ctx.hi
        shape = g.shape
        if g.dim() == 0:  # a scalar is one batch item
            x, g = x.reshape(1), g.reshape(1)
        active = x > lo if hi is None else (x > lo) & (x < hi)
        normal = g * active
        alive = normal.reshape(g.shape[0], -1).ne(0).any(dim=1)
        if bool(alive.all()):  # the common case once units fire: the ordinary gradient
            return normal.reshape(shape), None, None
        dead = ~alive
        xd, gd = x[dead], g[dead]
        blocked = (xd <= lo) & (gd > 0)
        if hi is not None:
            blocked = blocked | ((xd >= hi) & (gd < 0))
        normal[dead] = gd * ~blocked
        return normal.reshape(shape), None, None


def _arg(args, kwargs, i, name, default):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


class RedirectReLU(TorchFunctionMode):
    """While active, every ``relu`` / ``relu6`` / ``hardtanh`` call (functional, tensor method or module,
    in-place or not) runs as :class:`_RedirectedClamp`, out of place: units that are dead on the current
    image (zero gradient at their ReLU) still get a gradient that pushes them towards firing.
    Used for the first steps of :func:`weightviz.render` only. Calls on tensors that need no gradient
    run unchanged. In-place calls (``ReLU(inplace=True)``, ``relu_``) return a new tensor instead of
    writing into their input; code that ignores the return value of an in-place relu would see the
    un-clamped tensor during those steps (timm and torchvision always use the return value).
    """

    _RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}
    _RELU_INPLACE_F = {getattr(F, "relu_", None)} - {None}
    _HARDTANH = {F.hardtanh, getattr(F, "hardtanh_", F.hardtanh)}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, torch.Tensor) and x.requires_grad:
            if func in self._RELU or func in self._RELU_INPLACE_F:
                return _RedirectedClamp.apply(x, 0.0, None)
            if func is F.relu6:
                return _RedirectedClamp.apply(x, 0.0, 6.0)
            if func in self._HARDTANH:
                lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
                hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
                return _RedirectedClamp.apply(x, lo, hi)
        return func(*args, **kwargs)

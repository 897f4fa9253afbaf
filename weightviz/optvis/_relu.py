"""Activation modes of a render step: Lucid's ReLU gradient redirect (:class:`RedirectReLU`) and
softplus-smoothed ReLUs (:class:`SmoothReLU`), both ``TorchFunctionMode``s that catch module and
functional calls alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..utils.calls import arg

__all__ = ["RedirectReLU", "SmoothReLU"]


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
                lo = float(arg(args, kwargs, 1, "min_val", -1.0))
                hi = float(arg(args, kwargs, 2, "max_val", 1.0))
                return _RedirectedClamp.apply(x, lo, hi)
        return func(*args, **kwargs)


# ------------------------------------------------------------------------------------ smooth ReLU
def _softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    return F.softplus(x, beta=beta, threshold=20.0)


class SmoothReLU(TorchFunctionMode):
    """While active, every ``relu`` / ``relu6`` / ``hardtanh`` call on a tensor that requires grad runs as
    its softplus smoothing of sharpness ``beta``, out of place: ``relu(x) -> softplus_beta(x)``,
    ``clamp(x, lo, hi) -> lo + softplus_beta(x - lo) - softplus_beta(x - hi)`` (``relu6``: 0 and 6).

    For *second-order* objectives (a gradient of the model, as in :func:`weightviz.best_case`): through
    piecewise-linear activations a gradient is piecewise constant in the input, so its own gradient is
    zero almost everywhere and nothing can be optimized; with the smoothing the activation masks become
    ``sigmoid(beta * x)`` and move with the input. ``beta`` grows during a render so the surrogate
    approaches the real model, and final values are always measured on the real model. ``beta`` may be
    changed between forwards (attribute).
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, torch.Tensor) and x.requires_grad:
            b = self.beta
            if func in RedirectReLU._RELU or func in RedirectReLU._RELU_INPLACE_F:
                return _softplus(x, b)
            if func is F.relu6:
                return _softplus(x, b) - _softplus(x - 6.0, b)
            if func in RedirectReLU._HARDTANH:
                lo = float(arg(args, kwargs, 1, "min_val", -1.0))
                hi = float(arg(args, kwargs, 2, "max_val", 1.0))
                return lo + _softplus(x - lo, b) - _softplus(x - hi, b)
        return func(*args, **kwargs)

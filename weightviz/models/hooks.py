"""Read layer outputs with hooks that live only inside a context: :func:`frozen` (eval mode, no
parameter gradients, restored after), :class:`Capture` (outputs of named layers, the forward stopped
after the deepest), :func:`activations` and :func:`probe_shapes`. The user's model is left as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..errors import WeightvizError
from .device import device_dtype
from .inputs import input_spec
from .layers import get_module

__all__ = ["Capture", "activations", "frozen", "probe_shapes"]


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
    the deepest target layer is computed. A captured layer that later layers still use passes a *clone*
    of its output on (the hook's return value replaces the module's output), because a later in-place op
    (``ReLU(inplace=True)`` in torchvision/timm, timm's ``BatchNormAct2d`` applying its activation in place
    to the tensor its ``drop`` submodule returned) would overwrite the tensor the hook saw; the kept tensor
    is what the rest of the forward is computed from, so later captured layers are differentiable
    functions of it (``torch.autograd.grad(acts[dst], acts[src])`` works: gradient objectives). An output
    that shares memory with the module's input (an identity-like module) is copied first. The last
    captured layer is never followed by anything, so it needs no copy.
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
        def hook(_module, inputs, output):
            store = self._store
            if not self._active or name in store:
                return None
            if not isinstance(output, torch.Tensor):
                raise WeightvizError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; choose a layer with a tensor "
                    "output (e.g. one of its submodules)"
                )
            if len(store) == len(self.layers) - 1:
                store[name] = output
                raise _StopForward
            aliased = any(isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr()
                          == output.untyped_storage().data_ptr() for t in inputs)
            kept = output.clone() if aliased else output
            store[name] = kept
            return kept.clone()

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


def probe_shapes(model: nn.Module, layer_names: list[str], channels: int, size: int) -> dict[str, tuple[int, ...]]:
    """Output shapes ``{layer: (C, H, W)}`` of the target layers for a grey ``[1, C, size, size]`` image."""
    device, dtype = device_dtype(model)
    x = input_spec(model).normalize(torch.full((1, channels, size, size), 0.5, device=device, dtype=dtype))
    with torch.no_grad():
        acts = activations(model, x, layer_names)
    return {k: tuple(v.shape[1:]) for k, v in acts.items()}

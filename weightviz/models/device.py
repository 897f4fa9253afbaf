"""Which torch device to compute on: one resolver for the CLI's ``--device`` and the API's ``device=``.

``"auto"`` is CUDA when it is available, else the CPU; ``"cpu"``; ``"cuda"`` / ``"cuda:N"`` (refused
with one line when there is no such GPU). The rest of the library follows the model: every tensor it
makes is created on the device of the model's parameters, so moving the model is all a device needs.

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightvizError

__all__ = ["DEVICE_CHOICES", "device_dtype", "model_device", "resolve_device", "to_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> ``cuda`` if available else ``cpu``; ``"cpu"``; ``"cuda[:N]"`` (must exist)."""
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = "auto" if device is None else str(device).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise WeightvizError(f"unknown device {device!r}: use one of auto, cpu, cuda (or cuda:N)")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise WeightvizError(f"device {spec!r} requested but CUDA is not available here; use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise WeightvizError(f"device {spec!r} does not exist: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    return dev


def device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``model`` computes and in which float type: the device and dtype of its first floating-point
    parameter (else buffer); for a model without float tensors, the device of its first tensor (CPU if it
    has none) and float32. The one answer to "which device is this model on" in weightviz."""
    tensors = (*model.parameters(), *model.buffers())
    for t in tensors:
        if t.is_floating_point():
            return t.device, t.dtype
    return (tensors[0].device if tensors else torch.device("cpu")), torch.float32


def model_device(model: nn.Module) -> torch.device:
    """The device of :func:`device_dtype`."""
    return device_dtype(model)[0]


def to_device(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """Move ``model`` (in place, like ``nn.Module.to``) to the resolved ``device``; ``None`` leaves it
    where it is. Returns the model."""
    if device is None:
        return model
    dev = resolve_device(device)
    if model_device(model) != dev:
        model.to(dev)
    return model

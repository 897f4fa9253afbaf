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

from .errors import WeightvizError

__all__ = ["DEVICE_CHOICES", "model_device", "resolve_device", "to_device"]

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


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without tensors."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def to_device(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """Move ``model`` (in place, like ``nn.Module.to``) to the resolved ``device``; ``None`` leaves it
    where it is. Returns the model."""
    if device is None:
        return model
    dev = resolve_device(device)
    if model_device(model) != dev:
        model.to(dev)
    return model

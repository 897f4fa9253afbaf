"""Slow, obviously correct references, for checking weightviz on your own model (its tests and benchmarks
use them too). They do what the article's PyTorch notebook did, by hand, with none of weightviz's
machinery: a copy of the model with activation modules replaced by ``Identity`` and max-pool by avg-pool,
one full forward on a zero image, one autograd backward per unit.

They only know what such a copy can know: activation *modules* (ReLU, ReLU6, SiLU, GELU, Dropout,
including those inside timm's ``BatchNormAct2d``), ``nn.MaxPool2d`` and functional ``F.relu`` (patched to
the identity while the forward runs: not thread-safe). Models with other functional nonlinearities or
sigmoid gates need :func:`weightviz.expanded_weights` itself.

>>> import weightviz as wv
>>> from weightviz.testing import slow_expanded_weights
>>> m = wv.load_model("torchvision:resnet18@random")                                       # doctest: +SKIP
>>> ref = slow_expanded_weights(m, "layer1.0", "layer1.1", units=[0, 5], input_size=48)  # doctest: +SKIP
>>> ref.shape                         # the whole src map [U, C_src, H, W]           # doctest: +SKIP
torch.Size([2, 64, 12, 12])
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .models import get_module, input_spec

__all__ = ["hand_linearized", "slow_expanded_weights"]


def hand_linearized(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with ReLU/ReLU6/SiLU/GELU/Dropout/LocalResponseNorm modules replaced by
    ``nn.Identity`` and
    ``nn.MaxPool2d`` by ``nn.AvgPool2d`` of the same window (zero padding counted)."""
    m = copy.deepcopy(model).eval()
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Dropout, nn.LocalResponseNorm)):
                setattr(mod, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(mod, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                ceil_mode=child.ceil_mode, count_include_pad=True))
    return m


class _Stop(Exception):
    """Ends the forward after ``dst``."""


def _identity(x, inplace=False):
    return x


def slow_expanded_weights(
    model: nn.Module,
    src: str,
    dst: str,
    units: Iterable[int],
    input_size: int,
    *,
    crop: tuple[int, int, int, int] | None = None,
    timings: dict | None = None,
) -> torch.Tensor:
    """Gradient of each ``dst`` unit at the centre ``((H-1)//2, (W-1)//2)`` of its output map w.r.t. the
    whole output of ``src``: ``[U, C_src, H_src, W_src]`` (crop it to the receptive field to compare with
    :func:`weightviz.expanded_weights`), on :func:`hand_linearized` with a zero ``input_size`` image.

    ``crop=(r0, c0, kh, kw)`` keeps only that window of each gradient (``[U, C_src, kh, kw]``, and only
    that much memory). ``timings``, if given, receives ``forward_s`` (the one forward) and ``backward_s``
    (mean per unit).
    """
    lin = hand_linearized(model)
    cap: dict = {}

    def src_hook(_m, _i, out):
        cap["z"] = torch.zeros_like(out, requires_grad=True)
        return cap["z"] * 1.0

    def dst_hook(_m, _i, out):
        cap["y"] = out
        raise _Stop  # the rest of the model does not matter (and may not run at a small input_size)

    h1 = get_module(lin, src).register_forward_hook(src_hook)
    h2 = get_module(lin, dst).register_forward_hook(dst_hook)
    relu = F.relu
    F.relu = _identity  # torchvision's BasicConv2d (GoogLeNet) calls F.relu
    try:
        t = time.perf_counter()
        with torch.enable_grad():
            try:
                lin(torch.zeros(1, input_spec(model).channels, input_size, input_size))
            except _Stop:
                pass
        forward = time.perf_counter() - t
    finally:
        F.relu = relu
        h1.remove()
        h2.remove()
    y = cap["y"]
    h, w = y.shape[-2:]
    target = ((h - 1) // 2, (w - 1) // 2)
    rows = []
    units = list(units)
    t = time.perf_counter()
    for u in units:
        (g,) = torch.autograd.grad(y[0, u, target[0], target[1]], cap["z"], retain_graph=True)
        if crop is not None:
            r0, c0, kh, kw = crop
            g = g[..., r0:r0 + kh, c0:c0 + kw].clone()
        rows.append(g[0])
    if timings is not None:
        timings["forward_s"] = forward
        timings["backward_s"] = (time.perf_counter() - t) / max(1, len(units))
    return torch.stack(rows)

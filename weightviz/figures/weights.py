"""Neuron grids of a layer's own weights: one-sided NMF images (:func:`nmf_grid`) and first-layer
weights shown directly as RGB (:func:`rgb_weights_grid`).

>>> import weightviz as wv
>>> wv.figures.nmf_grid("torchvision:alexnet", "features.3", units="0:32").save("nmf.png")  # doctest: +SKIP
>>> wv.figures.rgb_weights_grid("efficientnet_lite0").save("stem.svg")                      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from ..models import layers, model_name, parse_units, resolve, weights
from ._core import Figure, image_grid
from ._registry import register_figure

__all__ = ["factor_inputs", "first_conv", "nmf_grid", "rgb_weights_grid"]


def _kernel_text(W: torch.Tensor) -> str:
    return f"{W.shape[2]}x{W.shape[3]}"


@register_figure("nmf")
def nmf_grid(
    model: nn.Module | str | None,
    layer: str,
    units: Any = None,
    shared: bool = False,
    n_factors: int = 3,
    *,
    seed: int = 0,
    ncols: int | None = None,
    cell: float = 0.9,
    progress: Callable[[int], None] | None = None,
) -> Figure:
    """A labelled grid of one-sided NMF images of ``layer``'s neurons (see :func:`weightviz.nmf_image`).

    ``units``: which output channels (``None`` = all, ``"0:32"``, ``[3, 7]``...). ``shared=True`` fits the
    channel factors on *all* neurons of the layer, so a colour means the same input direction in every
    cell; otherwise each neuron has its own colours (only the selected units are fitted). Depthwise /
    grouped convs use their raw ``[C_out, C_in/groups, kh, kw]`` weights (equivalent to the dense
    expansion, see :func:`weightviz.nmf_image`). ``progress(n)`` is called as neurons are done.

    ``.data``: ``layer``, ``units``, ``shared``, ``n_factors``, ``kernel`` ``(kh, kw)``,
    ``images`` ``[N, kh, kw, 3]`` (numpy, in [0, 1]).

    >>> nmf_grid("efficientnet_lite0", "conv_stem", units="0:16", shared=True).save("stem.png")  # doctest: +SKIP
    """
    from ..stats import nmf_image

    model = resolve(model)
    W = weights(model, layer)  # [C_out, C_in/groups, kh, kw]
    unit_list = parse_units(units, W.shape[0], what=f"layer {layer!r}")
    if not unit_list:
        raise WeightvizError(f"no units selected from layer {layer!r} ({W.shape[0]} channels): got {units!r}")
    extra: dict[str, Any] = {}
    if shared:
        img, _, H = nmf_image(W, n_factors=n_factors, shared=True, seed=seed, progress=progress,
                              return_factors=True)
        img = img[unit_list]
        extra["factor_inputs"] = factor_inputs(H, groups=_groups(model, layer))
    else:
        img = nmf_image(W[unit_list], n_factors=n_factors, seed=seed, progress=progress)
    mode = "colours shared across neurons" if shared else "colours per neuron"
    title = (f"{model_name(model)} · {layer} · one-sided NMF, {n_factors} factor{'s' * (n_factors != 1)} "
             f"({_kernel_text(W)} kernels, {mode})")
    if shared:
        title += "\n" + _legend(extra["factor_inputs"], n_factors)
    ncols = ncols or min(len(unit_list), 8 if len(unit_list) <= 32 else 16)
    fig = image_grid(img, [str(u) for u in unit_list], ncols=ncols, title=title, cell=cell,
                     data={"layer": layer, "units": unit_list, "shared": bool(shared), "n_factors": n_factors,
                           "kernel": tuple(W.shape[2:]), "images": img.numpy(), **extra})
    return fig


def factor_inputs(H: torch.Tensor, top: int = 3, groups: int = 1) -> list[list[tuple[str, float]]]:
    """The strongest entries of each shared channel factor ``H`` ``[F, 2*C_in]`` as ``("+i" | "-i", h)``:
    ``+i`` = excitatory weight from input channel ``i`` (column ``i``), ``-i`` = inhibitory (column
    ``C_in + i``). For a depthwise conv (``groups > 1``, one input per neuron), ``+``/``-`` alone."""
    c_in = H.shape[1] // 2
    out = []
    for h in H:
        order = h.argsort(descending=True, stable=True)[:top].tolist()
        items = []
        for j in order:
            if float(h[j]) <= 0:
                break
            sign = "+" if j < c_in else "-"
            name = sign if groups > 1 and c_in == 1 else f"{sign}{j % c_in}"
            items.append((name, float(h[j])))
        out.append(items)
    return out


_COLOR_NAMES = {1: ["grey"], 3: ["red", "green", "blue"]}


def _legend(inputs: list[list[tuple[str, float]]], n_factors: int) -> str:
    """One line naming each colour's strongest channel loadings."""
    names = _COLOR_NAMES.get(n_factors, [f"hue {i * 360 // n_factors}°" for i in range(n_factors)])
    used = [(name, items) for name, items in zip(names, inputs) if items]
    if all(k in ("+", "-") for _, items in used for k, _ in items):  # depthwise: one input per neuron
        return "; ".join(f"{name} = {'positive' if items[0][0] == '+' else 'negative'} weights"
                         for name, items in used)
    return "; ".join(f"{name}: " + " ".join(k for k, _ in items[:2]) for name, items in used) + \
        "   (+i / -i: positive / negative weight from input channel i)"


def _groups(model: nn.Module, layer: str) -> int:
    from ..models import get_module

    return int(getattr(get_module(model, layer), "groups", 1))


def first_conv(model: nn.Module) -> str:
    """Name of the first conv layer with 3 input channels (the one that sees RGB pixels)."""
    for info in layers(model).with_weights():
        shape = info.weight_shape
        if info.kernel is not None and shape is not None and len(shape) == 4 and shape[1] == 3:
            return info.name
    raise WeightvizError(f"{model_name(model)} has no conv layer with 3 input channels; pass layer= explicitly")


@register_figure("rgb_weights")
def rgb_weights_grid(
    model: nn.Module | str | None,
    layer: str | None = None,
    units: Any = None,
    *,
    ncols: int | None = None,
    cell: float = 0.9,
) -> Figure:
    """First-layer weights shown directly as RGB, one labelled cell per neuron
    (see :func:`weightviz.rgb_weights`: 0 is grey, the layer's abs max is full colour).

    ``layer``: a conv with 3 input channels (``None``: the first such layer, e.g. lite0's ``conv_stem``).

    ``.data``: ``layer``, ``units``, ``scale`` (the layer's abs max), ``images`` ``[N, kh, kw, 3]``.

    >>> rgb_weights_grid("efficientnet_lite0").save("stem_rgb.png")  # doctest: +SKIP
    """
    from ..stats import rgb_weights

    model = resolve(model)
    layer = layer or first_conv(model)
    W = weights(model, layer)
    if W.shape[1] != 3:
        raise WeightvizError(
            f"layer {layer!r} has {W.shape[1]} input channels, RGB display needs 3 (a first conv layer); "
            f"try layer={first_conv(model)!r} or use the nmf figure"
        )
    unit_list = parse_units(units, W.shape[0], what=f"layer {layer!r}")
    if not unit_list:
        raise WeightvizError(f"no units selected from layer {layer!r} ({W.shape[0]} channels): got {units!r}")
    img = rgb_weights(W)[unit_list]  # scale from the whole layer
    scale = float(W.abs().max())
    title = (f"{model_name(model)} · {layer} · weights as RGB ({_kernel_text(W)}; grey = 0, "
             f"full colour = ±{scale:.3g})")
    ncols = ncols or min(len(unit_list), 8 if len(unit_list) <= 32 else 16)
    return image_grid(img, [str(u) for u in unit_list], ncols=ncols, title=title, cell=cell,
                      data={"layer": layer, "units": unit_list, "scale": scale, "images": img.numpy()})

"""Which weights a contextual figure shows and which layer names its inputs (private).

- :func:`connection`: the weights ``[U, C_in, K, K]`` from a source layer to chosen units of a
  destination layer: direct (``src=None``: the destination conv's own dense weights) or expanded
  (:func:`weightviz.expanded_weights`), plus the layer whose channels are the inputs (for their FVs).
- :func:`input_layer`: the addressable layer whose output a conv reads (traced with one forward pass).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import WeightvizError
from ..models import get_module, input_spec, layers, parse_units

__all__ = ["channels", "check_direct", "connection", "input_layer", "units_of"]

_PRODUCERS: weakref.WeakKeyDictionary[nn.Module, dict[str, str | None]] = weakref.WeakKeyDictionary()


def channels(model: nn.Module, layer: str) -> int:
    """Number of output channels of ``layer`` (unknown layers raise with close-name suggestions)."""
    info = layers(model)[layer]
    if not info.out_channels:
        raise WeightvizError(f"layer {layer!r} ({info.type}) has no channel output to show; "
                             "choose a conv layer or block from `weightviz layers MODEL`")
    return int(info.out_channels)


def units_of(model: nn.Module, layer: str, units, what: str | None = None) -> list[int]:
    """Parse a unit selection (``5``, ``"0:8"``, ``[3, 7]``) against ``layer``'s channel count."""
    out = parse_units(units, channels(model, layer), what=what or f"layer {layer!r}")
    if not out:
        raise WeightvizError(f"no units selected in {layer!r} (got {units!r}); give e.g. 5, '0:8' or '3,7'")
    return out


def input_layer(model: nn.Module, layer: str) -> str:
    """The layer whose output is the input of ``layer`` (a name from ``model.named_modules()``).

    Found by one forward pass of a zero image with hooks (removed afterwards): the last module that
    returned the very tensor ``layer`` reads, so an enclosing block (``BasicConv2d``,
    ``InvertedResidual``) is preferred over its inner norm layer; containers and ``Identity`` are skipped. Raises :class:`WeightvizError` when the input
    is computed by a functional op no listed module returns (pass ``src=`` to use expanded weights).
    """
    get_module(model, layer)
    table = _PRODUCERS.get(model)
    if table is None:
        table = _trace_producers(model)
        _PRODUCERS[model] = table
    name = table.get(layer)
    if name is None:
        raise WeightvizError(
            f"cannot tell which layer feeds {layer!r} (its input is not the output of a named module, or "
            f"it is the model input); pass src=LAYER to use expanded weights from a layer you name"
        )
    return name


_PASS_THROUGH = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity)


def _trace_producers(model: nn.Module) -> dict[str, str | None]:
    spec = input_spec(model)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    producer: dict[int, str] = {}  # id(tensor) -> the last module that returned that very tensor
    keep: list[torch.Tensor] = []  # keep outputs alive so ids stay unique during the pass
    readers: dict[str, str | None] = {}
    handles = []

    def post(name):
        def hook(_m, _inp, out):
            # the last module returning a tensor wins: an enclosing block (BasicConv2d, InvertedResidual)
            # over its inner norm layer, an in-place activation over the layer it modified; containers
            # and Identity only pass tensors on and never name them
            if isinstance(out, torch.Tensor):
                producer[id(out)] = name
                keep.append(out)

        return hook

    def pre(name):
        def hook(_m, inp):
            if name not in readers and inp and isinstance(inp[0], torch.Tensor):
                readers[name] = producer.get(id(inp[0]))

        return hook

    was_training = model.training
    try:
        for name, m in model.named_modules():
            if not name:
                continue
            if not isinstance(m, _PASS_THROUGH):
                handles.append(m.register_forward_hook(post(name)))
            handles.append(m.register_forward_pre_hook(pre(name)))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, spec.channels, spec.size, spec.size, device=device, dtype=dtype))
    except Exception as e:
        raise WeightvizError(f"could not trace which layer feeds which ({type(e).__name__}: {e}); "
                             "pass src=LAYER to use expanded weights") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return readers


def check_direct(model: nn.Module, layer: str) -> None:
    """Raise :class:`WeightvizError` if ``layer`` has no weights of its own (a block, a norm layer),
    suggesting expanded weights from the layer that feeds it."""
    info = layers(model)[layer]
    if info.kind != "weight":
        try:
            hint = f" (e.g. src={input_layer(model, layer)!r})"
        except WeightvizError:
            hint = ""
        raise WeightvizError(f"layer {layer!r} ({info.type}) has no weights of its own; pass src=LAYER to show "
                             f"expanded weights into it{hint}, or choose a conv layer")


def connection(model: nn.Module, src: str | None, dst: str, units: list[int]) -> tuple[torch.Tensor, str]:
    """Weights ``[len(units), C_in, K, K]`` into ``units`` of ``dst`` and the layer naming the inputs.

    ``src=None``: the direct weights of conv/linear layer ``dst`` (grouped convs made dense, so index
    ``i`` is input channel ``i``); the inputs are the channels of :func:`input_layer`. Otherwise the
    expanded weights from ``src``'s output to ``dst`` (:func:`weightviz.expanded_weights`).
    """
    if src is None:
        from ..models import weights

        check_direct(model, dst)
        w = weights(model, dst, dense=True)[units]
        return w, input_layer(model, dst)
    from ..expand import expanded_weights

    layers(model)[src]  # unknown names fail here with suggestions
    w = expanded_weights(model, src, dst, units=units)
    return torch.as_tensor(w).detach().float().cpu(), src

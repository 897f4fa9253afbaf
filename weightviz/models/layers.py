"""The layers of a model: the layer table (:func:`layers`), lookup with close-match suggestions
(:func:`get_module`), raw weights (:func:`weights`) and unit lists (:func:`parse_units`).

Layer names are exactly those of ``model.named_modules()``.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import WeightvizError, suggest
from .inputs import fixed_input_size, input_spec, sequence_channels
from .tokens import layout as _layout

__all__ = ["CONV1D_TYPES", "LayerInfo", "LayerTable", "conv1d_map", "get_module", "has_conv1d", "layers",
           "parse_units", "refuse_conv1d", "weights"]


# ---------------------------------------------------------------------------------------------- layers
_WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
#: modules whose output is a 1-D conv map ``[B, C, L]`` whenever it has 3 axes (never tokens ``[B, N, C]``)
CONV1D_TYPES = (nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveMaxPool1d, nn.LPPool1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.GroupNorm)
#: of those, the ones that make 1-D maps whatever their input (a Conv1d's weight has one spatial axis)
_CONV1D_ALWAYS = (nn.Conv1d, nn.ConvTranspose1d)


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: a module with conv/linear weights, a norm layer, or a block (container).

    ``weight_shape`` is the module's own weight shape (``None`` for blocks), ``out_channels`` the
    number of output channels (from the weights, or measured by one forward pass), ``out_shape`` the
    measured output shape ``[C, H, W]`` at the model's input size (token layers: ``[N, C]`` or channels-last
    ``[H, W, C]``, read by :mod:`weightviz.models.tokens`; ``None`` if unknown). ``conv1d``: the output is a 1-D
    conv map ``[C, L]`` (a ``Conv1d`` / 1-D pool / ``BatchNorm1d`` / ``GroupNorm`` with a 3-D output, or a layer
    after one that keeps its shape), never tokens.
    """

    name: str
    type: str
    weight_shape: tuple[int, ...] | None
    out_channels: int | None
    groups: int = 1
    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    kind: str = "weight"  # "weight" | "norm" | "block"
    conv1d: bool = False


@dataclass
class LayerTable(Sequence):
    """The addressable layers of a model, in forward-definition order. Index by position or name."""

    rows: list[LayerInfo] = field(default_factory=list)
    #: every module (listed or not: ``nn.Identity``, activations) whose output is a 1-D conv map ``[B, C, L]``
    conv1d: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.rows:
                if r.name == key:
                    return r
            raise WeightvizError(f"unknown layer {key!r}.{suggest(key, self.names)}")
        return self.rows[key]

    def __contains__(self, key) -> bool:
        return any(r.name == key for r in self.rows) if isinstance(key, str) else key in self.rows

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def with_weights(self) -> LayerTable:
        """Only the conv/linear layers."""
        return LayerTable([r for r in self.rows if r.kind == "weight"])

    def blocks(self) -> LayerTable:
        """Only the container modules (blocks), e.g. ``blocks.1.0`` in timm models."""
        return LayerTable([r for r in self.rows if r.kind == "block"])

    def _lines(self) -> list[tuple[str, ...]]:
        def fmt(t):
            return "x".join(str(v) for v in t) if t else "-"

        return [
            (r.name, r.type, fmt(r.weight_shape), str(r.out_channels or "-"), str(r.groups), fmt(r.out_shape))
            for r in self.rows
        ]

    _HEAD = ("name", "type", "weight [C_out,C_in,kh,kw]", "C_out", "groups", "output [C,H,W]")

    def __repr__(self) -> str:
        lines = [self._HEAD, *self._lines()]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self._HEAD))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in line) + "</tr>" for line in self._lines())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pair(v) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[int, LayerTable]] = weakref.WeakKeyDictionary()


def layers(model: nn.Module, input_size: int | None = None) -> LayerTable:
    """List the layers worth addressing: conv/linear modules, norm layers and blocks (containers), and the
    parameter-free layers a model lists in ``weightviz_named_layers`` (ReLUs, pools, concatenations).

    Names are those of ``model.named_modules()``. Output shapes are measured with one forward pass of
    a zero image ``[1, C, S, S]`` (``S`` = ``input_size`` or the model's input size); if that forward
    fails (not an image model), ``out_shape`` stays ``None``.
    """
    key = input_size or 0
    cached = _LAYER_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    shapes, ones = _measure_output_shapes(model, input_size)
    rows = []
    # parameter-free layers a model names as addressable (the article's InceptionV1: conv2d0, mixed3a, ...)
    named = set(getattr(model, "weightviz_named_layers", ()))
    for name, m in model.named_modules():
        if not name:
            continue
        children = any(True for _ in m.children())
        w = getattr(m, "weight", None)
        if isinstance(m, _WEIGHT_TYPES) or (
            not children and isinstance(w, torch.Tensor) and w.dim() in (2, 4) and not isinstance(m, _NORM_TYPES)
        ):
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else None
            is_conv = isinstance(m, (nn.Conv1d, nn.Conv2d))
            one = name in ones or isinstance(m, _CONV1D_ALWAYS)
            rows.append(
                LayerInfo(
                    name=name,
                    type=type(m).__name__,
                    weight_shape=shape,
                    out_channels=shape[0] if shape else None,
                    groups=int(getattr(m, "groups", 1)),
                    kernel=_pair(m.kernel_size) if is_conv else None,
                    stride=_pair(m.stride) if is_conv else None,
                    out_shape=shapes.get(name),
                    kind="weight",
                    conv1d=one,
                )
            )
        elif isinstance(m, _NORM_TYPES) or children or name in named:
            out = shapes.get(name)
            one = name in ones
            rows.append(
                LayerInfo(
                    name=name,
                    type=type(m).__name__,
                    weight_shape=None,
                    out_channels=_layout(out, one).channels if out else getattr(m, "num_features", None),
                    out_shape=out,
                    kind="norm" if isinstance(m, _NORM_TYPES) else "block",
                    conv1d=one,
                )
            )
    table = LayerTable(rows, frozenset(ones) | {r.name for r in rows if r.conv1d})
    _LAYER_CACHE[model] = (key, table)
    return table


def _measure_output_shapes(model: nn.Module, input_size: int | None) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Output shapes ``{layer: shape without batch}`` of one zero-image forward, and the layers whose 3-D
    output is a 1-D conv map ``[B, C, L]`` (see :func:`_mark_conv1d`)."""
    spec = input_spec(model)
    size = input_size or fixed_input_size(model) or spec.size
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    shapes: dict[str, tuple[int, ...]] = {}
    ones: set[str] = set()
    maps: dict[int, torch.Tensor] = {}    # id -> the 1-D conv maps seen so far (kept alive: ids stay unique)
    handles = []

    def make_hook(name, module):
        def hook(_m, inp, out):
            if isinstance(out, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(out.shape[1:])
                if _mark_conv1d(name, module, inp, out, maps, ones, shapes):
                    ones.add(name)
                    maps[id(out)] = out

        return hook

    was_training = model.training
    try:
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_hook(make_hook(name, m)))
        model.eval()
        with torch.no_grad():
            seq = sequence_channels(model)
            model(torch.zeros(1, seq, size, device=device, dtype=dtype) if seq is not None
                  else torch.zeros(1, spec.channels, size, size, device=device, dtype=dtype))
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes, ones


def _mark_conv1d(name: str, module: nn.Module, inp, out: torch.Tensor, maps: dict, ones: set, shapes: dict) -> bool:
    """Whether ``module``'s 3-D output is a 1-D conv map ``[B, C, L]``: it comes from a 1-D module
    (:data:`CONV1D_TYPES`), is one of the maps already seen (a block returning its last Conv1d's output), keeps
    the shape of a 1-D map it takes (ReLU, dropout, ...) or is a block holding a 1-D layer of its shape. Hooks
    run children first, so a block sees its insides marked."""
    if out.dim() != 3:
        return False
    if isinstance(module, CONV1D_TYPES) or maps.get(id(out)) is out:
        return True
    ins = inp if isinstance(inp, tuple) else (inp,)
    if any(isinstance(t, torch.Tensor) and maps.get(id(t)) is t and t.shape == out.shape for t in ins):
        return True
    shape = tuple(out.shape[1:])
    return any(n.startswith(name + ".") and shapes.get(n) == shape for n in ones)


_HAS_CONV1D: weakref.WeakKeyDictionary[nn.Module, tuple[int, bool]] = weakref.WeakKeyDictionary()


def has_conv1d(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a ``Conv1d`` / ``ConvTranspose1d`` (cached per model and its number of
    direct children: a walk over every module costs ~1.5 ms on lite0, more than a cached expanded_weights
    call should add)."""
    key = len(model._modules)
    hit = _HAS_CONV1D.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    found = any(isinstance(m, _CONV1D_ALWAYS) for m in model.modules())
    _HAS_CONV1D[model] = (key, found)
    return found


def conv1d_map(model: nn.Module, name: str | None, table: LayerTable | None = None) -> bool:
    """Whether layer ``name`` outputs a 1-D conv map ``[B, C, L]`` (a ``Conv1d``, or ``name in table.conv1d``);
    ``name=None`` (the model input): whether the model takes sequences."""
    if name is None:
        return sequence_channels(model) is not None
    return isinstance(get_module(model, name), _CONV1D_ALWAYS) or (table is not None and name in table.conv1d)


def refuse_conv1d(model: nn.Module, *names: str | None, table: LayerTable | None = None, by: str = "") -> None:
    """Raise :class:`WeightvizError` (one line, "1-D convolutions are not supported``by``") if the model takes
    1-D input (its first conv is a ``Conv1d``) or a named layer outputs a 1-D conv map (:func:`conv1d_map`):
    a ``[B, C, L]`` map must never be read as ``[B, N, C]`` tokens."""
    if sequence_channels(model) is not None:
        raise WeightvizError(f"1-D convolutions are not supported{by}: the model takes [B, C, L] sequences (its "
                             "first conv is a Conv1d), not [B, C, H, W] images")
    for n in names:
        if n is not None and conv1d_map(model, n, table):
            raise WeightvizError(f"1-D convolutions are not supported{by}: layer {n!r} "
                                 f"({type(get_module(model, n)).__name__}) outputs a 1-D conv map [B, C, L]")


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``named_modules()``); unknown names raise
    :class:`WeightvizError` suggesting the closest names."""
    if not isinstance(name, str):
        raise WeightvizError(f"layer name must be a string, got {type(name).__name__}")
    if name:
        try:  # fast path (no walk over all modules); names are those of named_modules()
            return model.get_submodule(name)
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    raise WeightvizError(f"unknown layer {name!r}.{suggest(name, [n for n in modules if n])} "
                         "List layers with `weightviz layers MODEL`")


def weights(model: nn.Module, layer: str, dense: bool = False) -> torch.Tensor:
    """The weights of one layer as a float tensor ``[C_out, C_in, kh, kw]``.

    Linear layers come as ``[out, in, 1, 1]``, Conv1d as ``[C_out, C_in, 1, k]``. A grouped or depthwise
    conv's tensor has ``C_in / groups`` input channels; with ``dense=True`` it is expanded to the full
    ``C_in`` with zeros outside each output channel's group, so ``W[o, i]`` is always "input i to output o".
    Returns a detached copy (float32, on the model's device).
    """
    m = get_module(model, layer)
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3, 4):
        raise WeightvizError(
            f"layer {layer!r} ({type(m).__name__}) has no conv/linear weight; choose one of "
            "`weightviz layers MODEL` with a weight shape"
        )
    w = w.detach().float().clone()
    if not torch.isfinite(w).all():
        raise WeightvizError(f"non-finite weights (NaN or Inf) in layer {layer!r}")
    if w.dim() == 2:
        w = w[:, :, None, None]
    elif w.dim() == 3:
        w = w[:, :, None, :]
    groups = int(getattr(m, "groups", 1))
    if dense and groups > 1:
        c_out, c_in_g, kh, kw = w.shape
        out_g = c_out // groups
        full = w.new_zeros(c_out, c_in_g * groups, kh, kw)
        for g in range(groups):
            full[g * out_g:(g + 1) * out_g, g * c_in_g:(g + 1) * c_in_g] = w[g * out_g:(g + 1) * out_g]
        w = full
    return w


# ----------------------------------------------------------------------------------------------- units
def parse_units(units: int | str | Iterable[int] | slice | None, n: int, what: str = "layer") -> list[int]:
    """Normalize a unit selection against ``n`` channels: ``None`` (all), an int, ``"0:32"``,
    ``"3,7,9"``, ``"0:64:2"``, a slice or an iterable of ints. Out-of-range units raise
    :class:`WeightvizError`."""
    if units is None:
        return list(range(n))
    if isinstance(units, slice):
        if units.step == 0:
            raise WeightvizError(f"units {units!r}: the step must not be 0")
        return list(range(n))[units]
    if isinstance(units, str):
        text = units.replace(" ", "")
        out: list[int] = []
        for part in filter(None, text.split(",")):
            if re.fullmatch(r"-?\d*:-?\d*(:-?\d+)?", part):
                bits = [int(b) if b else None for b in part.split(":")]
                if len(bits) == 3 and bits[2] == 0:
                    raise WeightvizError(f"units {part!r}: the step must not be 0; use e.g. '0:32:2'")
                stop = bits[1]
                if stop is not None and stop > n:
                    raise WeightvizError(f"units {part!r} out of range: {what} has {n} channels (0..{n - 1})")
                out.extend(range(n)[slice(*bits)])
            elif re.fullmatch(r"-?\d+", part):
                out.append(int(part))
            else:
                raise WeightvizError(f"cannot read units {units!r}: use e.g. '5', '0:32' or '3,7,9'")
        units = out
    elif isinstance(units, (int,)) or (isinstance(units, torch.Tensor) and units.dim() == 0):
        units = [int(units)]
    units = [int(u) for u in units]
    for u in units:
        if not 0 <= u < n:
            raise WeightvizError(f"unit {u} out of range: {what} has {n} channels (0..{n - 1})")
    return units



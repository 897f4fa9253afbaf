"""The one float -> uint8 conversion of rendered images, and PNG output built on it.

Everything that shows or stores a render (``RenderResult.save``, the CLI grid, figures, the explorer)
goes through :func:`to_uint8`, so the file on disk holds exactly the pixels of the returned tensor:
``round(clamp(x, 0, 1) * 255)``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightvizError
from ..utils.io import atomic_path

__all__ = ["grid", "load_png", "save_png", "to_uint8"]

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` or ``[B, C, H, W]`` float in [0, 1] -> uint8 array ``[H, W, C]`` / ``[B, H, W, C]``.

    Values are clamped to [0, 1], scaled by 255 and rounded half to even (``torch.round``).

    >>> to_uint8(torch.tensor([[[0.0, 0.5, 1.0]]]))[..., 0]
    array([[  0, 128, 255]], dtype=uint8)
    """
    x = torch.as_tensor(images).detach().float().cpu()
    if x.dim() not in (3, 4):
        raise WeightvizError(f"images must be [C, H, W] or [B, C, H, W], got shape {tuple(x.shape)}")
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(x.movedim(-3, -1).numpy())


def grid(images: torch.Tensor | np.ndarray, ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile ``[B, C, H, W]`` floats (or ``[B, H, W, C]`` uint8 from :func:`to_uint8`) into one uint8
    ``[rows*(H+pad)-pad, cols*(W+pad)-pad, C]`` array, row-major, ``ncols`` about ``sqrt(B)`` by default."""
    arr = images if isinstance(images, np.ndarray) else to_uint8(images)
    if arr.ndim == 3:
        arr = arr[None]
    b, h, w, c = arr.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), pad_value, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, ncols)
        out[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = arr[i]
    return out


def save_png(array: np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an ``[H, W, C]`` uint8 array (C = 1, 3, 4), or a float ``[C, H, W]`` tensor, as PNG atomically."""
    from PIL import Image

    arr = to_uint8(array) if isinstance(array, torch.Tensor) else np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] not in _MODES:
        raise WeightvizError(f"cannot save array of shape {arr.shape} ({arr.dtype}) as PNG; need [H, W, 1|3|4] uint8")
    path = Path(path)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG back as uint8 ``[H, W, C]`` (C = 1 for grayscale)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    return arr[..., None] if arr.ndim == 2 else arr

"""Random transforms applied to the image at every optimization step (Lucid's ``standard_transforms``).

Lucid pads by 12 px (constant 0.5), jitters by up to 8 px, scales by a factor from {0.90, 0.92, ..., 1.10},
rotates by an angle from {-10, ..., 10} degrees (0 five times more likely), then jitters by up to 4 px.
Here the whole chain is *one* affine resampling (``affine_grid`` + bilinear ``grid_sample``) of the
image onto a canvas of the same size ``[H, W]``, with the constant-0.5 padding outside: the same
geometry as Lucid's chain, one kernel instead of five, and the model always sees ``[B, C, H, W]``
(so activation positions stay those of the clean image, and a step costs what a plain forward costs
at that size). One transform is drawn per step and shared by the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Transform", "TransformConfig", "apply_transform", "sample_transform"]


@dataclass(frozen=True)
class TransformConfig:
    """Ranges of the random transforms (defaults: Lucid's ``standard_transforms``). ``None`` disables all."""

    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5
    jitter2: int = 4
    pad_value: float = 0.5

    def key(self) -> str:
        return f"j{self.jitter1},{self.jitter2};s{','.join(f'{s:g}' for s in self.scales)};" \
               f"r{','.join(f'{a:g}' for a in self.angles)};p{self.pad_value:g}"


@dataclass(frozen=True)
class Transform:
    """One draw: shifts in pixels ``(dy, dx)`` before and after, scale factor, angle in degrees."""

    shift1: tuple[int, int]
    scale: float
    angle: float
    shift2: tuple[int, int]


def _shift(d: int, g: torch.Generator) -> tuple[int, int]:
    # Lucid's jitter(d): random crop of (h - d, w - d) at an offset in 0..d: a shift of d/2 - offset
    if d <= 0:
        return (0, 0)
    o = torch.randint(0, d + 1, (2,), generator=g)
    return (d // 2 - int(o[0]), d // 2 - int(o[1]))


def sample_transform(cfg: TransformConfig, g: torch.Generator) -> Transform:
    """Draw one transform from ``cfg`` with generator ``g`` (CPU; reproducible)."""
    s1 = _shift(cfg.jitter1, g)
    scale = cfg.scales[int(torch.randint(0, len(cfg.scales), (1,), generator=g))]
    angle = cfg.angles[int(torch.randint(0, len(cfg.angles), (1,), generator=g))]
    s2 = _shift(cfg.jitter2, g)
    return Transform(s1, float(scale), float(angle), s2)


def _theta(t: Transform, h: int, w: int) -> torch.Tensor:
    """``[1, 2, 3]`` affine map from output to input normalized coordinates (``align_corners=False``).

    Content point ``p0`` moves to ``p = R(a) * s * (p0 + j1) + j2``; sampling needs the inverse
    ``p0 = R(-a) (p - j2) / s - j1``. Pixel shifts become normalized units ``2 / size``. Rotation is
    done in pixel units (so non-square images rotate without shear).
    """
    a = math.radians(t.angle)
    cos, sin = math.cos(a), math.sin(a)
    # inverse rotation, in pixels: [x; y] -> [cos x + sin y; -sin x + cos y]; then convert to normalized
    # coordinates: x_n = 2 x / w, y_n = 2 y / h
    A = torch.tensor([[cos, sin * h / w], [-sin * w / h, cos]], dtype=torch.float64) / t.scale
    j2 = torch.tensor([2 * t.shift2[1] / w, 2 * t.shift2[0] / h], dtype=torch.float64)
    j1 = torch.tensor([2 * t.shift1[1] / w, 2 * t.shift1[0] / h], dtype=torch.float64)
    b = -A @ j2 - j1
    return torch.cat([A, b[:, None]], dim=1)[None].float()


def apply_transform(x: torch.Tensor, t: Transform, pad_value: float = 0.5) -> torch.Tensor:
    """Resample ``x`` ``[B, C, H, W]`` with transform ``t``; outside the image is ``pad_value``.

    >>> x = torch.rand(2, 3, 32, 32)
    >>> apply_transform(x, Transform((0, 0), 1.0, 0.0, (0, 0))).sub(x).abs().max() < 1e-5
    tensor(True)
    """
    b, _, h, w = x.shape
    theta = _theta(t, h, w).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False).expand(b, h, w, 2)
    return F.grid_sample(x - pad_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + pad_value

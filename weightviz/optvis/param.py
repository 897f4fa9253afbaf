"""Image parameterizations for feature visualization.

The image is not optimized pixel by pixel: it lives in a *decorrelated Fourier basis* (Lucid's
``fft_image``) and, for 3-channel models, in a *decorrelated colour space*; a sigmoid maps it to [0, 1].

- Fourier: the free parameters are the real and imaginary parts of the 2-D real FFT of each channel,
  ``[B, C, H, W//2 + 1, 2]``, drawn from ``N(0, sd)`` (``sd = 0.01``). Each frequency ``f`` is scaled by
  ``1 / max(f, 1/max(H, W)) ** decay_power`` (``decay_power = 1``), so all frequencies have about the same
  energy in the gradient (natural-image spectra fall as 1/f); ``irfft2`` with orthonormal scaling, then /4.
- Colour (3 channels only): ``rgb[c] = sum_k M[c, k] * v[k]`` with Lucid's square root of the ImageNet
  colour covariance ``[[0.26,0.09,0.02],[0.27,0.00,-0.05],[0.27,-0.09,0.03]]`` divided by its largest
  column norm. 1- and 4-channel images are not mixed (there is no colour statistic for them).
"""

from __future__ import annotations

import torch

__all__ = ["COLOR_CORRELATION", "FourierImage", "decorrelate_color", "fft_scale"]

#: Lucid's square root of the colour covariance of ImageNet, normalized by its largest column norm.
_COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
COLOR_CORRELATION = (_COLOR_SVD_SQRT / _COLOR_SVD_SQRT.norm(dim=0).max()).float()


def fft_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """Per-frequency scale ``[h, w//2 + 1]``: ``1 / max(|f|, 1/max(h, w)) ** decay_power`` (cycles/pixel)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / freqs.clamp(min=1.0 / max(h, w)) ** decay_power).float()


def decorrelate_color(x: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour ``[B, 3, H, W]`` to RGB (before the sigmoid): ``einsum('ck,bkhw->bchw', M, x)``."""
    m = COLOR_CORRELATION.to(device=x.device, dtype=x.dtype)
    return torch.einsum("ck,bkhw->bchw", m, x)


class FourierImage:
    """A batch of ``B`` images ``[B, C, H, W]`` in [0, 1], parameterized in the decorrelated Fourier basis.

    Every item starts from the *same* noise (drawn from ``generator``), so an item's result depends only
    on its own objective and the seed, never on which other objectives share its batch.

    >>> g = torch.Generator().manual_seed(0)
    >>> p = FourierImage(batch=2, channels=3, size=64, generator=g)
    >>> p.image().shape, p.spectrum.shape
    (torch.Size([2, 3, 64, 64]), torch.Size([2, 3, 64, 33, 2]))
    """

    def __init__(
        self,
        batch: int,
        channels: int,
        size: int | tuple[int, int],
        *,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        h, w = (size, size) if isinstance(size, int) else size
        self.shape = (batch, channels, h, w)
        self.decorrelate = bool(decorrelate) and channels == 3
        self.scale = fft_scale(h, w, decay_power).to(device=device, dtype=dtype)[..., None]  # [h, w//2+1, 1]
        # noise drawn on the CPU (same numbers on every device), one item, repeated over the batch
        noise = torch.randn((1, channels, h, w // 2 + 1, 2), generator=generator, dtype=torch.float32) * sd
        self.spectrum = noise.to(device=device, dtype=dtype).repeat(batch, 1, 1, 1, 1).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        """The current images ``[B, C, H, W]`` in [0, 1] (differentiable w.r.t. :attr:`spectrum`)."""
        _, _, h, w = self.shape
        spec = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        x = torch.fft.irfft2(spec, s=(h, w), norm="ortho") / 4.0
        if self.decorrelate:
            x = decorrelate_color(x)
        return torch.sigmoid(x)

    __call__ = image


"""Parameterization, transforms and the uint8 conversion, each against an independent reference
(numpy FFT with Lucid's formulas, slicing / rot90 / interpolate, hand-computed values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weightviz.errors import WeightvizError
from weightviz.optvis import grid, load_png, save_png, to_uint8
from weightviz.optvis.param import COLOR_CORRELATION, FourierImage, fft_scale
from weightviz.optvis.transforms import Transform, TransformConfig, apply_transform, sample_transform


# ------------------------------------------------------------------------------------------- param
def test_fft_scale_hand_computed():
    s = fft_scale(4, 4)
    # freqs: fy in {0, .25, -.5, -.25}, fx in {0, .25, .5}; floor 1/4 -> scale at most 4
    assert s.shape == (4, 3)
    assert s[0, 0] == pytest.approx(4.0) and s[0, 1] == pytest.approx(4.0) and s[1, 0] == pytest.approx(4.0)
    assert s[2, 2] == pytest.approx(1 / np.sqrt(0.5))
    assert s[1, 1] == pytest.approx(1 / np.sqrt(2 * 0.25**2))


def test_color_matrix_is_lucids_normalized():
    raw = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    np.testing.assert_allclose(COLOR_CORRELATION.numpy(), raw / 0.4621, atol=2e-4)
    assert np.linalg.norm(COLOR_CORRELATION.numpy(), axis=0).max() == pytest.approx(1.0, abs=1e-6)


def _lucid_numpy(spectrum: np.ndarray, h: int, w: int, decorrelate: bool) -> np.ndarray:
    """Lucid's fft_image + to_valid_rgb written with numpy (TF layout: channels last)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 1]
    fx = np.abs(fx)  # fftfreq gives -0.5 at w//2 for even w; the magnitude is what counts
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) * np.sqrt(w * h)
    spec = (spectrum[..., 0] + 1j * spectrum[..., 1]) * scale          # [B, C, h, w//2+1]
    img = np.fft.irfft2(spec, s=(h, w)) / 4.0                          # TF irfft2: 1/(h*w) normalization
    img = np.transpose(img, (0, 2, 3, 1))                               # [B, h, w, C]
    if decorrelate:
        raw = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
        norm = raw / np.max(np.linalg.norm(raw, axis=0))
        img = (img.reshape(-1, 3) @ norm.T).reshape(img.shape)
    return np.transpose(1 / (1 + np.exp(-img)), (0, 3, 1, 2))


@pytest.mark.parametrize("channels,h", [(3, 16), (3, 15), (1, 16), (4, 12)])
def test_fourier_image_matches_lucid_formula(channels, h):
    p = FourierImage(2, channels, h, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        p.spectrum.normal_(0, 0.5)  # larger than the init so the check is not dominated by the sigmoid's 0.5
    ref = _lucid_numpy(p.spectrum.detach().double().numpy(), h, h, decorrelate=channels == 3)
    np.testing.assert_allclose(p.image().detach().numpy(), ref, atol=1e-5)
    assert p.image().shape == (2, channels, h, h)


def test_fourier_image_same_noise_every_item_and_seeded():
    a = FourierImage(3, 3, 16, generator=torch.Generator().manual_seed(5)).image()
    b = FourierImage(1, 3, 16, generator=torch.Generator().manual_seed(5)).image()
    c = FourierImage(1, 3, 16, generator=torch.Generator().manual_seed(6)).image()
    assert torch.equal(a[0], a[2]) and torch.equal(a[:1], b) and not torch.equal(b, c)
    assert (a > 0).all() and (a < 1).all()


# -------------------------------------------------------------------------------------- transforms
def _img(b=2, c=3, h=12, w=12, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_identity_transform():
    x = _img()
    torch.testing.assert_close(apply_transform(x, Transform((0, 0), 1.0, 0.0, (0, 0))), x, atol=1e-5, rtol=0)


def test_integer_shift_equals_slicing_with_constant_padding():
    x = _img(h=10, w=12)
    out = apply_transform(x, Transform((2, -1), 1.0, 0.0, (1, 0)))   # total shift dy=3, dx=-1
    ref = torch.full_like(x, 0.5)
    ref[:, :, 3:, :-1] = x[:, :, :-3, 1:]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_rotation_90_is_clockwise_rot90():
    x = _img(h=9, w=9)
    out = apply_transform(x, Transform((0, 0), 1.0, 90.0, (0, 0)))
    torch.testing.assert_close(out, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_scale_two_is_bilinear_upsampling_of_the_centre():
    x = _img(h=16, w=16)
    out = apply_transform(x, Transform((0, 0), 2.0, 0.0, (0, 0)))
    ref = F.interpolate(x[:, :, 4:12, 4:12], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 1:-1, 1:-1], ref[:, :, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_sample_transform_ranges_and_seed():
    cfg = TransformConfig()
    g = torch.Generator().manual_seed(0)
    ts = [sample_transform(cfg, g) for _ in range(300)]
    assert all(-4 <= s <= 4 for t in ts for s in t.shift1) and all(-2 <= s <= 2 for t in ts for s in t.shift2)
    assert {t.scale for t in ts} <= set(cfg.scales) and {t.angle for t in ts} <= set(cfg.angles)
    assert len({t.angle for t in ts}) > 10 and min(t.scale for t in ts) < 0.95 < 1.05 < max(t.scale for t in ts)
    g2 = torch.Generator().manual_seed(0)
    assert ts[:20] == [sample_transform(cfg, g2) for _ in range(20)]


def test_transform_is_differentiable():
    x = _img().requires_grad_(True)
    apply_transform(x, Transform((1, 2), 1.06, 7.0, (-1, 1))).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -------------------------------------------------------------------------------------- uint8 / PNG
def test_to_uint8_hand_values():
    x = torch.tensor([[[-1.0, 0.0, 0.2, 0.5, 1 / 255 * 254.4, 1.0, 2.0]]])
    assert to_uint8(x)[..., 0].tolist() == [[0, 0, 51, 128, 254, 255, 255]]
    assert to_uint8(torch.rand(2, 3, 5, 7)).shape == (2, 5, 7, 3)
    with pytest.raises(WeightvizError, match="must be"):
        to_uint8(torch.rand(5, 7))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_round_trip(tmp_path, channels):
    x = torch.rand(channels, 9, 11, generator=torch.Generator().manual_seed(channels))
    save_png(x, tmp_path / "a.png")
    back = load_png(tmp_path / "a.png")
    assert back.shape == (9, 11, channels) and np.array_equal(back, to_uint8(x))


def test_grid_layout():
    x = torch.rand(5, 3, 4, 6)
    g = grid(x, ncols=3, pad=1)
    assert g.shape == (2 * 5 - 1, 3 * 7 - 1, 3)
    u = to_uint8(x)
    assert np.array_equal(g[5:9, 7:13], u[4]) and np.array_equal(g[0:4, 14:20], u[2])
    assert (g[4] == 255).all() and (g[5:9, 14:20] == 255).all()   # padding row and the empty cell

"""Normalization layers under linearization: frozen scales measured on images (weightviz._norms), checked
against independent copies of the models whose norm layers are replaced by hand with the frozen affine maps
and differentiated by plain autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import weightviz as wv
from weightviz.errors import WeightvizError
from weightviz.linearize import norms as _norms
from weightviz.models.layers import get_module


# ------------------------------------------------------------------------------------------ helpers
def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` crops (``size`` px, random position and scale) of skimage's colour photographs, ImageNet-normalized."""
    import skimage.data as d
    import torch.nn.functional as F

    photos = [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.hubble_deep_field(), d.immunohistochemistry(),
              d.retina(), d.colorwheel()[..., :3]]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1).float() / 255
        h, w = p.shape[-2:]
        side = int(torch.randint(min(h, w) // 4, min(h, w) + 1, (1,), generator=g))
        r = int(torch.randint(0, h - side + 1, (1,), generator=g))
        c = int(torch.randint(0, w - side + 1, (1,), generator=g))
        out.append(F.interpolate(p[None, :, r:r + side, c:c + side], size=(size, size), mode="bilinear",
                                 antialias=True, align_corners=False)[0])
    x = torch.stack(out)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def hooked_inputs(model: nn.Module, names: list[str], images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """The input of each named module over ``images`` (plain forward pre-hooks, no weightviz)."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hs = [get_module(model, n).register_forward_pre_hook(lambda _m, a, n=n: seen[n].append(a[0].detach().double()))
          for n in names]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hs:
            h.remove()
    return seen


def jacobian(model: nn.Module, src: str, dst: str, size: int, target, units) -> torch.Tensor:
    """d dst[0, u, target] / d src for each unit by plain autograd: ``[U, *src_shape]``."""
    box = {}

    def src_hook(_m, _i, out):
        box["z"] = torch.zeros_like(out, requires_grad=True)
        return box["z"]

    def dst_hook(_m, _i, out):
        box["out"] = out

    hs = [get_module(model, src).register_forward_hook(src_hook), get_module(model, dst).register_forward_hook(dst_hook)]
    try:
        model(torch.zeros(1, 3, size, size))
    finally:
        for h in hs:
            h.remove()
    out = box["out"]
    rows = []
    for u in units:
        y = out[0, u, target[0], target[1]] if out.dim() == 4 else out[0, target, u]
        rows.append(torch.autograd.grad(y, box["z"], retain_graph=True)[0][0])
    return torch.stack(rows)


class FrozenLayerNorm(nn.Module):
    """``(x - mean_C(x)) / s * w + b``: channels on dim 1 (timm LayerNorm2d) or the last dim."""

    def __init__(self, ln: nn.LayerNorm, s: float, channels_first: bool):
        super().__init__()
        self.w, self.b, self.s, self.dim = ln.weight.detach(), ln.bias.detach(), s, 1 if channels_first else -1

    def forward(self, x):
        shape = (1, -1, 1, 1) if self.dim == 1 else (-1,)
        return (x - x.mean(self.dim, keepdim=True)) / self.s * self.w.reshape(shape) + self.b.reshape(shape)


def frozen_copy(model: nn.Module, scales: dict[str, float]) -> nn.Module:
    """A deep copy with every LayerNorm replaced by :class:`FrozenLayerNorm` and GELU by the identity."""
    m = copy.deepcopy(model).eval()
    for name, mod in list(m.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(child, nn.LayerNorm):
                setattr(mod, cname, FrozenLayerNorm(child, scales[full], type(child).__name__ == "LayerNorm2d"))
            elif type(child).__name__ == "GELU":           # torch's or timm's own GELU module
                setattr(mod, cname, nn.Identity())
    return m


@pytest.fixture(scope="module")
def convnext():
    """ConvNeXt-atto widths and depths with convnext_tiny's block layout (channels-last LayerNorm + Linear MLP
    between permutes), seeded random weights; layer scale 1 (timm initializes it to 1e-6, which would leave
    only the skip connections in every expanded weight)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, conv_mlp=False, ls_init_value=1.0).eval()


@pytest.fixture(scope="module")
def photos():
    return natural_images(16, 64)


# ------------------------------------------------------------------------------------------ scales
def test_scales_are_the_mean_per_position_std_of_each_layer_norm(convnext, photos):
    stats = _norms.measure(convnext, photos)
    names = ["stem.1", "stages.0.blocks.0.norm", "stages.2.blocks.3.norm", "stages.3.downsample.0"]
    seen = hooked_inputs(convnext, names, photos)
    for name in names:
        x = seen[name][0]
        eps = get_module(convnext, name).eps
        dim = 1 if type(get_module(convnext, name)).__name__ == "LayerNorm2d" else -1   # NCHW, else channels-last
        ref = torch.sqrt(x.var(dim, unbiased=False) + eps).mean()
        assert stats.scales[name] == pytest.approx(float(ref), rel=1e-6)
    assert len(stats.scales) == sum(isinstance(m, nn.LayerNorm) for m in convnext.modules())
    assert _norms.measure(convnext, photos) is stats        # cached per model hash and image set


# ------------------------------------------------------------------------------------------ ConvNeXt
@pytest.mark.parametrize("src, dst", [
    ("stages.0.blocks.0", "stages.0.blocks.1"),                  # a whole block: LN, MLP, layer scale, skip
    ("stages.0", "stages.1.blocks.0"),                           # through the LayerNorm2d + conv downsample
    ("stem.0", "stages.0.blocks.1.conv_dw"),                     # the stem's LayerNorm2d, two blocks
])
def test_convnext_expanded_weights_equal_autograd_of_a_hand_frozen_copy(convnext, photos, src, dst):
    units = [0, 7, 13]
    E = wv.expanded_weights(convnext, src, dst, units=units, images=photos)
    rf = wv.receptive_field(convnext, dst, src)
    stats = _norms.measure(convnext, photos)
    ref = jacobian(frozen_copy(convnext, stats.scales), src, dst, rf.input_size, rf.target, units)
    (r0, c0), (kh, kw) = rf.start, rf.size
    crop = ref[..., r0:r0 + kh, c0:c0 + kw]
    scale = float(ref.abs().max())
    torch.testing.assert_close(E, crop, rtol=1e-4, atol=1e-5 * scale)
    assert float(crop.abs().sum()) == pytest.approx(float(ref.abs().sum()), rel=1e-6)   # nothing outside the field
    # the unit scale divides by 1 instead
    E1 = wv.expanded_weights(convnext, src, dst, units=units, images=photos, norm_scale="unit")
    ref1 = jacobian(frozen_copy(convnext, dict.fromkeys(stats.scales, 1.0)), src, dst, rf.input_size, rf.target,
                    units)[..., r0:r0 + kh, c0:c0 + kw]
    torch.testing.assert_close(E1, ref1, rtol=1e-4, atol=1e-5 * float(ref1.abs().max()))


def test_convnext_atto_conv_mlp_blocks(photos):
    """convnext_atto's own layout: LayerNorm2d (NCHW) in every block and a 1x1-conv MLP."""
    import timm

    torch.manual_seed(1)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    src, dst, units = "stages.1.blocks.0", "stages.1.blocks.1", [2, 9]
    E = wv.expanded_weights(model, src, dst, units=units, images=photos)
    rf = wv.receptive_field(model, dst, src)
    ref = jacobian(frozen_copy(model, _norms.measure(model, photos).scales), src, dst, rf.input_size, rf.target, units)
    (r0, c0), (kh, kw) = rf.start, rf.size
    torch.testing.assert_close(E, ref[..., r0:r0 + kh, c0:c0 + kw], rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_norm_scale_dict_overrides_one_call(convnext, photos):
    src, dst, units = "stages.0.blocks.0", "stages.0.blocks.1", [3]
    stats = _norms.measure(convnext, photos)
    mine = {"stages.0.blocks.1.norm": 2.5}
    E = wv.expanded_weights(convnext, src, dst, units=units, images=photos, norm_scale=mine)
    rf = wv.receptive_field(convnext, dst, src)
    ref = jacobian(frozen_copy(convnext, {**stats.scales, **mine}), src, dst, rf.input_size, rf.target, units)
    (r0, c0), (kh, kw) = rf.start, rf.size
    torch.testing.assert_close(E, ref[..., r0:r0 + kh, c0:c0 + kw], rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_scales_from_two_halves_of_the_images_give_the_same_expanded_weights(convnext):
    """Two disjoint halves of 32 natural-image crops: the frozen scales differ (up to a few per cent) but the
    expanded weights across a downsampling stage stay correlated >= 0.99, while dividing by 1 instead
    (norm_scale="unit") changes them far more (measured: 0.99999 between halves, 0.82 data vs unit)."""
    imgs = natural_images(32, 64, seed=1)
    a, b = imgs[:16], imgs[16:]
    sa, sb = _norms.measure(convnext, a), _norms.measure(convnext, b)
    assert sa.scales.keys() == sb.scales.keys()
    assert any(abs(sa.scales[k] / sb.scales[k] - 1) > 1e-2 for k in sa.scales)    # the halves do differ
    src, dst = "stages.1.blocks.0", "stages.2.blocks.0"
    Ea = wv.expanded_weights(convnext, src, dst, units="0:16", images=a)
    Eb = wv.expanded_weights(convnext, src, dst, units="0:16", images=b)
    Eu = wv.expanded_weights(convnext, src, dst, units="0:16", images=b, norm_scale="unit")

    def corr(x, y):
        return float(torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1])

    assert corr(Ea, Eb) >= 0.99
    assert corr(Eb, Eu) < 0.95       # the scales matter: the check above could fail


# ------------------------------------------------------------------------------------------ GroupNorm
class GNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.gn2 = nn.GroupNorm(4, 8)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.gn1(self.conv1(x)))
        return self.conv3(nn.functional.silu(self.gn2(self.conv2(x))))


class FrozenGroupNorm(nn.Module):
    def __init__(self, gn: nn.GroupNorm, m: float, s: float):
        super().__init__()
        self.gn, self.m, self.s = gn, m, s

    def forward(self, x):
        return (x - self.m) / self.s * self.gn.weight.view(1, -1, 1, 1) + self.gn.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("compose", [True, False])
def test_group_norm_model_equals_autograd_of_a_hand_frozen_copy(compose, monkeypatch):
    from weightviz.expand import _trace

    monkeypatch.setattr(_trace, "COMPOSE", compose)   # composed path (GN as a per-channel scale) and autograd
    torch.manual_seed(0)
    model = GNNet().eval()
    with torch.no_grad():
        for gn in (model.gn1, model.gn2):
            gn.weight.uniform_(0.5, 2)
            gn.bias.uniform_(-1, 1)
    imgs = natural_images(8, 32)
    E = wv.expanded_weights(model, "conv1", "conv3", images=imgs)
    seen = hooked_inputs(model, ["gn1", "gn2"], imgs)
    ref = copy.deepcopy(model)
    for name in ("gn1", "gn2"):
        gn = getattr(model, name)
        g = seen[name][0].reshape(imgs.shape[0], gn.num_groups, -1)
        s = torch.sqrt(g.var(-1, unbiased=False) + gn.eps).mean()
        setattr(ref, name, FrozenGroupNorm(getattr(ref, name), float(g.mean(-1).mean()), float(s)))
    ref.forward = lambda x: ref.conv3(ref.gn2(ref.conv2(ref.gn1(ref.conv1(x)))))   # ReLU, SiLU -> identity
    rf = wv.receptive_field(model, "conv3", "conv1")
    J = jacobian(ref, "conv1", "conv3", rf.input_size, rf.target, range(6))
    (r0, c0), (kh, kw) = rf.start, rf.size
    assert rf.size == (7, 7)        # a finite field: the group statistics span positions, so they are frozen
    torch.testing.assert_close(E, J[..., r0:r0 + kh, c0:c0 + kw], rtol=1e-4, atol=1e-5 * float(J.abs().max()))


# ------------------------------------------------------------------------------------------ RMS norm
class RMSTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 4, stride=4)
        self.fc1 = nn.Linear(12, 16)
        self.norm = nn.RMSNorm(16, eps=1e-6)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)        # [B, N, C]
        return self.fc2(self.norm(self.fc1(t)))


def test_rms_norm_tokens_divide_by_the_mean_rms():
    torch.manual_seed(0)
    model = RMSTokens().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2)
    imgs = natural_images(8, 16)
    E = wv.expanded_weights(model, "fc1", "fc2", units=[0, 4], images=imgs, input_size=16)  # [U, C_src, N] tokens
    x = hooked_inputs(model, ["norm"], imgs)["norm"][0]
    s = float(torch.sqrt(x.pow(2).mean(-1) + 1e-6).mean())
    ref = copy.deepcopy(model)
    ref.norm = nn.Identity()
    ref.forward = lambda x: ref.fc2(ref.fc1(ref.embed(x).flatten(2).transpose(1, 2)) / s * model.norm.weight)
    J = jacobian(ref, "fc1", "fc2", 16, 5, [0, 4])          # dst token 5 = the centre of the 4x4 patch grid
    assert E.shape == (2, 16, 16)
    torch.testing.assert_close(E, J.transpose(1, 2), rtol=1e-4, atol=1e-6)


def test_timm_rms_norm_module_is_linearized_like_torch_rms_norm():
    """timm's RmsNorm computes x * rsqrt(mean(x^2)) by hand unless its fast-norm flag is on (then F.rms_norm):
    weightviz switches the flag on inside its contexts, so it gives the map of nn.RMSNorm."""
    from timm.layers import RmsNorm

    torch.manual_seed(0)
    model = RMSTokens().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2)
    other = copy.deepcopy(model)
    other.norm = RmsNorm(16, eps=1e-6)
    other.norm.weight.data.copy_(model.norm.weight)
    assert other.norm._fast_norm is False
    imgs = natural_images(8, 16)
    E = wv.expanded_weights(model, "fc1", "fc2", units=[1], images=imgs, input_size=16)
    E2 = wv.expanded_weights(other, "fc1", "fc2", units=[1], images=imgs, input_size=16)
    torch.testing.assert_close(E2, E, rtol=1e-5, atol=1e-7)
    assert other.norm._fast_norm is False        # restored


# ------------------------------------------------------------------------------------------ errors
def test_bad_norm_scale_is_one_line_error(convnext, photos):
    with pytest.raises(WeightvizError, match="norm_scale must be"):
        wv.expanded_weights(convnext, "stages.0.blocks.0", "stages.0.blocks.1", norm_scale="std")
    with pytest.raises(WeightvizError, match="stages.0.blocks.0.norm"):
        wv.expanded_weights(convnext, "stages.0.blocks.0", "stages.0.blocks.1", norm_scale={"stages.0.blocks.0.nrm": 1})
    with pytest.raises(WeightvizError, match="positive"):
        wv.expanded_weights(convnext, "stages.0.blocks.0", "stages.0.blocks.1", norm_scale={"stem.1": -1.0})


def test_model_without_norms_measures_nothing(tiny, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("measured statistics for a model without norm layers")

    monkeypatch.setattr(_norms, "measure", fail)
    assert wv.expanded_weights(tiny, "conv1", "conv2").shape[:2] == (16, 8)

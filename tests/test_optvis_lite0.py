"""Feature visualization on the embedded EfficientNet-Lite0: in-place activations, dead units, one-hot
directions and the quality criterion (an FV beats every natural image on its own channel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import weightviz as wv
from weightviz import objectives as obj
from weightviz.optvis import activations
from weightviz.optvis.param import FourierImage

NATURAL = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "brick", "grass", "gravel",
           "clock", "immunohistochemistry", "hubble_deep_field", "retina"]


def _natural_images(size: int) -> torch.Tensor:
    """``[N, 3, size, size]`` in [0, 1]: skimage.data images, shorter side resized to ``size``, centre crop."""
    import skimage.data
    from PIL import Image

    out = []
    for name in NATURAL:
        a = getattr(skimage.data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        im = Image.fromarray(a)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        crop = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
        out.append(torch.from_numpy(crop).permute(2, 0, 1))
    return torch.stack(out)


def test_reads_preactivation_before_inplace_relu6(lite0):
    # timm BatchNormAct2d: bn1.drop (Identity) returns the BN output, which bn1.act (ReLU6, inplace=True)
    # then overwrites. The value read must be the BN output, computed here without hooks.
    m = lite0
    x = wv.input_spec(m).normalize(torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        h = m.blocks[0](m.bn1(m.conv_stem(x)))
        blk = m.blocks[1][0]
        bn = blk.bn1
        true = F.batch_norm(blk.conv_pw(h), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        assert (true < 0).any() and (true > 6).any()   # ReLU6 would change these values
        last = activations(m, x, "blocks.1.0.bn1.drop")["blocks.1.0.bn1.drop"]
        cloned = activations(m, x, ["blocks.1.0.bn1.drop", "blocks.2.0"])["blocks.1.0.bn1.drop"]
    torch.testing.assert_close(last, true, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cloned, true, atol=1e-4, rtol=1e-4)
    # and render reports values of that tensor, not of the clamped one
    objs = [obj.channel("blocks.1.0.bn1.drop", 3) + obj.channel("blocks.2.0", 0), obj.channel("blocks.1.0.bn1.drop", 5)]
    r = wv.render(m, objs, size=32, steps=2, progress=False)
    with torch.no_grad():
        x = wv.input_spec(m).normalize(r.images)
        pre = F.batch_norm(blk.conv_pw(m.blocks[0](m.bn1(m.conv_stem(x)))), bn.running_mean, bn.running_var,
                           bn.weight, bn.bias, False, 0.0, bn.eps)
        b2 = m.blocks[2][0](m.blocks[1](m.blocks[0](m.bn1(m.conv_stem(x)))))
    ref = torch.stack([pre[0, 3].mean() + b2[0, 0].mean(), pre[1, 5].mean()])
    torch.testing.assert_close(r.values, ref, atol=1e-4, rtol=1e-4)


def test_one_hot_direction_equals_channel_on_lite0(lite0):
    v = torch.zeros(80)
    v[17] = 1
    r = wv.render(lite0, [obj.channel("blocks.3.1", 17), obj.direction("blocks.3.1", v)], size=32, steps=4,
                  progress=False)
    torch.testing.assert_close(r.images[0], r.images[1], atol=1e-5, rtol=0)


def test_dead_channels_render_with_redirect(lite0):
    size, layer = 48, "blocks.3.0.bn1"
    spec = wv.input_spec(lite0)
    init = FourierImage(1, 3, size, generator=torch.Generator().manual_seed(0)).image().detach()
    a = activations(lite0, spec.normalize(init), layer)[layer][0]
    dead = (a.flatten(1).amax(1) <= 0).nonzero().flatten().tolist()[:4]
    assert len(dead) == 4
    objs = [obj.channel(layer, n) for n in dead]
    on = wv.render(lite0, objs, size=size, steps=12, redirect_steps=8, progress=False)
    off = wv.render(lite0, objs, size=size, steps=12, redirect_steps=0, progress=False)
    assert (on.values > 0.3).all(), on.values
    assert (off.values == 0).sum() >= 2, off.values           # without the redirect most stay grey
    assert (on.images.flatten(1).std(1) > 0.03).all()


@pytest.mark.slow
def test_fv_beats_every_natural_image(lite0):
    size = 64
    spec = wv.input_spec(lite0)
    g = torch.Generator().manual_seed(0)
    units = [(layer, int(n)) for layer in ("blocks.2.1", "blocks.4.1")
             for n in torch.randperm(wv.layers(lite0)[layer].out_channels, generator=g)[:8]]
    r = wv.render(lite0, [obj.channel(layer, n) for layer, n in units], size=size, steps=32, progress=False)
    nat = _natural_images(size)
    assert nat.shape == (len(NATURAL), 3, size, size)
    acts = activations(lite0, spec.normalize(torch.cat([r.images, nat])), ["blocks.2.1", "blocks.4.1"])
    for i, (layer, n) in enumerate(units):
        a = acts[layer][:, n].mean((1, 2))
        assert a[i] > a[len(units):].max(), (layer, n, float(a[i]), float(a[len(units):].max()))
        assert a[i] == pytest.approx(float(r.values[i]), rel=1e-4, abs=1e-4)

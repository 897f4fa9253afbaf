"""render() on small random models: shapes, reproducibility, batch independence, model left unchanged,
truncated forward, ReLU redirect, 1/4-channel inputs, errors, cache, save/reload."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz import objectives as obj
from weightviz.errors import WeightvizError
from weightviz.models.hooks import Capture
from weightviz.optvis import RenderCache, activations, grid, load_png, to_uint8
from weightviz.optvis._relu import RedirectReLU, _RedirectedClamp

render_mod = importlib.import_module("weightviz.optvis.render")  # the module (the package attribute is the function)

FAST = dict(size=32, steps=6, progress=False)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_shapes_range_values(tiny):
    r = wv.render(tiny, [obj.channel("conv2", 0), obj.neuron("conv3", 1), obj.channel("fc", 2)], **FAST)
    assert r.images.shape == (3, 3, 32, 32) and r.images.dtype == torch.float32
    assert r.images.min() >= 0 and r.images.max() <= 1 and r.values.shape == (3,)
    # values are the objectives evaluated on the returned images
    acts = activations(tiny, wv.input_spec(tiny).normalize(r.images), ["conv2", "conv3", "fc"])
    ref = torch.stack([acts["conv2"][0, 0].mean(), acts["conv3"][1, 1, 7, 7], acts["fc"][2, 2]])
    torch.testing.assert_close(r.values, ref, atol=1e-5, rtol=1e-5)
    single = wv.render(tiny, obj.channel("conv2", 0), **FAST)
    assert single.images.shape == (1, 3, 32, 32)


def test_optimization_raises_the_objective(tiny):
    o = obj.channel("conv3", 2)
    before = wv.render(tiny, o, size=32, steps=1, lr=1e-6, progress=False).values
    after = wv.render(tiny, o, size=32, steps=30, progress=False).values
    assert after[0] > before[0] + 0.03


def test_same_seed_same_image(tiny):
    objs = [obj.channel("conv2", 1), obj.channel("conv3", 0)]
    a, b = (wv.render(tiny, objs, seed=3, **FAST) for _ in range(2))
    c = wv.render(tiny, objs, seed=4, **FAST)
    assert torch.equal(a.images, b.images) and torch.equal(a.values, b.values)
    assert (a.images - c.images).abs().max() > 1e-2


def test_item_independent_of_its_batch(tiny):
    objs = [obj.channel("conv2", k) for k in range(5)]
    together = wv.render(tiny, objs, **FAST)
    alone = wv.render(tiny, objs[3], **FAST)
    split = wv.render(tiny, objs, batch=2, **FAST)
    torch.testing.assert_close(together.images[3], alone.images[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(together.images, split.images, atol=1e-4, rtol=0)


def test_one_hot_direction_gives_channel_image(tiny):
    v = torch.zeros(16)
    v[5] = 1
    r = wv.render(tiny, [obj.channel("conv2", 5), obj.direction("conv2", v)], **FAST)
    torch.testing.assert_close(r.images[0], r.images[1], atol=1e-5, rtol=0)
    s = wv.render(tiny, obj.direction("conv2", v), **FAST)
    torch.testing.assert_close(r.images[0], s.images[0], atol=1e-5, rtol=0)


def test_model_left_unchanged(tiny):
    tiny.train()
    tiny.conv1.bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    wv.render(tiny, [obj.channel("conv2", 0), obj.channel("bn1", 1)], **FAST)
    assert tiny.training and all(m.training for m in tiny.modules())
    assert {n: p.requires_grad for n, p in tiny.named_parameters()} == flags
    assert all(torch.equal(state[k], v) for k, v in tiny.state_dict().items())
    assert _hooks(tiny) == 0 and all(p.grad is None for p in tiny.parameters())


def test_hooks_removed_when_forward_fails(tiny):
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    tiny.conv3 = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        activations(tiny, torch.rand(1, 3, 16, 16), ["conv2", "fc"])
    assert _hooks(tiny) == 0


def test_forward_stops_after_deepest_target(tiny):
    calls = []

    class Sentinel(nn.Module):
        def forward(self, x):
            calls.append(1)
            raise AssertionError("the forward should have stopped before conv3")

    tiny.conv3 = Sentinel()
    r = wv.render(tiny, [obj.channel("conv2", 1), obj.channel("bn1", 0)], **FAST)
    assert r.images.shape[0] == 2 and not calls


def test_capture_clones_before_inplace_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.act = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.conv2(self.act(self.conv(x)))

    torch.manual_seed(0)
    m = M().eval()
    x = torch.randn(2, 3, 8, 8)
    true = m.conv(x)
    assert (true < 0).any()
    both = activations(m, x, ["conv", "conv2"])  # conv is read, then overwritten in place by act
    torch.testing.assert_close(both["conv"], true)
    torch.testing.assert_close(activations(m, x, "conv")["conv"], true)


def test_redirected_clamp_gradient_hand_cases():
    # item 0: all dead (x <= 0); item 1: one unit alive
    x = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 3.0, -1.0]], requires_grad=True)
    g = torch.tensor([[-1.0, 2.0, -3.0], [-1.0, -1.0, -1.0]])   # loss gradients
    (gx,) = torch.autograd.grad(_RedirectedClamp.apply(x, 0.0, None), x, g)
    # item 0 redirected: pass where the step raises x (g < 0), block where it lowers it; item 1 ordinary
    assert gx.tolist() == [[-1.0, 0.0, -3.0], [0.0, -1.0, 0.0]]
    x6 = torch.tensor([[7.0, 8.0, -1.0]], requires_grad=True)
    (gx6,) = torch.autograd.grad(_RedirectedClamp.apply(x6, 0.0, 6.0), x6, torch.tensor([[1.0, -1.0, -1.0]]))
    assert gx6.tolist() == [[1.0, 0.0, -1.0]]  # above 6: only moves that lower x pass


class _InplaceAfterRelu(nn.Module):
    """A ReLU's input changed in place later in the forward (legal PyTorch: relu saves its output)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a = self.a(x)
        y = self.b(F.relu(a))
        a.add_(y)
        return self.c(a)


def test_redirect_allows_inplace_change_of_relu_input():
    torch.manual_seed(0)
    m = _InplaceAfterRelu().eval()
    r = wv.render(m, obj.channel("c", 0), size=32, steps=2, progress=False)   # crashed before (issue 13)
    assert torch.isfinite(r.images).all()
    # and the redirected gradient is torch's own where units are alive (a live unit in every item)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    (g0,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    with RedirectReLU():
        (g1,) = torch.autograd.grad(m(x)[:, 0].sum(), x)
    torch.testing.assert_close(g1, g0)


@pytest.mark.parametrize("fn", [
    lambda x: nn.ReLU(inplace=True)(x * 1), lambda x: F.relu(x), lambda x: torch.relu(x), lambda x: x.relu(),
    lambda x: nn.ReLU6(inplace=True)(x * 1), lambda x: F.relu6(x), lambda x: F.hardtanh(x, 0.0, 6.0),
])
def test_redirect_mode_covers_relu_variants(fn):
    x = -torch.rand(2, 4) - 0.1   # all dead
    x.requires_grad_(True)
    ref = fn(x.detach())
    with RedirectReLU():
        out = fn(x)
    torch.testing.assert_close(out, ref)
    (g,) = torch.autograd.grad(-out.sum(), x)
    assert (g < 0).all()                       # redirected: every unit pushed up
    (g0,) = torch.autograd.grad(-fn(x).sum(), x)
    assert (g0 == 0).all()                     # without the mode, the dead units get nothing


def test_dead_unit_renders_with_redirect_only():
    # a unit that wants a bright image but is dead (pre-activation < 0) on the grey initial noise
    m = nn.Sequential(nn.Conv2d(3, 2, 9, padding=4), nn.ReLU(inplace=True)).eval()
    with torch.no_grad():
        m[0].weight.fill_(0.05)
        m[0].bias.fill_(-4.0)
    o = obj.channel("1", 0)
    assert activations(m, wv.input_spec(m).normalize(torch.full((1, 3, 32, 32), 0.5)), "1")["1"].max() == 0
    off = wv.render(m, o, size=32, steps=12, redirect_steps=0, progress=False)
    on = wv.render(m, o, size=32, steps=12, redirect_steps=4, progress=False)
    assert off.values[0] == 0 and on.values[0] > 0.5
    assert on.images.std() > 10 * off.images.std()


@pytest.mark.parametrize("channels", [1, 4])
def test_one_and_four_channel_models(channels, tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(channels, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3)).eval()
    r = wv.render(m, [obj.channel("2", 0), obj.channel("2", 3)], **FAST)
    assert r.images.shape == (2, channels, 32, 32)
    r.save(tmp_path / "g.png")
    assert np.array_equal(load_png(tmp_path / "g.png"), grid(r.uint8()))


def test_errors_before_work(tiny, monkeypatch):
    monkeypatch.setattr(render_mod, "_render_batch", lambda *a, **k: pytest.fail("rendered despite bad input"))
    with pytest.raises(WeightvizError, match=r"unknown layer 'conv9'.*Did you mean"):
        wv.render(tiny, obj.channel("conv9", 0), **FAST)
    with pytest.raises(WeightvizError, match=r"unit 16 out of range: layer 'conv2' has 16 channels"):
        wv.render(tiny, [obj.channel("conv2", 1), obj.channel("conv2", 16)], **FAST)
    with pytest.raises(WeightvizError, match="direction has length 8 but layer 'conv2' has 16 channels"):
        wv.render(tiny, obj.direction("conv2", torch.ones(8)), **FAST)
    with pytest.raises(WeightvizError, match="outside layer 'conv2' output of height 16, width 16"):
        wv.render(tiny, obj.neuron("conv2", 0, x=16, y=0), **FAST)
    with pytest.raises(WeightvizError, match="empty"):
        wv.render(tiny, [], **FAST)
    with pytest.raises(WeightvizError, match="must be an Objective"):
        wv.render(tiny, "conv2", **FAST)
    with pytest.raises(WeightvizError, match="steps must be a positive integer"):
        wv.render(tiny, obj.channel("conv2", 0), size=32, steps=0)
    with pytest.raises(WeightvizError, match="cache must be"):
        wv.render(tiny, obj.channel("conv2", 0), cache=3, **FAST)
    assert _hooks(tiny) == 0


def test_cache_hits_misses_and_corruption(tiny, tmp_path, monkeypatch):
    cache = RenderCache(tmp_path / "c")
    objs = [obj.channel("conv2", 1), obj.neuron("conv3", 2)]
    first = wv.render(tiny, objs, cache=cache, **FAST)
    assert first.cached == [False, False] and len(cache) == 2

    real = render_mod._render_batch
    seen = []

    def spy(model, objs_, *a, **k):
        seen.append([o.key for o in objs_])
        return real(model, objs_, *a, **k)

    monkeypatch.setattr(render_mod, "_render_batch", spy)
    again = wv.render(tiny, objs + [obj.channel("conv2", 3)], cache=cache, **FAST)
    assert again.cached == [True, True, False] and seen == [["channel('conv2', 3)"]]
    assert torch.equal(again.images[:2], first.images) and torch.equal(again.values[:2], first.values)

    wv.render(tiny, objs[0], cache=cache, seed=1, **FAST)          # other seed: a miss
    with torch.no_grad():
        tiny.conv1.weight[0, 0, 0, 0] += 1                             # other weights: a miss
    wv.render(tiny, objs[0], cache=cache, **FAST)
    assert len(seen) == 3
    for f in cache.path.glob("*/*.safetensors"):
        f.write_bytes(b"garbage")
    redo = wv.render(tiny, objs[0], cache=cache, **FAST)                # corrupt entry: a miss, re-rendered
    assert redo.cached == [False] and len(seen) == 4 and len(cache) == 5
    assert cache.clear() == 5 and len(cache) == 0


def test_default_cache_location(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTVIZ_CACHE", str(tmp_path))
    wv.render(tiny, obj.channel("conv2", 0), cache=True, **FAST)
    assert RenderCache().path == tmp_path / "renders" and len(RenderCache()) == 1


def test_batches_grouped_by_layer(tiny, monkeypatch):
    real = render_mod._render_batch
    calls = []
    monkeypatch.setattr(render_mod, "_render_batch",
                        lambda m, o, *a, **k: calls.append([x.key for x in o]) or real(m, o, *a, **k))
    objs = [obj.channel("conv3", 0), obj.channel("bn1", 1), obj.channel("conv3", 1), obj.channel("conv3", 2)]
    r = wv.render(tiny, objs, batch=2, **FAST)
    assert calls == [["channel('conv3', 0)", "channel('conv3', 1)"], ["channel('conv3', 2)"], ["channel('bn1', 1)"]]
    alone = wv.render(tiny, objs[1], **FAST)
    assert torch.equal(r.images[1], alone.images[0])


def test_duplicate_objectives_rendered_once(tiny, monkeypatch):
    real = render_mod._render_batch
    sizes = []
    monkeypatch.setattr(render_mod, "_render_batch", lambda m, o, *a, **k: sizes.append(len(o)) or real(m, o, *a, **k))
    r = wv.render(tiny, [obj.channel("conv2", 1)] * 3, **FAST)
    assert sizes == [1] and torch.equal(r.images[0], r.images[2])


def test_save_reload_round_trip(tiny, tmp_path):
    r = wv.render(tiny, [obj.channel("conv2", k) for k in range(3)], **FAST)
    r.save(tmp_path / "grid.png", ncols=2)
    back = load_png(tmp_path / "grid.png")
    assert np.array_equal(back, grid(to_uint8(r.images), ncols=2))
    assert np.array_equal(back[:32, 34:66], to_uint8(r.images[1]))
    one = wv.render(tiny, obj.channel("conv2", 0), **FAST)
    one.save(tmp_path / "one.png")
    assert np.array_equal(load_png(tmp_path / "one.png"), one.uint8()[0])


def test_capture_outside_context_and_missing_layer(tiny):
    cap = Capture(tiny, ["conv2"])
    with pytest.raises(RuntimeError):
        cap.run(torch.rand(1, 3, 8, 8))

    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(WeightvizError, match="did not run in the model's forward"):
        wv.render(Skips(), obj.channel("unused", 0), **FAST)


def test_torchvision_resnet_inplace_relu(resnet18):
    # resnet's bn1 output is overwritten by relu(inplace=True): the objective must read the BN output
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = resnet18
    true = m.bn1(m.conv1(x))
    assert (true < 0).any()
    got = activations(m, x, ["bn1", "layer1.0"])["bn1"]
    torch.testing.assert_close(got, true)
    r = wv.render(m, [obj.channel("layer2.0", 3), obj.channel("bn1", 1)], size=32, steps=3, progress=False)
    assert r.images.shape == (2, 3, 32, 32) and _hooks(m) == 0


def test_callback_sees_every_step_and_may_run_the_model(tiny):
    seen = []

    def cb(step, images, idx):
        # a forward of the same model inside the callback must not disturb the render's hooks
        v = activations(tiny, wv.input_spec(tiny).normalize(images), "conv3")["conv3"][:, 0].mean((1, 2))
        seen.append((step, tuple(images.shape), idx, v))

    objs = [obj.channel("conv3", 0), obj.channel("conv2", 1), obj.channel("conv3", 2)]
    r = wv.render(tiny, objs, batch=2, callback=cb, **FAST)
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5, 6] * 2
    # objectives reading the same layer share a batch: conv3 items [0, 2] first, then the conv2 item
    assert seen[0][1] == (2, 3, 32, 32) and seen[0][2] == [0, 2] and seen[-1][2] == [1]
    assert seen[5][3][0] == pytest.approx(float(r.values[0]), abs=1e-5)
    assert _hooks(tiny) == 0


def test_torchvision_googlenet_functional_inplace_relu(googlenet):
    # BasicConv2d returns F.relu(bn(conv(x)), inplace=True): conv1.bn's output is overwritten in place
    m = googlenet
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        true = m.conv1.bn(m.conv1.conv(m._transform_input(x)))
        got = activations(m, x, ["conv1.bn", "conv2"])["conv1.bn"]
    assert (true < 0).any()
    torch.testing.assert_close(got, true)
    r = wv.render(m, [obj.channel("inception3a", 5), obj.neuron("conv2.conv", 1)], size=48, steps=3, progress=False)
    assert r.images.shape == (2, 3, 48, 48) and _hooks(m) == 0

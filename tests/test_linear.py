"""Automatic linearization (weightviz.linear): every replacement against a hand-written linear model,
unknown nonlinear ops fail naming the op, the model is left unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz.errors import WeightvizError


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


IDENTITY_OPS = {
    "F.relu": lambda x: F.relu(x),
    "F.relu inplace": lambda x: F.relu(x.clone(), inplace=True),
    "torch.relu": torch.relu,
    "Tensor.relu_": lambda x: x.clone().relu_(),
    "clamp(min=0)": lambda x: x.clamp(min=0),
    "clamp_min": lambda x: x.clamp_min(0.0),
    "clamp_ inplace": lambda x: x.clone().clamp_(min=0, max=6),
    "relu6 module inplace": lambda x: nn.ReLU6(inplace=True)(x.clone()),
    "hardtanh": F.hardtanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "hardswish": F.hardswish,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
    "elu": F.elu,
    "mish": F.mish,
    "dropout train": lambda x: F.dropout(x, 0.5, training=True),
    "dropout2d module": lambda x: nn.Dropout2d(0.3).train()(x),
    "lrn": lambda x: F.local_response_norm(x, 3),
}


@pytest.mark.parametrize("name", list(IDENTITY_OPS))
def test_activations_become_identity(name):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    model = nn.Sequential(conv, Lambda(IDENTITY_OPS[name]), nn.Conv2d(4, 2, 1)).eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model[2](conv(x))  # the hand-linearized network: activation removed
    with wv.linearized(model):
        y = model(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    # outside the context the nonlinearity is back (a check that the test can fail)
    if "dropout" not in name and "lrn" not in name:
        assert not torch.allclose(model(x), expected, atol=1e-4)


def test_max_pool_becomes_avg_pool_without_minus_inf_padding():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(3, 2, 1)).eval()
    x = torch.randn(1, 2, 9, 9)
    c = model[0](x)
    expected = model[2](F.avg_pool2d(c, 3, 2, 1, count_include_pad=True))
    with wv.linearized(model):
        y = model(x)
    torch.testing.assert_close(y, expected)
    assert torch.isfinite(y).all()
    # functional form, default stride (= kernel) and ceil_mode
    f = Lambda(lambda t: F.max_pool2d(t, 2, ceil_mode=True))
    with wv.linearized(f):
        y2 = f(c)
    torch.testing.assert_close(y2, F.avg_pool2d(c, 2, ceil_mode=True, count_include_pad=True))


def test_adaptive_max_pool_becomes_adaptive_avg_pool():
    x = torch.randn(1, 3, 7, 7)
    f = Lambda(lambda t: F.adaptive_max_pool2d(t, 2))
    with wv.linearized(f):
        y = f(x)
    torch.testing.assert_close(y, F.adaptive_avg_pool2d(x, 2))


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Conv2d(c, 2, 1)
        self.fc2 = nn.Conv2d(2, c, 1)

    def forward(self, x):
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


@pytest.mark.parametrize("gate", [0.5, 0.25])
def test_sigmoid_gate_is_frozen_to_the_stated_constant(gate):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SqueezeExcite(4)).eval()
    x = torch.randn(1, 3, 8, 8)
    with wv.linearized(model, gate=gate):
        y = model(x)
    torch.testing.assert_close(y, gate * model[0](x))


def test_hardsigmoid_gate_and_inplace_sigmoid():
    x = torch.randn(1, 3, 4, 4)
    for fn in (lambda t: t * F.hardsigmoid(t.mean((2, 3), keepdim=True)),
               lambda t: t * t.mean((2, 3), keepdim=True).sigmoid_()):
        f = Lambda(fn)
        with wv.linearized(f):
            y = f(x)
        torch.testing.assert_close(y, 0.5 * x)


def test_batchnorm_stays_affine_and_train_mode_is_restored(tiny):
    tiny.train()
    x = torch.randn(2, 3, 8, 8)
    with wv.linearized(tiny):
        assert not tiny.training and not tiny.bn1.training
        y = tiny(x)
    assert tiny.training and tiny.bn1.training
    bn = tiny.bn1
    h = (tiny.conv1(x) - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    h = h * bn.weight[:, None, None] + bn.bias[:, None, None]
    h = tiny.conv3(tiny.conv2(h))  # torch.relu between conv2 and conv3 -> identity
    torch.testing.assert_close(y, tiny.fc(h.mean((2, 3))), rtol=1e-5, atol=1e-5)


def test_timm_batchnormact_hides_its_activation_inside():
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    bn = BatchNormAct2d(4, act_layer=nn.ReLU6).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = 5 * torch.randn(1, 4, 5, 5)
    affine = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    with wv.linearized(bn):
        y = bn(x)
    torch.testing.assert_close(y, affine)
    assert not torch.allclose(bn(x), affine)  # ReLU6 really acts outside


def test_linearized_resnet_is_affine_in_its_input(resnet18):
    """Reused ReLU modules, max-pool and residual adds: f(a x1 + b x2) - f(0) is linear."""
    torch.manual_seed(1)
    x1, x2 = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with torch.no_grad(), wv.linearized(resnet18):
        f0 = resnet18(torch.zeros(1, 3, 32, 32))
        f1, f2 = resnet18(x1) - f0, resnet18(x2) - f0
        f12 = resnet18(2 * x1 - 3 * x2) - f0
    torch.testing.assert_close(f12, 2 * f1 - 3 * f2, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # the real network is not
        g0 = resnet18(torch.zeros(1, 3, 32, 32))
        g12 = resnet18(2 * x1 - 3 * x2) - g0
        g1, g2 = resnet18(x1) - g0, resnet18(x2) - g0
    assert not torch.allclose(g12, 2 * g1 - 3 * g2, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "fn, op",
    [
        (lambda x: torch.log_softmax(x, 1), "log_softmax"),
        (lambda x: F.normalize(x, dim=1), "norm"),
        (lambda x: x * x, "mul"),
        (lambda x: x / (x.abs() + 1), "abs"),
        (lambda x: torch.tanh(x), "tanh"),
        (lambda x: F.batch_norm(x, None, None, training=True), "batch_norm"),
    ],
)
def test_unknown_nonlinear_op_fails_naming_it(fn, op):
    model = nn.Sequential(nn.Conv2d(2, 2, 1), Lambda(fn)).eval()
    with pytest.raises(WeightvizError, match=op), wv.linearized(model):
        model(torch.randn(1, 2, 4, 4))
    assert not model[0]._forward_hooks and not model._forward_pre_hooks


def test_ops_not_depending_on_the_input_are_untouched():
    class Gain(nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.tensor([0.3, -1.0, 2.0]))

        def forward(self, x):
            w = torch.softmax(self.logits, 0)  # nonlinear, but only on a parameter
            return x * w[None, :, None, None] + torch.relu(self.logits).sum()

    m = Gain()
    x = torch.randn(1, 3, 2, 2)
    with wv.linearized(m):
        y = m(x)
    torch.testing.assert_close(y, m(x))


def test_no_hooks_left_and_works_under_no_grad(tiny):
    x = torch.randn(1, 3, 8, 8)
    before = tiny(x)
    with torch.no_grad(), wv.linearized(tiny):
        tiny(x)
    with pytest.raises(RuntimeError, match="boom"), wv.linearized(tiny):
        raise RuntimeError("boom")
    for m in tiny.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    torch.testing.assert_close(tiny(x), before)
    assert torch.relu(torch.tensor(-1.0)) == 0  # the mode is gone


def test_linearized_rejects_non_modules():
    with pytest.raises(WeightvizError, match="nn.Module"), wv.linearized("resnet"):
        pass


# ------------------------------------------------------------------ self-gating products (issue 13, 2)
SELF_GATED = {
    "x * sigmoid(x)": (lambda x: x * torch.sigmoid(x), F.silu),
    "sigmoid(x) * x": (lambda x: torch.sigmoid(x) * x, F.silu),
    "x.mul(x.sigmoid())": (lambda x: x.mul(x.sigmoid()), F.silu),
    "y.mul_(y.sigmoid())": (lambda x: _inplace_silu(x), F.silu),
    "x * relu6(x + 3) / 6": (lambda x: x * F.relu6(x + 3) / 6, F.hardswish),
    "x * (relu6(x + 3.) / 6.)": (lambda x: x * (F.relu6(x + 3.0) / 6.0), F.hardswish),
    "x * hardsigmoid(x)": (lambda x: x * F.hardsigmoid(x), F.hardswish),
    "x * clamp(x + 3, 0, 6).div(6)": (lambda x: x * (x + 3).clamp(0, 6).div(6), F.hardswish),
    "quick gelu x * sigmoid(1.702 x)": (lambda x: x * torch.sigmoid(1.702 * x), F.gelu),
}


def _inplace_silu(x):
    y = x.clone()
    return y.mul_(torch.sigmoid(y))


class _Three(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)
        self.act = act

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.mark.parametrize("name", list(SELF_GATED))
def test_self_gating_product_linearizes_like_the_fused_op(name):
    hand, fused = SELF_GATED[name]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    m_hand = _Three(Lambda(hand)).eval()
    # the functions agree (a check of the test itself), their stand-ins too
    h = torch.randn(50)
    torch.testing.assert_close(hand(h), fused(h), atol=2e-2 if "gelu" in name else 1e-6, rtol=0)
    with wv.linearized(m_hand):
        y = m_hand(x)
    torch.testing.assert_close(y, m_hand.b(m_hand.a(x)), rtol=1e-5, atol=1e-5)   # activation -> identity
    m_fused = _Three(Lambda(fused)).eval()
    m_fused.load_state_dict(m_hand.state_dict())
    for src in (None, "a"):
        e_hand = wv.expanded_weights(m_hand, src, "b")
        e_fused = wv.expanded_weights(m_fused, src, "b")
        torch.testing.assert_close(e_hand, e_fused, rtol=1e-5, atol=1e-6 * float(e_fused.abs().max()))


def test_squeeze_excite_gate_of_another_tensor_stays_frozen():
    """Only a gate of the multiplied tensor itself is a self-gate: SE (gate of a pooled branch) stays 0.5,
    and a gate computed before the gated tensor changed in place is not a self-gate either."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4)
    f = Lambda(lambda t: (t * 2) * torch.sigmoid(t))        # gate of t, multiplying 2t: frozen
    with wv.linearized(f):
        y = f(x)
    torch.testing.assert_close(y, 0.5 * 2 * x)

    def changed(t):
        t = t.clone()
        g = torch.sigmoid(t)
        t.add_(1.0)
        return t * g

    m = Lambda(changed)
    with wv.linearized(m):
        y = m(x)
    torch.testing.assert_close(y, 0.5 * (x + 1))
    m = Lambda(lambda t: (t * 2) * F.relu6(t + 3))
    with pytest.raises(WeightvizError, match="product of two tensors"):
        with wv.linearized(m):
            m(x)


# --------------------------------------------------- reductions feeding only a sigmoid gate (issue 13, 3)
@pytest.mark.parametrize("arch", ["CbamModule", "LightCbamModule"])
def test_cbam_attention_gates_linearize(arch):
    from timm.layers import cbam as tl

    torch.manual_seed(0)
    cbam = getattr(tl, arch)(8, rd_ratio=0.25).eval()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), cbam, nn.Conv2d(8, 4, 3, padding=1)).eval()
    x = torch.randn(1, 3, 9, 9)
    with wv.linearized(model):
        y = model(x)
    # both gates (channel, then spatial) frozen to 0.5: the linear map is 0.25 * conv2(conv1(x))
    torch.testing.assert_close(y, model[2](0.25 * model[0](x)), rtol=1e-5, atol=1e-5)
    E = wv.expanded_weights(model, "0", "2")
    ref = 0.25 * wv.weights(model, "2")
    torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-6)


def test_amax_reaching_the_result_is_still_refused():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    for fn in (lambda t: t * 0.5 + t.amax(1, keepdim=True), lambda t: t.amax((2, 3)),
               lambda t: t.max(1).values, lambda t: torch.maximum(t, t * 2)):
        model = nn.Sequential(conv, Lambda(fn)).eval()
        with pytest.raises(WeightvizError, match=r"amax|max|maximum") as e:
            with wv.linearized(model):
                model(torch.randn(1, 3, 5, 5))
        assert "\n" not in str(e.value)
    model = nn.Sequential(conv, Lambda(lambda t: t + t.amax(1, keepdim=True)), nn.Conv2d(4, 2, 1)).eval()
    with pytest.raises(WeightvizError, match="amax"):
        wv.expanded_weights(model, "0", "2")

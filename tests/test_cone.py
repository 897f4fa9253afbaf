"""Cone-restricted conv backward (weightviz._cone) against plain autograd, and expanded weights on the
autograd path with and without cones (the unrestricted backward is the reference)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import weightviz as wv
from weightviz.expand import _trace
from weightviz.expand import expanded as ex
from weightviz.expand import field as _field
from weightviz.linearize import cone as _cone
from weightviz.linearize.linearizer import DEFAULT_GATE


@pytest.fixture(autouse=True)
def autograd_path(monkeypatch):
    """These tests are about the autograd path (used when the composed path cannot run): fields from the
    structural probe, which records the cones."""
    monkeypatch.setattr(_trace, "COMPOSE", False)
    _field._RF_CACHE.clear()
    yield
    _field._RF_CACHE.clear()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(1, 5), s=st.integers(1, 3), d=st.integers(1, 2), p=st.integers(0, 3),
    groups=st.sampled_from([1, 2, 4]), hw=st.integers(6, 14), data=st.data(),
)
def test_cone_conv_backward_equals_autograd(k, s, d, p, groups, hw, data):
    assume(hw + 2 * p - d * (k - 1) - 1 >= 0)  # the conv has an output
    torch.manual_seed(0)
    c_in, c_out = 4, 8
    x = torch.randn(1, c_in, hw, hw + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64)
    y = F.conv2d(x, w, None, s, p, d, groups)
    H, W = y.shape[-2:]
    r0 = data.draw(st.integers(0, H - 1))
    r1 = data.draw(st.integers(r0 + 1, H))
    c0 = data.draw(st.integers(0, W - 1))
    c1 = data.draw(st.integers(c0 + 1, W))
    go = torch.zeros_like(y)
    go[..., r0:r1, c0:c1] = torch.randn(1, c_out, r1 - r0, c1 - c0, dtype=torch.float64)
    (ref,) = torch.autograd.grad(y, x, go)
    xc = x.detach().requires_grad_(True)
    yc = _cone.ConeConv2d.apply(xc, w, None, (s, s), (p, p), (d, d), groups, (r0, r1, c0, c1))
    assert torch.equal(yc, y.detach())
    (got,) = torch.autograd.grad(yc, xc, go)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_cone_pointwise_backward_under_vmap_equals_autograd():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 9, 7)
    w = torch.randn(5, 6)
    box = (2, 6, 1, 4)
    cots = torch.zeros(3, 1, 5, 9, 7)
    cots[..., 2:6, 1:4] = torch.randn(3, 1, 5, 4, 3)
    _, vjp = torch.func.vjp(lambda t: _cone.ConePointwise.apply(t, w, box), x)
    (got,) = torch.func.vmap(vjp)(cots)
    _, vjp_ref = torch.func.vjp(lambda t: torch.einsum("oi,bihw->bohw", w, t), x)
    (ref,) = torch.func.vmap(vjp_ref)(cots)
    torch.testing.assert_close(got, ref)


def test_box_of():
    g = torch.zeros(1, 3, 8, 8)
    assert _cone.box_of(g) is None
    g[0, 1, 2, 5] = 1.0
    g[0, 2, 4, 3] = -2.0
    assert _cone.box_of(g) == (2, 5, 3, 6)


def _without_cones(model, src, dst):
    rf = _field._field(model, src, dst, None)
    units = list(range(rf.dst_shape[0]))
    return ex._expand(model, src, dst, units, dataclasses.replace(rf, cones=()), DEFAULT_GATE), rf


class Branchy(nn.Module):
    """Strided, dilated, grouped and TF-SAME-padded convs, a residual add, a concat and a branch that
    never reaches the dst layer (its conv gets no cone)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.c = nn.Conv2d(8, 8, 1)
        self.dead = nn.Conv2d(8, 4, 3, padding=1)
        self.e = nn.Conv2d(16, 6, 3, stride=2)

    def forward(self, x):
        x = torch.relu(self.a(x))
        y = self.b(x) + self.c(x)
        self.last_dead = self.dead(y)          # computed, not used by e
        y = torch.cat([y, x], 1)
        return self.e(F.pad(y, (0, 1, 0, 1)))  # TF-"SAME"-style asymmetric padding


@pytest.mark.parametrize("src, dst", [("a", "e"), ("a", "b")])
def test_expanded_weights_equal_with_and_without_cones_tiny(src, dst):
    torch.manual_seed(0)
    model = Branchy().eval()
    ref, rf = _without_cones(model, src, dst)
    assert rf.cones and any(e.box is None for e in rf.cones) == (dst == "e")
    got = wv.expanded_weights(model, src, dst)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    paths = wv.expanded_weights(model, src, dst, paths=True)
    torch.testing.assert_close(sum(paths.paths.values()), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("src, dst", [("blocks.2.0", "blocks.3.0"), ("blocks.4.0", "blocks.5.0.conv_pw")])
def test_expanded_weights_equal_with_and_without_cones_lite0(lite0, src, dst):
    ref, rf = _without_cones(lite0, src, dst)
    # the boxes are real restrictions: some cone is smaller than its conv's output map
    assert any(e.box is not None and (e.box[1] - e.box[0]) * (e.box[3] - e.box[2]) < e.in_hw[0] * e.in_hw[1] / 2
               for e in rf.cones)
    got = wv.expanded_weights(lite0, src, dst)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


class InplaceAdd(nn.Module):
    """A residual add written ``y.add_(...)`` with its return value ignored, inside one concat input."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(4, 4, 1)
        self.e = nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        y = self.b(x)
        y.add_(self.c(x))
        return self.e(torch.cat([y, x], 1))


@pytest.mark.parametrize("model_cls, n_routes", [(Branchy, 3), (InplaceAdd, 3)])
def test_paths_count_each_route_once(model_cls, n_routes):
    """A merge on one concat input only (b + c) must not split the route through the other input (x):
    three routes (b, c, x), summing to the total."""
    torch.manual_seed(0)
    model = model_cls().eval()
    r = wv.expanded_weights(model, "a", "e", paths=True)
    assert len(r.paths) == n_routes, list(r.paths)
    torch.testing.assert_close(sum(r.paths.values()), r.total, rtol=1e-5, atol=1e-6)
    assert all(float(p.abs().max()) > 0 for p in r.paths.values())

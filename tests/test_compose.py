"""Composition of recorded ops on cropped tensors (weightviz._compose) against the autograd path of
expanded weights (a different implementation: batched VJP through the linearized forward), plus the
fallback when an op on the route cannot be composed. The slow per-unit references of test_expand.py
also run through the composed path (it is the default)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz.expand import _trace
from weightviz.expand import field as _field
from weightviz.linearize import compose as _compose


@pytest.fixture
def spy(monkeypatch):
    """Counts compose() results: {'used': n, 'fallback': n}."""
    counts = {"used": 0, "fallback": 0}
    orig = _compose.compose

    class Spy(dict):
        tape = None

    counts = Spy(counts)
    spy = counts

    def wrapped(*args, **kwargs):
        res = orig(*args, **kwargs)
        counts["used" if res is not None else "fallback"] += 1
        spy.tape = args[0]
        return res

    monkeypatch.setattr(_compose, "compose", wrapped)
    return counts


def autograd_path(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as mp:
        mp.setattr(_trace, "COMPOSE", False)
        return wv.expanded_weights(*args, **kwargs)


def assert_same(got, ref):
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("src, dst", [
    ("blocks.1.0", "blocks.2.0"), ("blocks.3.0", "blocks.4.0.conv_pw"), (None, "blocks.0.0"),
    ("conv_stem", "blocks.1.0.conv_dw"),
])
def test_lite0_composed_equals_autograd(lite0, spy, monkeypatch, src, dst):
    got = wv.expanded_weights(lite0, src, dst)
    assert spy == {"used": 1, "fallback": 0}
    assert_same(got, autograd_path(monkeypatch, lite0, src, dst))


@pytest.mark.parametrize("src, dst", [
    ("maxpool2", "inception3a"), ("inception3a", "inception3b.branch3.1"), ("inception3b", "inception4a.branch2.0"),
])
def test_googlenet_composed_equals_autograd(googlenet, spy, monkeypatch, src, dst):
    """Concatenations, functional ReLU, max-pools with ceil_mode (-> average pools)."""
    got = wv.expanded_weights(googlenet, src, dst, units=range(0, 64, 3))
    assert spy["used"] == 1
    assert_same(got, autograd_path(monkeypatch, googlenet, src, dst, units=range(0, 64, 3)))


def test_resnet18_inplace_residual_and_paths(resnet18, spy, monkeypatch):
    """``out += identity`` and in-place ReLU (new tape nodes for the same tensor), per-path sums."""
    got = wv.expanded_weights(resnet18, "layer1.0", "layer2.0", paths=True)
    assert spy["used"] >= 3 and spy["fallback"] == 0
    ref = autograd_path(monkeypatch, resnet18, "layer1.0", "layer2.0", paths=True)
    assert_same(got.total, ref.total)
    assert list(got.paths) == list(ref.paths)
    for k in got.paths:
        assert_same(got.paths[k], ref.paths[k])


class CeilPool(nn.Module):
    """A max-pool with ceil_mode whose last windows stick out of the map (smaller divisor there)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.b = nn.Conv2d(4, 5, 7, padding=3)

    def forward(self, x):
        return self.b(self.pool(torch.relu(self.a(x))))


@pytest.mark.parametrize("size", [12, 16])
def test_ceil_mode_pool_with_cut_windows(spy, monkeypatch, size):
    torch.manual_seed(0)
    model = CeilPool().eval()
    # a small forced input: the field is truncated and reaches the cut windows at the border
    got = wv.expanded_weights(model, "a", "b", input_size=size)
    assert spy["used"] == 1
    assert any("out_factor" in op.params for op in spy.tape.ops)
    assert_same(got, autograd_path(monkeypatch, model, "a", "b", input_size=size))


class Upsampled(nn.Module):
    """An op compose does not know (nearest upsampling) on the route, and one on a dead branch."""

    def __init__(self, on_route: bool):
        super().__init__()
        self.on_route = on_route
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        up = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.on_route:
            x = up[..., ::2, ::2] * 2 - x   # the same map as x, through ops compose does not record
        return self.b(x)


@pytest.mark.parametrize("on_route", [True, False])
def test_unknown_op_falls_back_to_autograd_only_when_on_the_route(spy, monkeypatch, on_route):
    torch.manual_seed(0)
    model = Upsampled(on_route).eval()
    got = wv.expanded_weights(model, "a", "b")
    assert spy == ({"used": 0, "fallback": 1} if on_route else {"used": 1, "fallback": 0})
    assert_same(got, wv.weights(model, "b"))   # the route through up[..., ::2, ::2] * 2 - x is the identity


def test_tape_records_each_version_of_an_inplace_tensor():
    tape = _compose.Tape()
    x = torch.zeros(1, 2, 4, 4)
    with wv.linearized(nn.Identity(), track_inputs=False, tape=tape) as lin:
        lin.track(x)
        n0 = lin.node_of(x)
        y = x + 1            # add with an untracked number: one tracked operand
        y.add_(x)            # in place: a new node for y
        assert lin.node_of(y) != n0
    kinds = [op.kind for op in tape.ops]
    assert kinds == ["add", "add"]
    assert tape.ops[1].ins == [tape.ops[0].out, n0] and tape.ops[1].params["coef"] == [1.0, 1.0]


class SqueezeExcite(nn.Module):
    """conv -> SE (mean, conv, ReLU, conv, sigmoid gate) -> conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.reduce = nn.Conv2d(8, 2, 1)
        self.expand = nn.Conv2d(2, 8, 1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = self.a(x)
        s = self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True))))
        return self.b(x * torch.sigmoid(s))


def test_squeeze_excite_gate_is_a_constant_and_the_gate_branch_no_route(spy, monkeypatch):
    torch.manual_seed(0)
    model = SqueezeExcite().eval()
    got = wv.expanded_weights(model, "a", "b")
    assert spy["used"] == 1   # the squeeze branch (mean, an op compose does not know) ends at the gate
    assert_same(got, 0.5 * wv.weights(model, "b"))
    assert_same(wv.expanded_weights(model, "a", "b", gate=0.25), 0.25 * wv.weights(model, "b"))
    # from inside the gate branch nothing reaches b: a clear error (the structural probe used to fail on a
    # float64 gate multiplying the float32 main branch)
    with pytest.raises(wv.WeightvizError, match="sigmoid gate"):
        wv.expanded_weights(model, "expand", "b")


@pytest.mark.parametrize("fixture, src, dst", [
    ("lite0", "blocks.2.0", "blocks.3.0"), ("lite0", None, "blocks.1.0"), ("googlenet", None, "inception3a"),
    ("googlenet", "inception3a", "inception3b"), ("resnet18", "layer1.0", "layer2.0"),
])
@pytest.mark.parametrize("size", [32, 56, 96])
def test_field_from_tape_boxes_equals_structural_probe(request, fixture, src, dst, size):
    """Box propagation over the recorded ops gives the same field (size, start, stride, truncation) as the
    float64 gradient-support probe, at sizes where it is truncated and where it is not."""
    import dataclasses

    model = request.getfixturevalue(fixture)
    got = _field._tape_probe(model, src, dst, size)
    ref = _field._structural_probe(model, src, dst, size)
    assert got is not None
    assert dataclasses.replace(got, cones=()) == dataclasses.replace(ref, cones=())


class InplaceOnView(nn.Module):
    """``y[:, :2] += b(x)``: an in-place op on a view changes ``y``, which a tape of tensor versions cannot
    follow; the autograd path must run (and gives the right answer)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 2, 3, padding=1)
        self.c = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        x = self.a(x)
        y = x * 1.0
        y[:, :2] += self.b(x)
        return self.c(y)


def test_inplace_on_a_view_falls_back(spy, monkeypatch):
    torch.manual_seed(0)
    model = InplaceOnView().eval()
    got = wv.expanded_weights(model, "a", "c")
    assert spy["used"] == 0
    # reference: c ∘ (identity + [b; 0]) composed by hand
    wc, wb = wv.weights(model, "c")[:, :, 0, 0], wv.weights(model, "b")
    ref = torch.zeros(3, 4, 3, 3)
    ref[:, :, 1, 1] = wc
    ref += torch.einsum("om,mikl->oikl", wc[:, :2], wb)
    assert_same(got, ref)


def test_scale_folds_into_its_conv_only_when_the_conv_output_has_no_other_use():
    w = torch.randn(4, 3, 3, 3)
    s = torch.rand(4) + 0.5
    conv = _compose.Op("conv", [0], 1, {"w": w, "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1),
                                        "groups": 1})
    scale = _compose.Op("scale", [1], 2, {"factor": s})
    folded = _compose._fold_scales([scale, conv], keep=(0, 2))
    assert [op.kind for op in folded] == ["conv"] and folded[0].ins == [0] and folded[0].out == 2
    torch.testing.assert_close(folded[0].params["w"], w * s[:, None, None, None])
    other = _compose.Op("identity", [1], 3)   # node 1 also feeds another op: keep both
    assert [op.kind for op in _compose._fold_scales([other, scale, conv], keep=(0, 2))] == ["identity", "scale", "conv"]
    assert [op.kind for op in _compose._fold_scales([scale, conv], keep=(0, 1))] == ["scale", "conv"]


def test_reference_paths_switch_public_and_restored(lite0, spy):
    """``weightviz.expand.reference_paths()`` runs the autograd path (no composition) and the probe field
    search, gives the same weights, and restores the fast paths on exit, also after an error."""
    from weightviz.expand import reference_paths

    fast = wv.expanded_weights(lite0, "blocks.1.0", "blocks.2.0", units=[0, 3])
    used = dict(spy)
    with reference_paths():
        assert (_trace.COMPOSE, _trace.FAST_FIELD) == (False, False)
        ref = wv.expanded_weights(lite0, "blocks.1.0", "blocks.2.0", units=[0, 3])
    assert spy == used                   # the composer was not asked inside the context
    assert_same(fast, ref)
    with pytest.raises(ZeroDivisionError), reference_paths(weights=False):
        assert (_trace.COMPOSE, _trace.FAST_FIELD) == (True, False)
        raise ZeroDivisionError
    assert (_trace.COMPOSE, _trace.FAST_FIELD) == (True, True)

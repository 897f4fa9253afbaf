"""Issue 20, items 5 and 6: how far the cases and the window can be trusted.

- ``Cases.stability``: a hand-built unit whose signed gradients have rank 2 (six orderings of three
  detectors) has no unique one-sided factorization: restarts disagree (stability < 0.9, a
  WeightvizWarning, a note on the figure); the boundary detector's two cases are stable.
- ``DataWeights.outside``: the share of the gradient's squared norm outside the window, against an
  independent full-map autograd computation, on a squeeze-excite block (global route: large) and on a
  plain conv stack (0).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz.conditioned import cases, data_weights
from weightviz.errors import WeightvizWarning


def _warnings(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(x.message) for x in w if issubclass(x.category, WeightvizWarning)]


# ------------------------------------------------------------------------------------------- stability
class Orderings(nn.Module):
    """Three detector channels d_0, d_1, d_2 (``src``: identity); one ``mid`` channel per ordering
    ``(i, j, k)`` of the three (strongest to weakest): ``relu(K_i * d_i - K_k * d_k - 0.75)`` (``K``: known
    positive 3x3 kernels summing to 1); ``dst`` sums them. On an image where the levels are 1, 0.5, 0 in the
    order ``(i, j, k)`` only that ordering fires, and the gradient is ``(K_i on d_i, -K_k on d_k)``: six
    signed patterns spanning rank 2 (each is a difference of per-detector patterns)."""

    def __init__(self, ks):
        super().__init__()
        self.src = nn.Conv2d(3, 3, 1, bias=False)
        self.mid = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.dst = nn.Conv2d(6, 1, 1)
        w = torch.zeros(6, 3, 3, 3)
        for o, (i, _j, k) in enumerate(itertools.permutations(range(3))):
            w[o, i], w[o, k] = ks[i], -ks[k]
        with torch.no_grad():
            self.src.weight.copy_(torch.eye(3)[:, :, None, None])
            self.mid.weight.copy_(w)
            self.mid.bias.fill_(-0.75)
            self.dst.weight.fill_(1.0)
            self.dst.bias.fill_(0.0)

    def forward(self, x):
        return self.dst(self.relu(self.mid(self.src(x))))


def _orderings(n=60, s=9):
    g = torch.Generator().manual_seed(0)
    ks = torch.rand(3, 3, 3, generator=g) + 0.2
    ks = ks / ks.sum((1, 2), keepdim=True)
    model = Orderings(ks).eval()
    perms = list(itertools.permutations(range(3)))
    x = torch.zeros(n, 3, s, s)
    for i in range(n):
        for level, ch in zip((1.0, 0.5, 0.0), perms[i % 6]):
            x[i, ch] = level
    x += 0.01 * torch.randn(x.shape, generator=g)
    truth = torch.zeros(6, 3, 3, 3)
    for o, (i, _j, k) in enumerate(perms):
        truth[o, i], truth[o, k] = ks[i], -ks[k]
    return model, x, truth


def test_orderings_unit_is_unstable_and_warns():
    model, x, truth = _orderings()
    d = data_weights(model, "src", "dst", 0, x, position="centre")
    assert torch.linalg.matrix_rank(d.weights.flatten(1)) == 2     # the signed gradients have rank 2
    for n_cases in (3, 4):
        c, msgs = _warnings(lambda n_cases=n_cases: cases(model, "src", "dst", 0, x, n_cases, position="centre"))
        assert 0.0 <= c.stability < 0.9
        assert any("not unique" in m and "stability" in m for m in msgs), msgs
        # the cases found are not the true patterns
        cos = F.cosine_similarity(c.patterns.flatten(1)[:, None], truth.flatten(1)[None], dim=2)
        assert float(cos.max(1).values.min()) < 0.95
    fig = wv.figures.cases(c, k=2, fv=False)
    assert fig.data["stability"] == pytest.approx(c.stability)
    assert fig.data["note"] and "not unique" in fig.data["note"]


def test_restarts_zero_means_not_measured():
    model, x, _ = _orderings(n=24)
    c, msgs = _warnings(lambda: cases(model, "src", "dst", 0, x, 3, position="centre", restarts=0))
    assert c.stability == 1.0 and not msgs


def test_boundary_detector_is_stable_no_warning():
    from test_conditioned import Boundary

    g = torch.Generator().manual_seed(0)
    model = Boundary(torch.rand(3, 3, generator=g) + 0.2, torch.rand(3, 3, generator=g) + 0.2).eval()
    n, s = 48, 12
    x = 0.05 * torch.randn(n, 2, s, s, generator=g)
    x[: n // 3, 0] += 1.0
    x[n // 3: 2 * n // 3, 1] += 1.0
    x[2 * n // 3:, 0, :, : s // 2] += 1.0
    x[2 * n // 3:, 1, :, s // 2:] += 1.0
    c, msgs = _warnings(lambda: cases(model, "src", "dst", 0, x, n_cases=2, n_examples=4))
    assert c.stability >= 0.9 and not msgs
    fig = wv.figures.cases(c, k=2, fv=False)
    assert fig.data["note"] is None


# ---------------------------------------------------------------------------------------------- outside
class SENet(nn.Module):
    """conv -> ReLU -> [squeeze-excite: global avg pool -> linear -> ReLU -> linear -> sigmoid gate] -> conv.
    The gate reads the whole map: the gradient of one dst position reaches every src position."""

    def __init__(self, se: bool = True):
        super().__init__()
        self.src = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.se = se
        self.fc1 = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 8)
        self.dst = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.mid(torch.relu(self.src(x))))
        if self.se:
            gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(h.mean((2, 3))))))
            h = h * gate[:, :, None, None]
        return self.dst(h)


def _ref_outside(model, x, unit, positions, win):
    """Independent: per image, a full forward, autograd of dst[unit] at its position w.r.t. src's whole map,
    the squared norm outside the window's box over the total."""
    out = []
    for i in range(x.shape[0]):
        cap = {}

        def hs(_m, _i, o, cap=cap):
            cap["z"] = o.detach().requires_grad_(True)
            return cap["z"] * 1.0

        def hd(_m, _i, o, cap=cap):
            cap["y"] = o

        h1 = model.src.register_forward_hook(hs)
        h2 = model.dst.register_forward_hook(hd)
        try:
            with torch.enable_grad():
                model(x[i:i + 1])
        finally:
            h1.remove()
            h2.remove()
        p = tuple(positions[i].tolist())
        (g,) = torch.autograd.grad(cap["y"][0, unit][p], cap["z"])
        e = g[0].double().pow(2).sum(0)
        r0, c0 = win.start(p)
        kh, kw = win.size
        mask = torch.ones_like(e, dtype=torch.bool)
        mask[max(0, r0):max(0, r0 + kh), max(0, c0):max(0, c0 + kw)] = False
        out.append(float(e[mask].sum() / e.sum()))
    return torch.tensor(out)


def _se_model(x):
    """A SENet whose gate is sensitive on ``x`` (large fc weights, biases centring the gate's input on these
    images, so the sigmoid is not saturated)."""
    torch.manual_seed(0)
    m = SENet().eval()
    with torch.no_grad():
        h = torch.relu(m.mid(torch.relu(m.src(x)))).mean((2, 3))
        m.fc1.weight.mul_(30.0)
        m.fc1.bias.copy_(-(h @ m.fc1.weight.T).mean(0))
        m.fc2.weight.mul_(30.0)
        m.fc2.bias.copy_(-m.fc2(torch.relu(m.fc1(h))).mean(0))
    return m


@pytest.mark.parametrize("position", ["max", "centre"])
def test_outside_share_squeeze_excite(position):
    x = torch.randn(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    model = _se_model(x)
    d, msgs = _warnings(lambda: data_weights(model, "src", "dst", 2, x, position=position))
    assert d.outside.shape == (5,)
    ref = _ref_outside(model, x, 2, d.positions, d.window)
    torch.testing.assert_close(d.outside.double(), ref.double(), rtol=1e-4, atol=1e-6)
    assert float(d.outside.max()) > 0.2            # a large share that the K x K window drops ...
    if position == "centre":
        assert bool(d.inside.all())                # ... while every window position exists
    assert any("outside" in m for m in msgs), msgs
    # several units: the same numbers per unit
    dm, _ = _warnings(lambda: data_weights(model, "src", "dst", [0, 2], x, position=position))
    torch.testing.assert_close(dm.outside[1], d.outside)


def test_outside_zero_on_plain_conv_stack():
    torch.manual_seed(0)
    model = SENet(se=False).eval()
    x = torch.randn(4, 3, 16, 16)
    d, msgs = _warnings(lambda: data_weights(model, "src", "dst", 1, x))
    assert float(d.outside.abs().max()) <= 1e-6
    assert not [m for m in msgs if "outside" in m]
    ref = _ref_outside(model, x, 1, d.positions, d.window)
    assert float(ref.abs().max()) <= 1e-6

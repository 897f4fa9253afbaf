"""Issue 20, item 9: many units per data pass. ``data_weights`` / ``cases`` with a list of units (or a unit
spec) share one forward over the images and take each unit's gradient from its cone; the results equal
the per-unit calls (float32, relative to the max |gradient|), the single-unit API and shapes are
unchanged, and global routes (squeeze-excite) fall back to full-map backwards with the same numbers."""

from __future__ import annotations

import warnings

import pytest
import torch

import weightviz as wv
from weightviz.conditioned import cases, data_weights


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _check_equal_to_loop(model, src, dst, units, x, **kw):
    d = data_weights(model, src, dst, units, x, **kw)
    assert isinstance(d.unit, list) and d.units == list(units)
    n = x.shape[0]
    for i, u in enumerate(units):
        r = data_weights(model, src, dst, u, x, **kw)
        assert d.weights[i].shape == r.weights.shape
        assert _rel(d.weights[i], r.weights) <= 1e-5
        torch.testing.assert_close(d.activations[i], r.activations, rtol=1e-5, atol=1e-6)
        assert torch.equal(d.positions[i], r.positions) and torch.equal(d.inside[i], r.inside)
        torch.testing.assert_close(d.outside[i], r.outside, rtol=1e-4, atol=1e-6)
        one = d.for_unit(u)
        assert one.unit == u and one.weights.shape == r.weights.shape and torch.equal(one.weights, d.weights[i])
    assert d.activations.shape == (len(units), n) and d.positions.shape == (len(units), n, 2)
    return d


@pytest.mark.parametrize("position", ["max", "centre", (2, 1)])
@pytest.mark.parametrize("attribution", [False, True])
def test_tiny_many_units_equal_loop(tiny, position, attribution):
    from test_conditioned import _smooth_images

    x = _smooth_images(5, 3, 20, seed=7)
    d = _check_equal_to_loop(tiny, "conv1", "conv3", [0, 3, 1], x, position=position, attribution=attribution,
                             batch_size=2)
    assert d.weights.dim() == 5


@pytest.mark.parametrize("src,dst,size", [("blocks.2.0", "blocks.3.0", 64), ("blocks.1.0", "blocks.2.0", 57),
                                          (None, "blocks.1.0", 40)])
def test_lite0_many_units_equal_loop(lite0, src, dst, size):
    x = wv.images(n=5, size=size, model=lite0).tensor()
    d = _check_equal_to_loop(lite0, src, dst, list(range(0, 12, 3)), x, batch_size=4)
    assert d.weights.shape[:2] == (4, 5)


def test_unit_spec_string_and_shapes(lite0):
    x = wv.images(n=3, size=48, model=lite0).tensor()
    d = data_weights(lite0, "blocks.2.0", "blocks.3.0", "0:4", x)
    assert d.units == [0, 1, 2, 3]
    assert d.weights.shape == (4, 3, 40, 7, 7) and d.inside.shape == (4, 3, 7, 7) and d.outside.shape == (4, 3)
    single = data_weights(lite0, "blocks.2.0", "blocks.3.0", 2, x)
    assert single.unit == 2 and single.weights.shape == (3, 40, 7, 7) and single.outside.shape == (3,)
    with pytest.raises(wv.WeightvizError, match="per unit"):
        d.input_boxes()
    with pytest.raises(wv.WeightvizError, match="one unit"):
        wv.figures.data_weights(d, fv=False)
    with pytest.raises(wv.WeightvizError, match="not in this result"):
        d.for_unit(9)
    with pytest.raises(wv.WeightvizError, match="out of range"):
        data_weights(lite0, "blocks.2.0", "blocks.3.0", [0, 999], x)


def test_squeeze_excite_falls_back_to_full_backwards():
    from test_cases_honesty import _se_model

    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    model = _se_model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", wv.WeightvizWarning)
        d = _check_equal_to_loop(model, "src", "dst", [0, 1, 2, 3], x)
    assert float(d.outside.max()) > 0.2


def test_cases_many_units_equal_single():
    from test_conditioned import Boundary

    g = torch.Generator().manual_seed(0)
    model = Boundary(torch.rand(3, 3, generator=g) + 0.2, torch.rand(3, 3, generator=g) + 0.2).eval()
    # a second unit: same detector, other bias
    model.dst = torch.nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        model.dst.weight.fill_(1.0)
        model.dst.bias.copy_(torch.tensor([-0.05, -0.2]))
    x = 0.05 * torch.randn(24, 2, 10, 10, generator=g)
    x[:12, 0] += 1.0
    x[12:, 1] += 1.0
    many = cases(model, "src", "dst", [0, 1], x, n_cases=2, n_examples=3)
    assert isinstance(many, list) and len(many) == 2
    for u, c in enumerate(many):
        one = cases(model, "src", "dst", u, x, n_cases=2, n_examples=3)
        assert c.data.unit == u
        assert c.explained == pytest.approx(one.explained, rel=1e-5, abs=1e-6)
        assert _rel(c.patterns, one.patterns) <= 1e-4
        assert c.stability == pytest.approx(one.stability, abs=1e-4)
        assert [e.indices for e in c.examples] == [e.indices for e in one.examples]

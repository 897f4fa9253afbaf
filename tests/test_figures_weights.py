"""NMF and RGB neuron grids: content, labels, units, PNG/SVG output, registry, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import weightviz as wv
from weightviz import WeightvizError
from weightviz.figures import FIGURES, nmf_grid, rgb_weights_grid


def test_registered():
    assert FIGURES["nmf"] is nmf_grid and FIGURES["rgb_weights"] is rgb_weights_grid


def test_nmf_grid_content_matches_nmf_image(tiny, tmp_path):
    fig = nmf_grid(tiny, "conv2", units="2:7")
    assert fig.data["units"] == [2, 3, 4, 5, 6] and fig.data["labels"] == ["2", "3", "4", "5", "6"]
    assert fig.data["kernel"] == (3, 3) and fig.data["shared"] is False
    expected = wv.nmf_image(tiny.conv2.weight.detach()[2:7])
    np.testing.assert_allclose(fig.data["images"], expected.numpy(), atol=1e-6)
    png, svg = fig.save(tmp_path / "g.png"), fig.save(tmp_path / "g.svg")
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 80
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "conv2" in text and "one-sided NMF" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "g.svg"]  # no temp files left


def test_nmf_grid_shared_fits_whole_layer(tiny):
    full = wv.nmf_image(tiny.conv2.weight.detach(), shared=True)
    fig = nmf_grid(tiny, "conv2", units=[9, 1], shared=True)
    np.testing.assert_allclose(fig.data["images"], full[[9, 1]].numpy(), atol=1e-6)
    assert "colours shared across neurons" in fig.fig.get_suptitle()


def test_nmf_grid_depthwise_lite0(lite0):
    fig = nmf_grid(lite0, "blocks.2.1.conv_dw", units="0:4")
    assert fig.data["images"].shape == (4, 5, 5, 3)
    # one input channel: two factors (stronger sign part red, the other green), blue unused
    assert np.all(fig.data["images"][..., 2] == 0)


def test_rgb_weights_grid_lite0_stem(lite0):
    fig = rgb_weights_grid(lite0)
    assert fig.data["layer"] == "conv_stem" and len(fig.data["units"]) == 32
    W = wv.weights(lite0, "conv_stem")
    np.testing.assert_allclose(fig.data["images"], wv.rgb_weights(W).numpy())
    assert fig.data["scale"] == pytest.approx(float(W.abs().max()))
    png = fig.to_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_rgb_weights_grid_units_use_layer_scale(tiny):
    sub = rgb_weights_grid(tiny, "conv1", units="0:2").data["images"]
    full = rgb_weights_grid(tiny, "conv1").data["images"]
    np.testing.assert_array_equal(sub, full[:2])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: nmf_grid(m, "conv9"), r"unknown layer 'conv9'.*Did you mean"),
        (lambda m: nmf_grid(m, "conv2", units="10:40"), "out of range: layer 'conv2' has 16 channels"),
        (lambda m: nmf_grid(m, "conv2", units=[]), "no units selected"),
        (lambda m: nmf_grid(m, "bn1"), "has no conv/linear weight"),
        (lambda m: rgb_weights_grid(m, "conv2"), r"8 input channels, RGB display needs 3.*layer='conv1'"),
    ],
)
def test_errors(tiny, call, match):
    with pytest.raises(WeightvizError, match=match):
        call(tiny)


def test_nan_weights_rejected(tiny):
    with torch.no_grad():
        tiny.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightvizError, match="non-finite"):
        nmf_grid(tiny, "conv2")


def test_shared_legend_names_channel_factors(lite0, tiny):
    fig = nmf_grid(lite0, "blocks.2.1.conv_dw", units="0:3", shared=True)
    # one input per neuron: the shared factors are exactly "positive" and "negative" weights
    inputs = fig.data["factor_inputs"]
    assert sorted(k for items in inputs for k, _ in items) == ["+", "-"]
    assert "red = " in fig.fig.get_suptitle() and "negative weights" in fig.fig.get_suptitle()
    # dense layer: each factor's loadings name input channels with a sign, strongest first
    fig = nmf_grid(tiny, "conv2", shared=True)
    _, _, H = wv.nmf_image(tiny.conv2.weight.detach(), shared=True, return_factors=True)
    top = int(H[0].argmax())
    expected = f"{'+' if top < 8 else '-'}{top % 8}"
    assert fig.data["factor_inputs"][0][0][0] == expected
    assert f"red: {expected}" in fig.fig.get_suptitle()

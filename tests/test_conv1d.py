"""1-D convolutions (issue 20.4): a ``Conv1d`` output ``[B, C, L]`` is never read as ``[B, N, C]`` tokens.
Expanded weights, fields and renders refuse 1-D conv maps in one line; the layer table reads their channels
from the producing module; 2-D pairs of a CNN with a Conv1d elsewhere (ECA gates) are unaffected."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz.errors import WeightvizError
from weightviz.models import tokens as _tokens
from weightviz.optvis import objectives as obj

REFUSAL = "1-D convolutions are not supported"


class Mixed(nn.Module):
    """A Conv2d stem flattened into a 1-D map, two Conv1d layers, then a norm (GroupNorm or LayerNorm over the
    channels of each position, which makes the model one with norm modules) or none, and a block."""

    def __init__(self, norm: str | None):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv1d(8, 6, 3, padding=1)
        self.c2 = nn.Conv1d(6, 5, 3, padding=1)
        self.norm = {"group": nn.GroupNorm(1, 5), "layer": None, None: nn.Identity()}[norm] or nn.Identity()
        self.ln = nn.LayerNorm(5) if norm == "layer" else None
        self.blk = nn.Sequential(nn.Conv1d(5, 4, 3, padding=1), nn.ReLU())

    def forward(self, x):
        y = self.norm(self.c2(self.c1(self.stem(x).flatten(2))))
        if self.ln is not None:
            y = self.ln(y.transpose(1, 2)).transpose(1, 2)
        return self.blk(y)


class Pure(nn.Module):
    """A model of Conv1d layers only: it takes [B, C, L] sequences."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding=1)
        self.c2 = nn.Conv1d(6, 5, 3, padding=1)
        self.blk = nn.Sequential(nn.Conv1d(5, 4, 3), nn.ReLU())

    def forward(self, x):
        return self.blk(self.c2(self.c1(x)))


def _one_line(e):
    assert REFUSAL in str(e.value) and "\n" not in str(e.value)


def _mixed(norm):
    torch.manual_seed(0)
    m = Mixed(norm).eval()
    m.weightviz_input_spec = wv.InputSpec(size=16)
    return m


@pytest.mark.parametrize("norm", ["group", "layer", None])
@pytest.mark.parametrize("src, dst", [("c1", "c2"), ("stem", "c1"), ("stem", "norm"), ("c2", "blk"),
                                      ("stem", "blk"), (None, "blk.1")])
def test_expanded_weights_refuse_1d_maps(norm, src, dst):
    """Never a silently wrong [L, L, C] tensor, a 'token layer' message or a conv1d shape error."""
    m = _mixed(norm)
    with pytest.raises(WeightvizError) as e:
        wv.expanded_weights(m, src, dst, units=[0])
    _one_line(e)
    with pytest.raises(WeightvizError) as e:
        wv.receptive_field(m, dst, src)
    _one_line(e)


def test_pure_conv1d_model_is_refused():
    m = Pure().eval()
    for src, dst in [("c1", "c2"), (None, "c1"), ("c2", "blk")]:
        with pytest.raises(WeightvizError) as e:
            wv.expanded_weights(m, src, dst)
        _one_line(e)
        with pytest.raises(WeightvizError) as e:
            wv.receptive_field(m, dst, src)
        _one_line(e)
    with pytest.raises(WeightvizError) as e:
        wv.render(m, obj.channel("c2", 0), size=16, steps=1, progress=False)
    _one_line(e)


@pytest.mark.parametrize("norm", ["group", None])
def test_layer_table_reads_1d_maps_by_their_module(norm):
    m = _mixed(norm)
    table = wv.layers(m)
    L = 16 * 16
    assert not table["stem"].conv1d and table["stem"].out_shape == (8, 16, 16)
    for name, c in [("c1", 6), ("c2", 5), ("norm", 5), ("blk", 4)]:
        if name in table:
            assert table[name].conv1d and table[name].out_shape == (c, L) and table[name].out_channels == c
    if norm == "group":   # was read as 256... tokens of 5 channels: out_channels 256
        assert table["norm"].out_channels == 5
    assert _tokens.layout((5, L), conv1d=True).kind == "ncl" and not _tokens.layout((5, L), conv1d=True).is_token
    assert _tokens.layout((197, 192)).kind == "tokens"     # without the module's word, a 3-D output is tokens


@pytest.mark.parametrize("layer", ["c2", "norm", "blk"])
def test_render_refuses_1d_maps(layer):
    m = _mixed("group")
    with pytest.raises(WeightvizError) as e:
        wv.render(m, obj.channel(layer, 0), size=16, steps=1, progress=False)
    _one_line(e)


class ECA(nn.Module):
    """An efficient-channel-attention gate: a Conv1d over the pooled channels ([B, 1, C]), sigmoid, scale."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv(x.mean((2, 3))[:, None, :])
        return x * torch.sigmoid(y)[:, 0, :, None, None]


class EcaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.eca = ECA()
        self.b = nn.Conv2d(4, 5, 3)

    def forward(self, x):
        return self.b(self.eca(self.a(x)))


def test_2d_pairs_around_a_conv1d_gate_still_expand():
    """The Conv1d of an ECA gate is a 1-D map (refused as a layer of its own), but the 2-D pair across the
    gate expands exactly: the gate frozen at 0.5, conv a composed with conv b."""
    torch.manual_seed(0)
    m = EcaNet().eval()
    E = wv.expanded_weights(m, None, "b")
    ref = 0.5 * F.conv_transpose2d(m.b.weight.detach(), m.a.weight.detach())
    torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-6)
    assert wv.layers(m)["eca.conv"].conv1d and not wv.layers(m)["b"].conv1d
    with pytest.raises(WeightvizError) as e:
        wv.expanded_weights(m, "a", "eca.conv")
    _one_line(e)

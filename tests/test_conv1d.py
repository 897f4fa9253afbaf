"""1-D convolutions (issue 20.4): a ``Conv1d`` output ``[B, C, L]`` is never read as ``[B, N, C]`` tokens.
Expanded weights between two 1-D conv maps are exact ``[C_out, C_in, K]`` (the kernel for adjacent layers, the
full 1-D convolution of kernels for two); a 1-D and a 2-D layer, fields and renders of 1-D maps are refused in
one line; the layer table reads their channels from the producing module; 2-D pairs of a CNN with a Conv1d
elsewhere (ECA gates) are unaffected."""

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
def test_adjacent_1d_layers_give_the_kernel(norm):
    """c1 -> c2 is c2's kernel [C_out, C_in, K] exactly, whatever norm the model holds (never an [L, L, C]
    tensor read from tokens)."""
    m = _mixed(norm)
    E = wv.expanded_weights(m, "c1", "c2")
    assert E.shape == (5, 6, 3)
    torch.testing.assert_close(E, m.c2.weight.detach())
    torch.testing.assert_close(wv.expanded_weights(m, "c1", "c2", units=[4, 1]), m.c2.weight.detach()[[4, 1]])


@pytest.mark.parametrize("norm", ["group", "layer", None])
def test_two_1d_layers_compose_as_a_full_convolution(norm):
    """c1 -> blk.0 through c2 (and the norm, frozen: unit scale) is conv1d . conv1d = the full 1-D convolution
    of the kernels (conv_transpose1d), times the frozen norm's per-channel weight."""
    m = _mixed(norm)
    if norm == "group":
        with torch.no_grad():
            m.norm.weight.copy_(torch.linspace(0.5, 2.0, 5))
    E = wv.expanded_weights(m, "c1", "blk.0", norm_scale="unit")
    w3 = m.blk[0].weight.detach()
    if norm == "group":
        w3 = w3 * m.norm.weight.detach()[None, :, None]
    if norm == "layer":   # a layer norm over the channels of each position keeps its mean subtraction
        w3 = (w3 - w3.mean(1, keepdim=True)) * m.ln.weight.detach()[None, :, None]
    ref = F.conv_transpose1d(w3, m.c2.weight.detach())
    assert E.shape == ref.shape == (4, 6, 5)
    torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stride, dilation", [(2, 1), (1, 2), (2, 3)])
def test_strided_dilated_1d_composition(stride, dilation):
    """conv(k1, stride s1) then conv(k2, dilation d2): K = s1*d2*(k2-1) + k1 - 1 + 1, the composition
    conv_transpose1d(W2, W1, stride=s1*d2) with the dilated W2 taps."""
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(2, 3, 3, padding=1)
            self.b = nn.Conv1d(3, 4, 3, stride=stride, padding=1)
            self.c = nn.Conv1d(4, 5, 3, dilation=dilation, padding=dilation)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.a(x))))

    m = Net().eval()
    E = wv.expanded_weights(m, "a", "c")
    ref = F.conv_transpose1d(m.c.weight.detach(), m.b.weight.detach(), stride=stride * dilation)
    assert E.shape == ref.shape == (5, 3, stride * dilation * 2 + 3)
    torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-6)
    E0 = wv.expanded_weights(m, None, "b")   # from the sequence input: b's kernel through a
    torch.testing.assert_close(E0, F.conv_transpose1d(m.b.weight.detach(), m.a.weight.detach()), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("norm", ["group", "layer", None])
@pytest.mark.parametrize("src, dst", [("stem", "c1"), ("stem", "norm"), ("stem", "blk"), (None, "blk.1")])
def test_a_1d_and_a_2d_layer_are_refused(norm, src, dst):
    """Across the flatten from a 2-D map into a 1-D map: one line, never a 'token layer' message or a conv1d
    shape error."""
    m = _mixed(norm)
    with pytest.raises(WeightvizError) as e:
        wv.expanded_weights(m, src, dst, units=[0])
    _one_line(e)


@pytest.mark.parametrize("norm", ["group", "layer", None])
@pytest.mark.parametrize("src, dst", [("c1", "c2"), ("stem", "norm"), ("c2", "blk")])
def test_receptive_field_refuses_1d_maps(norm, src, dst):
    m = _mixed(norm)
    with pytest.raises(WeightvizError) as e:
        wv.receptive_field(m, dst, src)
    _one_line(e)


def test_pure_conv1d_model():
    """A model of Conv1d layers takes sequences: expanded weights are exact, fields and renders refuse."""
    torch.manual_seed(0)
    m = Pure().eval()
    torch.testing.assert_close(wv.expanded_weights(m, "c1", "c2"), m.c2.weight.detach())
    E = wv.expanded_weights(m, None, "blk")
    ref = F.conv_transpose1d(F.conv_transpose1d(m.blk[0].weight.detach(), m.c2.weight.detach()),
                             m.c1.weight.detach())
    assert E.shape == ref.shape == (4, 3, 7)
    torch.testing.assert_close(E, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightvizError) as e:
        wv.receptive_field(m, "c2", "c1")
    _one_line(e)
    with pytest.raises(WeightvizError) as e:
        wv.render(m, obj.channel("c2", 0), size=16, steps=1, progress=False)
    _one_line(e)
    with pytest.raises(WeightvizError, match="paths=") as e:
        wv.expanded_weights(m, "c1", "blk", paths=True)


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

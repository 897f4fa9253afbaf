"""Expanded weights against independent references: the explicit conv_transpose2d composition
(methods.md), a layer's own weights, and a slow hand-linearized copy with one backward per unit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import weightviz as wv
from weightviz.errors import WeightvizError
from weightviz.expand import _trace
from weightviz.testing import slow_expanded_weights


# ------------------------------------------------------------------------------ independent references
def embed_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Smallest ``|ref - ours placed at some offset| / |ref|`` over all placements of ours ``[U, C, K, K]``
    inside the reference map ``[U, C, H, W]`` (so the check does not trust our own field position)."""
    kh, kw = ours.shape[-2:]
    h, w = ref.shape[-2:]
    best = float("inf")
    for r in range(h - kh + 1):
        for c in range(w - kw + 1):
            emb = torch.zeros_like(ref)
            emb[..., r:r + kh, c:c + kw] = ours
            best = min(best, float((ref - emb).norm() / ref.norm()))
    return best


# ------------------------------------------------------------------------ exact composition identity
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)),
    k1=st.integers(1, 4), k2=st.integers(1, 4),
    s1=st.integers(1, 3), s2=st.integers(1, 2),
    d1=st.integers(1, 2), d2=st.integers(1, 2),
    p1=st.integers(0, 2), p2=st.integers(0, 2),
    middle=st.sampled_from(["none", "bn_relu"]),
    seed=st.integers(0, 2**16),
    composed=st.booleans(),
)
def test_two_convs_equal_conv_transpose_composition(c, k1, k2, s1, s2, d1, d2, p1, p2, middle, seed, composed):
    """Both paths: the recorded ops composed on windows (default) and the autograd path."""
    torch.manual_seed(seed)
    c0, c1, c2 = c
    conv1 = nn.Conv2d(c0, c1, k1, stride=s1, dilation=d1, padding=p1)
    conv2 = nn.Conv2d(c1, c2, k2, stride=s2, dilation=d2, padding=p2)
    mid: list[nn.Module] = []
    w1 = conv1.weight.detach()
    if middle == "bn_relu":
        bn = nn.BatchNorm2d(c1)
        with torch.no_grad():
            bn.weight.uniform_(-2, 2)
            bn.running_var.uniform_(0.5, 2)
            bn.running_mean.uniform_(-1, 1)
        mid = [bn, nn.ReLU()]
        w1 = w1 * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()[:, None, None, None]
    model = nn.Sequential(nn.Identity(), conv1, *mid, conv2).eval()
    dst = str(len(model) - 1)
    expected = F.conv_transpose2d(conv2.weight.detach(), w1, stride=s1 * d2, dilation=d1)
    before = _trace.COMPOSE
    _trace.COMPOSE = composed
    try:
        got = wv.expanded_weights(model, "0", dst)
    finally:
        _trace.COMPOSE = before
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_from_model_input_and_receptive_field_of_a_conv_stack():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)).eval()
    rf = wv.receptive_field(model, "2")
    assert rf.size == (7, 7) and rf.stride == (2, 2) and not rf.truncated  # 2*(3-1) + 3 = 7
    got = wv.expanded_weights(model, None, "2")
    expected = F.conv_transpose2d(model[2].weight.detach(), model[0].weight.detach(), stride=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wv.expanded_weights(model, None, "0"), wv.weights(model, "0"))


# ------------------------------------------------------------------- adjacent layers = their weights
@pytest.mark.parametrize("src, dst", [
    ("blocks.2.0.bn1", "blocks.2.0.conv_dw"),     # depthwise 5x5, stride 2, asymmetric TF-SAME (Conv2dSame)
    ("blocks.2.1.bn2", "blocks.2.1.conv_pwl"),  # output of BatchNormAct2d (ReLU6 inside), 1x1
])
def test_adjacent_layers_give_their_dense_weights_lite0(lite0, src, dst):
    got = wv.expanded_weights(lite0, src, dst)
    ref = wv.weights(lite0, dst, dense=True)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_adjacent_layers_across_reused_relu_resnet(resnet18):
    got = wv.expanded_weights(resnet18, "layer1.0.bn1", "layer1.0.conv2")
    ref = wv.weights(resnet18, "layer1.0.conv2")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


# ----------------------------------------------------------------------- against the slow reference
@pytest.mark.parametrize("src, dst, units, size", [
    ("inception3a", "inception3b.branch3.1.conv", [0, 17, 63, 95], 64),   # bottleneck jump, F.relu inside
    ("maxpool2", "inception3a", [0, 70, 200, 255], 64),                   # all branches incl. max-pool one
])
def test_googlenet_matches_slow_reference(googlenet, src, dst, units, size):
    ours = wv.expanded_weights(googlenet, src, dst, units=units)
    ref = slow_expanded_weights(googlenet, src, dst, units, size)
    assert embed_error(ours, ref) <= 1e-5


def test_resnet18_matches_slow_reference_and_paths_sum(resnet18):
    units = [0, 5, 33, 63]
    res = wv.expanded_weights(resnet18, "layer1.0", "layer1.1", units=units, paths=True)
    ref = slow_expanded_weights(resnet18, "layer1.0", "layer1.1", units, 48)
    assert embed_error(res.total, ref) <= 1e-5
    assert set(res.paths) == {"layer1.1:layer1.1.bn2", "layer1.1:layer1.0"}
    torch.testing.assert_close(sum(res.paths.values()), res.total, rtol=1e-5,
                               atol=1e-6 * float(res.total.abs().max()))
    # the skip path is the identity at the centre of the field (hand-computed)
    skip = res.paths["layer1.1:layer1.0"]
    k = res.field.size[0]
    eye = torch.zeros_like(skip)
    eye[torch.arange(4), torch.tensor(units), k // 2, k // 2] = 1
    assert torch.equal(skip, eye)


def test_lite0_block_to_block_matches_slow_reference(lite0):
    units = [0, 11, 40, 79]
    ours = wv.expanded_weights(lite0, "blocks.2.0", "blocks.3.0", units=units)
    ref = slow_expanded_weights(lite0, "blocks.2.0", "blocks.3.0", units, 96)
    assert ours.shape[-2:] == (7, 7)  # 5x5 depthwise (stride 1) then 3x3 depthwise (stride 2): 5 + 2
    assert embed_error(ours, ref) <= 1e-5


# ------------------------------------------------------------------------------------ paths and via
def test_googlenet_concat_paths_are_the_branches(googlenet):
    units = [3, 130, 330, 420]   # one unit in each branch of inception3b (128 | 192 | 96 | 64 channels)
    res = wv.expanded_weights(googlenet, "inception3a", "inception3b", units=units, paths=True)
    names = [f"inception3b:inception3b.branch{i}" for i in (1, 2, 3, 4)]
    assert list(res.paths) == names
    torch.testing.assert_close(sum(res.paths.values()), res.total, rtol=1e-5,
                               atol=1e-6 * float(res.total.abs().max()))
    for i, name in enumerate(names):
        norms = res.paths[name].flatten(1).norm(dim=1)
        assert norms[i] > 0 and torch.all(norms[torch.arange(4) != i] == 0)


def test_via_bottleneck_sums_to_total(googlenet):
    res = wv.expanded_weights(googlenet, "inception3a", "inception3b.branch3.1.conv", units=[1, 50],
                              via="inception3b.branch3.0.conv")
    assert res.via.shape == (2, 32, 256, 3, 3)
    torch.testing.assert_close(res.via.sum(1), res.total, rtol=1e-4, atol=1e-6)
    assert res.bypass.abs().max() <= 1e-5 * res.total.abs().max()
    # per-unit contributions = expanded(src -> mid unit) composed with expanded(mid unit -> dst)
    e1 = wv.expanded_weights(googlenet, "inception3a", "inception3b.branch3.0.conv", units=[7])[0]
    w2 = wv.weights(googlenet, "inception3b.branch3.1.conv")
    bn = googlenet.inception3b.branch3[0].bn
    scale = float(bn.weight[7] / torch.sqrt(bn.running_var[7] + bn.eps))
    expected = F.conv_transpose2d(w2[[1, 50], 7:8] * scale, e1[None])
    torch.testing.assert_close(res.via[:, 7], expected, rtol=1e-4, atol=1e-7)


def test_via_with_skip_returns_bypass_and_top_k(resnet18):
    res = wv.expanded_weights(resnet18, "layer1.0", "layer1.1", units=[2, 9], paths=True,
                              via="layer1.1.conv1", top=5)
    torch.testing.assert_close(res.bypass, res.paths["layer1.1:layer1.0"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.via.sum(1) + res.remainder, res.total)
    full = wv.expanded_weights(resnet18, "layer1.0", "layer1.1", units=[2, 9], via="layer1.1.conv1")
    norms = full.via.flatten(2).norm(dim=2)
    torch.testing.assert_close(res.via_units, norms.topk(5, dim=1).indices)
    torch.testing.assert_close(full.via.sum(1) + full.bypass, full.total, rtol=1e-5, atol=1e-6)


def test_global_pooling_dst(resnet18):
    """fc after global average pooling: its field is the whole map (needs input_size); from the pooled
    output it is exactly fc's weights; summed over positions, the per-position weights give fc too."""
    with pytest.raises(WeightvizError, match="no spatial axes.*input_size="):
        wv.expanded_weights(resnet18, "layer4", "fc")
    w = wv.weights(resnet18, "fc")[[0, 5]]
    e = wv.expanded_weights(resnet18, "layer4", "fc", units=[0, 5], input_size=64)   # layer4 map: 2x2
    assert e.shape == (2, 512, 2, 2)
    torch.testing.assert_close(e.sum((2, 3), keepdim=True), w)
    torch.testing.assert_close(wv.expanded_weights(resnet18, "avgpool", "fc", units=[0, 5]), w)


# ------------------------------------------------------------------------------------------ top inputs
def test_top_inputs_direct_and_expanded(resnet18, lite0):
    w = wv.weights(resnet18, "layer1.0.conv1")[7]
    top = wv.top_inputs(resnet18, "layer1.0.conv1", 7, k=5)
    norms = w.flatten(1).norm(dim=1)
    assert [c.channel for c in top] == norms.argsort(descending=True)[:5].tolist()
    for c in top:
        assert c.norm == pytest.approx(float(norms[c.channel]))
        assert c.sign == (1 if w[c.channel].sum() > 0 else -1)
        assert torch.equal(c.weight, w[c.channel])
    # grouped conv: dense weights, a depthwise unit has exactly one input
    dw = wv.top_inputs(lite0, "blocks.2.0.conv_dw", 5, k=3)
    assert dw[0].channel == 5 and dw[1].norm == 0
    e = wv.expanded_weights(lite0, "blocks.2.0", "blocks.3.0", units=[4])[0]
    top = wv.top_inputs(lite0, "blocks.3.0", 4, src="blocks.2.0", k=3)
    assert [c.channel for c in top] == e.flatten(1).norm(dim=1).argsort(descending=True)[:3].tolist()
    assert top[0].weight.shape == e.shape[1:]
    # the same ranking from weights already computed
    ranked = wv.rank_connections(e, 3)
    assert [(c.channel, c.norm, c.sign) for c in ranked] == [(c.channel, c.norm, c.sign) for c in top]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(ranked, top))
    assert len(wv.rank_connections(e)) == e.shape[0]


def test_rank_connections_hand_computed_and_bad_input():
    w = torch.zeros(4, 2, 2)
    w[0] = 0.5                       # norm 1, excitatory
    w[2, 0, 0], w[2, 1, 1] = -3, 1   # norm sqrt(10), sum -2: inhibitory
    w[3, 0, 1] = 2                   # norm 2
    got = wv.rank_connections(w, 3)
    assert [(c.channel, c.sign) for c in got] == [(2, -1), (3, 1), (0, 1)]
    assert got[0].norm == pytest.approx(10 ** 0.5)
    assert torch.equal(got[1].weight, w[3])
    # a token map [C_in, N] (between token layers) ranks the same way
    t = torch.zeros(3, 5)
    t[1, 2], t[2] = -2, 0.1
    assert [(c.channel, c.sign) for c in wv.rank_connections(t)] == [(1, -1), (2, 1), (0, 0)]
    for bad in (torch.zeros(6), torch.zeros(2, 3, 4, 5)):
        with pytest.raises(WeightvizError, match=r"\[C_in, kh, kw\]"):
            wv.rank_connections(bad, 1)
    with pytest.raises(WeightvizError, match="positive int"):
        wv.rank_connections(w, 0)


# ------------------------------------------------------------------------ model unchanged, bad input
def test_model_unchanged_and_works_under_no_grad(tiny):
    tiny.train()
    x = torch.randn(2, 3, 16, 16)
    tiny.eval()
    before = tiny(x)
    tiny.train()
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with torch.no_grad():
        e = wv.expanded_weights(tiny, "conv1", "conv3")
    assert e.shape == (4, 8, 3, 3) and not e.requires_grad
    assert tiny.training and all(m.training for m in tiny.modules())
    for m in tiny.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())
    tiny.eval()
    assert torch.equal(tiny(x), before)
    with torch.inference_mode():
        e2 = wv.expanded_weights(tiny, "conv1", "conv3", units=[1])
    torch.testing.assert_close(e2, e[1:2])


def test_bad_input_raises_one_line_errors(tiny):
    with pytest.raises(WeightvizError, match="unknown layer 'conv9'.*conv1"):
        wv.expanded_weights(tiny, "conv1", "conv9")
    with pytest.raises(WeightvizError, match="unit 4 out of range"):
        wv.expanded_weights(tiny, "conv1", "conv3", units=[4])
    with pytest.raises(WeightvizError, match="runs before"):
        wv.expanded_weights(tiny, "conv3", "conv1")
    with pytest.raises(WeightvizError, match="same layer"):
        wv.expanded_weights(tiny, "conv1", "conv1")
    with pytest.raises(WeightvizError, match="top="):
        wv.expanded_weights(tiny, "conv1", "conv3", top=3)
    with pytest.raises(WeightvizError, match="k must be"):
        wv.top_inputs(tiny, "conv3", 0, k=0)
    with pytest.raises(WeightvizError, match="unit 9 out of range"):
        wv.top_inputs(tiny, "conv3", 9)
    for m in tiny.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_reused_module_as_src_is_refused(resnet18):
    with pytest.raises(WeightvizError, match="runs more than once"):
        wv.expanded_weights(resnet18, "layer1.0.relu", "layer1.1.conv1")


def test_no_route_and_unlinearizable_op_between(googlenet):
    with pytest.raises(WeightvizError, match="does not depend"):
        wv.expanded_weights(googlenet, "inception3a.branch1", "inception3a.branch2.0.conv")

    class Soft(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), dim=1))

    # a softmax is frozen at its mean over the images (like a sigmoid gate): no route is left through it
    with pytest.raises(WeightvizError, match="does not depend"):
        wv.expanded_weights(Soft().eval(), "a", "b", images=torch.randn(4, 3, 16, 16))


def test_custom_autograd_function_is_refused():
    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 3  # wrong on purpose: expanded weights must not trust it

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 2, 1)
            self.b = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.b(Twice.apply(self.a(x)))

    with pytest.raises(WeightvizError, match="autograd disabled"):
        wv.expanded_weights(Net().eval(), "a", "b")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_expand_figure_and_tensor(tmp_path, capsys):
    from safetensors.torch import load_file

    from weightviz.cli import main

    png, st = tmp_path / "e.png", tmp_path / "e.safetensors"
    args = ["expand", "torchvision:resnet18@random", "layer1.0", "layer1.1.conv1", "--unit", "4,9", "--top", "5",
            "-o", str(png), "--save", str(st)]
    assert main(args) == 0
    out = capsys.readouterr().out
    saved = load_file(str(st))
    assert saved["expanded_weights"].shape == (2, 64, 3, 3) and saved["units"].tolist() == [4, 9]
    w = saved["expanded_weights"][0]
    table = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[1]) for r in table] == w.flatten(1).norm(dim=1).argsort(descending=True)[:5].tolist()
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_expand_bad_input_exits_2_before_work(tmp_path, capsys):
    from weightviz.cli import main

    assert main(["expand", "torchvision:resnet18@random", "layer1.0", "layer1.1", "-o", str(tmp_path / "x.jpg")]) == 2
    assert "must end in one of .png, .svg" in capsys.readouterr().err
    assert main(["expand", "torchvision:resnet18@random", "layer1.0", "layer1.1", "--save", str(tmp_path / "x.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["expand", "torchvision:resnet18@random", "layer1.0", "layer9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("no weights given: random initialization")  # resnet18 without @file
    assert len(err) == 2 and "unknown layer 'layer9'" in err[1]

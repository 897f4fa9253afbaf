"""Per-example connections and cases (weightviz.conditioned) against independent references: the expanded
weights where everything between the layers is linear, an obvious one-image-at-a-time autograd loop
with the window taken from the receptive field of each position, and a hand-built boundary detector
whose two cases are known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import weightviz as wv
from weightviz.conditioned import cases, data_weights

# ---------------------------------------------------------------------------------------- references


def _ref_window(model, src, dst, size, pos, K):
    """First src row/column of the K x K window of dst position ``pos`` at square input ``size``, from the
    (possibly border-clipped) receptive field of that very position."""
    rf = wv.receptive_field(model, dst, src, input_size=size, target=tuple(pos))
    start = []
    for a in range(2):
        s, n = rf.start[a], rf.size[a]
        if n < K[a]:          # clipped by the border: on the side where the box starts at 0
            s = s + n - K[a] if s == 0 else s
        start.append(s)
    return start


def _ref_loop(model, src, dst, unit, x, position):
    """One image at a time: full forward, autograd of dst[unit] at the position, window cut from the
    zero-padded full gradient map."""
    K = wv.receptive_field(model, dst, src).size
    grads, acts, poss, srcs = [], [], [], []
    for i in range(x.shape[0]):
        cap = {}

        def hs(_m, _i, out, cap=cap):
            cap["z"] = out.detach().requires_grad_(True)
            return cap["z"] * 1.0

        def hd(_m, _i, out, cap=cap):
            cap["y"] = out

        h1 = wv.get_module(model, src).register_forward_hook(hs)
        h2 = wv.get_module(model, dst).register_forward_hook(hd)
        try:
            with torch.enable_grad():
                model(x[i:i + 1])
        finally:
            h1.remove()
            h2.remove()
        y = cap["y"][0, unit]
        hd_, wd_ = y.shape
        if position == "max":
            flat = int(torch.argmax(y.detach().flatten()))
            p = (flat // wd_, flat % wd_)
        elif position == "centre":
            p = ((hd_ - 1) // 2, (wd_ - 1) // 2)
        else:
            p = position
        (g,) = torch.autograd.grad(y[p], cap["z"])
        r0, c0 = _ref_window(model, src, dst, x.shape[-1], p, K)
        pad = max(K)
        gp = F.pad(g[0], (pad, pad, pad, pad))
        zp = F.pad(cap["z"][0].detach(), (pad, pad, pad, pad))
        grads.append(gp[:, r0 + pad:r0 + pad + K[0], c0 + pad:c0 + pad + K[1]])
        srcs.append(zp[:, r0 + pad:r0 + pad + K[0], c0 + pad:c0 + pad + K[1]])
        acts.append(float(y[p]))
        poss.append(p)
    return torch.stack(grads), torch.tensor(acts), torch.tensor(poss), torch.stack(srcs)


def _smooth_images(n, c, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size // 4 + 1, size // 4 + 1, generator=g)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) + \
        0.3 * torch.randn(n, c, size, size, generator=g)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-7)


# --------------------------------------------------------------------------------------- linear case
class LinearNet(nn.Module):
    """conv 3x3 -> BN (eval) -> TF-"SAME" conv 5x5 stride 2 -> conv 3x3 dilation 2 -> (ReLU, pool, fc after)."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = Conv2dSame(6, 5, 5, stride=2)
        self.c3 = nn.Conv2d(5, 4, 3, padding=2, dilation=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.c3(self.c2(self.bn(self.c1(x))))
        return self.fc(torch.relu(x).mean((2, 3)))


@pytest.fixture
def linear_net():
    torch.manual_seed(1)
    m = LinearNet().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("size", [40, 41])
@pytest.mark.parametrize("position", ["max", "centre", (8, 9), (1, 2)])
def test_equals_expanded_weights_when_linear(linear_net, size, position):
    """Equal wherever the position's field is whole (no padding on any route, at any layer); near the
    border padding removes routes in the real model, and the window past the src map is zero."""
    x = _smooth_images(5, 3, size)
    E = wv.expanded_weights(linear_net, "c1", "c3", units=[2])[0]     # [C_src, K, K]
    d = data_weights(linear_net, "c1", "c3", 2, x, position=position, batch_size=2)
    assert d.weights.shape == (5, *E.shape)
    whole = 0
    for i in range(5):
        rf = wv.receptive_field(linear_net, "c3", "c1", input_size=size, target=tuple(d.positions[i].tolist()))
        if rf.size == tuple(E.shape[-2:]) and not rf.truncated:
            whole += 1
            assert bool(d.inside[i].all())
            _close(d.weights[i], E)
        assert bool((d.weights[i][:, ~d.inside[i]] == 0).all())
    if position in ("centre", (8, 9)):
        assert whole == 5
    if position == (1, 2):
        assert whole == 0 and not bool(d.inside.all())


def test_linear_lite0_pair_equals_expanded(lite0):
    x = _smooth_images(3, 3, 64)
    E = wv.expanded_weights(lite0, "blocks.2.0.conv_pwl", "blocks.2.1.conv_pw", units=[7])[0]
    d = data_weights(lite0, "blocks.2.0.conv_pwl", "blocks.2.1.conv_pw", 7, x)
    for i in range(3):
        _close(d.weights[i], E)


# ------------------------------------------------------------------------------- against the loop
@pytest.mark.parametrize("position", ["max", "centre", (0, 3)])
def test_tiny_relu_net_matches_per_image_loop(tiny, position):
    x = _smooth_images(6, 3, 20, seed=3)
    d = data_weights(tiny, "conv1", "conv3", 1, x, position=position, batch_size=4)
    g, a, p, z = _ref_loop(tiny, "conv1", "conv3", 1, x, position)
    _close(d.weights, g)
    _close(d.activations, a)
    assert torch.equal(d.positions, p)
    att = data_weights(tiny, "conv1", "conv3", 1, x, position=position, attribution=True)
    _close(att.weights, g * z)


@pytest.mark.parametrize("position", ["max", "centre", (1, 1)])
def test_lite0_matches_per_image_loop(lite0, position):
    x = wv.images(n=3, size=64, model=lite0).tensor() if position == "max" else _smooth_images(3, 3, 64, seed=5)
    d = data_weights(lite0, "blocks.2.0", "blocks.3.0", 5, x, position=position, batch_size=2)
    g, a, p, z = _ref_loop(lite0, "blocks.2.0", "blocks.3.0", 5, x, position)
    assert d.weights.shape == (3, 40, 7, 7)
    _close(d.weights, g)
    _close(d.activations, a)
    assert torch.equal(d.positions, p)
    if position == "max":
        att = data_weights(lite0, "blocks.2.0", "blocks.3.0", 5, x, position=position, attribution=True)
        _close(att.weights, g * z)


def test_eval_mode_used_and_flags_restored(tiny):
    tiny.train()
    before = tiny.bn1.running_mean.clone()
    x = _smooth_images(4, 3, 16)
    d = data_weights(tiny, "conv1", "conv3", 0, x)
    assert tiny.training and tiny.bn1.training
    assert torch.equal(tiny.bn1.running_mean, before)
    tiny.eval()
    g, *_ = _ref_loop(tiny, "conv1", "conv3", 0, x, "max")
    _close(d.weights, g)


# ----------------------------------------------------------------------------------- ground truth
class Boundary(nn.Module):
    """A boundary detector over two input channels a, b: unit = relu(ka*a - kb*b) + relu(kb*b - ka*a) - 0.05
    (ka, kb: known positive 3x3 kernels). Its expanded weights cancel exactly; its two cases are
    ±(ka on a, -kb on b)."""

    def __init__(self, ka, kb):
        super().__init__()
        self.src = nn.Conv2d(2, 2, 1, bias=False)
        self.mid = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dst = nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.src.weight.copy_(torch.eye(2)[:, :, None, None])
            self.mid.weight.copy_(torch.stack([torch.stack([ka, -kb]), torch.stack([-ka, kb])]))
            self.dst.weight.fill_(1.0)
            self.dst.bias.fill_(-0.05)

    def forward(self, x):
        return self.dst(self.relu(self.mid(self.src(x))))


def test_cases_recover_boundary_detector():
    g = torch.Generator().manual_seed(0)
    ka = torch.rand(3, 3, generator=g) + 0.2
    kb = torch.rand(3, 3, generator=g) + 0.2
    model = Boundary(ka, kb).eval()
    truth = torch.stack([ka, -kb])                         # case "a above b"; the other case is -truth
    n, s = 48, 12
    x = 0.05 * torch.randn(n, 2, s, s, generator=g)
    x[: n // 3, 0] += 1.0                                  # a high
    x[n // 3: 2 * n // 3, 1] += 1.0                        # b high
    x[2 * n // 3:, 0, :, : s // 2] += 1.0                  # a boundary: a left, b right
    x[2 * n // 3:, 1, :, s // 2:] += 1.0
    x[-4:] = 0.0                                           # blank: the unit does not fire
    E = wv.expanded_weights(model, "src", "dst", units=[0])[0]
    assert float(E.norm()) < 1e-5 * float(truth.norm())    # the expanded weight cancels
    c = cases(model, "src", "dst", 0, x, n_cases=2, n_examples=4)
    assert c.patterns.shape == (2, 2, 3, 3) and c.loadings.shape == (n, 2)
    cos = torch.nn.functional.cosine_similarity(c.patterns.flatten(1)[:, None], torch.stack([truth, -truth]).flatten(1)[None],
                                                dim=2)      # [case, truth]
    best = cos.argmax(1)
    assert set(best.tolist()) == {0, 1}
    assert float(cos.max(1).values.min()) >= 0.95
    assert c.explained > 0.95
    assert bool((c.loadings >= 0).all()) and bool((c.loadings[-4:] == 0).all())
    assert c.norm_ratio() > 1e4
    for j in range(2):  # the examples of a case are images of that case
        ex = c.examples[j]
        assert len(ex.indices) == 4 and ex.crops.shape[0] == 4
        signs = [1 if float(x[i, 0].mean() - x[i, 1].mean()) > 0 else -1 for i in ex.indices
                 if i < 2 * n // 3]
        want = 1 if int(best[j]) == 0 else -1
        assert all(sg == want for sg in signs)
    # loadings reconstruct each firing example's gradient
    d = c.data
    fire = d.activations > 0
    rec = torch.einsum("nk,kchw->nchw", c.loadings[fire], c.patterns)
    _close(rec, d.weights[fire])


def test_cases_bad_input():
    g = torch.Generator().manual_seed(1)
    model = Boundary(torch.rand(3, 3, generator=g), torch.rand(3, 3, generator=g)).eval()
    blank = torch.zeros(5, 2, 8, 8)
    with pytest.raises(wv.WeightvizError, match="never fires") as e:
        cases(model, "src", "dst", 0, blank, n_cases=2)
    assert "\n" not in str(e.value)
    x = torch.zeros(5, 2, 8, 8)
    x[:2, 0] = 1.0
    with pytest.raises(wv.WeightvizError, match="more than the data allows") as e:
        cases(model, "src", "dst", 0, x, n_cases=3)
    assert "\n" not in str(e.value)
    with pytest.raises(wv.WeightvizError, match="channels"):
        data_weights(model, "src", "dst", 0, torch.zeros(2, 3, 8, 8))
    with pytest.raises(wv.WeightvizError, match="outside"):
        data_weights(model, "src", "dst", 0, x, position=(9, 0))
    with pytest.raises(wv.WeightvizError, match="position"):
        data_weights(model, "src", "dst", 0, x, position="top")
    with pytest.raises(wv.WeightvizError, match="out of range"):
        data_weights(model, "src", "dst", 3, x)
    with pytest.raises(wv.WeightvizError, match="n_cases"):
        cases(model, "src", "dst", 0, x, n_cases=0)


# ------------------------------------------------------------------------------------------- figures
def _boundary_data():
    g = torch.Generator().manual_seed(0)
    model = Boundary(torch.rand(3, 3, generator=g) + 0.2, torch.rand(3, 3, generator=g) + 0.2).eval()
    x = 0.05 * torch.randn(12, 2, 10, 10, generator=g)
    x[:6, 0] += 1.0
    x[6:, 1] += 1.0
    return model, x


def test_cases_figure_structure(tmp_path):
    from weightviz.figures import FIGURES

    model, x = _boundary_data()
    c = cases(model, "src", "dst", 0, x, n_cases=2, n_examples=3)
    assert FIGURES["cases"] is wv.figures.cases and FIGURES["data-weights"] is wv.figures.data_weights
    fig = wv.figures.cases(c, k=2, fv=False)
    rows = fig.data["cases"]
    assert [r["inputs"] for r in rows] == [[t.channel for t in ti[:2]] for ti in c.top_inputs]
    assert [r["examples"] for r in rows] == [e.indices for e in c.examples]
    shown = torch.cat([c.patterns[j, rows[j]["inputs"]] for j in range(2)] + [c.expanded])
    assert fig.data["vmax"] == pytest.approx(float(shown.abs().max()), rel=1e-6)
    assert fig.data["explained"] == pytest.approx(c.explained)
    fig.save(tmp_path / "cases.svg")
    assert (tmp_path / "cases.svg").read_text().lstrip().startswith("<?xml")
    # from arguments, as the registry calls it
    fig2 = wv.figures.cases(model, "src", "dst", 0, x, 2, k=2, n_examples=3, fv=False)
    assert fig2.data["cases"] == rows
    dfig = wv.figures.data_weights(c.data, n_examples=4, k=2, fv=False)
    acts = c.data.activations
    assert dfig.data["examples"] == acts.argsort(descending=True, stable=True)[:4].tolist()
    dfig.save(tmp_path / "dw.png")
    assert (tmp_path / "dw.png").stat().st_size > 0


def test_example_crops_are_the_input_box_of_the_position():
    model, x = _boundary_data()
    d = data_weights(model, "src", "dst", 0, x)
    boxes = d.input_boxes()
    crops = d.crops([0, 7])
    for j, i in enumerate([0, 7]):
        r0, c0, h, w = boxes[i]
        rf = wv.receptive_field(model, "dst", None, input_size=10, target=tuple(d.positions[i].tolist()))
        assert (h, w) == (3, 3)
        if not rf.truncated:
            assert (r0, c0) == rf.start
        raw = wv.as_images(x, model).raw(i)
        ref = F.pad(raw, (3, 3, 3, 3), value=1.0)[:, r0 + 3:r0 + 3 + h, c0 + 3:c0 + 3 + w]
        torch.testing.assert_close(crops[j], ref)

"""Contextual figures: structure (which inputs, in which order, on which scale) checked against
independent computations from ``weights()`` / ``expanded_weights()``; factor maps against the NMF
reconstruction and a hand-built two-factor family; routes against the explicit composition of their
two hops; FV batching (one render call per figure); errors; CLI.

FVs are switched off (``fv=False``) for structure tests; one test renders real, tiny FVs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import weightviz as wv
from weightviz import WeightvizError
from weightviz import figures as figs
from weightviz.figures._wiring import input_layer

SRC, DST = "blocks.2.0", "blocks.3.0"  # lite0 block-to-block expanded weights (K = 7)
NOFV = {"fv": False, "progress": False}


@pytest.fixture(scope="module")
def E5(lite0):
    """Independent: expanded weights blocks.2.0 -> blocks.3.0 for units 0..9, [10, 40, 7, 7]."""
    return wv.expanded_weights(lite0, SRC, DST, units=list(range(10)))


def assert_top_k(chosen, scores, k, rtol=1e-5):
    """``chosen`` are the ``k`` largest ``scores``, strongest first, up to float32 rounding: the figure and
    the test compute the scores on different paths, so near-ties may come in either order."""
    scores = [float(v) for v in scores]
    assert len(chosen) == len(set(chosen)) == k
    got = [scores[c] for c in chosen]
    assert all(a >= b * (1 - rtol) for a, b in zip(got, got[1:])), got
    rest = [v for i, v in enumerate(scores) if i not in chosen]
    assert not rest or min(got) >= max(rest) * (1 - rtol), (min(got), max(rest))


# ------------------------------------------------------------------------------------- top inputs
def test_top_inputs_expanded_order_scale_signs(lite0, E5):
    fig = figs.top_inputs(lite0, DST, 5, src=SRC, k=6, **NOFV)
    w = E5[5]  # [40, 7, 7]
    norms = w.flatten(1).norm(dim=1)
    d = fig.data
    assert_top_k(d["inputs"], norms, 6)
    expected = d["inputs"]
    assert d["input_layer"] == SRC and d["slice_shape"] == [7, 7]
    assert np.allclose(d["norms"], [float(norms[c]) for c in expected], rtol=1e-5)
    assert d["signs"] == [int(np.sign(float(w[c].sum()))) for c in expected]
    assert d["vmax"] == pytest.approx(float(w[expected].abs().max()), rel=1e-5)
    # the shown scale is the max over the shown slices, not over all inputs
    # (the figure computes unit 5 alone, E5 ten units at once: batched products round differently, ~1e-7)
    assert d["vmax"] <= float(w.abs().max()) * (1 + 1e-5)


def test_top_inputs_direct_googlenet(googlenet):
    layer = "inception3a.branch2.1.conv"
    fig = figs.top_inputs(googlenet, layer, 17, k=5, **NOFV)
    W = wv.weights(googlenet, layer)[17]  # [96, 3, 3]
    assert_top_k(fig.data["inputs"], W.flatten(1).norm(dim=1), 5)
    order = fig.data["inputs"]
    assert fig.data["input_layer"] == "inception3a.branch2.0"  # the BasicConv2d block (ReLU inside)
    assert fig.data["vmax"] == pytest.approx(float(W[order].abs().max()), rel=1e-5)


def test_expanded_figure_matches_top_inputs(lite0, E5):
    fig = figs.expanded(lite0, SRC, DST, 2, k=12, **NOFV)
    norms = E5[2].flatten(1).norm(dim=1)
    assert_top_k(fig.data["inputs"], norms, 12)
    assert fig.data["figure"] == "expanded"


# ------------------------------------------------------------------------------ grids of weights
def test_small_multiples_default_inputs_and_scale(googlenet):
    layer, units = "conv3.conv", [3, 40, 7]
    fig = figs.small_multiples(googlenet, None, layer, units, k=5, **NOFV)
    W = wv.weights(googlenet, layer)[units]  # [3, 64, 3, 3]
    strength = [sum(float(W[u, i].norm()) ** 2 for u in range(3)) for i in range(W.shape[1])]
    d = fig.data
    assert_top_k(d["inputs"], strength, 5)
    expected = d["inputs"]
    assert d["units"] == units
    assert d["rows"] == {"layer": layer, "units": units}
    assert d["cols"] == {"layer": "conv2", "units": expected}
    assert d["vmax"] == pytest.approx(float(W[:, expected].abs().max()), rel=1e-5)


def test_family_grid_rows_inputs_cols_outputs(lite0, E5):
    src_units, dst_units = [4, 0, 11], [6, 1]
    fig = figs.family_grid(lite0, src_units, dst_units, SRC, DST, **NOFV)
    d = fig.data
    assert d["rows"] == {"layer": SRC, "units": src_units}  # order as given
    assert d["cols"] == {"layer": DST, "units": dst_units}
    assert d["vmax"] == pytest.approx(float(E5[dst_units][:, src_units].abs().max()), rel=1e-5)


# ------------------------------------------------------------------------------ spatial positions
def test_spatial_fade_proportional_to_position_norms(googlenet):
    layer = "conv3.conv"
    fig = figs.spatial_positions(googlenet, layer, 9, min_fade=0.5, **NOFV)
    W = wv.weights(googlenet, layer)[9]  # [64, 3, 3]
    norms = np.array([[float(W[:, y, x].norm()) for x in range(3)] for y in range(3)])
    d = fig.data
    assert np.allclose(d["norms"], norms, rtol=1e-5)
    assert np.allclose(d["fade"], norms / norms.max(), rtol=1e-5)
    assert d["window"] == (0, 0, 3, 3)
    assert d["rendered"] == [(y, x) for y in range(3) for x in range(3) if norms[y, x] / norms.max() >= 0.5]


def test_spatial_window_holds_most_weight(lite0, E5):
    fig = figs.spatial_positions(lite0, DST, 5, src=SRC, max_size=4, **NOFV)
    norms = E5[5].norm(dim=0).numpy()  # [7, 7]
    # brute force over every 4x4 window: the shown one holds the most squared norm
    energy = {(y, x): float((norms[y:y + 4, x:x + 4] ** 2).sum()) for y in range(4) for x in range(4)}
    y0, x0, h, w = fig.data["window"]
    assert (h, w) == (4, 4)
    assert energy[(y0, x0)] == pytest.approx(max(energy.values()), rel=1e-5)
    assert np.allclose(fig.data["fade"], norms[y0:y0 + 4, x0:x0 + 4] / norms.max(), rtol=1e-5)


# ----------------------------------------------------------------------------------- weight factors
def test_factorize_family_recovers_planted_factors():
    # a family built from 2 non-negative directions with disjoint support and signed spatial maps:
    # its one-sided matrix has non-negative rank 2, so the factors must come back exactly
    g = torch.Generator().manual_seed(0)
    C, N, K = 12, 6, 5
    d = torch.zeros(2, C)
    d[0, :5] = torch.rand(5, generator=g) + 0.2
    d[1, 6:] = torch.rand(6, generator=g) + 0.2
    maps = torch.randn(2, N, K, K, generator=g)
    W = torch.einsum("fnyx,fc->ncyx", maps, d)
    out = figs.factorize_family(W, 2, iters=2000)
    assert float((out["reconstruction"] - W).norm() / W.norm()) < 1e-3
    H = out["directions"]
    unit = d / d.norm(dim=1, keepdim=True)
    match = max(float((H[0] @ unit[p0]) + (H[1] @ unit[p1])) for p0, p1 in [(0, 1), (1, 0)])
    assert match > 2 - 1e-3  # both directions recovered (cosine ~1)


def test_weight_factors_maps_reconstruct(lite0, E5):
    units = list(range(8))
    fig = figs.weight_factors(lite0, SRC, DST, units, n_factors=2, n_top=3, **NOFV)
    d = fig.data
    maps = torch.tensor(d["maps"])  # [F, N, K, K]
    H = torch.tensor(d["directions"])  # [F, C]
    assert maps.shape == (2, 8, 7, 7) and H.shape == (2, 40)
    # independent NMF reconstruction: X = concat(relu(W), relu(-W)) over units, A fitted given H
    out = figs.factorize_family(E5[units], 2)
    Xhat = (out["A"] @ out["directions"]).reshape(2, 8, 7, 7, 40)
    recon = (Xhat[0] - Xhat[1]).permute(0, 3, 1, 2)
    assert torch.allclose(torch.einsum("fnyx,fc->ncyx", maps, H), recon, atol=1e-5)
    err = float((E5[units] - recon).norm() / E5[units].norm())
    assert d["recon_error"] == pytest.approx(err, rel=1e-4)
    assert d["vmax"] == pytest.approx(float(maps.abs().max()), rel=1e-5)
    for f in range(2):
        assert d["top_inputs"][f] == torch.argsort(H[f], descending=True)[:3].tolist()
        assert (H[f] >= 0).all()


def test_weight_factors_googlenet_direct(googlenet):
    fig = figs.weight_factors(googlenet, None, "conv3.conv", "0:6", n_factors=3, **NOFV)
    assert fig.data["input_layer"] == "conv2" and fig.data["n_factors"] == 3
    W = wv.weights(googlenet, "conv3.conv")[:6]
    Wh = torch.einsum("fnyx,fc->ncyx", torch.tensor(fig.data["maps"]), torch.tensor(fig.data["directions"]))
    assert float((W - Wh).norm() / W.norm()) == pytest.approx(fig.data["recon_error"], rel=1e-4)


# -------------------------------------------------------------------------------------------- paths
def test_paths_routes_compose_their_hops(lite0):
    src, mid, dst, unit, s = SRC, "blocks.2.1", DST, 5, 7
    fig = figs.paths(lite0, src, mid, dst, unit, s, n_routes=4, **NOFV)
    d = fig.data
    # independent: every route through a mid unit m is hop2[m] composed with hop1[m] (stride 1 here)
    h1 = wv.expanded_weights(lite0, src, mid)[:, s]  # [40, 5, 5]
    h2 = wv.expanded_weights(lite0, mid, dst, units=[unit])[0]  # [40, 3, 3]
    routes = torch.stack([F.conv_transpose2d(h2[m][None, None], h1[m][None, None])[0, 0]
                          for m in range(h1.shape[0])])  # [40, 7, 7]
    norms = routes.flatten(1).norm(dim=1)
    expected = torch.argsort(norms, descending=True)[:4].tolist()
    assert d["routes"] == expected
    assert np.allclose(d["contributions"], routes[expected].numpy(), atol=1e-5)
    assert np.allclose(d["hop1"], h1[expected].numpy(), atol=1e-6)
    assert np.allclose(d["hop2"], h2[expected].numpy(), atol=1e-6)
    total = wv.expanded_weights(lite0, src, dst, units=[unit])[0, s]
    assert np.allclose(d["total"], total.numpy(), atol=1e-5)
    # every route passes the block output blocks.2.1: the routes sum to the total
    assert torch.allclose(routes.sum(0), total, atol=1e-4)
    assert d["cancellation"] == pytest.approx(float(total.norm() / norms.sum()), rel=1e-4)
    assert d["scales"]["route"] == pytest.approx(
        float(torch.cat([routes[expected], total[None], (total - routes[expected].sum(0))[None]]).abs().max()),
        rel=1e-5)


def test_paths_googlenet_through_bottleneck(googlenet):
    # inception3a -> inception3b.branch2.0 (1x1 conv + BN + ReLU) -> inception3b.branch2.1.conv (3x3):
    # the route through bottleneck unit m is W2[u, m] * (W1[m, s] * bn_scale[m]), computed by hand here
    src, mid, dst, u, s = "inception3a", "inception3b.branch2.0", "inception3b.branch2.1.conv", 11, 30
    fig = figs.paths(googlenet, src, mid, dst, u, s, n_routes=5, **NOFV)
    bn = googlenet.inception3b.branch2[0].bn
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    W1 = wv.weights(googlenet, "inception3b.branch2.0.conv")[:, s, 0, 0] * scale  # [96]
    W2 = wv.weights(googlenet, dst)[u]  # [96, 3, 3]
    routes = W2 * W1[:, None, None]
    norms = routes.flatten(1).norm(dim=1)
    expected = torch.argsort(norms, descending=True)[:5].tolist()
    assert fig.data["routes"] == expected
    assert np.allclose(fig.data["contributions"], routes[expected].numpy(), atol=1e-5)
    assert np.allclose(fig.data["total"], routes.sum(0).numpy(), atol=1e-4)
    assert fig.data["cancellation"] == pytest.approx(float(routes.sum(0).norm() / norms.sum()), rel=1e-4)


def test_expanded_figure_googlenet_blocks(googlenet):
    fig = figs.expanded(googlenet, "inception3a", "inception3b", 100, k=6, **NOFV)
    E = wv.expanded_weights(googlenet, "inception3a", "inception3b", units=[100])[0]
    assert fig.data["inputs"] == torch.argsort(E.flatten(1).norm(dim=1), descending=True)[:6].tolist()
    assert fig.data["slice_shape"] == list(E.shape[-2:])


# ------------------------------------------------------------------------------- FV batching
class _FakeRender:
    """Stands in for weightviz.render: records calls, returns a distinct flat image per objective."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, objectives, **kw):
        from weightviz.optvis.render import RenderResult

        self.calls.append(([o.key for o in objectives], kw))
        n, size = len(objectives), kw["size"]
        imgs = torch.stack([torch.full((3, size, size), (i + 1) / (n + 1)) for i in range(n)])
        return RenderResult(images=imgs, values=torch.zeros(n), objectives=list(objectives), size=size,
                            steps=kw.get("steps", 1), seed=kw["seed"], cached=[False] * n)


def test_one_render_call_per_figure_with_the_right_objectives(googlenet, monkeypatch):
    import sys

    fake = _FakeRender()
    monkeypatch.setattr(sys.modules["weightviz.optvis.render"], "render", fake)
    layer = "conv3.conv"
    fig = figs.top_inputs(googlenet, layer, 9, k=4, size=32, steps=3, progress=False)
    assert len(fake.calls) == 1
    keys, kw = fake.calls[0]
    assert kw["size"] == 32 and kw["steps"] == 3
    expected = [wv.objectives.channel(layer, 9).key] + [wv.objectives.channel("conv2", i).key
                                                        for i in fig.data["inputs"]]
    assert keys == expected

    fake.calls.clear()
    fig = figs.spatial_positions(googlenet, layer, 9, size=32, steps=3, progress=False)
    assert len(fake.calls) == 1
    keys = fake.calls[0][0]
    W = wv.weights(googlenet, layer)[9]
    dirs = [wv.objectives.direction("conv2", W[:, y, x]).key for y, x in fig.data["rendered"]]
    assert keys == [wv.objectives.channel(layer, 9).key] + dirs

    fake.calls.clear()
    figs.family_grid(googlenet, [1, 2], [2, 1], None, layer, size=32, steps=3, progress=False)
    assert len(fake.calls) == 1 and len(fake.calls[0][0]) == 4  # each FV once per batch


def test_real_tiny_render_and_cache(googlenet, tmp_path):
    cache = tmp_path / "cache"
    fig = figs.top_inputs(googlenet, "conv3.conv", 2, k=2, size=32, steps=2, cache=cache, progress=False)
    assert fig.data["fv"] is True and len(list(cache.rglob("*"))) > 0
    for name in ("t.png", "t.svg"):
        p = fig.save(tmp_path / name)
        assert p.stat().st_size > 1000
    assert fig._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ wiring
def test_input_layer_trace_and_no_leftover_hooks(googlenet, lite0):
    assert input_layer(googlenet, "conv3.conv") == "conv2"
    assert input_layer(googlenet, "inception3b.branch1.conv") == "inception3a"
    assert input_layer(lite0, "blocks.3.0.conv_pw") == "blocks.2.1"
    for m in itertools.chain(googlenet.modules(), lite0.modules()):
        assert not m._forward_hooks and not m._forward_pre_hooks
    with pytest.raises(WeightvizError, match="cannot tell which layer feeds"):
        input_layer(googlenet, "conv1.conv")  # reads the model input


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("call, match", [
    (lambda m: figs.top_inputs(m, "conv3.cnv", 1, **NOFV), "Did you mean"),
    (lambda m: figs.top_inputs(m, "conv3.conv", 999, **NOFV), "out of range"),
    (lambda m: figs.top_inputs(m, "conv3.conv", "1,2", **NOFV), "one unit"),
    (lambda m: figs.top_inputs(m, "conv3.conv", 1, k=0, **NOFV), "k must be"),
    (lambda m: figs.small_multiples(m, None, "conv3.conv", [1], inputs=[64], **NOFV), "out of range"),
    (lambda m: figs.weight_factors(m, None, "conv3.conv", "0:4", n_factors=0, **NOFV), "n_factors"),
    (lambda m: figs.spatial_positions(m, "conv3.conv", 1, min_fade=1.5, **NOFV), "min_fade"),
    (lambda m: figs.top_inputs(m, "conv3.conv", 1, size=4), "size"),
    (lambda m: figs.paths(m, "conv2", "conv2", "conv3.conv", 1, 1, **NOFV), "between"),
    (lambda m: figs.top_inputs(m, "inception3a", 1, **NOFV), "src='maxpool2'"),
    (lambda m: figs.family_grid(m, [1], [1], None, "conv2", **NOFV), "no weights of its own"),
])
def test_bad_input_raises(googlenet, call, match):
    with pytest.raises(WeightvizError, match=match):
        call(googlenet)


def test_save_bad_suffix(googlenet, tmp_path):
    fig = figs.top_inputs(googlenet, "conv3.conv", 1, k=2, **NOFV)
    with pytest.raises(WeightvizError, match=r"\.png or \.svg"):
        fig.save(tmp_path / "x.jpg")


def test_registry_lists_every_figure():
    for name in ("top-inputs", "small-multiples", "family-grid", "spatial", "factors", "paths", "expanded"):
        assert name in figs.FIGURES


# --------------------------------------------------------------------------------------------- CLI
def test_cli_figure_writes_file(tmp_path, capsys):
    from weightviz.cli import main

    out = tmp_path / "top.svg"
    assert main(["figure", "top-inputs", "torchvision:resnet18@random", "layer2.0.conv1", "3", "-k", "3", "--no-fv",
                 "-o", str(out)]) == 0
    assert out.exists() and out.read_text().lstrip().startswith("<?xml")
    assert "wrote" in capsys.readouterr().out


def test_cli_figure_errors_exit_2(tmp_path, capsys):
    from weightviz.cli import main

    assert main(["figure", "spatial", "torchvision:resnet18@random", "layer2.0.conv1", "3", "-o",
                 str(tmp_path / "x.gif")]) == 2
    assert main(["figure", "factors", "torchvision:resnet18@random", "layer2.0.conv", "0:4", "--no-fv", "-o",
                 str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "must end in one of" in err and "Did you mean" in err
    assert not (tmp_path / "x.png").exists()


def test_fv_options_one_value_or_keywords(googlenet):
    """Figures take one FV-options value (``fv=FVOptions(...)``) or its fields as keywords; a misspelt one
    is refused by name before any work."""
    from weightviz.figures._fv import FVOptions

    with pytest.raises(WeightvizError, match="unknown figure option 'sise'"):
        figs.top_inputs(googlenet, "conv3.conv", 9, k=4, sise=32)
    a = figs.top_inputs(googlenet, "conv3.conv", 9, k=4, fv=FVOptions(size=32, steps=2, progress=False, enabled=False))
    b = figs.top_inputs(googlenet, "conv3.conv", 9, k=4, size=32, steps=2, progress=False, fv=False)
    assert a.data["inputs"] == b.data["inputs"]
    assert FVOptions.of(True, {"size": 40}, size=64).size == 40
    assert FVOptions.of(False, {}, size=64) == FVOptions(size=64, enabled=False)
    assert FVOptions.of(FVOptions(size=48), {"seed": 3}) == FVOptions(size=48, seed=3)

"""Banding score (two-way ANOVA), its permutation test, the model scan, and the long-tail statistics.

References are independent of weightviz.stats: hand-computed cases, a slow loop implementation,
textbook ANOVA sums of squares in numpy, brute force over all 9! shuffles, and the Weight Banding
article's own data (tests/data/weight-banding, CC-BY 4.0) with the qualitative claims of its README.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import weightviz as wv
from weightviz import WeightvizError
from weightviz.stats._nulls import _null_scores, _orbits
from weightviz.stats.anova import anova_energies, banding_score
from weightviz.stats.banding import banding_test
from weightviz.stats.longtail import long_tail
from weightviz.stats.scan import banding_layers, scan_banding

DATA = Path(__file__).parent / "data" / "weight-banding"


# ------------------------------------------------------------------------------ slow references
def slow_energies(k: np.ndarray) -> tuple[float, float, float]:
    """Loops over one kernel [kh, kw, F]: textbook two-way ANOVA without replication, summed over F."""
    kh, kw, f = k.shape
    e_row = e_col = e_int = 0.0
    for c in range(f):
        g = sum(k[y, x, c] for y in range(kh) for x in range(kw)) / (kh * kw)
        rows = [sum(k[y, x, c] for x in range(kw)) / kw for y in range(kh)]
        cols = [sum(k[y, x, c] for y in range(kh)) / kh for x in range(kw)]
        for y in range(kh):
            for x in range(kw):
                e_row += (rows[y] - g) ** 2
                e_col += (cols[x] - g) ** 2
                e_int += (k[y, x, c] - rows[y] - cols[x] + g) ** 2
    return e_row, e_col, e_int


def slow_score(k: np.ndarray) -> float:
    r, c, i = slow_energies(k)
    return (r - c) / (r + c + i)


def load_banding_file(name: str) -> np.ndarray:
    """The k x k x 3 uint8 NMF images of one data file: [N, k, k, 3]."""
    d = json.loads((DATA / f"{name}.json").read_text())
    imgs = []
    for row in d["reduced_weights"]:
        for tag in row:
            b64 = re.search(r"base64,([^\"]+)", tag).group(1)
            imgs.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")))
    return np.stack(imgs)


# ---------------------------------------------------------------------------------- hand cases
@pytest.mark.parametrize("k", [3, 5, 7])
def test_pure_bands_and_interaction(k):
    ramp = torch.arange(float(k)) ** 2  # any non-constant profile
    horizontal = ramp[:, None].expand(k, k)  # varies with y (rows) only
    u = torch.arange(float(k)) - (k - 1) / 2
    v = torch.randn(k, generator=torch.Generator().manual_seed(k))
    interaction = torch.outer(u, v - v.mean())  # every row and column mean equal: no main effects
    s = banding_score(torch.stack([horizontal, horizontal.T, interaction, torch.full((k, k), 3.0)]))
    assert s.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-6)  # float32 input
    e_row, e_col, e_int = anova_energies(interaction[None, :, :, None].double())
    assert float(e_row) == pytest.approx(0, abs=1e-12) and float(e_col) == pytest.approx(0, abs=1e-12)
    assert float(e_int) == pytest.approx(float(interaction.double().square().sum()))


def test_checkerboard_is_pure_interaction():
    board = torch.tensor([[(-1.0) ** (y + x) for x in range(4)] for y in range(4)])
    assert float(banding_score(board[None])) == 0.0
    e = anova_energies(board[None, :, :, None].double())
    assert [float(v) for v in e] == pytest.approx([0.0, 0.0, 16.0])


def test_additive_kernel_by_hand():
    # x[y, x] = a_y + b_x with a = (0, 1, 2), b = (0, 0, 3): E_row = 3 * 2, E_col = 3 * 6, E_int = 0
    a, b = torch.tensor([0.0, 1, 2]), torch.tensor([0.0, 0, 3])
    x = a[:, None] + b[None, :]
    e = anova_energies(x[None, :, :, None].double())
    assert [float(v) for v in e] == pytest.approx([6.0, 18.0, 0.0])
    assert float(banding_score(x[None])) == pytest.approx((6 - 18) / 24)


def test_matches_slow_loop_reference():
    rng = np.random.default_rng(1)
    k = rng.normal(size=(6, 4, 5, 3))  # non-square, 3 channels
    k[2] = rng.exponential(size=(4, 5, 3))  # non-negative like NMF images
    ours = banding_score(k).numpy()
    assert np.allclose(ours, [slow_score(k[i]) for i in range(6)], atol=1e-12)
    e = torch.stack(anova_energies(torch.from_numpy(k)), 1).numpy()
    assert np.allclose(e, [slow_energies(k[i]) for i in range(6)], atol=1e-10)


def test_matches_numpy_textbook_anova():
    # SS_A = b sum (ybar_i. - ybar..)^2, SS_B = a sum (ybar_.j - ybar..)^2, SS_E = SS_T - SS_A - SS_B
    rng = np.random.default_rng(2)
    for a_, b_ in [(3, 3), (5, 5), (3, 7)]:
        y = rng.normal(size=(a_, b_)) * rng.uniform(0.1, 10)
        gm = y.mean()
        ss_t = ((y - gm) ** 2).sum()
        ss_a = b_ * ((y.mean(axis=1) - gm) ** 2).sum()
        ss_b = a_ * ((y.mean(axis=0) - gm) ** 2).sum()
        ss_e = ss_t - ss_a - ss_b
        e = [float(v) for v in anova_energies(torch.from_numpy(y)[None, :, :, None])]
        assert e == pytest.approx([ss_a, ss_b, ss_e], rel=1e-10)
        assert float(banding_score(y[None])) == pytest.approx((ss_a - ss_b) / ss_t, rel=1e-10)
    # channels: energies add up over F
    y = rng.normal(size=(2, 5, 5, 4))
    total = sum(torch.stack(anova_energies(torch.from_numpy(y[..., c:c + 1])), 1) for c in range(4))
    assert torch.allclose(torch.stack(anova_energies(torch.from_numpy(y)), 1), total)


def test_invariances_and_layouts():
    g = torch.Generator().manual_seed(3)
    k = torch.randn(8, 5, 5, 3, generator=g)
    s = banding_score(k)
    assert torch.allclose(banding_score(k.transpose(1, 2)), -s)  # transpose flips the sign
    assert torch.allclose(banding_score(k[:, [4, 0, 2, 1, 3]]), s)  # reordering rows keeps it
    assert torch.allclose(banding_score(k[:, :, [1, 3, 0, 4, 2]]), s)  # reordering columns too
    assert torch.allclose(banding_score(7.5 * k + 2.0), s)  # scale and offset free
    assert torch.allclose(banding_score(k.permute(0, 3, 1, 2), channels_last=False), s)  # PyTorch layout
    u8 = (k - k.min()).div(k.max() - k.min()).mul(255).round().to(torch.uint8).numpy()
    assert torch.allclose(banding_score(u8), banding_score(u8.astype(np.float64)))
    assert banding_score(k).dtype == torch.float64 and banding_score(k).shape == (8,)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(4, 4), r"\[N, kh, kw\].*got shape \(4, 4\)"),
        (torch.zeros(2, 1, 1, 3), r"at least 2x2.*got 1x1"),
        (torch.full((2, 3, 3), float("nan")), "NaN"),
        (torch.zeros(0, 3, 3), "no kernels"),
        ("abc", "kernels must"),
    ],
)
def test_bad_kernels(bad, match):
    with pytest.raises(WeightvizError, match=match):
        banding_score(bad)


def test_bad_test_parameters():
    k = torch.randn(4, 3, 3)
    for kw, match in [({"n_perm": 5}, "n_perm"), ({"alpha": 1.5}, "alpha"), ({"majority": 0}, "majority")]:
        with pytest.raises(WeightvizError, match=match):
            banding_test(k, **kw)


# --------------------------------------------------------------------------------- null / test
def test_exact_null_equals_brute_force_over_all_shuffles():
    """The 10080 orbits of a 3x3 kernel, each counted 36 times, are exactly the 9! shuffles."""
    x = torch.randn(1, 3, 3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    perms = torch.tensor(list(itertools.permutations(range(9))))  # [362880, 9]
    flat = x.reshape(9, 2)
    e_row, e_col, e_int = anova_energies(flat[perms].reshape(-1, 3, 3, 2))
    brute = ((e_row - e_col) / (e_row + e_col + e_int)).sort().values
    row_ind, col_ind, pairs = _orbits(3, 3)
    assert pairs.shape == (10080, 2) and math.factorial(9) // 36 == 10080
    from weightviz.stats._nulls import _exact_null

    exact, share = _exact_null(x, (row_ind, col_ind, pairs))
    assert torch.allclose(exact[:, 0].repeat_interleave(36).sort().values, brute, atol=1e-12)
    assert share == pytest.approx(float((e_row / (e_row + e_col + e_int)).mean()), abs=1e-12)
    assert share == pytest.approx(1 / 4, abs=0.2)  # E[row share] of a shuffle is about 1/(k+1)


def test_matmul_null_equals_explicit_shuffles():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 4, 5, 3, generator=g, dtype=torch.float64)
    perms = torch.rand(50, 20, generator=g).argsort(1)
    fast, share = _null_scores(x, perms)
    shuffled = x.reshape(7, 20, 3)
    slow = torch.stack([banding_score(shuffled[:, p].reshape(7, 4, 5, 3)) for p in perms], 1)
    assert torch.allclose(fast.T, slow, atol=1e-12)
    rows = torch.stack([
        (lambda e: e[0] / (e[0] + e[1] + e[2]))(anova_energies(shuffled[:, p].reshape(7, 4, 5, 3))) for p in perms
    ], 1)
    assert share == pytest.approx(float(rows.mean()), abs=1e-12)


def test_exact_and_monte_carlo_p_values_agree():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 3, 1, generator=g).expand(40, 3, 3) + 0.7 * torch.randn(40, 3, 3, generator=g)
    exact = banding_test(x, exact=True, n_perm=200)
    mc = banding_test(x, exact=False, n_perm=5000, seed=1)
    assert (exact.p_horizontal - mc.p_horizontal).abs().max() < 0.02
    assert exact.p_horizontal.min() >= 1 / 10080  # the observed arrangement is always in its own null


@pytest.mark.parametrize("k", [3, 5])
def test_noise_is_not_banded_and_p_values_are_calibrated(k):
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(400, k, k, 3, generator=g).abs()  # non-negative, like NMF images
    r = banding_test(noise, n_perm=400)
    assert r.label == "none" and not r.banded
    # about alpha of the neurons pass by chance (binomial sd ~0.005 for N=400)
    assert r.fraction_horizontal < 0.035 and r.fraction_vertical < 0.035
    assert 0.4 < float(r.p_horizontal.mean()) < 0.6  # p-values roughly uniform under the null
    assert r.p_value > 0.001 and r.null_median[0] < 0 < r.null_median[1]
    assert r.null_row_share == pytest.approx(1 / (k + 1), abs=0.02)


def test_synthetic_bands_detected_in_both_orientations():
    g = torch.Generator().manual_seed(8)
    bands = torch.randn(100, 5, 1, generator=g).expand(100, 5, 5) + 0.3 * torch.randn(100, 5, 5, generator=g)
    h, v = banding_test(bands, n_perm=300), banding_test(bands.transpose(1, 2), n_perm=300)
    assert (h.label, v.label) == ("horizontal", "vertical")
    assert h.median > 0.5 and v.median < -0.5 and h.fraction_horizontal > 0.9 and v.fraction_vertical > 0.9
    assert h.p_value < 0.01
    # half the neurons banded is not a banded layer (the 2/3 majority rule), whatever their scores
    mixed = torch.cat([bands[:50], torch.randn(50, 5, 5, generator=g)])
    m = banding_test(mixed, n_perm=300)
    assert 0.4 < m.fraction_horizontal < 0.6 and m.label == "none"
    assert "horizontal" in repr(h) and "median S" in repr(h)


# --------------------------------------------------------------------- the article's own data
# README of tests/data/weight-banding: every qualitative claim, one label per file.
CLAIMS = {
    # baseline and modelzoo final layers: strong horizontal bands
    "InceptionV1_baseline": "horizontal", "ResNet50_baseline": "horizontal", "VGG19_baseline": "horizontal",
    "Simplified_baseline": "horizontal", "InceptionV1_modelzoo": "horizontal", "ResNet50_modelzoo": "horizontal",
    "VGG19_modelzoo": "horizontal",
    # 90deg: the bands turn vertical
    "InceptionV1_90deg": "vertical", "ResNet50_90deg": "vertical", "VGG19_90deg": "vertical",
    "Simplified_90deg": "vertical",
    # fc-only: banding disappears, except in VGG19
    "InceptionV1_fc-only": "none", "ResNet50_fc-only": "none", "Simplified_fc-only": "none",
    "VGG19_fc-only": "horizontal",
    # x-avgpool: banding leaves 5b but shows clearly in 5a
    "Simplified_x-avgpool_5b": "none", "Simplified_x-avgpool_5a": "horizontal",
    # AlexNet conv5: not banded
    "AlexNet_modelzoo": "none",
}


def test_data_files_are_all_covered():
    assert {p.stem for p in DATA.glob("*.json")} == set(CLAIMS)
    assert (DATA / "README.md").is_file() and "CC-BY" in (DATA / "README.md").read_text()


@pytest.fixture(scope="module")
def article_results():
    return {name: banding_test(load_banding_file(name)) for name in CLAIMS}


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_weight_banding_article_claims(article_results, name):
    r = article_results[name]
    assert r.label == CLAIMS[name], repr(r)


def test_weight_banding_article_magnitudes(article_results):
    imgs = load_banding_file("Simplified_baseline")
    assert imgs.shape == (512, 5, 5, 3) and load_banding_file("VGG19_baseline").shape[1:] == (3, 3, 3)
    # methods.md: Simplified 5b about +0.94, 90deg about -0.94
    assert article_results["Simplified_baseline"].median > 0.9
    assert article_results["Simplified_90deg"].median < -0.9
    # removing global average pooling lowers the score in every architecture
    for arch in ("InceptionV1", "ResNet50", "VGG19", "Simplified"):
        assert article_results[f"{arch}_fc-only"].median < article_results[f"{arch}_baseline"].median
    # the not-banded AlexNet still has a significant median: why the rule counts neurons, not p of the median
    alex = article_results["AlexNet_modelzoo"]
    assert alex.median > 0.1 and alex.p_value < 0.01 and alex.label == "none"


# ----------------------------------------------------------------------------------- model scan
def _conv_k3(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and min(m.kernel_size) >= 3]


def test_scan_lite0_structure(lite0, tmp_path):
    before = {k: v.clone() for k, v in lite0.state_dict().items()}
    training = lite0.training
    calls = []
    scan = scan_banding(lite0, n_perm=200, progress=lambda: calls.append(1))
    assert scan.layers == _conv_k3(lite0) == banding_layers(lite0)
    assert len(calls) == len(scan) == 17
    for row in scan.rows:
        w = wv.weights(lite0, row.layer)
        assert row.weight_shape == tuple(w.shape)
        assert row.result.n == w.shape[0] and row.result.kernel == tuple(w.shape[2:])
        assert row.image == "raw"  # depthwise kernels and the RGB stem: the kernel itself
        assert torch.allclose(row.result.scores, banding_score(w, channels_last=False))
        assert -1 <= row.result.median <= 1 and 0 < row.result.p_value <= 1
        assert row.result.label in ("horizontal", "vertical", "none")
    assert [r.depth for r in scan.rows] == list(range(17))
    assert lite0.training == training
    assert all(torch.equal(before[k], v) for k, v in lite0.state_dict().items())
    # seeded: the same numbers again
    again = scan_banding(lite0, layers=["blocks.6.0.conv_dw", "blocks.5.3.conv_dw"], n_perm=200)
    for r in again.rows:
        assert r.result.p_value == scan[r.layer].result.p_value
        assert r.result.fraction_horizontal == scan[r.layer].result.fraction_horizontal
    text = repr(scan)
    assert "blocks.5.3.conv_dw" in text and "median S" in text and "banded" in text
    fig = wv.figures.banding_scan(scan)
    assert fig.data["layers"] == scan.layers
    assert fig.save(tmp_path / "b.png").stat().st_size > 1000
    assert fig.save(tmp_path / "b.svg").read_text().lstrip().startswith("<?xml")


def test_scan_bad_layers(lite0):
    with pytest.raises(WeightvizError, match="Did you mean"):
        scan_banding(lite0, layers=["blocks.5.3.conv_dwx"])
    with pytest.raises(WeightvizError, match="at least 3x3"):
        scan_banding(lite0, layers=["blocks.6.0.conv_pwl"])
    with pytest.raises(WeightvizError, match="image must be"):
        scan_banding(lite0, image="rgb")


def test_scan_raw_multichannel(tiny):
    scan = scan_banding(tiny, image="raw", n_perm=100)
    assert scan.layers == ["conv1", "conv2"] and [r.image for r in scan.rows] == ["raw", "raw"]
    w = tiny.conv2.weight.detach()
    assert torch.allclose(scan["conv2"].result.scores, banding_score(w.permute(0, 2, 3, 1)))


def test_scan_nmf_images(tiny):
    pytest.importorskip("weightviz.stats.factor")
    scan = scan_banding(tiny, n_perm=100)
    assert [r.image for r in scan.rows] == ["raw", "nmf"]  # conv1 has 3 inputs (RGB), conv2 has 8
    img, A, _ = wv.nmf_image(tiny.conv2.weight.detach(), n_factors=3, shared=False, seed=0, return_factors=True)
    assert torch.allclose(scan["conv2"].result.scores, banding_score(A.reshape(16, 3, 3, 3)))
    # with 3 factors the RGB image is the factor maps up to a per-neuron scale: same scores
    assert torch.allclose(scan["conv2"].result.scores, banding_score(img), atol=1e-5)


# ------------------------------------------------------------------------------------ long tail
def test_long_tail_hand_cases():
    one_hot = torch.zeros(6, 3, 3)
    one_hot[4, 1, 2] = -2.5
    lt = long_tail(one_hot)
    assert float(lt.pr[0]) == 1.0 and float(lt.k50[0]) == 1 and float(lt.k90[0]) == 1
    assert lt.top_share[1].item() == 1.0 and int(lt.order[0, 0]) == 4
    for c in (4, 7, 10):  # equal norms, different patterns
        g = torch.Generator().manual_seed(c)
        w = torch.randn(c, 3, 3, generator=g)
        w = w / w.flatten(1).norm(dim=1)[:, None, None] * 3.0
        lt = long_tail(w, ks=(1, 2, 3))
        assert float(lt.pr[0]) == pytest.approx(c)
        assert float(lt.k50[0]) == math.ceil(0.5 * c) and float(lt.k90[0]) == math.ceil(0.9 * c)
        assert lt.top_share[2].item() == pytest.approx(2 / c)
    # squared norms 4, 1, 1: shares 2/3, 5/6, 1; PR = 36 / 18
    w = torch.zeros(3, 2, 2)
    w[0, 0, 0], w[1, 1, 1], w[2, 0, 1] = 2.0, 1.0, -1.0
    lt = long_tail(w, ks=(1, 2, 3, 50))
    assert lt.top_share[1].item() == pytest.approx(2 / 3) and lt.top_share[2].item() == pytest.approx(5 / 6)
    assert sorted(lt.top_share) == [1, 2, 3]  # k beyond C_in dropped
    assert float(lt.k50[0]) == 1 and float(lt.k90[0]) == 3 and float(lt.pr[0]) == pytest.approx(2.0)
    assert lt.norms[0].tolist() == pytest.approx([2.0, 1.0, 1.0])


def test_long_tail_matches_slow_reference():
    g = torch.Generator().manual_seed(9)
    W = torch.randn(4, 30, 3, 3, generator=g) * torch.rand(1, 30, 1, 1, generator=g) ** 3
    lt = long_tail(W, ks=(1, 5, 10))
    for o in range(4):
        sq = sorted((float((W[o, i] ** 2).sum()) for i in range(30)), reverse=True)
        total = sum(sq)
        cum = [sum(sq[: k + 1]) / total for k in range(30)]
        k50 = next(k + 1 for k in range(30) if cum[k] >= 0.5)
        k90 = next(k + 1 for k in range(30) if cum[k] >= 0.9)
        assert lt.norms[o].tolist() == pytest.approx([math.sqrt(v) for v in sq])
        assert lt.cum_share[o].tolist() == pytest.approx(cum)
        assert (float(lt.k50[o]), float(lt.k90[o])) == (k50, k90)
        assert float(lt.pr[o]) == pytest.approx(total ** 2 / sum(v * v for v in sq))
        assert lt.top_share[5][o].item() == pytest.approx(cum[4])
        one = long_tail(W[o], ks=(1, 5, 10))  # one neuron [C_in, kh, kw] = the same row
        assert float(one.pr[0]) == pytest.approx(float(lt.pr[o]))
        assert torch.equal(W[o, lt.order[o, 0]].square().sum(), W[o].square().sum((1, 2)).max())


def test_long_tail_random_baseline():
    # i.i.d. slices of m positions: squared norms ~ chi2(m), expected PR about C * m / (m + 2)
    lt = long_tail(torch.ones(512, 3, 3), n_random=6, seed=0)
    assert lt.random_pr == pytest.approx(512 * 9 / 11, rel=0.03)
    assert float(lt.pr[0]) == pytest.approx(512)
    assert lt.random_k50 < 256 and lt.random_k90 < 0.9 * 512 + 1
    assert 0 < lt.random_top_share[1] < 0.02
    assert long_tail(torch.ones(512, 3, 3), n_random=6, seed=0).random_pr == lt.random_pr  # seeded
    assert lt.random_cum_share.shape == (512,) and lt.random_cum_share[-1] == pytest.approx(1.0)


def test_long_tail_dead_neuron_and_bad_input(tmp_path):
    W = torch.randn(3, 5, 3, 3)
    W[1] = 0
    lt = long_tail(W)
    assert math.isnan(float(lt.pr[1])) and math.isnan(float(lt.k50[1])) and not math.isnan(float(lt.pr[0]))
    with pytest.raises(WeightvizError, match=r"got shape \(5, 9\)"):
        long_tail(torch.randn(5, 9))
    with pytest.raises(WeightvizError, match="NaN"):
        long_tail(torch.full((2, 3, 3), float("nan")))
    with pytest.raises(WeightvizError, match="out of range"):
        wv.figures.long_tail(lt, unit=7)
    fig = wv.figures.long_tail(lt, unit=2)
    assert fig.data["unit"] == 2 and fig.save(tmp_path / "t.png").stat().st_size > 1000
    assert "participation ratio" in lt.table(0) and "random Gaussian" in repr(lt)


def test_long_tail_of_expanded_weights(tiny):
    # conv1 -> BN -> ReLU -> conv2 -> ReLU -> conv3 (1x1): expanded conv1 -> conv3 of unit 2 is
    # sum_j W3[2, j] W2[j, c] * bn_scale[c] (conv3 is 1x1, BN in eval is affine), a [C_src=8, 3, 3] tensor
    E = wv.expanded_weights(tiny, "conv1", "conv3", [2])
    bn = tiny.bn1
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    ref = torch.einsum("j,jchw,c->chw", tiny.conv3.weight[2, :, 0, 0], tiny.conv2.weight, scale).detach()
    assert torch.allclose(E[0], ref, atol=1e-5)
    lt, one = long_tail(E), long_tail(E[0])
    assert lt.norms.shape == (1, 8) and torch.allclose(lt.norms, one.norms)
    assert torch.allclose(lt.norms[0], ref.flatten(1).norm(dim=1).sort(descending=True).values.double(), atol=1e-5)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_banding(capsys, tmp_path):
    from weightviz.cli import main

    out = tmp_path / "bands.png"
    assert main(["banding", "torchvision:mobilenet_v3_small@random", "--n-perm", "100", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.1.block.0.0" in text and "median S" in text
    assert out.stat().st_size > 1000


def test_cli_tail(capsys, tmp_path):
    from weightviz.cli import main

    out = tmp_path / "tail.svg"
    assert main(["tail", "torchvision:resnet18@random", "layer4.1.conv2", "7", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "participation ratio" in text and "k50" in text and "layer4.1.conv2" in text
    assert out.read_text().lstrip().startswith("<?xml")


def test_cli_errors_exit_2_one_line(tmp_path, capsys):
    from weightviz.cli import main

    assert main(["tail", "torchvision:resnet18@random", "layer4.1.conv9", "0"]) == 2
    random_init, err = capsys.readouterr().err.strip().split("\n", 1)  # no @weights: said first, one line
    assert random_init.startswith("no weights given: random initialization")
    assert err.count("\n") == 0 and "Did you mean" in err and "Traceback" not in err
    assert main(["tail", "torchvision:resnet18@random", "layer4.1.conv2", "600"]) == 2
    assert "out of range" in capsys.readouterr().err
    # the output is checked before any work (no model is loaded for a bad suffix)
    assert main(["banding", "timm:no_such_model@random", "-o", str(tmp_path / "x.jpg")]) == 2
    err = capsys.readouterr().err
    assert ".png" in err and "no_such_model" not in err and err.strip().count("\n") == 0

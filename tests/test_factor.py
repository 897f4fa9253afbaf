"""Batched NMF against scikit-learn, one-sided NMF images (signs, shapes, shared colours), rgb_weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import weightviz as wv
from weightviz import WeightvizError
from weightviz.stats.factor import factor_colors, nmf, nmf_error, nmf_image, one_sided, rgb_weights


# ------------------------------------------------------------------------------ reference: scikit-learn
def sklearn_errors(X: torch.Tensor, rank: int = 3) -> np.ndarray:
    """Frobenius error of scikit-learn's NMF (seeded; its default init) on every matrix of ``X``."""
    from sklearn.decomposition import NMF

    errs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning
        for x in X.double().numpy():
            init = "nndsvda" if rank <= min(x.shape) else "random"
            model = NMF(rank, init=init, max_iter=1000, tol=1e-6, random_state=0)
            a = model.fit_transform(x)
            errs.append(np.linalg.norm(x - a @ model.components_))
    return np.array(errs)


def assert_reaches_sklearn(X: torch.Tensor, rank: int = 3) -> None:
    A, H = nmf(X, rank, seed=0)
    ours = nmf_error(X.double(), A.double(), H.double()).numpy()
    ref = sklearn_errors(X, rank)
    norm = torch.linalg.matrix_norm(X.double()).numpy()
    # every matrix within 5% of sklearn's error (plus float32 rounding), and no worse in total
    assert np.all(ours <= 1.05 * ref + 1e-5 * norm), (ours / np.maximum(ref, 1e-12)).max()
    assert ours.sum() <= 1.001 * ref.sum() + 1e-5 * norm.sum()


def test_nmf_matches_sklearn_on_lite0_kernels(lite0):
    assert_reaches_sklearn(one_sided(wv.weights(lite0, "conv_stem")))  # 32 neurons [9, 6]
    # 5x5 depthwise: [25, 2] matrices, rank 3 > 2 (sklearn falls back to its random init)
    assert_reaches_sklearn(one_sided(wv.weights(lite0, "blocks.2.1.conv_dw")[:40]))
    # 5x5 depthwise, dense expansion restricted to a few input channels: [25, 2*16] matrices
    W = wv.weights(lite0, "blocks.2.1.conv_dw", dense=True)[:16, :16]
    assert_reaches_sklearn(one_sided(W))


@pytest.mark.parametrize("shape", [(24, 8, 5, 5), (24, 32, 3, 3), (16, 2, 7, 7)])
def test_nmf_matches_sklearn_on_random_kernels(shape):
    g = torch.Generator().manual_seed(1)
    assert_reaches_sklearn(one_sided(torch.randn(*shape, generator=g)))


def test_nmf_recovers_exact_factorization():
    g = torch.Generator().manual_seed(2)
    A0 = torch.rand(10, 20, 3, generator=g)
    H0 = torch.rand(10, 3, 15, generator=g)
    X = A0 @ H0
    A, H = nmf(X, 3, iters=2000, tol=0)  # random A0, H0 are ill-conditioned: HALS converges slowly
    rel = nmf_error(X, A, H) / torch.linalg.matrix_norm(X)
    assert rel.max() < 2e-4
    assert (A >= 0).all() and (H >= 0).all()
    assert torch.allclose(H.norm(dim=2), torch.ones(10, 3), atol=1e-5)  # unit rows of H
    assert (A.norm(dim=1).diff(dim=1) <= 1e-6).all()  # components sorted by strength


def test_nmf_unbatched_and_scale_equivariant():
    g = torch.Generator().manual_seed(3)
    X = torch.rand(30, 12, generator=g)
    A, H = nmf(X, 4)
    assert A.shape == (30, 4) and H.shape == (4, 12)
    A2, H2 = nmf(8 * X, 4)  # a power of two scales exactly
    assert torch.equal(A2, 8 * A) and torch.equal(H2, H)


def test_nmf_deterministic_for_a_seed():
    X = torch.rand(6, 9, 10, generator=torch.Generator().manual_seed(4))
    for init in ("nndsvda", "random"):
        a1, h1 = nmf(X, 3, seed=7, init=init)
        a2, h2 = nmf(X, 3, seed=7, init=init)
        assert torch.equal(a1, a2) and torch.equal(h1, h2)
    a3, _ = nmf(X, 3, seed=8, init="random", restarts=1, iters=5)
    a4, _ = nmf(X, 3, seed=7, init="random", restarts=1, iters=5)
    assert not torch.equal(a3, a4)
    state = torch.random.get_rng_state()
    nmf(X, 3, init="random")
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_nmf_restarts_never_worse():
    X = one_sided(torch.randn(40, 2, 5, 5, generator=torch.Generator().manual_seed(5)))
    e1 = nmf_error(X, *nmf(X, 3, restarts=1))
    e3 = nmf_error(X, *nmf(X, 3, restarts=3))
    assert (e3 <= e1 * (1 + 1e-5) + 1e-7).all()


@pytest.mark.parametrize(
    "X, kwargs, match",
    [
        (torch.rand(2, 3, 4, 5), {}, r"\[B, M, N\].*got shape \(2, 3, 4, 5\)"),
        (-torch.rand(2, 3, 4), {}, "non-negative"),
        (torch.tensor([[1.0, float("nan")]]), {}, "NaN"),
        (torch.rand(3, 4), {"init": "svd"}, "unknown NMF init 'svd'"),
        (torch.rand(3, 4), {"rank": 0}, "rank must be an integer >= 1, got 0"),
        (torch.rand(3, 4), {"iters": 2.5}, "iters must be"),
    ],
)
def test_nmf_bad_input(X, kwargs, match):
    kwargs = {"rank": 3, **kwargs}
    with pytest.raises(WeightvizError, match=match):
        nmf(X, kwargs.pop("rank"), **kwargs)


# ----------------------------------------------------------------------------------- one-sided images
def test_one_sided_layout():
    W = torch.randn(2, 3, 2, 4)
    X = one_sided(W)
    assert X.shape == (2, 8, 6)
    o, i, y, x = 1, 2, 1, 3
    assert X[o, y * 4 + x, i] == max(W[o, i, y, x].item(), 0.0)
    assert X[o, y * 4 + x, 3 + i] == max(-W[o, i, y, x].item(), 0.0)


@pytest.mark.parametrize("shape", [(8, 16, 1, 1), (8, 16, 3, 3), (8, 4, 5, 5), (12, 1, 3, 3), (12, 1, 5, 5)])
def test_nmf_image_shapes_and_range(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(6))
    for shared in (False, True):
        img = nmf_image(W, shared=shared)
        assert img.shape == (shape[0], shape[2], shape[3], 3)
        assert img.dtype == torch.float32 and torch.isfinite(img).all()
        assert img.min() >= 0 and img.max() <= 1
        assert torch.allclose(img.amax(dim=(1, 2, 3)), torch.ones(shape[0]))  # each image scaled to max 1


def test_signs_negative_only_positive_only_zero():
    g = torch.Generator().manual_seed(7)
    pos = torch.rand(3, 4, 3, 3, generator=g) + 0.1
    W = torch.cat([-pos, pos, torch.zeros(1, 4, 3, 3)])
    img = nmf_image(W)
    assert torch.isfinite(img).all()
    assert (img[:6].amax(dim=(1, 2, 3)) == 1).all()  # negative-only and positive-only kernels are visible
    assert (img[6] == 0).all()  # an all-zero kernel is black
    # flipping the sign swaps the two halves of X's columns: with the (column-permutation equivariant)
    # nndsvda start alone, the image does not change
    one = nmf_image(W, restarts=1)
    torch.testing.assert_close(one[:3], one[3:6], atol=2e-3, rtol=0)


def test_sign_flip_and_channel_permutation_invariance():
    W = torch.randn(10, 6, 5, 5, generator=torch.Generator().manual_seed(8))
    img = nmf_image(W, restarts=1)
    torch.testing.assert_close(nmf_image(-W, restarts=1), img, atol=2e-3, rtol=0)
    torch.testing.assert_close(nmf_image(W[:, torch.randperm(6)], restarts=1), img, atol=2e-3, rtol=0)


def test_spatial_flip_equivariance():
    W = torch.randn(6, 4, 3, 5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(nmf_image(W.flip(-1), restarts=1), nmf_image(W, restarts=1).flip(2),
                               atol=2e-3, rtol=0)


def test_separable_kernel_gives_its_spatial_pattern():
    """W[o, i] = s_i * K with K >= 0: X = K ⊗ [relu(s), relu(-s)] has rank 1; its one-factor NMF is
    unique, A ∝ K, so the grey image is K / max K (hand-derived). With 3 factors the fit is exact."""
    g = torch.Generator().manual_seed(10)
    K = torch.rand(5, 5, generator=g)
    s = torch.randn(7, generator=g)
    W = (s[:, None, None] * K)[None]  # [1, 7, 5, 5]
    img = nmf_image(W, n_factors=1)[0]  # [5, 5, 3]
    for c in range(3):
        torch.testing.assert_close(img[..., c], K / K.max(), atol=1e-4, rtol=0)
    X = one_sided(W)
    _, A, H = nmf_image(W, return_factors=True)
    assert nmf_error(X, A, H) < 1e-4 * torch.linalg.matrix_norm(X)


def test_depthwise_two_factors_are_positive_and_negative_parts(lite0):
    """A depthwise kernel gives X = [relu(w), relu(-w)] (disjoint supports): the rank-2 NMF is unique up to
    scale and order, A = {relu(w), relu(-w)}; the dense expansion only adds zero columns (same answer)."""
    raw = wv.weights(lite0, "blocks.2.1.conv_dw")[:24]  # [24, 1, 5, 5]
    dense = wv.weights(lite0, "blocks.2.1.conv_dw", dense=True)[:24]  # [24, 240, 5, 5]
    _, A, _ = nmf_image(raw, n_factors=2, return_factors=True)
    w = raw[:, 0].reshape(24, 25)
    parts = torch.stack([w.clamp(min=0), (-w).clamp(min=0)], dim=2)  # [24, 25, 2]
    stronger_first = parts.norm(dim=1)[:, 0] >= parts.norm(dim=1)[:, 1]
    expected = torch.where(stronger_first[:, None, None], parts, parts.flip(2))
    torch.testing.assert_close(A, expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(nmf_image(dense, n_factors=2), nmf_image(raw, n_factors=2), atol=1e-3, rtol=0)


def test_hue_mixture_matches_factors():
    W = torch.randn(5, 8, 3, 3, generator=torch.Generator().manual_seed(11))
    for F in (1, 2, 3, 5):
        img, A, H = nmf_image(W, n_factors=F, return_factors=True)
        assert A.shape == (5, 9, F) and H.shape == (5, F, 16)
        colors = factor_colors(F)
        mix = torch.einsum("npf,fc->npc", A, colors).reshape(5, 3, 3, 3)
        torch.testing.assert_close(img, mix / mix.amax(dim=(1, 2, 3), keepdim=True))
    assert torch.equal(factor_colors(3), torch.eye(3))
    assert torch.allclose(factor_colors(6)[1], torch.tensor([1.0, 1.0, 0.0]))  # hue 60° = yellow
    img1 = nmf_image(W, n_factors=1)
    assert torch.equal(img1[..., 0], img1[..., 1]) and torch.equal(img1[..., 1], img1[..., 2])  # grey


def test_shared_colours_consistent():
    g = torch.Generator().manual_seed(12)
    W = torch.randn(12, 6, 3, 3, generator=g)
    W[5] = W[2]  # identical kernels
    W[7] = 3.0 * W[1]  # a scaled copy: same NNLS fit up to scale given the shared H
    img, A, H = nmf_image(W, shared=True, return_factors=True)
    assert H.shape == (3, 12) and A.shape == (12, 9, 3)
    torch.testing.assert_close(img[5], img[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(img[7], img[1], atol=1e-4, rtol=0)
    # neuron order does not change the shared fit: images are permuted along
    perm = torch.randperm(12, generator=g)
    torch.testing.assert_close(nmf_image(W[perm], shared=True), img[perm], atol=2e-3, rtol=0)
    # per-neuron fits have more freedom: their total error is not larger than the shared fit's
    X = one_sided(W)
    _, Ap, Hp = nmf_image(W, return_factors=True)
    shared_err = (X - A @ H).square().sum()
    own_err = (X - Ap @ Hp).square().sum()
    assert own_err <= shared_err * 1.001


def test_deterministic_and_batch_progress():
    W = torch.randn(20, 5, 3, 3, generator=torch.Generator().manual_seed(13))
    done = []
    a = nmf_image(W, seed=3, batch_size=8, progress=done.append)
    assert done == [8, 8, 4]
    assert torch.equal(a, nmf_image(W, seed=3, batch_size=8))


@pytest.mark.parametrize(
    "W, kwargs, match",
    [
        (torch.randn(4, 3, 3), {}, r"\[C_out, C_in, kh, kw\], got \(4, 3, 3\)"),
        (np.zeros((2, 2, 3, 3)), {}, "must be a torch tensor"),
        (torch.full((2, 2, 3, 3), float("inf")), {}, "NaN or Inf"),
        (torch.randn(2, 2, 3, 3), {"n_factors": 0}, "n_factors must be an integer >= 1"),
        (torch.zeros(0, 2, 3, 3), {}, "empty"),
    ],
)
def test_nmf_image_bad_input(W, kwargs, match):
    with pytest.raises(WeightvizError, match=match):
        nmf_image(W, **kwargs)


# -------------------------------------------------------------------------------------- rgb_weights
def test_rgb_weights_hand_computed():
    W = torch.zeros(2, 3, 1, 2)
    W[0, 0, 0, 0] = 2.0  # layer abs max
    W[0, 2, 0, 1] = -1.0
    W[1, 1, 0, 0] = -2.0
    img = rgb_weights(W)
    assert img.shape == (2, 1, 2, 3)
    assert img[0, 0, 0].tolist() == [1.0, 0.5, 0.5]
    assert img[0, 0, 1].tolist() == [0.5, 0.5, 0.25]
    assert img[1, 0, 0].tolist() == [0.5, 0.0, 0.5]
    assert (rgb_weights(torch.zeros(1, 3, 2, 2)) == 0.5).all()


def test_rgb_weights_of_lite0_stem(lite0):
    W = wv.weights(lite0, "conv_stem")
    img = rgb_weights(W)
    assert img.shape == (32, 3, 3, 3)
    m = W.abs().max()
    torch.testing.assert_close(img, (W.permute(0, 2, 3, 1) / m + 1) / 2)
    assert min(float(img.min()), 1 - float(img.max())) < 1e-6  # the abs max reaches 0 or 1


def test_rgb_weights_needs_three_channels():
    with pytest.raises(WeightvizError, match=r"3 input channels.*got \(4, 8, 3, 3\)"):
        rgb_weights(torch.randn(4, 8, 3, 3))

"""Benchmark: one-sided NMF of all neurons of a layer, batched weightviz (torch) vs a per-neuron
scikit-learn loop, measured side by side in one run, with the reconstruction errors of both.

Per neuron o: ``X = concat(relu(W[o]), relu(-W[o]))`` ``[kh*kw, 2*C_in]``, factored with
``F = min(3, kh*kw, 2*C_in)`` components (as :func:`weightviz.nmf_image` does). Baselines:

- ``sklearn``: ``NMF(F, random_state=0)`` with its defaults (init nndsvda, solver cd, max_iter 200,
  tol 1e-4), one call per neuron: what the article's notebooks do.
- ``sklearn-tight``: the same with ``max_iter=1000, tol=1e-6`` (the error reference of the tests).

Layers (all neurons of each):

- lite0 ``conv_stem``: the only dense conv of EfficientNet-Lite0 with k >= 3 (32 x [3, 3, 3]);
- lite0 ``blocks.5.1.conv_dw``: a 5x5 depthwise conv, 1152 neurons, raw ``[1152, 1, 5, 5]`` (the dense
  expansion only adds all-zero columns to X, which change nothing in the factorization);
- torchvision ``googlenet`` ``conv1.conv``, 7x7 (random init): torchvision's GoogLeNet has no 5x5 conv
  (its "5x5" branch uses 3x3), this is its largest kernel;
- torchvision ``alexnet`` ``features.3``: 5x5, 192 x 64 inputs (random init).

weightviz runs with its defaults (one nndsvda start) and with ``restarts=2`` (plus one random start).

Run: ``.venv/bin/python benchmarks/nmf.py [--repeats 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch


def layers_to_run():
    import weightviz as wv

    lite0 = wv.load_model()
    torch.manual_seed(0)
    googlenet = wv.load_model("torchvision:googlenet")
    torch.manual_seed(0)
    alexnet = wv.load_model("torchvision:alexnet")
    return [
        ("lite0 conv_stem (3x3, dense)", wv.weights(lite0, "conv_stem")),
        ("lite0 blocks.5.1.conv_dw (5x5 depthwise)", wv.weights(lite0, "blocks.5.1.conv_dw")),
        ("googlenet conv1.conv (7x7, random init)", wv.weights(googlenet, "conv1.conv")),
        ("alexnet features.3 (5x5, random init)", wv.weights(alexnet, "features.3")),
    ]


def ours(X: torch.Tensor, F: int, restarts: int) -> tuple[float, np.ndarray]:
    from weightviz.stats.factor import nmf, nmf_error

    t = time.perf_counter()
    A, H = nmf(X, F, seed=0, restarts=restarts)
    dt = time.perf_counter() - t
    return dt, nmf_error(X.double(), A.double(), H.double()).numpy()


def sklearn_loop(X: torch.Tensor, F: int, tight: bool) -> tuple[float, np.ndarray]:
    from sklearn.decomposition import NMF

    kw = {"max_iter": 1000, "tol": 1e-6} if tight else {}
    Xn = X.numpy()
    errs = []
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the default max_iter
        for x in Xn:
            model = NMF(F, random_state=0, **kw)
            a = model.fit_transform(x)
            errs.append(np.linalg.norm(x.astype(np.float64) - a.astype(np.float64) @ model.components_))
    dt = time.perf_counter() - t
    return dt, np.array(errs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median), each method")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import sklearn

    from weightviz.stats.factor import one_sided

    print(f"torch {torch.__version__} ({args.threads} threads), scikit-learn {sklearn.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, median of {args.repeats}")
    print(f"{'layer':42s} {'neurons':>7s} {'X':>7s} {'F':>2s} {'weightviz':>14s} {'s':>7s} {'sklearn s':>9s} "
          f"{'speed-up':>8s} {'err ratio':>9s} {'tight s':>8s} {'speed-up':>8s} {'err ratio':>9s} {'worst':>8s}")
    for name, W in layers_to_run():
        X = one_sided(W)  # [C_out, kh*kw, 2*C_in]
        F = min(3, X.shape[1], X.shape[2])
        ours(X[:8], F, 1)  # warm-up
        runs = {1: [], 2: []}
        t_sk, t_tight = [], []
        for _ in range(args.repeats):  # interleaved, so that load changes hit all methods alike
            for restarts in runs:
                dt, e = ours(X, F, restarts)
                runs[restarts].append((dt, e))
            dt, e_sk = sklearn_loop(X, F, tight=False)
            t_sk.append(dt)
            dt, e_tight = sklearn_loop(X, F, tight=True)
            t_tight.append(dt)
        ts, tt = statistics.median(t_sk), statistics.median(t_tight)
        norm = np.linalg.norm(X.double().numpy(), axis=(1, 2))
        for restarts, res in runs.items():
            to = statistics.median(dt for dt, _ in res)
            e_ours = res[-1][1]
            worst = np.max((e_ours - e_tight) / np.maximum(norm, 1e-30))  # per-neuron excess, relative to ‖X‖
            label = "default" if restarts == 1 else "restarts=2"
            print(f"{name:42s} {X.shape[0]:7d} {f'{X.shape[1]}x{X.shape[2]}':>7s} {F:2d} {label:>14s} {to:7.3f} "
                  f"{ts:9.3f} {ts / to:7.1f}x {e_ours.sum() / e_sk.sum():9.4f} {tt:8.3f} {tt / to:7.1f}x "
                  f"{e_ours.sum() / e_tight.sum():9.4f} {worst:+8.0e}")
    print("err ratio: sum over neurons of ‖X - AH‖_F, weightviz divided by scikit-learn's (<= 1: as good or "
          "better);\nworst: largest per-neuron (weightviz - sklearn tight) / ‖X‖. sklearn: defaults; tight: "
          "max_iter=1000, tol=1e-6.")


if __name__ == "__main__":
    main()

"""Pictures of weight statistics: the banding scan across depth (:func:`banding_scan`) and a neuron's
long tail of input weights (:func:`long_tail`)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import WeightvizError
from ..stats import BandingScan, LongTail
from ._core import Figure, new_figure

__all__ = ["banding_scan", "long_tail"]


def banding_scan(scan: BandingScan, title: str | None = None) -> Figure:
    """Median S per layer across depth (with the null's 95 % band) above the share of individually
    banded neurons (horizontal up, vertical down, with the majority line). Returns a
    :class:`weightviz.figures.Figure` (``.save('x.png' | 'x.svg')``)."""
    if not scan.rows:
        raise WeightvizError("nothing to plot: the scan has no layer with kernels of at least 3x3")
    n = len(scan.rows)
    xs = np.arange(n)
    med = np.array([r.result.median for r in scan.rows])
    lo = np.array([r.result.null_median[0] for r in scan.rows])
    hi = np.array([r.result.null_median[1] for r in scan.rows])
    fh = np.array([r.result.fraction_horizontal for r in scan.rows])
    fv = np.array([r.result.fraction_vertical for r in scan.rows])
    labels = [r.result.label for r in scan.rows]
    maj = scan.rows[0].result.majority
    fig = new_figure(max(6.0, 0.42 * n + 2.0), 6.2)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 2), left=0.09, right=0.98, top=0.88, bottom=0.28, hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax.axhline(0, color="0.6", lw=0.8)
    ax.fill_between(xs, lo, hi, color="0.8", step="mid", label="null median, 95% band")
    colors = {"horizontal": "#ca0020", "vertical": "#0571b0", "none": "0.45"}
    ax.plot(xs, med, "-", color="0.3", lw=1)
    for lab in ("horizontal", "vertical", "none"):
        sel = [i for i in range(n) if labels[i] == lab]
        if sel:
            ax.scatter(xs[sel], med[sel], s=36, color=colors[lab], zorder=3,
                       label=f"banded {lab}" if lab != "none" else "not banded")
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("median banding score S\n(+1 horizontal, -1 vertical)", fontsize=8)
    ax.tick_params(labelsize=7, labelbottom=False)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, ncol=4, borderaxespad=0.2)
    fig.suptitle(title or f"Weight banding across depth: {scan.model}", fontsize=10, y=0.985)
    ax2 = fig.add_subplot(gs[1], sharex=ax)
    ax2.bar(xs, fh, color="#f4a582", width=0.7, label="horizontally banded neurons")
    ax2.bar(xs, -fv, color="#92c5de", width=0.7, label="vertically banded neurons")
    for y in (maj, -maj):
        ax2.axhline(y, color="0.3", ls="--", lw=0.8)
    ax2.axhline(0, color="0.6", lw=0.8)
    ax2.set_ylim(-1.05, 1.05)
    ax2.set_yticks([-1, -maj, 0, maj, 1])
    ax2.set_yticklabels(["100%", f"{maj:.0%}", "0", f"{maj:.0%}", "100%"])
    ax2.set_ylabel(f"neurons banded\n(p<{scan.rows[0].result.alpha:g})", fontsize=8)
    ax2.tick_params(labelsize=7)
    ax2.legend(fontsize=7, loc="lower right", frameon=False, ncol=2)
    ax2.set_xticks(xs)
    ax2.set_xticklabels([f"{r.layer} ({r.result.kernel[0]}x{r.result.kernel[1]})" for r in scan.rows],
                        rotation=60, ha="right", fontsize=7)
    return Figure(fig, {"layers": scan.layers, "median": med.tolist(), "banded": labels})


def long_tail(tail: LongTail, unit: int = 0, title: str | None = None) -> Figure:
    """Sorted cumulative share of squared norm vs number of inputs, neuron ``unit`` vs random Gaussian.
    Returns a :class:`weightviz.figures.Figure`."""
    if not 0 <= unit < tail.norms.shape[0]:
        raise WeightvizError(f"unit {unit} out of range: this long tail holds {tail.norms.shape[0]} neurons")
    c = tail.n_inputs
    ks = np.arange(1, c + 1)
    ours = tail.cum_share[unit].numpy()
    rnd = tail.random_cum_share.numpy()
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(ks, ours, color="#ca0020", lw=1.8, label=f"weights (PR {float(tail.pr[unit]):.1f})")
    ax.plot(ks, rnd, color="0.45", lw=1.4, ls="--", label=f"random Gaussian (PR {tail.random_pr:.1f})")
    log = c > 20
    for q, kq, kr in ((0.5, tail.k50[unit], tail.random_k50), (0.9, tail.k90[unit], tail.random_k90)):
        ax.axhline(q, color="0.8", lw=0.7)
        ax.plot([float(kq)], [q], "o", color="#ca0020", ms=4)
        ax.plot([kr], [q], "o", color="0.45", ms=3)
        at = math.log(max(float(kq), 1)) / math.log(c) if log else (float(kq) - 1) / max(c - 1, 1)
        right = at > 0.55  # keep the label inside the axes
        ax.annotate(f"k{int(q * 100)}={float(kq):.0f} (random {kr:.1f})", (float(kq), q),
                    textcoords="offset points", xytext=(-6 if right else 6, 5), fontsize=7,
                    ha="right" if right else "left")
    if log:
        ax.set_xscale("log")
    ax.set_xlim(1, c)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of strongest input channels k" + (" (log)" if log else ""), fontsize=8)
    ax.set_ylabel("share of squared weight norm", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.set_title(title or f"Long tail of input weights ({c} inputs, slices {tail.shape[-2]}x{tail.shape[-1]})",
                 fontsize=10)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.9, bottom=0.13)
    return Figure(fig, {"unit": unit, "k50": float(tail.k50[unit]), "k90": float(tail.k90[unit]),
                        "pr": float(tail.pr[unit]), "random_pr": tail.random_pr})

"""Where do expanded weights cancel on lite0, and how much larger are the per-example gradients there?

1. Cancellation scan (no data): for every unit of ``DST``, the expanded weights from ``SRC`` through the
   units of ``MID`` (``expanded_weights(via=MID)``, the routes of ``figures.paths``). Per unit, the
   cancellation ratio ``‖total‖ / Σ_m ‖route_m‖`` over the whole connection ``[C_src, K, K]`` (1: the
   routes add up; near 0: they cancel), and the same for the single src channel whose routes are
   strongest (the ``figures.paths`` number for that pair).
2. For the ``--top`` most cancelling units and, for contrast, the ``--top`` least cancelling: per-example
   gradients on ``--n`` embedded images (``data_weights``, position "max") and their firing-weighted mean
   norm over the expanded weight's norm (whole connection, and the strongest-route channel), plus how
   much 2 cases explain; ``ḡ`` is the firing-weighted mean gradient (``‖ḡ‖/‖g‖`` near 0: the examples'
   gradients cancel among themselves, as the article's boundary detectors would).

Run: ``.venv/bin/python benchmarks/cases_scan.py [--src blocks.2.0 --mid blocks.3.0 --dst blocks.3.1] [--n 64]``
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default="blocks.2.0")
    ap.add_argument("--mid", default="blocks.3.0")
    ap.add_argument("--dst", default="blocks.3.1")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--chunk", type=int, default=8)
    args = ap.parse_args()
    import weightviz as wv

    m = wv.load_model()
    t0 = time.perf_counter()
    rf = wv.receptive_field(m, args.dst, args.src)
    n_dst = rf.dst_shape[0]
    whole, chan_ratio, chan = [], [], []
    for s in range(0, n_dst, args.chunk):
        units = list(range(s, min(n_dst, s + args.chunk)))
        r = wv.expanded_weights(m, args.src, args.dst, units=units, via=args.mid)
        via = r.via                                                  # [U, C_mid, C_src, K, K]
        tot = r.total                                                # [U, C_src, K, K]
        whole += (tot.flatten(1).norm(dim=1) / via.flatten(2).norm(dim=2).sum(1)).tolist()
        per = via.flatten(3).norm(dim=3).sum(1)                      # [U, C_src]: Σ_m ‖route‖ per src channel
        best = per.argmax(1)
        tb = tot[torch.arange(len(units)), best].flatten(1).norm(dim=1)
        chan_ratio += (tb / per[torch.arange(len(units)), best]).tolist()
        chan += best.tolist()
    whole_t = torch.tensor(whole)
    print(f"lite0 {args.src} -> {args.mid} -> {args.dst}: {n_dst} units, K={rf.size}, scan {time.perf_counter() - t0:.1f}s")
    c_mid = r.via.shape[1]
    print(f"cancellation ‖total‖/Σ‖routes‖ over units: min {whole_t.min():.3f}, median {whole_t.median():.3f}, "
          f"max {whole_t.max():.3f} (routes through {c_mid} units; {c_mid} random directions: about "
          f"{c_mid ** -0.5:.3f})")
    order = whole_t.argsort().tolist()
    picks = [("cancels", u) for u in order[:args.top]] + [("adds up", u) for u in order[-args.top:]]
    imgs = wv.images(n=args.n, model=m, size=args.size)
    print(f"\nper-example gradients on {args.n} embedded images at {args.size} px (position 'max'), "
          "firing-weighted means")
    print(f"{'':8} {'unit':>4} {'ratio':>6} {'ch':>3} {'ch ratio':>8} {'fires':>5} {'‖g‖/‖E‖':>8} "
          f"{'ch ‖g‖/‖E‖':>10} {'‖ḡ‖/‖E‖':>8} {'‖ḡ‖/‖g‖':>8} {'2 cases expl.':>13}")
    for what, u in picks:
        d = wv.data_weights(m, args.src, args.dst, u, imgs)
        w = d.activations.clamp(min=0)
        E = wv.expanded_weights(m, args.src, args.dst, units=[u])[0]
        c = chan[u]
        if float(w.sum()) == 0:
            print(f"{what:8} {u:>4} {whole[u]:>6.3f} {c:>3} {chan_ratio[u]:>8.3f} {0:>5}  (never fires)")
            continue
        g = d.weights.flatten(1).norm(dim=1)
        gc = d.weights[:, c].flatten(1).norm(dim=1)
        r_all = float((w * g).sum() / w.sum()) / float(E.norm())
        r_ch = float((w * gc).sum() / w.sum()) / float(E[c].norm())
        gbar = (w[:, None, None, None] * d.weights).sum(0) / w.sum()     # firing-weighted mean gradient
        r_bar = float(gbar.norm()) / float(E.norm())
        r_self = float(gbar.norm()) / (float((w * g).sum() / w.sum()))
        cs = wv.cases(m, args.src, args.dst, u, imgs, 2, data=d)
        print(f"{what:8} {u:>4} {whole[u]:>6.3f} {c:>3} {chan_ratio[u]:>8.3f} {int((w > 0).sum()):>5} "
              f"{r_all:>8.2f} {r_ch:>10.2f} {r_bar:>8.2f} {r_self:>8.2f} {cs.explained:>13.2f}")


if __name__ == "__main__":
    main()

"""best_case against plain Adam on raw pixels (issue 20 item 7), side by side, and against the data.

For lite0 connections ``src -> dst[unit]`` (whole connection, ``src_unit=None``, or one source unit): the value
of the real-model gradient ``d dst[unit, centre] / d src`` on its ``[C_src, K, K]`` window (its norm, or the
centre entry for ``src_unit``) reached by
- ``best_case`` with its defaults (FV render, then the pixel stage: refinement of the render and grey restarts;
  which candidate won is printed), and with ``pixel_steps=0`` (the render alone, the behaviour before),
- the baseline: plain Adam on raw pixels, grey start, softplus-smoothed ReLU6 annealed 1 -> 20 over 50 steps,
  clamped to [0, 1], the last iterate measured on the real model (learning rates 0.01, 0.05, 0.1),
- the strongest of ``--n`` embedded natural crops at the same size (whole connection only).
Times are wall-clock seconds of one call (``torch`` threads as set by ``--threads``).

    python benchmarks/bestcase.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import weightviz as wv
from weightviz.conditioned.bestcase import connection_gradient

PAIRS = [("blocks.1.0", "blocks.2.0", 3, None), ("blocks.1.0", "blocks.2.0", 3, 0),
         ("blocks.0.0", "blocks.1.0", 7, None), ("blocks.2.0", "blocks.3.0", 5, None)]


class _Soft(nn.Module):
    def __init__(self, six: bool) -> None:
        super().__init__()
        self.six, self.beta = six, 1.0

    def forward(self, x):
        y = nn.functional.softplus(x, beta=self.beta)
        return y - nn.functional.softplus(x - 6.0, beta=self.beta) if self.six else y


def _value(model, src, dst, unit, src_unit, x, rf, create_graph):
    spec = wv.input_spec(model)
    acts = {}

    def keep(_m, _i, out):
        acts["z"] = out = out.clone()
        return out

    hs = [wv.get_module(model, src).register_forward_hook(keep),
          wv.get_module(model, dst).register_forward_hook(lambda _m, _i, out: acts.update(y=out))]
    try:
        with torch.enable_grad():
            model(spec.normalize(x))
            (g,) = torch.autograd.grad(acts["y"][0, unit, rf.target[0], rf.target[1]], acts["z"],
                                       create_graph=create_graph)
    finally:
        for h in hs:
            h.remove()
    (r0, c0), (kh, kw) = rf.start, rf.size
    w = g[0, :, r0:r0 + kh, c0:c0 + kw]
    return w.norm() if src_unit is None else w[src_unit, (kh - 1) // 2, (kw - 1) // 2]


def baseline(model, src, dst, unit, src_unit, size, lr, steps=50, beta=(1.0, 20.0)) -> float:
    """Plain Adam on raw pixels (see the module docstring): the real-model value of the last iterate."""
    rf = wv.receptive_field(model, dst, src, input_size=size)
    smooth, acts = copy.deepcopy(model).eval(), []
    for parent in list(smooth.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                acts.append(_Soft(isinstance(child, nn.ReLU6)))
                setattr(parent, name, acts[-1])
    for p in smooth.parameters():
        p.requires_grad_(False)
    x = torch.full((1, 3, size, size), 0.5, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    for t in range(steps):
        for a in acts:
            a.beta = beta[0] * (beta[1] / beta[0]) ** (t / (steps - 1))
        loss = -_value(smooth, src, dst, unit, src_unit, x, rf, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
    return float(_value(model, src, dst, unit, src_unit, x.detach().clone().requires_grad_(True), rf, False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=len(PAIRS), help="how many of the built-in pairs to run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = wv.load_model()
    print(f"lite0, seed 0, best_case defaults; baseline: plain Adam on pixels, 50 steps; {args.threads} threads")
    print(f"{'pair':<38} {'size':>4} {'ours':>7} {'render':>7} {'base .01':>8} {'base .05':>8} {'base .1':>8} "
          f"{'data max':>8} {'ours s':>7} {'render s':>8}  winner")
    for src, dst, unit, su in PAIRS[:args.pairs]:
        t0 = time.perf_counter()
        b = wv.best_case(model, src, dst, unit, su, progress=False)
        t1 = time.perf_counter()
        r = wv.best_case(model, src, dst, unit, su, progress=False, pixel_steps=0)
        t2 = time.perf_counter()
        base = [baseline(model, src, dst, unit, su, b.size, lr) for lr in (0.01, 0.05, 0.1)]
        data = "-"
        if su is None:
            imgs = wv.images(n=args.n, size=b.size).tensor()
            data = f"{float(connection_gradient(model, src, dst, unit, imgs).flatten(1).norm(dim=1).max()):.3f}"
        what = f"{src} -> {dst} u{unit}" + ("" if su is None else f" src_unit {su}")
        print(f"{what:<38} {b.size:>4} {b.value:7.3f} {r.value:7.3f} {base[0]:8.3f} {base[1]:8.3f} {base[2]:8.3f} "
              f"{data:>8} {t1 - t0:7.1f} {t2 - t1:8.1f}  {b.source}", flush=True)


if __name__ == "__main__":
    main()

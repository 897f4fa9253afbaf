"""best_case settings side by side in one run, against the data: how strong a connection the optimized
input reaches with the feature-visualization defaults (lr 0.05, Lucid's transforms) and with best_case's
defaults (lr 0.5, no transforms), vs the strongest connection among natural images.

For one lite0 connection ``src -> dst[unit]`` (whole connection, src_unit=None): the norm of the real-model
gradient ``d dst[unit, centre] / d src`` on its ``[C_src, K, K]`` window, for
- each optimizer setting (same seed, same steps, same image size, softplus-smoothed ReLUs),
- every image of ``--n`` embedded natural crops at the same size (max and median reported),
- and the expanded weights (all ReLUs on). Times are process CPU seconds.

    python benchmarks/bestcase.py --src blocks.1.0 --dst blocks.2.0 --unit 3 --steps 64
"""

from __future__ import annotations

import argparse
import time

import weightviz as wv
from weightviz.conditioned.bestcase import connection_gradient
from weightviz.optvis.transforms import TransformConfig

SETTINGS = [
    ("FV defaults: lr 0.05, transforms", {"lr": 0.05, "transforms": TransformConfig()}),
    ("lr 0.05, no transforms", {"lr": 0.05, "transforms": None}),
    ("lr 0.5, transforms", {"lr": 0.5, "transforms": TransformConfig()}),
    ("lr 0.2, no transforms", {"lr": 0.2, "transforms": None}),
    ("lr 0.5, no transforms (best_case default)", {"lr": 0.5, "transforms": None}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default="blocks.1.0")
    ap.add_argument("--dst", default="blocks.2.0")
    ap.add_argument("--unit", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    model = wv.load_model()
    rows = []
    size = None
    for name, kw in SETTINGS:
        t0 = time.process_time()
        b = wv.best_case(model, args.src, args.dst, args.unit, steps=args.steps, progress=False, **kw)
        rows.append((name, b.value, b.ratio, time.process_time() - t0))
        size = b.size
        expanded = float(b.expanded.norm())
    imgs = wv.images(n=args.n, size=size).tensor()
    data = connection_gradient(model, args.src, args.dst, args.unit, imgs).flatten(1).norm(dim=1)
    print(f"lite0 {args.src} -> {args.dst} unit {args.unit}: whole connection, {size} px, {args.steps} steps, seed 0")
    print(f"  expanded weights ||w||                         {expanded:7.3f}")
    print(f"  natural images (n={args.n}): max ||g||           {float(data.max()):7.3f}   median {float(data.median()):.3f}")
    for name, value, ratio, secs in rows:
        print(f"  best case, {name:<42} {value:7.3f}   {value / float(data.max()):5.2f}x data max, "
              f"{ratio:5.2f}x expanded, {secs:6.1f} CPU-s")


if __name__ == "__main__":
    main()

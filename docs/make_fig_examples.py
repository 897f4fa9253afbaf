"""Regenerate the example figures docs/fig_*.png on the embedded EfficientNet-Lite0.

    python docs/make_fig_examples.py [--size 64] [--steps 128] [--out docs]

All feature visualizations go through the render cache ($WEIGHTVIZ_CACHE or ~/.cache/weightviz), so a
second run only redraws. The chosen unit, blocks.3.0 #24, has the most concentrated expanded weights
from blocks.2.0 of its layer (top 4 inputs hold 61% of the squared norm); the factor family is it and
the 7 units of blocks.3.0 with the most similar input profile; the routes figure follows its strongest
early input, blocks.1.1 #2, through the units of blocks.2.0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import weightviz as wv
from weightviz import figures

SRC, DST, UNIT = "blocks.2.0", "blocks.3.0", 24
FAMILY = [24, 51, 20, 52, 1, 41, 59, 16]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = wv.load_model()
    fv = {"size": args.size, "steps": args.steps}
    top = figures.top_inputs(model, DST, UNIT, src=SRC, k=8, **fv)
    jobs = {
        "fig_top_inputs.png": lambda: top,
        "fig_factors.png": lambda: figures.weight_factors(model, SRC, DST, FAMILY, n_factors=2, n_top=3, **fv),
        "fig_family_grid.png": lambda: figures.family_grid(model, top.data["inputs"][:5], FAMILY[:5], SRC, DST, **fv),
        "fig_spatial.png": lambda: figures.spatial_positions(model, DST, UNIT, src=SRC, max_size=5,
                                                            min_fade=0.2, **fv),
        "fig_paths.png": lambda: figures.paths(model, "blocks.1.1", SRC, DST, UNIT, 2, n_routes=5, **fv),
    }
    for name, build in jobs.items():
        t = time.perf_counter()
        build().save(args.out / name)
        print(f"wrote {args.out / name} ({time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()

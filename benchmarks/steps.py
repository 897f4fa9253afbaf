"""How many optimization steps does a feature visualization need?  (sets ``render``'s default ``steps``)

Renders lite0 channels at three depths for ``--max-steps`` steps (default 512) and records each unit's
channel activation on the clean image (no transforms) after 16, 32, 64, ..., 512 steps. Because nothing
in ``render`` depends on the total number of steps (no schedule; the ReLU redirect covers the first 16
steps whatever the total), the image after k steps of one long run *is* the k-step render, so one run
per depth gives the whole curve.

Prints a Markdown table (activation relative to the 512-step activation: mean and worst unit per depth)
and the fewest steps whose mean relative activation is >= 90 % at every depth; writes the plot.

    .venv/bin/python benchmarks/steps.py --size 128 --units 2 --plot docs/render_steps.png
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import weightviz as wv
from weightviz import objectives as obj
from weightviz.optvis import activations

DEPTHS = ["blocks.2.1", "blocks.4.1", "blocks.5.3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--units", type=int, default=2, help="random channels per depth")
    ap.add_argument("--max-steps", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default="docs/render_steps.png")
    ap.add_argument("--json", default=None, help="also write the raw curves here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = wv.load_model()
    spec = wv.input_spec(model)
    checkpoints = [k for k in (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024) if k <= args.max_steps]
    g = torch.Generator().manual_seed(args.seed)
    curves: dict[str, dict] = {}
    t_all, c_all = time.time(), time.process_time()
    for layer in DEPTHS:
        n_ch = wv.layers(model)[layer].out_channels
        units = torch.randperm(n_ch, generator=g)[: args.units].tolist()
        values: dict[int, list[float]] = {}

        def record(step, images, idx, layer=layer, units=units, values=values):
            if step in checkpoints:
                a = activations(model, spec.normalize(images), layer)[layer]
                values[step] = [float(a[i, u].mean()) for i, u in enumerate(units)]

        t, c = time.time(), time.process_time()
        wv.render(model, [obj.channel(layer, u) for u in units], size=args.size, steps=args.max_steps,
                  seed=args.seed, progress=False, callback=record)
        curves[layer] = {"units": units, "values": values, "wall_s": time.time() - t, "cpu_s": time.process_time() - c}
        print(f"{layer}: units {units}, {time.time() - t:.0f} s wall, {time.process_time() - c:.0f} s CPU", flush=True)

    top = checkpoints[-1]
    rel = {layer: {k: [v / r if r > 0 else float("nan") for v, r in zip(d["values"][k], d["values"][top])]
                   for k in checkpoints} for layer, d in curves.items()}
    print(f"\nlite0, size {args.size}, {args.units} random channels per depth, seed {args.seed}; "
          f"activation after k steps / activation after {top} steps (mean, worst unit)\n")
    print("| steps | " + " | ".join(DEPTHS) + " |")
    print("|---:|" + "---:|" * len(DEPTHS))
    for k in checkpoints:
        cells = [f"{sum(rel[L][k]) / len(rel[L][k]):.2f} ({min(rel[L][k]):.2f})" for L in DEPTHS]
        print(f"| {k} | " + " | ".join(cells) + " |")
    enough = [k for k in checkpoints if all(sum(rel[L][k]) / len(rel[L][k]) >= 0.9 for L in DEPTHS)]
    print(f"\nfewest steps with mean >= 90% of the {top}-step activation at every depth: "
          f"{enough[0] if enough else 'none'}")
    print(f"total {time.time() - t_all:.0f} s wall, {time.process_time() - c_all:.0f} s CPU")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for layer, color in zip(DEPTHS, ["tab:blue", "tab:orange", "tab:green"]):
        for j, u in enumerate(curves[layer]["units"]):
            ax.plot(checkpoints, [rel[layer][k][j] for k in checkpoints], "o-", color=color, alpha=0.8, ms=3,
                    label=f"{layer} ch {u}")
    ax.axhline(0.9, color="gray", ls="--", lw=1)
    if enough:
        ax.axvline(enough[0], color="black", ls=":", lw=1)
        ax.text(enough[0] * 1.05, 0.35, f"{enough[0]} steps", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(checkpoints)
    ax.set_xticklabels([str(k) for k in checkpoints], fontsize=7)
    ax.set_xlabel("optimization steps")
    ax.set_ylabel(f"activation / activation at {top} steps")
    ax.set_title(f"lite0 feature visualization, {args.size} px: activation vs steps", fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_ylim(0, 1.1)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(curves, f, indent=1)


if __name__ == "__main__":
    main()

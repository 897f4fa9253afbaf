"""The demo behind ``make demo``: ``python -m weightviz.demo --out out``.

Runs on the embedded EfficientNet-Lite0 (ImageNet weights, no download, CPU) and writes its figures to
``--out``. The demo is a list of steps (:data:`STEPS`), each a function ``step(ctx) -> list[Path]`` that
writes some files and returns them; add a step by decorating a function with :func:`demo_step`.
``--only NAME`` runs some steps only (``--list`` shows them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

__all__ = ["STEPS", "DemoContext", "demo_step", "main"]


@dataclass
class DemoContext:
    """What every step gets: the output folder and the loaded model (shared, loaded once)."""

    out: Path
    model: nn.Module
    notes: dict[str, str] = field(default_factory=dict)  # step name -> one-line summary


Step = Callable[[DemoContext], list[Path]]
#: The demo steps in order: (name, function, one-line description).
STEPS: list[tuple[str, Step, str]] = []


def demo_step(name: str, description: str) -> Callable[[Step], Step]:
    """Register a demo step (runs in registration order)."""

    def deco(fn: Step) -> Step:
        STEPS.append((name, fn, description))
        return fn

    return deco


# ----------------------------------------------------------------------------------------------- steps
@demo_step("layers", "layer table of the model (names, types, weight and output shapes)")
def layer_table(ctx: DemoContext) -> list[Path]:
    from ..models import layers
    from ..utils.io import atomic_path

    path = ctx.out / "layers.txt"
    table = layers(ctx.model)
    with atomic_path(path) as tmp:
        tmp.write_text(repr(table) + "\n", encoding="utf-8")
    ctx.notes["layers"] = f"{len(table)} layers, {len(table.with_weights())} with weights"
    return [path]


@demo_step("stem_rgb", "first conv layer (conv_stem, 32 x 3x3 RGB) shown directly as colours")
def stem_rgb(ctx: DemoContext) -> list[Path]:
    from ..figures import rgb_weights_grid

    path = ctx.out / "stem_rgb.png"
    rgb_weights_grid(ctx.model, "conv_stem").save(path)
    return [path]


#: (file stem, layer, units, shared): the stem is lite0's only dense conv with k >= 3; its depthwise
#: convs have one input channel per neuron, so their NMF shows the positive and negative parts.
NMF_FIGURES = [
    ("nmf_conv_stem", "conv_stem", None, False),
    ("nmf_conv_stem_shared", "conv_stem", None, True),
    ("nmf_blocks.2.1.conv_dw", "blocks.2.1.conv_dw", "0:32", True),
    ("nmf_blocks.5.1.conv_dw", "blocks.5.1.conv_dw", "0:32", True),
]


@demo_step("nmf", "one-sided NMF images of the stem and of two 5x5 depthwise layers")
def nmf_images(ctx: DemoContext) -> list[Path]:
    from ..figures import nmf_grid

    paths = []
    for stem, layer, units, shared in NMF_FIGURES:
        path = ctx.out / f"{stem}.png"
        nmf_grid(ctx.model, layer, units=units, shared=shared).save(path)
        paths.append(path)
    return paths


#: Contextual figures of lite0 blocks.3.0 #24 (expanded weights from blocks.2.0; the unit whose top 4 inputs
#: hold the largest share of its squared norm) and of its family (the 7 units with the most similar input
#: profile). FVs at 64 px, 128 steps, through the render cache (a second run only redraws).
FIGURE_UNIT = ("blocks.2.0", "blocks.3.0", 24, [24, 51, 20, 52, 1, 41, 59, 16])


@demo_step("figures", "top inputs and weight factors of blocks.3.0 #24 (expanded weights, with FVs)")
def figures_step(ctx: DemoContext) -> list[Path]:
    from ..figures import top_inputs, weight_factors

    src, dst, unit, family = FIGURE_UNIT
    fv = {"size": 64, "steps": 128}
    paths = [ctx.out / "fig_top_inputs.png", ctx.out / "fig_factors.png"]
    top_inputs(ctx.model, dst, unit, src=src, k=8, **fv).save(paths[0])
    weight_factors(ctx.model, src, dst, family, n_factors=2, n_top=3, **fv).save(paths[1])
    return paths


#: Cases of one lite0 connection over the embedded images (per-example gradients through the real model,
#: factored by one-sided NMF; benchmarks/cases_scan.py chose the unit): few small images and small FVs.
CASES_UNIT = ("blocks.2.0", "blocks.3.1", 70)
CASES_CONFIG = {"n_images": 48, "image_size": 128, "n_cases": 2, "k": 4, "n_examples": 4}
#: the feature visualizations of the cases figure (the README's `weightviz cases` line uses the same)
CASES_FIGURE = {"size": 64, "steps": 128}


@demo_step("cases", "cases of blocks.2.0 -> blocks.3.1 #70 over the embedded images, beside its expanded weight")
def cases_step(ctx: DemoContext) -> list[Path]:
    from ..conditioned import cases
    from ..data import images
    from ..figures.conditioned import cases_figure

    src, dst, unit = CASES_UNIT
    c = CASES_CONFIG
    imgs = images(model=ctx.model, size=c["image_size"], n=c["n_images"])
    res = cases(ctx.model, src, dst, unit, imgs, c["n_cases"], k=c["k"], n_examples=c["n_examples"])
    path = ctx.out / "fig_cases.png"
    cases_figure(res, k=c["k"], n_examples=c["n_examples"], **CASES_FIGURE).save(path)
    ctx.notes["cases"] = f"{res.n_cases} cases explain {100 * res.explained:.0f}% of the weighted gradients"
    return [path]


#: The demo explorer: three lite0 blocks (direct and block-to-block expanded weights), a few units each.
EXPLORER_LAYERS = "blocks.0.0,blocks.1.0,blocks.2.0"
EXPLORER_UNITS = "0:8"
#: FV size/steps kept small so the demo stays fast on a CPU (the explore CLI defaults to 64 px, 64 steps);
#: dataset examples from 32 of the embedded natural images (the CLI default is 128).
EXPLORER_CONFIG = {"size": 64, "steps": 48, "top_k": 6, "cases": 2, "case_images": 16, "case_size": 64,
                   "example_images": 32}


@demo_step("explorer", "weight explorer of lite0 (static site; re-runs skip what is built)")
def explorer_step(ctx: DemoContext) -> list[Path]:
    from ..explore import ExploreConfig, build_site

    names = {"weights": "weights, NMF images, top inputs", "render": "feature visualizations",
             "examples": "dataset examples", "page": "pages", "cases": "cases over the images"}

    def progress(stage: str, done: int, total: int) -> None:
        if done == total:
            print(f"  explorer: {names[stage]} {done}/{total} jobs done", flush=True)

    report = build_site(ctx.model, ctx.out / "explorer", layers=EXPLORER_LAYERS, units=EXPLORER_UNITS,
                        config=ExploreConfig(**EXPLORER_CONFIG), name="efficientnet_lite0",
                        progress=progress)
    ctx.notes["explorer"] = (f"{report.pages} unit pages; open file://{report.index.resolve()} in a browser, "
                             "or browse every layer live: weightviz serve lite0")
    return [report.index]


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weightviz.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out", help="output folder (created if missing; default: out)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this step (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, _, description in STEPS:
            print(f"{name:12s} {description}")
        return 0
    names = [name for name, _, _ in STEPS]
    unknown = [n for n in args.only or [] if n not in names]
    if unknown:
        print(f"error: unknown demo step {unknown[0]!r}; steps: {', '.join(names)}", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

    from ..errors import WeightvizError
    from ..models import load_model

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create output folder {str(out)!r}: {e.strerror}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ctx = DemoContext(out=out, model=load_model())
    print(f"weightviz demo: efficientnet_lite0 (embedded ImageNet weights) -> {out}/")
    written: list[Path] = []
    for name, fn, description in STEPS:
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            paths = fn(ctx)
        except WeightvizError as e:
            print(f"error in demo step {name!r}: {e}", file=sys.stderr)
            return 2
        written += paths
        note = f" ({ctx.notes[name]})" if name in ctx.notes else ""
        print(f"[{name}] {description}{note}: {time.perf_counter() - t:.1f} s")
        for p in paths:
            print(f"  wrote {p}")
    print(f"done: {len(written)} files in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

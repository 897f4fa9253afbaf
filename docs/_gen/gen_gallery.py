"""Generate the figure gallery: every figure kind of ``weightviz.figures.FIGURES``, drawn at build time on
the embedded EfficientNet-Lite0 at small settings, next to the call that makes it (run by mkdocs-gen-files).

Figures whose FVs or data passes take tens of seconds on a CPU are not redrawn: their picture is the one
committed in ``docs/`` (made by ``make demo`` or ``docs/make_fig_examples.py`` with the call shown), listed
in :data:`REUSED`; the others are drawn by the build. A figure kind added to ``FIGURES`` without an entry in :data:`GALLERY` fails the build (and
``tests/test_docs.py``), so the gallery stays complete.
"""

from __future__ import annotations

import time

# kind -> (title, what it shows, the call; `m` = wv.load_model(), `imgs` = wv.images(n=24, size=128),
#          `vit` = a random-init ViT-Tiny). Small settings (64 px, 32 steps) keep the build fast; the
#          defaults (96-128 px, 256 steps) give cleaner feature visualizations.
GALLERY: dict[str, tuple[str, str, str]] = {
    "rgb_weights": (
        "First-layer RGB weights",
        "The first conv layer's kernels shown directly as colours (article Fig. 1, left).",
        'wv.figures.rgb_weights_grid(m, "conv_stem")'),
    "nmf": (
        "One-sided NMF images",
        "32 depthwise 5x5 kernels as 3-factor one-sided NMF images with shared colours (article Fig. 1).",
        'wv.figures.nmf_grid(m, "blocks.5.1.conv_dw", units="0:32", shared=True)'),
    "top-inputs": (
        "Top inputs with context",
        "A unit, its feature visualization and its strongest expanded-weight inputs, each labelled by its "
        "own FV (article Fig. 3-4).",
        'wv.figures.top_inputs(m, "blocks.3.0", 24, src="blocks.2.0", k=6, size=64, steps=32)'),
    "expanded": (
        "Expanded weights",
        "The expanded weights of one unit from every strong input, as heatmaps on one scale.",
        'wv.figures.expanded(m, "blocks.2.0", "blocks.3.0", 24, k=8, size=64, steps=32)'),
    "small-multiples": (
        "Small multiples",
        "Several units side by side with their top inputs (article Fig. 5).",
        'wv.figures.small_multiples(m, "blocks.2.0", "blocks.3.0", [24, 51, 20], k=4, size=64, steps=32)'),
    "family-grid": (
        "Family grid",
        "A grid of the weights between a family of inputs and a family of outputs (article Fig. 6).",
        'wv.figures.family_grid(m, [7, 15, 11, 13], [24, 51, 20, 52], "blocks.2.0", "blocks.3.0", '
        'size=64, steps=32)'),
    "spatial": (
        "Spatial-position weights",
        "The input channels that matter at each position of a unit's window (article Fig. 7).",
        'wv.figures.spatial_positions(m, "blocks.3.0", 24, src="blocks.2.0", max_size=5, min_fade=0.2, '
        'size=64, steps=32)'),
    "factors": (
        "Weight factors",
        "NMF factors shared by a family of units, each factor's direction visualized (article Fig. 8).",
        'wv.figures.weight_factors(m, "blocks.2.0", "blocks.3.0", [24, 51, 20, 52, 1, 41], n_factors=2, '
        'n_top=3, size=64, steps=32)'),
    "paths": (
        "Routes and cancellation",
        "The routes from one early unit to a later one through every unit in between (article Fig. 12).",
        'wv.figures.paths(m, "blocks.1.1", "blocks.2.0", "blocks.3.0", 24, 2, n_routes=4, size=64, steps=32)'),
    "data-weights": (
        "Per-example gradients",
        "The real gradient of a unit for particular images, beside its expanded weight.",
        'wv.figures.data_weights(m, "blocks.2.0", "blocks.3.0", 24, imgs, n_examples=3, k=4, size=64, '
        'steps=32)'),
    "cases": (
        "Cases",
        "Per-example gradients weighted by activation and factored into a few signed patterns.",
        'wv.figures.cases(m, "blocks.2.0", "blocks.3.1", 70, imgs, n_cases=2, k=4, n_examples=3, size=64, '
        'steps=32)'),
    "top-examples": (
        "Dataset examples",
        "The images that activate a unit most, cropped to its receptive field.",
        'wv.figures.top_examples(m, "blocks.3.0", 24, imgs, k=6)'),
    "best-case": (
        "Best-case excitation",
        "An input optimized so that one connection's real gradient is strongest, beside the expanded weight.",
        'wv.figures.best_case(m, "blocks.1.0", "blocks.2.0", 3, k=3, size=64, steps=32, image_steps=32)'),
    "top-classes": (
        "Votes for classes",
        "The classes a unit of a late layer votes for (its expanded weight to each logit), with names.",
        'wv.figures.top_classes(m, "blocks.6.0", 5, k=10)'),
    "token-weights": (
        "Token weights",
        "Expanded weights between token layers of a ViT, as maps on the patch grid (random init here).",
        'wv.figures.token_weights(vit, "blocks.3", "blocks.4", 7, k=6, fv=False)'),
}


# kind -> (picture in docs/, the call that made it): redrawing these would cost minutes of the build
REUSED: dict[str, tuple[str, str]] = {
    "top-inputs": ("fig_top_inputs.png",
                   'wv.figures.top_inputs(m, "blocks.3.0", 24, src="blocks.2.0", k=8, size=64, steps=128)'),
    "family-grid": ("fig_family_grid.png",
                    'wv.figures.family_grid(m, [18, 31, 0, 9, 38], [24, 51, 20, 52, 1], "blocks.2.0", "blocks.3.0", '
                    'size=64, steps=128)'),
    "spatial": ("fig_spatial.png",
                'wv.figures.spatial_positions(m, "blocks.3.0", 24, src="blocks.2.0", max_size=5, min_fade=0.2, '
                'size=64, steps=128)'),
    "factors": ("fig_factors.png",
                'wv.figures.weight_factors(m, "blocks.2.0", "blocks.3.0", [24, 51, 20, 52, 1, 41, 59, 16], '
                'n_factors=2, n_top=3, size=64, steps=128)'),
    "paths": ("fig_paths.png",
              'wv.figures.paths(m, "blocks.1.1", "blocks.2.0", "blocks.3.0", 24, 2, n_routes=5, size=64, steps=128)'),
    "cases": ("fig_cases.png",
              'wv.figures.cases(m, "blocks.2.0", "blocks.3.1", 70, wv.images(model=m, size=128, n=48), n_cases=2, '
              'k=4, n_examples=4, size=64, steps=128)'),
    "top-examples": ("fig_examples.png", 'wv.figures.top_examples(m, "blocks.3.0", 5, k=9)'),
    "best-case": ("fig_best_case.png", 'wv.figures.best_case(m, "blocks.1.0", "blocks.2.0", 3)'),
}


def check_complete() -> None:
    import weightviz as wv

    missing = sorted(set(wv.figures.FIGURES) - set(GALLERY))
    if missing:
        raise RuntimeError(f"figure kinds without a gallery entry in docs/_gen/gen_gallery.py: {missing}")


def main() -> None:
    import warnings

    import mkdocs_gen_files
    import torch

    import weightviz as wv

    check_complete()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    ns = {"wv": wv, "m": wv.load_model(), "imgs": wv.images(n=24, size=128)}
    lines = ["# Gallery", "",
             "Every figure kind of `weightviz.figures.FIGURES`, drawn when this site was built, on the embedded "
             "EfficientNet-Lite0 at small settings (64 px feature visualizations, 32 optimization steps: the "
             "defaults give cleaner images), except the figures whose picture is committed in the repository "
             "(made with the call shown, at 128 steps), which would take minutes to redraw. Each is a `Figure`: `.save(\"x.png\")` or `.save(\"x.svg\")`, or "
             "shown inline in a notebook. The same figures from the command line: `weightviz figure KIND ...` "
             "(see [the command line](cli.md)).", "",
             "```python", "import weightviz as wv", "m = wv.load_model()                 # embedded EfficientNet-Lite0",
             "imgs = wv.images(n=24, size=128)     # embedded natural images (offline)",
             'vit = wv.load_model("timm:vit_tiny_patch16_224@random")   # random init: only for token-weights', "```", ""]
    for kind in sorted(GALLERY, key=list(GALLERY).index):
        title, what, call = GALLERY[kind]
        if kind in REUSED:
            png_name, made_by = REUSED[kind]
            lines += [f"## {title} {{ #{kind} }}", "", f"{what} Registry name: `{kind}`.", "", "```python",
                      f'{made_by}.save("{kind}.png")', "```", "",
                      f"![{title}]({png_name})", "", f"*Picture committed in the repository as `docs/{png_name}`.*", ""]
            continue
        if kind == "token-weights" and "vit" not in ns:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ns["vit"] = wv.load_model("timm:vit_tiny_patch16_224@random")
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kwargs = ", progress=False" if kind not in ("rgb_weights", "nmf", "top-examples", "top-classes") else ""
            fig = eval(call[:-1] + kwargs + ")", ns)  # noqa: S307 - our own table
        png = fig.to_png() if hasattr(fig, "to_png") else None
        with mkdocs_gen_files.open(f"gallery/{kind}.png", "wb") as f:
            f.write(png)
        print(f"gallery: {kind} {time.perf_counter() - t:.1f} s")
        lines += [f"## {title} {{ #{kind} }}", "", f"{what} Registry name: `{kind}`.", "", "```python",
                  f'{call}.save("{kind}.png")', "```", "", f"![{title}](gallery/{kind}.png)", ""]
    with mkdocs_gen_files.open("gallery.md", "w") as f:
        f.write("\n".join(lines))


if __name__ in ("__main__", "<run_path>"):
    main()

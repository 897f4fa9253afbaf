"""`weightviz figure NAME MODEL ...`: the article's contextual figures as PNG/SVG files.

One subcommand per figure of :data:`weightviz.figures.FIGURES` (top-inputs, small-multiples, family-grid,
spatial, factors, paths, expanded, token-weights); each validates the output path, loads the model, calls the registered
builder (feature visualizations rendered in one batch, with a progress bar and the render cache) and
saves the figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import WeightvizError
from ._common import (
    MODEL_HELP,
    app,
    check_output,
    count_option,
    err_console,
    load,
    size_option,
    steps_option,
    with_device,
)

figure_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Contextual weight figures (feature visualizations beside weights), saved as PNG or SVG.",
)
app.add_typer(figure_app, name="figure")

_OUT = typer.Option(..., "--output", "-o", help="Output image: .png or .svg.")
_SRC = typer.Option(None, "--src", "-s", help="Source layer for expanded weights (default: the layer's "
                    "direct weights, inputs = the layer feeding it).")
_SIZE = size_option(96)
_STEPS = steps_option(None, "Feature-visualization steps (default: the render default).")
_SEED = typer.Option(0, "--seed", help="Feature-visualization seed.")
_CACHE = typer.Option(True, "--cache/--no-cache", help="Reuse and store renders in the render cache "
                      "($WEIGHTVIZ_CACHE or ~/.cache/weightviz).")
_FV = typer.Option(True, "--fv/--no-fv", help="Render feature visualizations (--no-fv: grey placeholders).")


def _run(name: str, output: Path, model: str, args: tuple, kwargs: dict[str, Any], fv_kw: dict[str, Any]) -> None:
    from ..figures import FIGURES

    check_output(output)  # before any work
    builder = FIGURES.get(name)
    if builder is None:  # pragma: no cover - the registry and this module are written together
        raise WeightvizError(f"unknown figure {name!r}; known: {', '.join(sorted(FIGURES))}")
    m = load(model)
    if fv_kw["fv"]:  # the render shows its own progress bar (one live display at a time)
        fig = builder(m, *args, **kwargs, **fv_kw, progress=True)
    else:
        with err_console.status(f"computing {name}", spinner="dots"):
            fig = builder(m, *args, **kwargs, **fv_kw, progress=False)
    fig.save(output)
    shown = fig.data.get("inputs") or fig.data.get("units") or fig.data.get("routes")
    typer.echo(f"wrote {output} ({name}" + (f", {len(shown)} items" if shown else "") + ")")


def _fv(size: int, steps: int | None, seed: int, cache: bool, fv: bool) -> dict[str, Any]:
    return {"size": size, "steps": steps, "seed": seed, "cache": cache, "fv": fv}


@figure_app.command("top-inputs")
@with_device
def top_inputs_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer of the unit (a conv, or a block with --src)."),
    unit: int = typer.Argument(..., help="Output channel of LAYER."),
    output: Path = _OUT,
    src: str = _SRC,
    k: int = count_option(8, "--top", "-k", help="Number of inputs shown, strongest first."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """A unit's FV and its top-k input channels (FV + weight heatmap, one shared scale, exc./inh. marked).

    Example: weightviz figure top-inputs efficientnet_lite0 blocks.3.0 5 --src blocks.2.0 -o top.png
    """
    _run("top-inputs", output, model, (layer, unit), {"src": src, "k": k}, _fv(size, steps, seed, cache, fv))


@figure_app.command("expanded")
@with_device
def expanded_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Source layer (expanded weights start at its output)."),
    dst: str = typer.Argument(..., help="Destination layer."),
    unit: int = typer.Argument(..., help="Output channel of DST."),
    output: Path = _OUT,
    k: int = count_option(16, "--top", "-k", help="Number of input channels shown, strongest first."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """Expanded-weight heatmaps of the top-k source channels of one unit, with their FVs.

    Example: weightviz figure expanded efficientnet_lite0 blocks.2.0 blocks.4.0 7 -o expanded.png
    """
    _run("expanded", output, model, (src, dst, unit), {"k": k}, _fv(size, steps, seed, cache, fv))


@figure_app.command("small-multiples")
@with_device
def small_multiples_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    dst: str = typer.Argument(..., help="Destination layer."),
    units: str = typer.Argument(..., help="Units of DST, one row each: '5', '3,7', '0:4'."),
    output: Path = _OUT,
    src: str = _SRC,
    inputs: str = typer.Option(None, "--inputs", "-i", help="Input channels, one column each (default: "
                               "the --top strongest over the units)."),
    k: int = count_option(6, "--top", "-k", help="Number of inputs when --inputs is not given."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """Weights from several inputs to one or several units as small multiples, FVs on the margins.

    Example: weightviz figure small-multiples efficientnet_lite0 blocks.3.0 5,9 --src blocks.2.0 -o sm.png
    """
    _run("small-multiples", output, model, (src, dst, units), {"inputs": inputs, "k": k},
         _fv(size, steps, seed, cache, fv))


@figure_app.command("family-grid")
@with_device
def family_grid_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    dst: str = typer.Argument(..., help="Destination layer (the output family)."),
    dst_units: str = typer.Argument(..., help="Output family: units of DST, one column each."),
    src_units: str = typer.Argument(..., help="Input family: channels of --src (or of the layer feeding "
                                    "DST), one row each."),
    output: Path = _OUT,
    src: str = _SRC,
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """The grid of weights between two families (rows = inputs, columns = outputs), FVs on both margins.

    Example: weightviz figure family-grid efficientnet_lite0 blocks.3.0 0:6 0:8 --src blocks.2.0 -o fam.png
    """
    _run("family-grid", output, model, (src_units, dst_units, src, dst), {}, _fv(size, steps, seed, cache, fv))


@figure_app.command("spatial")
@with_device
def spatial_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer of the unit."),
    unit: int = typer.Argument(..., help="Output channel of LAYER."),
    output: Path = _OUT,
    src: str = _SRC,
    max_size: int = count_option(7, "--max-size", help="Show at most this many positions per side "
                                 "(the window holding the most weight)."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """One FV per kernel position (the weight vector there as a direction), faded by its norm.

    Example: weightviz figure spatial efficientnet_lite0 blocks.3.0 5 --src blocks.2.0 -o spatial.png
    """
    _run("spatial", output, model, (layer, unit), {"src": src, "max_size": max_size},
         _fv(size, steps, seed, cache, fv))


@figure_app.command("factors")
@with_device
def factors_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    dst: str = typer.Argument(..., help="Layer of the family."),
    units: str = typer.Argument(..., help="The family: units of DST ('0:8', '3,7,9')."),
    output: Path = _OUT,
    src: str = _SRC,
    n_factors: int = count_option(2, "--factors", "-n", help="Number of NMF factors."),
    n_top: int = count_option(4, "--top", "-k", help="Inputs listed per factor (largest loadings)."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """Weight factors of a family: one-sided NMF across the units, FV of each factor direction, each
    unit's signed map per factor, and the inputs loading most on each factor.

    Example: weightviz figure factors efficientnet_lite0 blocks.3.0 0:8 --src blocks.2.0 -o factors.png
    """
    _run("factors", output, model, (src, dst, units, n_factors), {"n_top": n_top},
         _fv(size, steps, seed, cache, fv))


@figure_app.command("paths")
@with_device
def paths_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Early layer."),
    mid: str = typer.Argument(..., help="Intermediate layer the routes pass through."),
    dst: str = typer.Argument(..., help="Late layer."),
    unit: int = typer.Argument(..., help="Unit of DST."),
    src_unit: int = typer.Argument(..., help="Unit of SRC."),
    output: Path = _OUT,
    n_routes: int = count_option(6, "--routes", "-r", help="Number of strongest routes shown."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """The expanded weight from one early unit to one late unit beside its strongest routes through MID
    (each route's two hops and contribution): where they cancel, the total is small.

    Example: weightviz figure paths efficientnet_lite0 blocks.2.0 blocks.3.0 blocks.4.0 7 12 -o paths.png
    """
    _run("paths", output, model, (src, mid, dst, unit, src_unit), {"n_routes": n_routes},
         _fv(size, steps, seed, cache, fv))


@figure_app.command("token-weights")
@with_device
def token_weights_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Source token layer (e.g. blocks.3 of a ViT)."),
    dst: str = typer.Argument(..., help="Destination token layer."),
    unit: int = typer.Argument(..., help="Unit (channel) of DST."),
    output: Path = _OUT,
    k: int = count_option(8, "--top", "-k", help="Number of source channels shown, strongest first."),
    token: int = typer.Option(None, "--token", "-t", min=0, help="Target token of DST by index (0: the class "
                              "token; default: the centre patch)."),
    size: int = _SIZE, steps: int = _STEPS, seed: int = _SEED, cache: bool = _CACHE, fv: bool = _FV,
) -> None:
    """Expanded weights between token layers (attention and norms frozen at their image-set means) on the
    patch grid: the top-k source channels into one unit at one token.

    Example: weightviz figure token-weights timm:vit_tiny_patch16_224 blocks.3 blocks.4 7 -o tokens.png
    """
    _run("token-weights", output, model, (src, dst, unit), {"k": k, "token": token},
         _fv(size, steps, seed, cache, fv))


@figure_app.command("top-classes")
@with_device
def top_classes_fig_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer whose unit to inspect."),
    unit: int = typer.Argument(..., help="Unit (channel) of LAYER."),
    output: Path = _OUT,
    k: int = count_option(10, "--top", "-k", help="Classes shown each way (for and against)."),
) -> None:
    """The classes a unit votes for and against: its expanded weight to each logit through the linearized
    head, with the weights' class names.

    Example: weightviz figure top-classes torchvision:resnet50 layer4 7 -o classes.png
    """
    check_output(output)
    from ..figures import FIGURES

    m = load(model)
    with err_console.status("computing top-classes", spinner="dots"):
        fig = FIGURES["top-classes"](m, layer, unit, k=k)
    fig.save(output)
    typer.echo(f"wrote {output} (top-classes)")

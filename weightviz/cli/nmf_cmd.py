"""`weightviz nmf`: one-sided NMF images of a layer's neurons (or its weights as RGB) as a PNG/SVG grid."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import MODEL_HELP, app, check_output, count_option, err_console, load, progress_bar, with_device


@app.command("nmf")
@with_device
def nmf_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer name as printed by `weightviz layers MODEL`."),
    output: Path = typer.Option(..., "--output", "-o", help="Output image: .png or .svg."),
    units: str = typer.Option(None, "--units", "-u", help="Output channels: '0:32', '3,7,9' (default: all)."),
    shared: bool = typer.Option(False, "--shared", help="Fit the colour factors once on all neurons of the "
                                "layer, so a colour means the same thing in every neuron."),
    factors: int = count_option(3, "--factors", "-f", help="Number of NMF factors (3 = RGB; more = hues)."),
    rgb: bool = typer.Option(False, "--rgb", help="Show a first layer's weights directly as RGB instead."),
    seed: int = typer.Option(0, "--seed", help="Seed of the NMF's random starts."),
) -> None:
    """One-sided NMF images of a layer's neurons, one labelled cell per neuron.

    Example: weightviz nmf torchvision:alexnet features.3 --units 0:32 --shared -o alexnet_nmf.png
    """
    from ..figures import nmf_grid, rgb_weights_grid
    from ..models import parse_units, weights

    check_output(output)  # before any work: suffix, existing and writable directory
    m = load(model)
    W = weights(m, layer)  # unknown layer / no weights / NaN -> one-line error
    n = len(parse_units(units, W.shape[0], what=f"layer {layer!r}"))
    if rgb:
        fig = rgb_weights_grid(m, layer, units)
    else:
        total = W.shape[0] if shared else n
        with progress_bar(f"NMF of {layer}", total=total) as advance:
            fig = nmf_grid(m, layer, units, shared=shared, n_factors=factors, seed=seed, progress=advance)
    with err_console.status(f"drawing {n} neurons", spinner="dots"):
        fig.save(output)
    what = "weights as RGB" if rgb else f"one-sided NMF, {factors} factors{', shared' if shared else ''}"
    typer.echo(f"wrote {output} ({n} neurons of {layer}, {what})")

"""`weightviz banding` (banding score of every k>=3 conv layer) and `weightviz tail` (long tail of a unit's
input weights, direct or expanded)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import WeightvizError
from ._common import MODEL_HELP, app, check_output, count_option, load, progress_bar, with_device


@app.command("banding")
@with_device
def banding_cmd(
    model: str = typer.Argument("efficientnet_lite0", help=MODEL_HELP),
    output: Path = typer.Option(None, "--output", "-o", help="Write the plot across depth (.png or .svg)."),
    image: str = typer.Option("auto", "--image", help="Kernel image: auto (raw if <=3 inputs, else NMF), raw, nmf."),
    n_perm: int = count_option(1000, "--n-perm", min=19, help="Shuffles per neuron for the permutation null (>= 19)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutation null (and of the NMF)."),
    layer: list[str] = typer.Option(None, "--layer", "-l", help="Only these layers (repeatable)."),
) -> None:
    """Banding score (Weight Banding article) of every conv layer with kernels of at least 3x3.

    Per layer: median score S (+1 horizontal bands, -1 vertical), its null band and permutation p-value,
    the share of neurons individually banded, and the decision (>= 2/3 of neurons banded at p < 0.01).

    Example: weightviz banding efficientnet_lite0 -o banding.png
    """
    from .. import figures
    from ..stats import banding_layers, scan_banding

    if output is not None:
        output = check_output(output)
    if image not in ("auto", "raw", "nmf"):
        raise WeightvizError(f"--image must be auto, raw or nmf, got {image!r}")
    m = load(model)
    total = len(layer) if layer else len(banding_layers(m))
    if total == 0:
        raise WeightvizError(f"model {model!r} has no 2-D conv layer with kernels of at least 3x3")
    with progress_bar("banding", total) as advance:
        scan = scan_banding(m, layers=layer or None, image=image, n_perm=n_perm, seed=seed, progress=advance)
    typer.echo(scan.table())
    if output is not None:
        figures.banding_scan(scan).save(output)
        typer.echo(f"wrote {output}")


@app.command("tail")
@with_device
def tail_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer whose unit to inspect (names from `weightviz layers`)."),
    unit: str = typer.Argument(..., help="Output channel of LAYER."),
    src: str = typer.Option(None, "--src", help="Use expanded weights from this earlier layer (else direct)."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the cumulative-share plot (.png or .svg)."),
    top: int = count_option(10, "--top", help="List this many strongest input channels."),
    draws: int = count_option(8, "--draws", help="Random Gaussian tensors averaged for the baseline."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random baseline."),
) -> None:
    """Long tail of one unit's input weights: share of squared norm in the top-k input channels, k50, k90,
    participation ratio, each beside a random Gaussian tensor of the same shape.

    Example: weightviz tail efficientnet_lite0 blocks.6.0.conv_pwl 3 -o tail.png
    """
    from .. import figures
    from ..models import parse_units, weights
    from ..stats import long_tail

    if output is not None:
        output = check_output(output)
    m = load(model)
    w = weights(m, layer)  # unknown layers raise with close matches
    units = parse_units(unit, w.shape[0], what=f"layer {layer!r}")
    if len(units) != 1:
        raise WeightvizError(f"give one unit, got {unit!r} ({len(units)} units)")
    u = units[0]
    if src:
        from ..expand import expanded_weights

        w_u = expanded_weights(m, src, layer, [u])[0]
        what = f"expanded weights {src} -> {layer} unit {u}"
    else:
        w_u = weights(m, layer, dense=True)[u]
        what = f"direct weights of {layer} unit {u}"
    lt = long_tail(w_u, n_random=draws, seed=seed)
    typer.echo(f"{what}: {lt.n_inputs} input channels, slices {w_u.shape[-2]}x{w_u.shape[-1]}")
    typer.echo(lt.table(0))
    n = min(top, lt.n_inputs)
    signs = w_u.sum(dim=(1, 2))
    chans = ", ".join(
        f"{int(c)} ({'+' if float(signs[int(c)]) >= 0 else '-'}{float(v):.3g})"
        for c, v in zip(lt.order[0, :n], lt.norms[0, :n])
    )
    typer.echo(f"top {n} input channels (sign of sum, L2 norm): {chans}")
    if output is not None:
        figures.long_tail(lt, 0, title=f"Long tail: {what}").save(output)
        typer.echo(f"wrote {output}")

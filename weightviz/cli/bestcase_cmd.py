"""`weightviz best-case MODEL SRC DST UNIT -o out.png`: the input that makes a connection strongest."""

from __future__ import annotations

from pathlib import Path

import typer

from ..utils.limits import MAX_SIZE, MIN_SIZE
from ._common import MODEL_HELP, app, check_output, load, steps_option, with_device


@app.command("best-case")
@with_device
def best_case_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Source layer (its output channels are the connection's inputs)."),
    dst: str = typer.Argument(..., help="Target layer, later in the forward pass."),
    unit: int = typer.Argument(..., help="Output channel of DST (its centre position is the target)."),
    output: Path = typer.Option(..., "--output", "-o", help="Figure: .png or .svg."),
    src_unit: int | None = typer.Option(None, "--src-unit", min=0, help="One SRC channel: maximize the gradient between "
                                        "it and UNIT at the centre (default: the norm of the whole connection)."),
    steps: int | None = steps_option(None, "Optimization steps (default 128)."),
    size: int | None = typer.Option(None, "--size", min=MIN_SIZE, max=MAX_SIZE, help="Image side in pixels (default: the "
                                    f"smallest that holds the receptive field of DST; {MIN_SIZE}..{MAX_SIZE})."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same image)."),
    top: int = typer.Option(8, "--top", "-k", min=1, help="SRC channels drawn when --src-unit is not given (strongest "
                            "achieved connection first)."),
    fv: bool = typer.Option(True, "--fv/--no-fv", help="Label the SRC channels with their feature visualizations."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse and store renders in the render cache."),
) -> None:
    """Best-case excitation: optimize an input so that the connection from SRC to UNIT of DST is as strong
    as it can be through the real model (the "maximum achievable gradient" of Visualizing Weights).

    The connection on an input is the gradient of DST[UNIT] at its centre position (pre-activation for a
    conv) with respect to SRC, on the same K x K window as `weightviz expand`. Expanded weights show it
    with every ReLU switched on; on real inputs routes switch off, and routes that cancel on average can
    act alone. The figure shows the optimized input, the gradient it achieves next to the expanded weight
    on one colour scale, and in the title their ratio of norms (> 1: the real model can connect the two
    more strongly than the expanded weights say).

    Example: weightviz best-case efficientnet_lite0 blocks.2.0 blocks.3.0 24 -o best.png
    Example: weightviz best-case efficientnet_lite0 blocks.2.0 blocks.3.0 24 --src-unit 7 -o best7.svg
    """
    from ..conditioned import STEPS
    from ..errors import WeightvizError
    from ..figures import best_case

    check_output(output)
    if top < 1:
        raise WeightvizError(f"--top must be at least 1, got {top}")
    m = load(model)
    fig = best_case(m, src, dst, unit, src_unit, top, image_size=size, image_steps=steps or STEPS, seed=seed,
                    cache=cache, progress=True, fv=fv)
    fig.save(output)
    d = fig.data
    what = f"channel {src_unit}" if src_unit is not None else "whole connection"
    typer.echo(f"wrote {output} (best case {src} -> {dst} unit {unit}, {what}: value {d['value']:.4g}, "
               f"{d['ratio']:.3g}x the expanded weight's norm)")

"""`weightviz layers`: list the addressable layers of a model."""

from __future__ import annotations

import typer

from ._common import MODEL_HELP, app, load, with_device


@app.command("layers")
@with_device
def layers_cmd(
    model: str = typer.Argument("efficientnet_lite0", help=MODEL_HELP),
    weights_only: bool = typer.Option(False, "--weights-only", "-w", help="Only conv/linear layers."),
    blocks: bool = typer.Option(False, "--blocks", "-b", help="Only blocks (containers)."),
) -> None:
    """List layers: name (as in named_modules), type, weight shape, output channels, groups, output shape.

    Example: weightviz layers torchvision:googlenet --weights-only
    """
    from ..models import layers

    m = load(model)
    table = layers(m)
    if weights_only:
        table = table.with_weights()
    if blocks:
        table = table.blocks()
    typer.echo(repr(table))

"""`weightviz top-classes MODEL LAYER UNIT`: the classes a unit votes for through the linearized head."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import WeightvizError
from ._common import MODEL_HELP, app, check_output, count_option, load, with_device


@app.command("top-classes")
@with_device
def top_classes_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer whose unit to inspect (names from `weightviz layers`)."),
    unit: str = typer.Argument(..., help="Output channel of LAYER."),
    k: int = count_option(10, "-k", "--top", help="List this many classes each way."),
    output: Path = typer.Option(None, "--output", "-o", help="Also write the bar chart (.png or .svg)."),
) -> None:
    """The classes a unit votes for (and against): its expanded weight to each logit, summed over
    positions, through the linearized head (global pool, classifier).

    Example: weightviz top-classes torchvision:resnet50 layer4 7
    """
    from .. import figures
    from ..expand import top_classes

    try:
        u = int(unit)
    except ValueError:
        raise WeightvizError(f"UNIT must be one channel index, got {unit!r}") from None
    if output is not None:
        output = check_output(output)
    m = load(model)
    r = top_classes(m, layer, u, k=k)
    typer.echo(f"{layer} unit {u} -> {r.classifier}: votes for")
    for i, v, name in r.rows():
        typer.echo(f"  {v:+.4f}  {i:5d}  {name or ''}")
    typer.echo("votes against")
    for i, v, name in r.bottom.rows():
        typer.echo(f"  {v:+.4f}  {i:5d}  {name or ''}")
    if output is not None:
        figures.top_classes(r, model_name=model).save(output)
        typer.echo(f"wrote {output}")

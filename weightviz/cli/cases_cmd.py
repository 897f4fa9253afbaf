"""`weightviz cases MODEL SRC DST UNIT -o cases.png`: the gradient of one connection factored over an image
set into a few cases (per-example gradients through the real model, one-sided NMF)."""

from __future__ import annotations

from pathlib import Path

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


@app.command("cases")
@with_device
def cases_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    src: str = typer.Argument(..., help="Source layer (its output channels are the inputs)."),
    dst: str = typer.Argument(..., help="Target layer, later in the forward pass."),
    unit: int = typer.Argument(..., help="Output channel of DST."),
    output: Path = typer.Option(..., "--output", "-o", help="Figure: .png or .svg."),
    images: Path = typer.Option(None, "--images", help="Folder of images (jpg/png/webp, searched recursively; "
                                "default: the embedded natural images)."),
    n_images: int = count_option(128, "--n-images", "-n", help="Number of images used (a seeded subset)."),
    image_size: int = typer.Option(None, "--image-size", min=8, max=2048,
                                   help="Image side in pixels (default: the model's)."),
    n_cases: int = count_option(2, "--n-cases", help="Number of cases (2..6 is typical)."),
    top: int = count_option(6, "--top", "-k", help="Input channels shown per case."),
    n_examples: int = count_option(4, "--examples", help="Example images shown per case."),
    position: str = typer.Option("max", "--position", help="'max' (where the unit is most active in each "
                                 "image), 'centre', or 'Y,X'."),
    size: int = size_option(96),
    steps: int = steps_option(None, "Feature-visualization steps (default: the render default)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image subset, the NMF and the FVs."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse and store renders in the render cache."),
    fv: bool = typer.Option(True, "--fv/--no-fv", help="Render feature visualizations (--no-fv: grey placeholders)."),
) -> None:
    """The cases of the connection SRC -> DST[UNIT]: per image, the gradient of the unit (at its most
    active position) w.r.t. SRC through the real model, weighted by how strongly the unit fires, factored
    by one-sided NMF. Draws, per case, the images that carry it and its strongest inputs (FV, the case's
    gradient, the expanded weight below on the same scale); prints how much the cases explain.

    Example: weightviz cases efficientnet_lite0 blocks.2.0 blocks.3.0 5 --n-cases 2 -o cases.png
    """
    from ..conditioned import cases, data_weights
    from ..data import images as image_set
    from ..figures.conditioned import cases_figure
    from ..models import get_module

    check_output(output)
    pos: str | tuple[int, int] = position
    if position not in ("max", "centre", "center"):
        try:
            y, x = (int(v) for v in position.split(","))
        except ValueError:
            raise WeightvizError(f"--position must be 'max', 'centre' or 'Y,X', got {position!r}") from None
        pos = (y, x)
    if n_images < 1:
        raise WeightvizError(f"--n must be at least 1, got {n_images}")
    if n_cases < 1:
        raise WeightvizError(f"--n-cases must be at least 1, got {n_cases}")
    if images is not None and not images.is_dir():
        raise WeightvizError(f"--images {str(images)!r} is not a folder; give a folder of jpg/png/webp images")
    m = load(model)
    get_module(m, src)
    get_module(m, dst)
    with err_console.status("loading images", spinner="dots"):
        imgs = image_set(images, model=m, size=image_size, n=n_images, seed=seed)
    d = data_weights(m, src, dst, unit, imgs, position=pos, progress=True)
    with err_console.status(f"factoring {len(imgs)} gradients into {n_cases} cases", spinner="dots"):
        res = cases(m, src, dst, unit, imgs, n_cases, k=top, n_examples=n_examples, seed=seed, data=d)
    fig = cases_figure(res, k=top, n_examples=n_examples, size=size, steps=steps, seed=seed, cache=cache,
                       progress=fv, fv=fv)
    fig.save(output)
    n_fire = int((d.activations > 0).sum())
    typer.echo(f"{src} -> {dst} unit {unit}: {len(imgs)} images, fires on {n_fire}; {res.n_cases} cases explain "
               f"{100 * res.explained:.1f}% of the weighted gradient sum of squares; mean gradient norm / "
               f"expanded-weight norm = {res.norm_ratio():.3g}")
    for j in range(res.n_cases):
        ins = ", ".join(f"{c.channel}{'+' if c.sign > 0 else '-'}" for c in res.top_inputs[j][:top])
        typer.echo(f"case {j + 1} ({100 * float(res.share[j]):.0f}%): inputs {ins}; images "
                   f"{', '.join(str(i) for i in res.examples[j].indices)}")
    typer.echo(f"wrote {output}")

"""`weightviz examples MODEL LAYER UNIT --images DIR -o out.png`: the images that activate a unit most."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer

from ._common import MODEL_HELP, app, check_output, err_console, load, progress_bar, with_device


@app.command("examples")
@with_device
def examples_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer name as printed by `weightviz layers MODEL`."),
    unit: int = typer.Argument(..., help="Output channel of LAYER."),
    output: Path = typer.Option(..., "--output", "-o", help="Figure: .png or .svg."),
    images: Path | None = typer.Option(None, "--images", help="Folder of images (jpg/png/webp/bmp, searched "
                                       "recursively, resized and centre-cropped). Default: the embedded natural "
                                       "images (crops of the scikit-image and scikit-learn photos)."),
    k: int = typer.Option(9, "--top", "-k", min=1, help="Number of examples shown, strongest first."),
    n: int | None = typer.Option(None, "--n-images", "-n", min=1, help="Use only this many images (a seeded subset)."),
    size: int | None = typer.Option(None, "--size", min=16, max=2048, help="Image side in pixels (default: the model's input size)."),
    position: str = typer.Option("max", "--position", help="'max': a unit's activation on an image is its "
                                 "maximum over positions; 'centre': its value at the centre position."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset chosen by --n-images."),
) -> None:
    """Dataset examples: the K images that activate UNIT of LAYER most, each cropped to the unit's
    receptive field at the position where it fired most, labelled with the activation.

    The activation is the output of the LAYER module (pre-activation for a conv). Crops show the exact
    field (measured on the model, padding included); where it reaches past the image border the crop is
    grey there. A unit that fires on none of the images is an error (nothing is drawn).

    Example: weightviz examples efficientnet_lite0 blocks.4.0 7 -o examples.png
    Example: weightviz examples efficientnet_lite0 blocks.4.0 7 --images ~/photos -k 16 -o examples.svg
    """
    from .. import figures
    from ..conditioned import top_examples
    from ..data import images as image_set
    from ..errors import WeightvizError
    from ..models import get_module, input_spec, parse_units, probe_shapes

    check_output(output)
    if position not in ("max", "centre"):
        raise WeightvizError(f"--position must be 'max' or 'centre', got {position!r}")
    if k < 1:
        raise WeightvizError(f"--top must be at least 1, got {k}")
    if images is not None and not images.is_dir():
        raise WeightvizError(f"--images {str(images)!r} is not a folder of images; pass a directory")
    m = load(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        imgs = image_set(images, model=m, size=size, n=n, seed=seed)
        get_module(m, layer)  # unknown layer -> close matches; unit range checked before any long work
        shape = probe_shapes(m, [layer], input_spec(m).channels, imgs.size)[layer]
        parse_units(unit, shape[0], f"layer {layer!r}")
        with progress_bar(f"scoring {len(imgs)} images", len(imgs)) as advance:
            seen = [0]

            def step(done: int, _total: int) -> None:
                advance(done - seen[0])
                seen[0] = done

            result = top_examples(m, layer, unit, imgs, k, position=position, batch_size=batch_size,
                                  progress=step)
    for w in caught:
        if "never fires" not in str(w.message):
            err_console.print(f"warning: {w.message}", markup=False, highlight=False, soft_wrap=True)
    if not result.fires:
        raise WeightvizError(f"unit {unit} of {layer!r} never fires on these {result.n_images} images (largest "
                             f"activation {result.max_value:.4g} <= 0); nothing to show: try other images")
    figures.top_examples(result).save(output)
    typer.echo(f"wrote {output} ({len(result)} examples of {layer} unit {unit} from {result.n_images} images; "
               f"activations {float(result.values[0]):.4g} .. {float(result.values[-1]):.4g})")

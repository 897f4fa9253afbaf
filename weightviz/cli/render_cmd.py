"""`weightviz render MODEL LAYER UNITS -o grid.png`: feature visualizations of units as a labelled grid."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import WeightvizError
from ._common import MODEL_HELP, app, check_output, load, with_device


@app.command("render")
@with_device
def render_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer name as printed by `weightviz layers MODEL`."),
    units: str = typer.Argument(..., help="Units (channels): '5', '0:16', '3,7,9' or 'all'."),
    output: Path = typer.Option(..., "--output", "-o", help="Output image: .png or .svg (labelled grid)."),
    size: int = typer.Option(128, "--size", help="Image size in pixels."),
    steps: int | None = typer.Option(None, "--steps", help="Optimization steps (default: the render default)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same image)."),
    objective: str = typer.Option("channel", "--objective", help="'channel' (mean over positions) or "
                                  "'neuron' (centre position)."),
    ncols: int | None = typer.Option(None, "--ncols", help="Grid columns (default: up to 8)."),
    batch: int | None = typer.Option(None, "--batch", help="Units per forward pass (default 32)."),
    raw: bool = typer.Option(False, "--raw", help="Write the exact pixels (no labels) instead of a figure; .png only."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse and store renders in the render cache."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Render cache directory "
                                          "(default: $WEIGHTVIZ_CACHE/renders or ~/.cache/weightviz/renders)."),
) -> None:
    """Render feature visualizations of UNITS of LAYER and save them as one labelled grid.

    Example: weightviz render efficientnet_lite0 blocks.4.1 0:16 -o grid.png --steps 256
    """
    from ..models import get_module, input_spec, model_name, parse_units
    from ..optvis import objectives as obj
    from ..optvis.cache import RenderCache
    from ..optvis.render import DEFAULT_STEPS, _probe_shapes, render

    check_output(output, (".png",) if raw else (".png", ".svg"))
    if objective not in ("channel", "neuron"):
        raise WeightvizError(f"--objective must be 'channel' or 'neuron', got {objective!r}")
    if size < 16:
        raise WeightvizError(f"--size must be at least 16 pixels, got {size}")
    m = load(model)
    get_module(m, layer)  # unknown layer -> close matches
    shape = _probe_shapes(m, [layer], input_spec(m).channels, size)[layer]
    selected = parse_units(None if units.strip().lower() == "all" else units, shape[0], f"layer {layer!r}")
    if not selected:
        raise WeightvizError(f"no units selected by {units!r}")
    make = obj.channel if objective == "channel" else obj.neuron
    store = (RenderCache(cache_dir) if cache_dir is not None else True) if cache else None
    result = render(m, [make(layer, u) for u in selected], size=size, steps=steps or DEFAULT_STEPS, seed=seed,
                    batch=batch, cache=store, progress=True)
    if raw:
        result.save(output, ncols=ncols)
    else:
        from ..figures._core import image_grid

        labels = [f"unit {u} ({v:.3g})" for u, v in zip(selected, result.values.tolist())]
        title = f"{model_name(m)} {layer}: {objective} feature visualizations ({result.steps} steps, seed {seed})"
        image_grid(result.images, labels, ncols=ncols or min(len(selected), 8), title=title, cell=1.3).save(output)
    n_cached = sum(result.cached)
    typer.echo(f"wrote {output} ({len(selected)} units of {layer}" + (f", {n_cached} from cache" if n_cached else "") + ")")

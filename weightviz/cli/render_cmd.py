"""`weightviz render MODEL LAYER UNITS -o grid.png`: feature visualizations of units as a labelled grid;
`-o DIR` (no suffix): one PNG per unit, as jobs on the local or Ray executor (bulk renders)."""

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
from ._jobs import address_option, check_executor, executor_option, job_progress, jobs_option


@app.command("render")
@with_device
def render_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    layer: str = typer.Argument(..., help="Layer name as printed by `weightviz layers MODEL`."),
    units: str = typer.Argument(..., help="Units (channels): '5', '0:16', '3,7,9' or 'all'."),
    output: Path = typer.Option(..., "--output", "-o", help="Output image: .png or .svg (labelled grid), or a "
                                "directory (no suffix): one PNG per unit, LAYER_UNIT.png (bulk renders)."),
    size: int = size_option(128, help="Image size in pixels."),
    steps: int | None = steps_option(None, "Optimization steps (default: the render default)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same image)."),
    objective: str = typer.Option("channel", "--objective", help="'channel' (mean over positions) or "
                                  "'neuron' (centre position)."),
    ncols: int | None = count_option(None, "--ncols", help="Grid columns (default: up to 8)."),
    batch: int | None = count_option(None, "--batch", help="Units per forward pass (default 32)."),
    raw: bool = typer.Option(False, "--raw", help="Write the exact pixels (no labels) instead of a figure; .png only."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse and store renders in the render cache."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Render cache directory "
                                          "(default: $WEIGHTVIZ_CACHE/renders or ~/.cache/weightviz/renders)."),
    executor: str = executor_option(),
    address: str = address_option(),
    jobs: int = jobs_option(),
) -> None:
    """Render feature visualizations of UNITS of LAYER and save them as one labelled grid, or with
    -o DIR one PNG per unit (jobs of --batch units, on --executor local or ray).

    Example: weightviz render efficientnet_lite0 blocks.4.1 0:16 -o grid.png --steps 256

    Bulk: weightviz render efficientnet_lite0 blocks.5.0 0:672 -o fv/ --executor ray
    """
    from ..utils.limits import check_size

    check_size(size, "--size")
    if output.suffix == "" or (output.is_dir() and output.suffix.lower() not in (".png", ".svg")):
        _render_dir(model, layer, units, output, size, steps, seed, objective, batch, cache, cache_dir,
                    executor, address, jobs)
        return
    if executor != "local" or address is not None or jobs is not None:
        raise WeightvizError("--executor/--address/--jobs are for bulk renders: give -o a directory (no suffix)")
    from ..models import get_module, input_spec, model_name, parse_units, probe_shapes
    from ..optvis import DEFAULT_STEPS, RenderCache, render
    from ..optvis import objectives as obj

    check_output(output, (".png",) if raw else (".png", ".svg"))
    if objective not in ("channel", "neuron"):
        raise WeightvizError(f"--objective must be 'channel' or 'neuron', got {objective!r}")
    check_size(size, "--size")
    m = load(model)
    get_module(m, layer)  # unknown layer -> close matches
    shape = probe_shapes(m, [layer], input_spec(m).channels, size)[layer]
    selected = parse_units(None if units.strip().lower() == "all" else units, shape[0], f"layer {layer!r}")
    if not selected:
        raise WeightvizError(f"no units selected by {units!r}")
    make = obj.channel if objective == "channel" else obj.neuron
    store = (RenderCache(cache_dir) if cache_dir is not None else True) if cache else None
    result = render(m, [make(layer, u) for u in selected], size=size, steps=DEFAULT_STEPS if steps is None else steps, seed=seed,
                    batch=batch, cache=store, progress=True)
    if raw:
        result.save(output, ncols=ncols)
    else:
        from ..figures import image_grid

        labels = [f"unit {u} ({v:.3g})" for u, v in zip(selected, result.values.tolist())]
        title = f"{model_name(m)} {layer}: {objective} feature visualizations ({result.steps} steps, seed {seed})"
        image_grid(result.images, labels, ncols=min(len(selected), 8) if ncols is None else ncols, title=title, cell=1.3).save(output)
    n_cached = sum(result.cached)
    typer.echo(f"wrote {output} ({len(selected)} units of {layer}" + (f", {n_cached} from cache" if n_cached else "") + ")")


def _render_dir(model, layer, units, output, size, steps, seed, objective, batch, cache, cache_dir,
                executor, address, jobs) -> None:
    from ..explore import render_dir
    from ..explore.bulk import check_output_dir
    from ..optvis import RenderCache

    check_executor(executor, address, jobs)
    check_output_dir(output)  # before any work
    m = load(model)
    from ..models import get_module

    get_module(m, layer)  # unknown layer -> close matches, before the progress display starts
    store = (RenderCache(cache_dir) if cache_dir is not None else True) if cache else None
    with job_progress({"render": "feature visualizations"}) as progress:
        report = render_dir(m, layer, None if units.strip().lower() == "all" else units, output, size=size,
                            steps=steps, seed=seed, objective=objective, batch=batch or 32, cache=store,
                            executor=executor, jobs=jobs, address=address, progress=progress)
    err_console.print(f"summary: {report.stats()}", markup=False, highlight=False, soft_wrap=True)
    typer.echo(f"wrote {len(report.files)} PNGs of {layer} to {output}/ ({report.run} jobs run, {report.skipped} up to date)")

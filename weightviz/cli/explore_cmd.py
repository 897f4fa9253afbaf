"""`weightviz explore` (static explorer site) and `weightviz serve` (the same pages, live)."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import (
    MODEL_HELP,
    app,
    count_option,
    current_device,
    err_console,
    load,
    size_option,
    steps_option,
    with_device,
)
from ._jobs import address_option, check_executor, executor_option, job_progress, jobs_option

_LAYERS_HELP = ("Explored layers, comma-separated names from `weightviz layers MODEL` (default: the model's "
                "outermost blocks; for EfficientNet-Lite0 the stage entries blocks.0.0 ... blocks.6.0).")
_UNITS_HELP = "Units that get pages, in every layer: '0:16', '3,7,9' (default: all)."


_IMAGES = typer.Option(None, "--images", help="Folder of images for the dataset examples and the cases panels "
                       "(jpg/png/webp, recursive; default: the embedded natural images).")
_CASES = typer.Option(2, "--cases", min=0, max=6, help="Cases per unit in the cases panel (per-example gradients from the "
                      "unit's primary source, factored over the images); 0: no cases panel.")
_CASE_IMAGES = typer.Option(32, "--case-images", min=1, help="Number of images the cases are computed on.")
_EXAMPLES = typer.Option(9, "--examples", min=0, help="Dataset examples per unit page (0 = no dataset-examples section).")
_EXAMPLE_IMAGES = typer.Option(128, "--example-images", min=0, help="Images scored for the dataset examples, at the "
                               "model's input size (a seeded subset; 0 = all).")


def _config(size: int, steps: int, top: int, sources: int, factor_fvs: bool, seed: int,
            images: Path | None = None, cases: int = 2, case_images: int = 32, examples: int = 9,
            example_images: int = 128):
    from ..errors import WeightvizError
    from ..explore import ExploreConfig

    if images is not None:
        if not Path(images).is_dir():
            raise WeightvizError(f"--images {str(images)!r} is not a folder; give a folder of jpg/png/webp images")
        from ..data import images as image_set

        image_set(images, size=16)  # before any work: a folder without readable images is one line
    if example_images < 0:
        raise WeightvizError(f"--example-images must be >= 0 (0 = all), got {example_images}")
    return ExploreConfig(size=size, steps=steps, top_k=top, sources=sources, factor_fvs=factor_fvs, seed=seed,
                         cases=cases, case_images=case_images,
                         images=str(Path(images).resolve()) if images is not None else None,
                         examples=examples, example_images=example_images or None)


def _check_units(ex, units: str | None) -> None:
    """Every explored layer gets at least one unit page (a range is clipped to each layer's size, so
    '100:200' on a 64-unit layer, or '5:2' anywhere, selects nothing): else one line, before any work."""
    from ..errors import WeightvizError

    for layer in ex.layers:
        if not ex.units[layer]:
            n = ex.channels(layer)
            raise WeightvizError(f"--units {units!r} selects no unit of layer {layer!r} ({n} units, 0..{n - 1}); "
                                 "choose units every explored layer has")


@app.command("explore")
@with_device
def explore_cmd(
    model: str = typer.Argument("efficientnet_lite0", help=MODEL_HELP),
    output: Path = typer.Option(..., "--output", "-o", help="Site directory (new, empty, or an earlier site to update)."),
    layers: str = typer.Option(None, "--layers", "-l", help=_LAYERS_HELP),
    units: str = typer.Option(None, "--units", "-u", help=_UNITS_HELP),
    all_layers: bool = typer.Option(False, "--all", help="Every unit of every explorable layer (the whole "
                                    "model; instead of --layers)."),
    executor: str = executor_option(),
    address: str = address_option(),
    jobs: int = jobs_option(),
    size: int = size_option(64),
    steps: int = steps_option(64, "Feature-visualization optimization steps."),
    top: int = count_option(8, "--top", help="Inputs and outputs shown per unit."),
    sources: int = count_option(1, "--sources", min=0, help="Earlier explored layers each unit's inputs are also "
                                "expanded from (besides the layer feeding it directly)."),
    factor_fvs: bool = typer.Option(True, "--factor-fvs/--no-factor-fvs", help="Render the FV of each weight factor."),
    seed: int = typer.Option(0, "--seed", help="Seed of the renders and factorizations."),
    cache: Path = typer.Option(None, "--cache", help="Render cache directory (default: $WEIGHTVIZ_CACHE/renders or ~/.cache/weightviz/renders)."),
    images: Path = _IMAGES,
    cases: int = _CASES,
    case_images: int = _CASE_IMAGES,
    examples: int = _EXAMPLES,
    example_images: int = _EXAMPLE_IMAGES,
) -> None:
    """Write a static explorer site: index of layers, a page per layer (FV + NMF image of every unit) and
    per unit (dataset examples, top inputs direct and expanded, top outputs, weight factors, banding), all
    linked.

    Opens from disk (no server). Re-running skips what is already built.

    Example: weightviz explore lite0 -o site/ --layers blocks.1.0,blocks.2.0,blocks.3.0 --units 0:16

    The whole model on a Ray cluster: weightviz explore lite0 -o atlas/ --all --executor ray --address auto
    """
    from ..errors import WeightvizError
    from ..explore import Explorer, build_site
    from ..explore.site import check_root

    check_root(output)  # before any work: not a file, not a foreign non-empty directory, writable
    check_executor(executor, address, jobs)
    if all_layers and layers:
        raise WeightvizError("--all explores every layer: drop --layers (or drop --all to choose layers)")
    if all_layers and units:
        raise WeightvizError("--all explores every unit of every layer: drop --units (or choose layers with "
                             "--layers instead of --all)")
    cfg = _config(size, steps, top, sources, factor_fvs, seed, images, cases, case_images, examples, example_images)
    m = load(model)
    with err_console.status("planning", spinner="dots"):
        if all_layers:
            from ..explore import explorable

            layers = [r.name for r in explorable(m)]
        ex = Explorer(m, layers, units, config=cfg, render_cache=cache if cache is not None else True, name=model)
    _check_units(ex, units)
    n_pages = sum(len(v) for v in ex.units.values())
    shown = ", ".join(ex.layers) if len(ex.layers) <= 12 else f"{', '.join(ex.layers[:3])}, ..., {ex.layers[-1]}"
    err_console.print(f"exploring {len(ex.layers)} layers of {model} ({shown}): {n_pages} unit pages "
                      f"on {current_device() or 'cpu'}, {executor} executor", markup=False, highlight=False)
    names = {"weights": "weights, NMF, top inputs", "render": "feature visualizations",
             "examples": "dataset examples", "page": "pages", "cases": "cases over the images"}
    with job_progress(names) as progress:
        report = build_site(m, output, config=cfg, jobs=jobs, progress=progress, explorer=ex,
                            executor=executor, address=address,
                            on_wait=lambda line: err_console.print(line, markup=False, highlight=False))
    typer.echo(f"wrote {report.index} ({report.summary()})")
    typer.echo(f"summary: {report.stats()}")
    typer.echo(f"open it: file://{report.index.resolve()}")


@app.command("serve")
@with_device
def serve_cmd(
    model: str = typer.Argument("efficientnet_lite0", help=MODEL_HELP),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0 = any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default is only reachable from "
                             "this machine."),
    layers: str = typer.Option(None, "--layers", "-l", help=_LAYERS_HELP + " Every layer stays reachable."),
    units: str = typer.Option(None, "--units", "-u", help="Units listed on the index strips and layer pages."),
    size: int = size_option(64),
    steps: int = steps_option(64, "Feature-visualization optimization steps."),
    top: int = count_option(8, "--top", help="Inputs and outputs shown per unit."),
    sources: int = count_option(1, "--sources", min=0, help="Earlier explored layers to expand inputs from."),
    factor_fvs: bool = typer.Option(True, "--factor-fvs/--no-factor-fvs", help="Render the FV of each weight factor."),
    seed: int = typer.Option(0, "--seed", help="Seed of the renders and factorizations."),
    db: Path = typer.Option(None, "--db", help="SQLite cache file (default: $WEIGHTVIZ_CACHE/explorer.sqlite or ~/.cache/weightviz/explorer.sqlite)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request."),
    images: Path = _IMAGES,
    cases: int = _CASES,
    case_images: int = _CASE_IMAGES,
    examples: int = _EXAMPLES,
    example_images: int = _EXAMPLE_IMAGES,
) -> None:
    """Serve the explorer live: pages computed on demand and cached in SQLite (keyed by the model's
    weights hash). Any layer and any earlier source layer can be browsed.

    Example: weightviz serve lite0 --port 8000   (then open http://127.0.0.1:8000/)
    """
    from ..errors import WeightvizError
    from ..explore import Explorer, serve

    if not 0 <= port <= 65535:
        raise WeightvizError(f"--port must be between 0 and 65535, got {port}")
    if db is not None:  # before any work: a file that is not an SQLite database fails here, naming --db
        from ..explore import SqliteCache

        SqliteCache(db, "0" * 16)
    cfg = _config(size, steps, top, sources, factor_fvs, seed, images, cases, case_images, examples, example_images)
    m = load(model)
    with err_console.status("planning", spinner="dots"):
        ex = Explorer(m, layers, units, config=cfg, name=model)
    busy = serve(ex, host, port, cache=db, verbose=verbose, announce=lambda line: typer.echo(line))
    if busy:  # computations that could not be cancelled still run in daemon threads, perhaps inside torch:
        import os  # end now (exit 0) instead of waiting for them or letting interpreter shutdown meet them
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

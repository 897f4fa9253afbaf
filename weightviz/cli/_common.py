"""Shared pieces of the CLI: the typer app, consoles, common options, progress bars, output checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import WeightvizError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)

MODEL_HELP = ("Model: 'efficientnet_lite0' (embedded, default), 'torchvision:ARCH[@weights]' or "
              "'timm:ARCH[@weights]' (weights: .safetensors or .pth, never unpickled).")

IMAGE_SUFFIXES = (".png", ".svg")


def check_output(path: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """Validate an output path before any work: known suffix and an existing, writable directory."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise WeightvizError(f"output {str(path)!r} must end in one of {', '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightvizError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    import os

    if not os.access(parent, os.W_OK):
        raise WeightvizError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable")
    return path


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[callable]:
    """A rich progress bar on stderr; yields ``advance(n=1)``."""
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        yield advance


def load(model_spec: str):
    """Load a model from a CLI spec (errors become WeightvizError)."""
    from ..models import load_model

    with err_console.status(f"loading {model_spec}", spinner="dots"):
        return load_model(model_spec)

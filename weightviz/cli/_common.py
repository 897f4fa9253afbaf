"""Shared pieces of the CLI: the typer app, consoles, common options, progress bars, output checks."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
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


def load(model_spec: str, device: str | None = None):
    """Load a model from a CLI spec (errors become WeightvizError) and move it to ``device`` (default:
    the command's ``--device``, see :func:`with_device`)."""
    from .._device import to_device
    from ..models import load_model

    with err_console.status(f"loading {model_spec}", spinner="dots"):
        return to_device(load_model(model_spec), device if device is not None else _DEVICE.get())


# ------------------------------------------------------------------------------------ --device
DEVICE_HELP = "Compute device: auto (CUDA when available), cpu or cuda[:N]."
_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("weightviz_device", default=None)


def with_device(fn):
    """Give a command the one ``--device auto|cpu|cuda`` option (defined here, once): the wrapper adds
    the parameter to the command's signature, resolves it before any work (bad device -> one line,
    exit 2) and :func:`load` moves the model there. Put it under ``@app.command(...)``."""
    sig = inspect.signature(fn)
    param = inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                              default=typer.Option("auto", "--device", help=DEVICE_HELP))

    @functools.wraps(fn)
    def wrapper(*args, device: str = "auto", **kwargs):
        from .._device import resolve_device

        token = _DEVICE.set(str(resolve_device(device)))
        try:
            return fn(*args, **kwargs)
        finally:
            _DEVICE.reset(token)

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])
    return wrapper


def current_device() -> str | None:
    """The resolved ``--device`` of the running command (``None`` outside one)."""
    return _DEVICE.get()

"""Shared pieces of the CLI: the typer app, consoles, common options, progress bars, output checks."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

MODEL_HELP = ("Model: 'efficientnet_lite0' (embedded, default), 'torchvision:ARCH[@ENUM]', "
              "'timm:NAME[.TAG]', 'timm:hf-hub:ORG/REPO', 'inceptionv1' (pretrained, through the library's "
              "cache), or any of them with @file (.safetensors or .pth, never unpickled) or @random.")

IMAGE_SUFFIXES = (".png", ".svg")


def check_output(path: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """Validate an output file path before any work: a known suffix, not an existing directory, in an
    existing writable directory, and (if it exists) a writable file."""
    path = Path(path)
    if path.is_dir():
        raise WeightvizError(f"output {str(path)!r} is a directory; give a file name ending in {', '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise WeightvizError(f"output {str(path)!r} must end in one of {', '.join(suffixes)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightvizError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WeightvizError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise WeightvizError(f"cannot write {str(path)!r}: the file exists and is not writable")
    return path


# ----------------------------------------------------------------------------- option helpers
# Counts are validated by the parser (a usage error, exit status 2) so that 0 or a negative number is never
# silently replaced by a default: use these for every option or argument that takes a count or a size.
def count_option(default: int | None, *names: str, help: str, min: int = 1) -> Any:  # noqa: A002
    """A ``typer.Option`` for a count (steps, columns, batch, top-k, ...): an integer >= ``min``."""
    return typer.Option(default, *names, min=min, help=help)


def size_option(default: int, help: str = "Feature-visualization size in pixels.") -> Any:  # noqa: A002
    """``--size``: an image side in pixels, within the one bound of render, figures and explorer."""
    from ..utils.limits import MAX_SIZE, MIN_SIZE

    return typer.Option(default, "--size", min=MIN_SIZE, max=MAX_SIZE, help=f"{help} ({MIN_SIZE}..{MAX_SIZE})")


def steps_option(default: int | None, help: str, *names: str) -> Any:  # noqa: A002
    """``--steps``: optimization steps, 1..MAX_STEPS (a larger value is a usage error, exit 2, not a run
    that never ends)."""
    from ..utils.limits import MAX_STEPS

    return typer.Option(default, *(names or ("--steps",)), min=1, max=MAX_STEPS, help=f"{help} (1..{MAX_STEPS})")


# ---------------------------------------------------------------------------------- warnings
def install_warning_display() -> None:
    """Inside ``warnings.catch_warnings()``: weightviz's own warnings (e.g. random initialization) print
    as exactly their one-line message on stderr; other warnings keep Python's format."""
    import warnings

    from ..errors import WeightvizWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, WeightvizWarning):
            typer.echo(str(message), err=True)  # (a plain write: see cli._aborted)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("default", WeightvizWarning)


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
    import warnings

    from ..models import load_model, to_device

    with warnings.catch_warnings(record=True) as caught:  # shown after the spinner, not inside its display
        warnings.simplefilter("always")
        with err_console.status(f"loading {model_spec}", spinner="dots"):
            model = load_model(model_spec)
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return to_device(model, device if device is not None else _DEVICE.get())


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
        from ..models import resolve_device

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

"""The ``weightviz`` command line (typer + rich).

Each command lives in a module of this package and registers itself on :data:`app`; the list
:data:`_COMMAND_MODULES` is the one place that wires them in. Errors from bad input
(:class:`weightviz.WeightvizError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import click
import typer

from .. import __version__
from ..errors import WeightvizError
from ._common import app, err_console

_COMMAND_MODULES = [
    "models_cmd",
    "nmf_cmd",
    "expand_cmd",
    "render_cmd",
    "figure_cmd",
    "explore_cmd",
    "metrics_cmd",
    "examples_cmd",
    "bestcase_cmd",
    "cases_cmd",
]


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:  # a command module not written yet
            if e.name != f"{__name__}.{name}":
                raise


def _version(value: bool) -> None:
    if value:
        typer.echo(f"weightviz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """See the weights of neural networks.

    MODEL is 'efficientnet_lite0' (default, embedded ImageNet weights), 'torchvision:ARCH[@weights.pth]'
    or 'timm:ARCH[@weights.safetensors]'. Layer names are those printed by `weightviz layers MODEL`.
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning bad input into one line on stderr and exit status 2."""
    _register()
    try:
        app(args=argv, prog_name="weightviz", standalone_mode=False)
    except WeightvizError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return _exit(2)
    except click.exceptions.Exit as e:
        return _exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        return _exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("aborted", markup=False)
        return _exit(130)
    except Exception as e:  # never show a deep traceback to a CLI user unless asked
        if os.environ.get("WEIGHTVIZ_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(
            f"error: internal error {type(e).__name__}: {msg} (set WEIGHTVIZ_DEBUG=1 for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        return _exit(1)
    return _exit(0)


def _exit(code: int | None) -> int:
    code = int(code or 0)
    if __name__ == "__main__" or sys.argv and sys.argv[0].endswith("weightviz"):
        sys.exit(code)
    return code


__all__ = ["app", "main"]

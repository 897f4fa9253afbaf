"""The ``weightviz`` command line (typer + rich).

Each command lives in a module of this package and registers itself on :data:`app`; the list
:data:`_COMMAND_MODULES` is the one place that wires them in. Errors from bad input
(:class:`weightviz.WeightvizError`) and usage errors print one line on stderr and exit with status 2;
Ctrl-C (and SIGTERM) prints ``aborted`` and exits with 130 (see :func:`main`). Typer bundles its own copy of click
(``typer._click``): its exceptions, not those of the ``click`` package, are the ones raised here.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import warnings

import typer

try:  # recent typer bundles its own click (typer._click): its exceptions are the ones raised
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.exceptions import TyperException
except ImportError:  # pragma: no cover - older typer runs on the click package
    from click.exceptions import ClickException, UsageError

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:  # click < 8.2 prints the help and exits 0 itself
        class NoArgsIsHelpError(UsageError):
            """Never raised by this click."""

    TyperException = ClickException

from .. import __version__
from ..errors import WeightvizError
from ._common import app, err_console, install_warning_display

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
    "classes_cmd",
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

    MODEL is 'efficientnet_lite0' (default, embedded ImageNet weights) or a pretrained model by name,
    loaded through its library's cache: 'timm:NAME[.TAG]', 'timm:hf-hub:ORG/REPO', 'torchvision:ARCH[@ENUM]',
    'inceptionv1', 'open_clip:MODEL@TAG'; append @weights.safetensors for your own file or @random for
    random initialization. Layer names are those printed by `weightviz layers MODEL`.
    """


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit status: 0 success; 2 bad input (:class:`WeightvizError`: ``error: ...``) or a
    usage error (the usage line and ``error: ...``; no arguments at all: the help, as click does);
    130 interrupted (Ctrl-C: ``aborted``); 1 only for a bug (``error: internal error ...``)."""
    previous = _terminate_like_ctrl_c()
    try:
        _register()
        with warnings.catch_warnings():
            install_warning_display()
            rv = app(args=argv, prog_name="weightviz", standalone_mode=False)
    except WeightvizError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        return _exit(2)
    except NoArgsIsHelpError as e:  # `weightviz` / `weightviz figure` alone: the help, status 2 (click 8.2+)
        typer.echo(e.format_message(), err=True)
        return _exit(2)
    except UsageError as e:
        _usage_error(e)
        return _exit(2)
    except (TyperException, ClickException) as e:  # pragma: no cover - other click errors (file errors)
        typer.echo(f"error: {e.format_message()}", err=True)
        return _exit(e.exit_code or 1)
    except typer.Exit as e:
        return _exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return _aborted()
    except Exception as e:  # never show a deep traceback to a CLI user unless asked
        if os.environ.get("WEIGHTVIZ_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(
            f"error: internal error {type(e).__name__}: {msg} (set WEIGHTVIZ_DEBUG=1 for the traceback)",
            markup=False, highlight=False, soft_wrap=True,
        )
        return _exit(1)
    finally:
        if previous is not _UNSET:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if rv == 130:  # typer turns a KeyboardInterrupt inside a command into a returned 130
        return _aborted()
    return _exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


_UNSET = object()


def _terminate_like_ctrl_c():
    """SIGTERM (plain `kill`) stops a command as Ctrl-C does: the work is cancelled (worker processes
    terminated, only whole files left), ``aborted``, exit status 130. Returns the previous handler
    (``_UNSET`` when not in the main thread, where signal handlers cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _UNSET

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _aborted() -> int:
    # plain write, not the rich console: a Ctrl-C inside one of its prints can leave its buffer holding
    # text already written, which its next print would write again
    typer.echo("aborted", err=True)
    return _exit(130)


def _usage_error(e: UsageError) -> None:
    """The usage line of the command that failed, then one ``error:`` line (exit status 2)."""
    usage = e.ctx.get_usage() if e.ctx is not None else "Usage: weightviz [OPTIONS] COMMAND [ARGS]..."
    usage = " ".join(usage.split())  # one line, however long
    hint = ""
    if e.ctx is not None:
        hint = f" (see `{e.ctx.command_path} --help`)"
    message = " ".join(e.format_message().split())  # one line
    typer.echo(usage, err=True)
    typer.echo(f"error: {message}{hint}", err=True)


def _exit(code: int | None) -> int:
    code = int(code or 0)
    if __name__ == "__main__" or sys.argv and sys.argv[0].endswith("weightviz"):
        sys.exit(code)
    return code


__all__ = ["app", "main"]

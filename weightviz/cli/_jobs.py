"""CLI pieces shared by the commands that run many jobs (``explore``, bulk ``render``): the
``--executor/--address/--jobs`` options and the driver's progress display (jobs done/total, rate, ETA)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ..errors import WeightvizError
from ._common import err_console

EXECUTOR_HELP = ("Where jobs run: local (this machine; --jobs processes) or ray (Ray actors that each hold "
                 "the model once; pip install 'weightviz[ray]').")
ADDRESS_HELP = ("Ray cluster to join with --executor ray: auto (the cluster this machine belongs to) or "
                "ray://HOST:10001 (default: start a local Ray instance).")
JOBS_HELP = "Workers: local processes (default 1 = this process) or Ray actors (default: one per cluster CPU, or GPU with --device cuda)."


def executor_option():
    return typer.Option("local", "--executor", help=EXECUTOR_HELP)


def address_option():
    return typer.Option(None, "--address", help=ADDRESS_HELP)


def jobs_option():
    return typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP)


def check_executor(executor: str, address: str | None, jobs: int | None) -> None:
    """Validate the three options before any work (one-line errors)."""
    from ..explore.jobs import EXECUTORS

    if executor not in EXECUTORS:
        raise WeightvizError(f"unknown --executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise WeightvizError(f"--jobs must be at least 1, got {jobs}")
    if address is not None and executor != "ray":
        raise WeightvizError("--address is for --executor ray; drop it or add --executor ray")
    if executor == "ray":
        from ..explore.ray_executor import check_address, import_ray

        import_ray()
        check_address(address)  # an unreachable cluster: one line, before any output is written


class _Rate(ProgressColumn):
    """Jobs per second since the stage started (jobs found already done do not count) and the ETA
    from that rate."""

    def render(self, task) -> Text:
        ran = task.completed - task.fields.get("first", 0)
        if not task.elapsed or ran <= 0:
            return Text("")
        rate = ran / task.elapsed
        left = max(0.0, (task.total or 0) - task.completed) / rate
        eta = f"eta {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"
        return Text(f"{rate:.3g} jobs/s  {eta}", style="progress.data.speed")


@contextlib.contextmanager
def job_progress(names: dict[str, str] | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display on stderr with one bar per stage; yields ``progress(stage, done, total)``
    (the callback :func:`weightviz.explore.build_site` takes): done/total, elapsed, rate and ETA."""
    names = names or {}
    with Progress(TextColumn("{task.description:<26}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                  _Rate(), console=err_console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(names.get(stage, stage), total=total, completed=done, first=done)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress

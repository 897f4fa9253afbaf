"""One transient rich progress bar on stderr for long library loops (private helper)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

__all__ = ["progress"]


@contextlib.contextmanager
def progress(enabled: bool, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n=1)``: a bar labelled ``what`` counting to ``total`` when ``enabled``, else a no-op."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as p:
        task = p.add_task(what, total=total)
        yield lambda n=1: p.advance(task, n)

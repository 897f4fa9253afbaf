"""The one exception type weightviz raises for bad input.

Every user-facing failure (unknown layer, unit out of range, bad weight file, non-finite weights,
wrong shapes, unwritable output) raises :class:`WeightvizError` with a one-line message that says what
was received and how to fix it. The CLI prints that line and exits with status 2.
"""

from __future__ import annotations

import difflib
import threading
import warnings
from collections.abc import Iterable

__all__ = ["RandomInitWarning", "WeightvizError", "WeightvizWarning", "suggest", "warn_once"]


class WeightvizError(ValueError):
    """Bad input to weightviz: the message is one line, meant for the user."""


class WeightvizWarning(UserWarning):
    """Something the user should know about a result (one line); the CLI prints just the message."""


class RandomInitWarning(WeightvizWarning):
    """A model spec without a weights file: the network is randomly initialized."""


_WARNED: set[tuple[type, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_once(message: str, category: type[Warning] = WeightvizWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` once per process for each distinct ``(category, message)``: a condition met by
    several passes over the same input (an image folder read by every stage of a build, and by worker
    processes whose warnings reach the driver) is said once, whatever warning filters changed between."""
    with _WARNED_LOCK:
        if (category, message) in _WARNED:
            return
        _WARNED.add((category, message))
    warnings.warn(message, category, stacklevel=stacklevel + 1)


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean 'a', 'b'?"`` suffix with the closest matches of ``name``, or ``""``."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        # substring matches help with dotted module names ("conv_dw" -> "blocks.1.0.conv_dw")
        close = [c for c in choices if name and name in c][:n]
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"

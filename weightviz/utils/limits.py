"""Bounds shared by every entry point (private; no torch import, so the CLI can use them at startup)."""

from __future__ import annotations

from ..errors import WeightvizError

__all__ = ["MAX_SIZE", "MAX_STEPS", "MIN_SIZE", "check_size", "check_steps"]

#: Feature-visualization image sides allowed everywhere (render, figures, explorer, CLI): one bound.
MIN_SIZE, MAX_SIZE = 16, 1024
#: Optimization steps allowed on the command line: far above any useful render (the default is 256), far
#: below a value that would run for ever without a word.
MAX_STEPS = 1_000_000


def check_size(size, what: str = "size") -> int:
    """``size`` as an int in ``MIN_SIZE..MAX_SIZE`` pixels, else :class:`WeightvizError` naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise WeightvizError(f"{what} must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, got {size!r}")
    return size


def check_steps(steps, what: str = "steps") -> int:
    """``steps`` as an int in ``1..MAX_STEPS``, else :class:`WeightvizError` naming ``what``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise WeightvizError(f"{what} must be an integer from 1 to {MAX_STEPS:,}, got {steps!r}")
    return steps

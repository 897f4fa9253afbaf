"""Bounds shared by every entry point (private; no torch import, so the CLI can use them at startup)."""

from __future__ import annotations

from ..errors import WeightvizError

__all__ = ["MAX_SIZE", "MIN_SIZE", "check_size"]

#: Feature-visualization image sides allowed everywhere (render, figures, explorer, CLI): one bound.
MIN_SIZE, MAX_SIZE = 16, 1024


def check_size(size, what: str = "size") -> int:
    """``size`` as an int in ``MIN_SIZE..MAX_SIZE`` pixels, else :class:`WeightvizError` naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise WeightvizError(f"{what} must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels, got {size!r}")
    return size

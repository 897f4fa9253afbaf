"""The explorer's settings (:class:`ExploreConfig`), a unit's input :class:`Source`, and the concurrency
pieces of an :class:`~weightviz.explore.data.Explorer`: a cancellable compute lock and a per-instance LRU."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import WeightvizError
from ..utils.limits import check_size

__all__ = ["Cancelled", "ExploreConfig", "Source"]


@dataclass(frozen=True)
class ExploreConfig:
    """Settings of an explorer build. FVs: ``size`` px, ``steps`` Adam steps, ``seed``; ``top_k``
    inputs/outputs per unit; ``n_factors`` weight factors (one-sided NMF components) per unit;
    ``factor_k`` inputs listed per factor; ``sources``: how many earlier explored layers (besides the
    direct predecessor) a unit's inputs are expanded from; ``batch``: FVs per render batch;
    ``factor_fvs``: render the FV of each factor direction. Cases panel (:func:`weightviz.cases` of each
    unit's inputs from its primary source over an image set): ``cases`` per unit (0, the default here: no
    panel; the CLI's ``explore``/``serve`` default to 2),
    ``case_images`` images of side ``case_size`` px from folder ``images`` (``None``: the embedded set).
    Dataset examples: ``examples`` crops per unit page (0: no section) from ``example_images`` images (a
    seeded subset; ``None``: all) of folder ``images`` (``None``: the embedded set) at the model's input
    size."""

    size: int = 64
    steps: int = 64
    seed: int = 0
    top_k: int = 8
    n_factors: int = 3
    factor_k: int = 5
    sources: int = 1
    batch: int = 32
    factor_fvs: bool = True
    cases: int = 0
    case_images: int = 32
    case_size: int = 96
    images: str | None = None
    examples: int = 9
    example_images: int | None = 128

    def __post_init__(self):
        for name in ("size", "steps", "top_k", "n_factors", "factor_k", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WeightvizError(f"{name} must be a positive integer, got {v!r}")
        check_size(self.size, "FV size")
        if isinstance(self.sources, bool) or not isinstance(self.sources, int) or self.sources < 0:
            raise WeightvizError(f"sources must be an integer >= 0, got {self.sources!r}")
        if isinstance(self.cases, bool) or not isinstance(self.cases, int) or not 0 <= self.cases <= 6:
            raise WeightvizError(f"cases must be an integer in 0..6 (0: no cases panel), got {self.cases!r}")
        for name in ("case_images", "case_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (16 if name == "case_size" else 1):
                raise WeightvizError(f"{name} must be an integer >= {16 if name == 'case_size' else 1}, got {v!r}")
        if isinstance(self.examples, bool) or not isinstance(self.examples, int) or self.examples < 0:
            raise WeightvizError(f"examples must be an integer >= 0 (0: no dataset examples), got {self.examples!r}")
        n = self.example_images
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise WeightvizError(f"example_images must be a positive integer or None (all), got {n!r}")
        if self.images is not None:
            object.__setattr__(self, "images", str(self.images))

    def key(self) -> dict[str, Any]:
        return asdict(self)


def _lru(maxsize: int):
    """A per-instance, thread-safe LRU memo for Explorer methods (hashable arguments). Concurrent calls
    with the same arguments compute once: the others wait on that key's lock."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args):
            memo: OrderedDict = self._memo.setdefault(fn.__name__, OrderedDict())
            with self._memo_lock:
                if args in memo:
                    memo.move_to_end(args)
                    return memo[args]
            with self._key_locks(repr((fn.__name__, args))):
                with self._memo_lock:
                    if args in memo:
                        return memo[args]
                value = fn(self, *args)
                with self._memo_lock:
                    memo[args] = value
                    while len(memo) > maxsize:
                        memo.popitem(last=False)
            return value

        return wrapper

    return deco


@dataclass
class Source:
    """One source of a unit's inputs: ``layer`` (``None``: the model input), ``label`` for the page,
    ``kind``: ``"direct"`` (the layer feeding ``dst``) or ``"expanded"``."""

    layer: str | None
    label: str
    kind: str


class Cancelled(RuntimeError):
    """Raised inside computations of an :class:`Explorer` after :meth:`Explorer.cancel` (shutdown)."""


class _ComputeLock:
    """The re-entrant lock every model computation of an :class:`Explorer` takes; once ``cancel`` is set,
    entering it raises :class:`Cancelled`, so queued computations stop instead of running one by one."""

    def __init__(self, cancel: threading.Event):
        self._lock = threading.RLock()
        self._cancel = cancel

    def __enter__(self) -> _ComputeLock:
        self._lock.acquire()
        if self._cancel.is_set():
            self._lock.release()
            raise Cancelled("the explorer is shutting down")
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def wait_idle(self) -> None:
        """Block until no computation holds the lock (the one running, if any, has finished)."""
        with self._lock:
            pass


"""The figure registry: :data:`FIGURES` (name -> builder) and :func:`register_figure`. The CLI's
``figure`` command and the explorer read it, so adding a figure is one decorated function."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..models import is_random_init, resolve
from ._core import Figure

__all__ = ["FIGURES", "register_figure"]

FIGURES: dict[str, Callable[..., Figure]] = {}


def register_figure(name: str, result: tuple[type, Callable[..., Figure]] | None = None
                    ) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator adding a figure builder to :data:`FIGURES` under ``name`` (CLI: ``weightviz figure NAME``).

    The builder's first argument is the model (module or spec): it is resolved once here (NaN weights
    refused), and a figure of a randomly initialized model gets a "random init" footer.

    ``result=(ResultType, draw)``: the builder also draws a result already computed: called with an
    instance of ``ResultType`` first, it returns ``draw(result, *args, **kwargs)`` (a result's picture is
    ``weightviz.figures.<name>(result)``; results never draw themselves).
    """

    def deco(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        @functools.wraps(fn)
        def build(model: Any = None, *args, **kwargs) -> Figure:
            if result is not None and isinstance(model, result[0]):
                return result[1](model, *args, **kwargs)
            model = resolve(model)
            fig = fn(model, *args, **kwargs)
            if is_random_init(model):
                fig.mark_random_init()
            return fig

        FIGURES[name] = build
        return build

    return deco

"""Figures: every visualization of the article as a one-line call returning a :class:`Figure`
(``.save("x.png" | "x.svg")``, inline in notebooks).

:data:`FIGURES` is the registry of figure builders (name -> function); the CLI's ``figure`` command and
the explorer read it, so adding a figure is one decorated function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ._core import DIVERGING, DIVERGING_STOPS, Figure, as_images, heatmap, heatmap_grid, image_grid

FIGURES: dict[str, Callable[..., Figure]] = {}


def register_figure(name: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator adding a figure builder to :data:`FIGURES` under ``name`` (CLI: ``weightviz figure NAME``).

    The builder's first argument is the model (module or spec): it is resolved once here (NaN weights
    refused), and a figure of a randomly initialized model gets a "random init" footer.
    """

    def deco(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        @functools.wraps(fn)
        def build(model=None, *args, **kwargs) -> Figure:
            from ..models import is_random_init, resolve

            model = resolve(model)
            fig = fn(model, *args, **kwargs)
            if is_random_init(model):
                fig.mark_random_init()
            return fig

        FIGURES[name] = build
        return build

    return deco


# figure modules register themselves on import (after FIGURES and register_figure exist)
from .bestcase import best_case  # noqa: E402
from .conditioned import cases, data_weights  # noqa: E402
from .contextual import expanded, family_grid, small_multiples, spatial_positions, top_inputs  # noqa: E402
from .examples import top_examples  # noqa: E402
from .factors import factorize_family, weight_factors  # noqa: E402
from .routes import paths  # noqa: E402
from .tokens import token_weights  # noqa: E402
from .weights import first_conv, nmf_grid, rgb_weights_grid  # noqa: E402

__all__ = [
    "DIVERGING",
    "DIVERGING_STOPS",
    "FIGURES",
    "Figure",
    "as_images",
    "best_case",
    "cases",
    "data_weights",
    "expanded",
    "factorize_family",
    "family_grid",
    "heatmap",
    "heatmap_grid",
    "first_conv",
    "image_grid",
    "nmf_grid",
    "paths",
    "register_figure",
    "rgb_weights_grid",
    "small_multiples",
    "spatial_positions",
    "token_weights",
    "top_examples",
    "top_inputs",
    "weight_factors",
]

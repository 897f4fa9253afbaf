"""Figures: every visualization of the article as a one-line call returning a :class:`Figure`
(``.save("x.png" | "x.svg")``, inline in notebooks).

:data:`FIGURES` is the registry of figure builders (name -> function); the CLI's ``figure`` command and
the explorer read it, so adding a figure is one decorated function.
"""

from __future__ import annotations

from ._core import (
    DIVERGING,
    DIVERGING_STOPS,
    Figure,
    as_images,
    heatmap,
    heatmap_grid,
    image_array,
    image_grid,
)
from ._registry import FIGURES, register_figure

# figure modules register themselves on import
from .bestcase import best_case
from .classes import top_classes
from .conditioned import cases, data_weights
from .contextual import expanded, family_grid, small_multiples, spatial_positions, top_inputs
from .examples import top_examples
from .factors import factorize_family, weight_factors
from .routes import paths
from .stats import banding_scan, long_tail
from .tokens import token_weights
from .weights import first_conv, nmf_grid, rgb_weights_grid

__all__ = [
    "DIVERGING",
    "DIVERGING_STOPS",
    "FIGURES",
    "Figure",
    "as_images",
    "banding_scan",
    "best_case",
    "top_classes",
    "cases",
    "data_weights",
    "expanded",
    "factorize_family",
    "family_grid",
    "heatmap",
    "heatmap_grid",
    "long_tail",
    "first_conv",
    "image_array",
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

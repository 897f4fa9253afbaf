"""Feature visualization: render images that maximize units and directions of a model.

- :func:`render` / :class:`RenderResult` (``weightviz.render``),
- :mod:`.objectives` (``weightviz.objectives``): ``channel``, ``neuron``, ``direction``,
  ``direction_neuron``, composable with ``+``, ``-``, scalar ``*``,
- :class:`RenderCache`: disk cache of renders,
- :func:`to_uint8`: the one float -> uint8 conversion used for every saved or displayed render,
- :func:`activations`: read layer outputs with a truncated forward (no leftover hooks).

>>> import weightviz as wv
>>> from weightviz import objectives as obj
>>> r = wv.render("lite0", obj.channel("blocks.4.0", 3), steps=64, progress=False)  # doctest: +SKIP
>>> r.images.shape                                                                # doctest: +SKIP
torch.Size([1, 3, 128, 128])
"""

from __future__ import annotations

from . import objectives
from ._relu import SmoothReLU
from .cache import RenderCache
from .image import grid, load_png, save_png, to_uint8
from .render import DEFAULT_STEPS, RenderResult, activations, render

__all__ = [
    "DEFAULT_STEPS", "RenderCache", "RenderResult", "SmoothReLU", "activations", "grid", "load_png", "objectives",
    "render", "save_png", "to_uint8",
]

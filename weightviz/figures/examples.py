"""Dataset-example figure: the crops of the images that activate a unit most, with their activations
(:func:`weightviz.top_examples`)."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..conditioned import TopExamples
from ._core import Figure
from ._layout import Canvas
from ._registry import register_figure

__all__ = ["examples_figure", "top_examples"]


def examples_figure(result: Any, ncols: int | None = None, cell: float = 1.15, title: str | None = None) -> Figure:
    """Grid of :class:`weightviz.TopExamples` crops, strongest first, each labelled with the
    image index and the unit's activation. A unit that never fires gets a figure that says so and shows
    no image."""
    r = result
    where = "max over positions" if r.position == "max" else "at the centre position"
    head = f"{r.model_name + ' ' if r.model_name else ''}{r.layer} unit {r.unit}"
    cv = Canvas()
    n = len(r)
    if not r.fires:
        msg = (f"unit {r.unit} of {r.layer} never fires on these {r.n_images} images\n"
               f"(largest activation {r.max_value:.4g} <= 0): no dataset examples to show")
        cv.text(0, 0, msg, size=8, height=0.4)
        data = {"figure": "top-examples", "layer": r.layer, "unit": r.unit, "fires": False, "n": 0,
                "n_images": r.n_images, "max_value": r.max_value}
        return cv.figure(data, title=title or f"{head}: dataset examples")
    ncols = int(ncols or min(n, 3 if n <= 9 else 6))
    gap = 0.1
    label_h = 0.2
    for j in range(n):
        row, col = divmod(j, ncols)
        x, y = col * (cell + gap), row * (cell + label_h + gap)
        cv.image(x, y, cell, r.images[j].permute(1, 2, 0).numpy(),
                 label=f"#{int(r.indices[j])}  a={float(r.values[j]):.3g}")
    h, w = r.images.shape[-2:]
    rows = math.ceil(n / ncols)
    cv.text(0, rows * (cell + label_h + gap) + 0.02,
            f"{n} strongest of {r.n_images} images; crops = the unit's {h}x{w}-pixel receptive field at its most "
            f"active position\n(grey: field outside the image); a = activation ({where})", size=6.5, height=0.34)
    data = {"figure": "top-examples", "layer": r.layer, "unit": r.unit, "fires": True, "n": n,
            "n_images": r.n_images, "indices": [int(i) for i in r.indices], "values": [float(v) for v in r.values],
            "crop": [int(h), int(w)]}
    return cv.figure(data, title=title or f"{head}: top {n} dataset examples")


@register_figure("top-examples", result=(TopExamples, examples_figure))
def top_examples(
    model: nn.Module | str | None,
    layer: str,
    unit: int,
    images: Any = None,
    k: int = 9,
    *,
    position: str = "max",
    ncols: int | None = None,
    batch_size: int | None = None,
    progress: Any = None,
) -> Figure:
    """The ``k`` images that activate ``unit`` of ``layer`` most, cropped to its receptive field at the
    most active position, labelled with their activation (:func:`weightviz.top_examples`; ``images`` as
    there, default the embedded natural images). ``.data``: ``indices``, ``values``, ``fires``."""
    from ..conditioned import top_examples as compute

    cb = progress if callable(progress) else None
    return examples_figure(compute(model, layer, unit, images, k, position=position, batch_size=batch_size,
                   progress=cb), ncols=ncols)

"""A unit's top classes as a bar chart: the classes it votes for (and against) through the linearized head."""

from __future__ import annotations

import numpy as np

from ..expand import TopClasses
from ..expand import top_classes as _top_classes
from ..models import model_label
from ._core import Figure, new_figure
from ._registry import register_figure

__all__ = ["top_classes"]


def _draw(result: TopClasses, title: str | None = None, model_name: str | None = None) -> Figure:
    rows = result.rows() + [(i, v, n) for i, v, n in reversed(result.bottom.rows())] if result.bottom \
        else result.rows()
    n = len(rows)
    fig = new_figure(7.0, 0.9 + 0.24 * n)
    ax = fig.add_subplot(1, 1, 1)
    ys = np.arange(n)[::-1]
    vals = [v for _, v, _ in rows]
    ax.barh(ys, vals, color=["#ca0020" if v >= 0 else "#0571b0" for v in vals], height=0.7)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{(name or '').split(',')[0][:32]} ({i})" if name else str(i) for i, _, name in rows],
                       fontsize=7)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel(f"expanded weight to the logit ({result.classifier}), summed over positions", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    head = f"{model_name}: " if model_name else ""
    fig.suptitle(title or f"{head}{result.layer} unit {result.unit} votes for", fontsize=10)
    fig.subplots_adjust(left=0.32, right=0.97, top=1 - 0.45 / (0.9 + 0.24 * n) - 0.02,
                        bottom=0.6 / (0.9 + 0.24 * n))
    return Figure(fig, {"layer": result.layer, "unit": result.unit, "indices": result.indices,
                        "values": result.values, "names": result.names,
                        "bottom": result.bottom.indices if result.bottom else None})


@register_figure("top-classes", result=(TopClasses, _draw))
def top_classes(model, layer: str, unit: int, k: int = 10, title: str | None = None, progress: bool = False,
                **_ignored) -> Figure:
    """The ``k`` classes ``layer``'s ``unit`` votes for most (red) and against most (blue):
    :func:`weightviz.top_classes` as a bar chart with class names."""
    return _draw(_top_classes(model, layer, unit, k=k), title=title, model_name=model_label(model))

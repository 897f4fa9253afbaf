"""Feature visualizations for figures: collect every FV a figure needs, render them in ONE batch
(through :func:`weightviz.render` and its disk cache), hand back images (private).

A figure first decides its structure (which units, which directions), asks :class:`FVBatch` for each
FV (``channel(layer, n)`` or ``direction(layer, vector)``; duplicates are rendered once), then calls
:meth:`FVBatch.render` once and reads the images by the keys it was given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import WeightvizError

__all__ = ["FVBatch", "FVOptions"]


@dataclass(frozen=True)
class FVOptions:
    """How a figure renders its feature visualizations.

    ``size``: image side in pixels; ``steps``: optimization steps (``None``: the render default);
    ``seed``: random seed (same seed, same image); ``cache``: the render cache (``True``: default
    location, ``False``: none, or a path / :class:`weightviz.RenderCache`); ``progress``: show a progress
    bar; ``enabled=False`` skips rendering and draws grey placeholders (structure-only figures).
    """

    size: int = 96
    steps: int | None = None
    seed: int = 0
    cache: Any = True
    progress: bool = True
    enabled: bool = True

    def __post_init__(self) -> None:
        from ..utils.limits import check_size

        check_size(self.size, "FV size")
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool)
                                       or self.steps < 1):
            raise WeightvizError(f"FV steps must be a positive integer or None (render default), got {self.steps!r}")

    @classmethod
    def of(cls, fv: FVOptions | bool = True, options: dict[str, Any] | None = None, **defaults: Any) -> FVOptions:
        """The options of one figure call: ``fv`` (an :class:`FVOptions`, or ``True``/``False`` to render or
        not) updated by the keyword ``options`` a figure function received (``size``, ``steps``, ``seed``,
        ``cache``, ``progress``), over the figure's own ``defaults``. Unknown keywords raise
        :class:`WeightvizError` naming the valid ones."""
        options = dict(options or {})
        names = [f.name for f in dataclasses.fields(cls) if f.name != "enabled"]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise WeightvizError(f"unknown figure option {unknown[0]!r}; FV options are {', '.join(names)} "
                                 "(or fv=FVOptions(...) / fv=False)")
        if isinstance(fv, FVOptions):
            return dataclasses.replace(fv, **options) if options else fv
        return cls(**{**defaults, **options, "enabled": bool(fv)})




class FVBatch:
    """The FVs one figure needs, rendered in one :func:`weightviz.render` call.

    >>> fv = FVBatch(model, FVOptions(size=48, steps=32))          # doctest: +SKIP
    >>> a = fv.channel("blocks.3.0", 5); b = fv.direction("blocks.2.0", torch.rand(40))
    >>> fv.render(); fv[a].shape                                     # [H, W, C] in [0, 1]
    (48, 48, 3)
    """

    def __init__(self, model: nn.Module, options: FVOptions):
        self.model = model
        self.options = options
        self._objectives: dict[str, Any] = {}
        self._images: dict[str, np.ndarray] = {}
        self.values: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._objectives)

    def _add(self, objective: Any) -> str:
        key = objective.key
        self._objectives.setdefault(key, objective)
        return key

    def channel(self, layer: str, unit: int) -> str:
        """Request the channel FV of ``layer``'s unit ``unit``; returns the key to read it back."""
        from ..optvis import objectives

        return self._add(objectives.channel(layer, int(unit)))

    def direction(self, layer: str, vector: torch.Tensor) -> str:
        """Request the FV of a direction ``[C]`` over ``layer``'s channels."""
        from ..optvis import objectives

        v = torch.as_tensor(vector, dtype=torch.float32).detach().cpu()
        return self._add(objectives.direction(layer, v))

    def render(self) -> None:
        """Render every requested FV (one batch; cached renders are read from disk)."""
        if not self.options.enabled or not self._objectives:
            return
        from ..optvis.render import render

        keys = list(self._objectives)
        o = self.options
        kwargs: dict[str, Any] = {"size": o.size, "seed": o.seed, "progress": o.progress, "cache": o.cache}
        if o.steps is not None:
            kwargs["steps"] = o.steps
        result = render(self.model, [self._objectives[k] for k in keys], **kwargs)
        images = result.images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        values = getattr(result, "values", None)
        for i, k in enumerate(keys):
            self._images[k] = np.clip(images[i], 0.0, 1.0)
            if values is not None:
                self.values[k] = float(values[i])

    def __getitem__(self, key: str) -> np.ndarray | None:
        """The image ``[H, W, C]`` in [0, 1] of a requested FV (``None`` when FVs are disabled)."""
        if key not in self._objectives:
            raise KeyError(key)
        return self._images.get(key)

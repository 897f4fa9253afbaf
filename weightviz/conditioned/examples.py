"""Dataset examples: the images of a set that activate one unit most, cropped to what the unit sees.

``top_examples(model, layer, unit, images, k=9)`` runs the images through the model in batches (each
forward stops right after ``layer``), scores every image by the unit's activation and returns the ``k``
highest with the crop of their receptive field at the position where the unit fired: the other half of a
neuron page, next to its feature visualization.

Activation of a channel unit on one image, ``position=``:

- ``"max"`` (default): the maximum over positions of the layer output ``out[unit, y, x]``, and the
  position ``(y, x)`` where it is reached (the first one in row-major order on ties);
- ``"centre"``: the value at the centre ``((H - 1) // 2, (W - 1) // 2)`` of the output map.

The layer output is what the module returns (a conv: pre-activation; a block: its output). A unit of a
layer without spatial axes (``[B, C]``) scores ``out[unit]`` and its crop is the whole image.

>>> import weightviz as wv
>>> top = wv.top_examples("lite0", "blocks.4.0", 7, wv.images(n=64))   # doctest: +SKIP
>>> top.images.shape, top.values[:3]                                    # doctest: +SKIP
(torch.Size([9, 3, 211, 211]), tensor([6.1, 5.8, 5.2]))
>>> wv.figures.top_examples(top).save("examples.png")                             # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from ..models import device_dtype, get_module, resolve
from . import windows as _crops

__all__ = ["TopExamples", "layer_scores", "select", "top_examples"]

_POSITIONS = ("max", "centre")
#: value of a crop where the receptive field lies outside the image (grey)
FILL = 0.5


@dataclass
class TopExamples:
    """The examples of an image set that activate a unit most (strongest first).

    ``images``: crops ``[k, 3, h, w]`` in [0, 1] for display: the unit's receptive field (``h, w`` = its full
    size, measured on the model) at ``positions``, exactly placed, grey (:data:`FILL`) where it reaches
    past the image border (:mod:`weightviz.conditioned.windows`); ``values``: activations ``[k]``, descending;
    ``indices``: ``[k]`` indices into the image set; ``positions``: ``[k, 2]`` output positions ``(y, x)``
    of the layer (``-1`` for a layer without spatial axes); ``boxes``: ``[k, 4]`` the part of each field
    inside the image, ``(r0, r1, c0, c1)``. Only examples on which the unit fires (activation > 0) are kept, so
    ``k`` may be smaller than asked; ``fires`` is False when the unit fires on none of the ``n_images``
    (``max_value`` is then its largest activation, <= 0, and there are no examples).
    """

    layer: str
    unit: int
    images: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    n_images: int
    max_value: float
    position: str = "max"
    model_name: str = field(default="", repr=False)

    @property
    def fires(self) -> bool:
        return self.max_value > 0

    def __len__(self) -> int:
        return int(self.values.numel())


def _check(model: nn.Module, layer: Any, unit: Any, k: Any, position: Any, batch_size: Any) -> None:
    if not isinstance(layer, str):
        raise WeightvizError(f"layer must be a layer name (see `weightviz layers MODEL`), got {layer!r}")
    get_module(model, layer)  # unknown names fail with close matches
    for name, v in (("unit", unit), ("k", k), ("batch_size", 1 if batch_size is None else batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "unit" else 1):
            raise WeightvizError(f"{name} must be a {'non-negative' if name == 'unit' else 'positive'} integer, "
                                 f"got {v!r}")
    if position not in _POSITIONS:
        raise WeightvizError(f"position must be one of {', '.join(_POSITIONS)}, got {position!r}")


def layer_scores(model: nn.Module, layer: str, images, *, position: str = "max", batch_size: int | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """Activation of every unit of ``layer`` on every image: ``values`` ``[N, C]``, ``positions``
    ``[N, C, 2]`` (``(y, x)`` of the layer output where it is taken; ``-1`` without spatial axes) and the
    layer's output shape ``(C, H, W)`` or ``(C,)``. ``images``: an :class:`weightviz.ImageSet` ready for
    the model. One batched forward per ``batch_size`` images, stopped right after ``layer``; all units
    cost the same forward as one (the explorer scores a whole layer at once)."""
    from ..data import default_batch
    from ..models import activations

    device, dtype = device_dtype(model)
    batch_size = batch_size or default_batch(device)
    vals, poss = [], []
    shape: tuple = ()
    done, total = 0, len(images)
    with torch.inference_mode(False), torch.no_grad():
        for x in images.batches(batch_size):
            out = activations(model, x.to(device=device, dtype=dtype), layer)[layer].float()
            shape = tuple(out.shape[1:])
            if out.dim() == 2:                     # [B, C]: no positions
                vals.append(out.cpu())
                poss.append(torch.full((*out.shape, 2), -1, dtype=torch.long))
            elif out.dim() == 4:                   # [B, C, H, W]
                h, w = out.shape[-2:]
                if position == "centre":
                    y, x_ = (h - 1) // 2, (w - 1) // 2
                    vals.append(out[:, :, y, x_].cpu())
                    poss.append(torch.tensor([y, x_], dtype=torch.long).expand(*out.shape[:2], 2).clone())
                else:
                    v, i = out.flatten(2).max(dim=2)   # first maximum in row-major order
                    vals.append(v.cpu())
                    poss.append(torch.stack([i // w, i % w], dim=2).cpu())
            else:
                raise WeightvizError(f"layer {layer!r} outputs {list(out.shape)}; dataset examples need "
                                     "[B, C, H, W] or [B, C]")
            done += x.shape[0]
            if progress is not None:
                progress(done, total)
    return torch.cat(vals), torch.cat(poss), shape


def select(model: nn.Module, layer: str, unit: int, images, values: torch.Tensor, positions: torch.Tensor,
           shape: tuple, k: int, position: str = "max", warn: bool = True) -> TopExamples:
    """:class:`TopExamples` of ``unit`` from the scores of :func:`layer_scores` (``values`` ``[N, C]``,
    ``positions`` ``[N, C, 2]``): the ``k`` highest activations > 0 and their receptive-field crops."""
    from ..models import model_name

    if unit >= shape[0]:
        raise WeightvizError(f"unit {unit} out of range: layer {layer!r} has {shape[0]} channels (0..{shape[0] - 1})")
    v, pos = values[:, unit], positions[:, unit]
    order = torch.sort(v, descending=True, stable=True).indices
    max_value = float(v[order[0]])
    keep = [int(i) for i in order[:k] if float(v[i]) > 0]
    if not keep and warn:
        warnings.warn(f"unit {unit} of {layer!r} never fires on these {len(images)} images (largest activation "
                      f"{max_value:.4g} <= 0): no dataset examples", UserWarning, stacklevel=3)
    hw = tuple(int(v) for v in images.raw(0).shape[-2:])
    spatial = len(shape) == 3
    if spatial and keep:
        from ..expand import receptive_field

        field = receptive_field(model, layer, None).size   # the untruncated field of one position
        win = _crops.window(model, None, layer, hw, field)
    else:                                                  # no positions: the whole image
        field, win = hw, None
    crops, boxes = [], []
    for i in keep:
        r0, c0 = win.start(tuple(int(t) for t in pos[i])) if win is not None else (0, 0)
        crops.append(_crops.crop(images.raw(i), (r0, c0), field, fill=FILL))
        boxes.append((max(r0, 0), min(r0 + field[0], hw[0]), max(c0, 0), min(c0 + field[1], hw[1])))
    canvas = field if keep else hw
    idx = torch.tensor(keep, dtype=torch.long)
    return TopExamples(
        layer=layer, unit=unit,
        images=torch.stack(crops) if crops else torch.zeros(0, 3, *canvas),
        values=v[idx] if keep else torch.zeros(0),
        indices=idx, positions=pos[idx] if keep else torch.zeros(0, 2, dtype=torch.long),
        boxes=torch.tensor(boxes, dtype=torch.long).reshape(-1, 4), n_images=len(images), max_value=max_value,
        position=position, model_name=model_name(model),
    )


def top_examples(
    model: nn.Module | str | None,
    layer: str,
    unit: int,
    images: Any = None,
    k: int = 9,
    *,
    position: str = "max",
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TopExamples:
    """The ``k`` images of ``images`` that activate ``unit`` of ``layer`` most, with crops of their
    receptive field at the most active position.

    ``images``: an :class:`weightviz.ImageSet`, a folder path, a tensor ``[N, C, H, W]`` prepared for the
    model, or ``None`` (the embedded natural images; see :func:`weightviz.as_images`). ``position``: ``"max"`` (activation = max over the output map) or ``"centre"``
    (see the module docstring). ``progress(done, total)`` is called after each batch.

    Returns :class:`TopExamples` (``.images`` ``[k, 3, h, w]`` in [0, 1], ``.values`` descending,
    ``.indices``, ``.positions``; drawn by :func:`weightviz.figures.top_examples`). A unit that fires on none of the images (every
    activation <= 0) gives a warning and a result without examples (``.fires`` False).
    """
    from ..data import as_images

    model = resolve(model)
    _check(model, layer, unit, k, position, batch_size)
    imgs = as_images(images, model)
    values, positions, shape = layer_scores(model, layer, imgs, position=position, batch_size=batch_size,
                                            progress=progress)
    return select(model, layer, unit, imgs, values, positions, shape, k, position)

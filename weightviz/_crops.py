"""Private: crops of input images that show what one position of a layer sees (its receptive field).

The box of input pixels that can reach position ``(y, x)`` of a layer's output is *measured* by
:func:`weightviz.receptive_field` (``src=None``: over the model input, at the images' own size, with that
position as target): exact for strides, dilations, pooling, branches and asymmetric TF-"SAME" padding,
clipped to the image. A crop is that box of the image, placed on a canvas of the field's full size
(at most the image size), so every crop of one layer has the same shape: where the field reaches past a
border of the image, the canvas keeps the part inside the image against the border it was cut at and the
rest shows ``fill`` (grey: nothing there).

Used by :func:`weightviz.top_examples` (dataset examples of a unit) and by the examples of the cases of
:func:`weightviz.cases`.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import WeightvizError

__all__ = ["FILL", "canvas_size", "crop_field", "field_box"]

#: value shown where a crop's canvas lies outside the image
FILL = 0.5


def _square(size: tuple[int, int]) -> int:
    h, w = size
    if h != w:
        raise WeightvizError(f"crops of receptive fields need square images, got {h}x{w}; resize or centre-crop "
                             "them (weightviz.images(folder, size=N) does)")
    return int(h)


def field_box(model: nn.Module, layer: str, size: tuple[int, int], target: tuple[int, int] | None
              ) -> tuple[int, int, int, int]:
    """Half-open box ``(r0, r1, c0, c1)`` of input pixels reaching ``layer``'s output at ``target = (y, x)``
    for an input of ``size = (H, W)`` (``target=None``: a layer without spatial axes sees the whole
    image). Clipped to the image; measured by :func:`weightviz.receptive_field` (memoized per position)."""
    n = _square(size)
    if target is None:
        return 0, n, 0, n
    from .expand import receptive_field

    rf = receptive_field(model, layer, None, input_size=n, target=(int(target[0]), int(target[1])))
    (r0, c0), (kh, kw) = rf.start, rf.size
    return r0, r0 + kh, c0, c0 + kw


def canvas_size(model: nn.Module, layer: str, size: tuple[int, int], spatial: bool = True) -> tuple[int, int]:
    """``(h, w)`` of every crop of ``layer`` for images of ``size``: the field of the centre position
    when it fits in the image, else the image size."""
    n = _square(size)
    if not spatial:
        return n, n
    from .expand import receptive_field

    rf = receptive_field(model, layer, None, input_size=n)
    if rf.truncated:
        return n, n
    return min(rf.size[0], n), min(rf.size[1], n)


def _place(lo: int, hi: int, n: int, length: int) -> int:
    """Offset on the canvas (``length`` long) of the image span ``[lo, hi)`` of an axis of ``n`` pixels."""
    span = hi - lo
    if span >= length:
        return 0
    if lo == 0 and hi < n:    # cut at the start of the axis: the field continues before the image
        return length - span
    if hi == n and lo > 0:    # cut at the end: the field continues after the image
        return 0
    return (length - span) // 2


def crop_field(image: torch.Tensor, box: tuple[int, int, int, int], canvas: tuple[int, int],
               fill: float = FILL) -> torch.Tensor:
    """The ``box`` of ``image`` ``[C, H, W]`` on a ``canvas = (h, w)``: ``[C, h, w]``, ``fill`` where the
    field lies outside the image (see the module docstring). A box larger than the canvas is cut around
    its centre."""
    r0, r1, c0, c1 = box
    c, n_h, n_w = image.shape
    h, w = canvas
    if r1 - r0 > h:
        r0 = r0 + (r1 - r0 - h) // 2
        r1 = r0 + h
    if c1 - c0 > w:
        c0 = c0 + (c1 - c0 - w) // 2
        c1 = c0 + w
    out = torch.full((c, h, w), float(fill), dtype=image.dtype)
    oy, ox = _place(r0, r1, n_h, h), _place(c0, c1, n_w, w)
    out[:, oy:oy + r1 - r0, ox:ox + c1 - c0] = image[:, r0:r1, c0:c1]
    return out

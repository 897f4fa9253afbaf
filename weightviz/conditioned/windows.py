"""Windows of one ``dst`` position over ``src`` (or over the input) on images of any size, and zero-padded
crops of them (used by per-example connections, cases and dataset examples; public for checking them).

:func:`weightviz.expanded_weights` places its ``K x K`` window relative to the centre of ``dst`` at the
input size its field was measured at. On an image of another size the same window sits at
``start(p) = offset + p * stride`` for a ``dst`` position ``p`` (per axis), where ``offset`` and
``stride`` are read off :func:`weightviz.receptive_field` measured *at that image size* (asymmetric
TF-"SAME" padding depends on the input size, so an offset measured at another size can be off by one).
If the field is truncated at the image size (image smaller than the field), it is measured at
``size + m * S`` instead, ``S`` a power of two at least the total stride of ``dst``: every layer then sees
the same size modulo its stride, so the padding, hence the offset, is the same.

Windows reaching past the border of the map are zero-padded by :func:`crop`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightvizError

__all__ = ["Window", "crop", "inside", "window"]

_MAX_SIZE = 4096


@dataclass(frozen=True)
class Window:
    """Geometry of the window of one ``dst`` position over ``src`` on ``image_size`` inputs.

    ``size``: ``(Kh, Kw)``; ``offset``/``stride``: per axis, the window of ``dst`` position ``(y, x)`` starts
    at ``offset + (y, x) * stride`` in ``src`` positions; ``src_hw`` / ``dst_hw``: the map sizes.
    """

    size: tuple[int, int]
    offset: tuple[int, int]
    stride: tuple[int, int]
    image_size: tuple[int, int]
    src_hw: tuple[int, int]
    dst_hw: tuple[int, int]

    def start(self, pos: tuple[int, int]) -> tuple[int, int]:
        """First ``src`` row and column of the window of ``dst`` position ``pos``."""
        return (self.offset[0] + int(pos[0]) * self.stride[0], self.offset[1] + int(pos[1]) * self.stride[1])


def _axis(model: nn.Module, src: str | None, dst: str, n: int, axis: int, size: int) -> tuple[int, int, int, int]:
    """``(offset, stride, src_len, dst_len)`` along ``axis`` for square inputs of side ``n``."""
    from ..expand import receptive_field

    rf = receptive_field(model, dst, src, input_size=n)
    src_len, dst_len = rf.src_shape[1 + axis], rf.dst_shape[1 + axis]
    total = 1
    while total * dst_len < n:   # a power of two at least the input / dst downsampling
        total *= 2
    m = n
    while True:
        ok = rf.stride is not None and rf.size[axis] == size and rf.start[axis] > 0 and \
            rf.start[axis] + size < rf.src_shape[1 + axis]
        if ok:
            t = rf.target[axis]
            return rf.start[axis] - t * rf.stride[axis], rf.stride[axis], src_len, dst_len
        m += total
        if m > _MAX_SIZE:
            raise WeightvizError(f"internal: no untruncated field of {dst!r} over {src or 'the input'!r} up to "
                                 f"{_MAX_SIZE} px")
        rf = receptive_field(model, dst, src, input_size=m)


def window(model: nn.Module, src: str | None, dst: str, image_hw: tuple[int, int],
           size: tuple[int, int]) -> Window:
    """The :class:`Window` of ``dst`` over ``src`` (``None``: the input) for images ``image_hw`` ``(H, W)``,
    with the field size ``size`` of :func:`weightviz.expanded_weights` (measured at its own input size)."""
    h, w = (int(v) for v in image_hw)
    # each axis only depends on the input's extent along it: a square probe of that side measures it
    oy, sy, hs, hd = _axis(model, src, dst, h, 0, size[0])
    ox, sx, ws, wd = _axis(model, src, dst, w, 1, size[1])
    return Window(tuple(size), (oy, ox), (sy, sx), (h, w), (hs, ws), (hd, wd))


def crop(x: torch.Tensor, start: tuple[int, int], size: tuple[int, int], fill: float = 0.0) -> torch.Tensor:
    """The window ``[..., start[0]:start[0]+size[0], start[1]:start[1]+size[1]]`` of ``x`` ``[..., H, W]``,
    padded with ``fill`` where it reaches past the border (always ``[..., size[0], size[1]]``)."""
    (r0, c0), (kh, kw) = start, size
    hh, ww = x.shape[-2:]
    pt, pl = max(0, -r0), max(0, -c0)
    pb, pr = max(0, r0 + kh - hh), max(0, c0 + kw - ww)
    if pt or pl or pb or pr:
        x = F.pad(x, (pl, pr, pt, pb), value=fill)
    r0, c0 = r0 + pt, c0 + pl
    return x[..., r0:r0 + kh, c0:c0 + kw]


def inside(start: tuple[int, int], size: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """``[Kh, Kw]`` bool mask of the window positions that lie inside a ``hw`` map."""
    rows = torch.arange(size[0]) + start[0]
    cols = torch.arange(size[1]) + start[1]
    return ((rows >= 0) & (rows < hw[0]))[:, None] & ((cols >= 0) & (cols < hw[1]))[None, :]

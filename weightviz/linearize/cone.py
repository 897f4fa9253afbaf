"""Convolutions whose backward is restricted to the target's cone (used by expanded weights).

Expanded weights are gradients of one ``dst`` position. Between ``src`` and ``dst`` the cotangent of a
conv's output is nonzero only on the positions that can reach that target (its *cone*, e.g. a 5x5
window of a 16x16 map), yet autograd's conv backward runs over the whole map. The structural probe of
:func:`weightviz.receptive_field` measures, for every conv on the way, the bounding box of its cone
(:func:`box_of`); the value pass then runs each of those convs through :class:`ConeConv2d` or
:class:`ConePointwise`, whose backward computes the input gradient from the box alone and zero-pads it
to the input's shape. Exact: outside the box the cotangent is zero, so the dropped terms are zero. The
forward is unchanged (full map). Both support ``torch.func`` (``generate_vmap_rule``), so the batched
backward over many units stays one call.

A box is ``(r0, r1, c0, c1)``: half-open rows and columns of the conv's output map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


@dataclass
class ConeEntry:
    """One conv call of the structural probe: its input map size ``(H, W)``, weight shape and the box of
    output positions whose gradient can be nonzero (``None`` until the backward reaches it; a conv that
    does not reach the target keeps ``None``)."""

    in_hw: tuple[int, int] | None
    w_shape: tuple[int, ...]
    box: Box | None = None


class ConeRecord(list):
    """The :class:`ConeEntry` list of one structural probe. Boxes are taken from the first backward only
    (the probe's second backward, for the stride, sets ``active = False`` first)."""

    active = True


def record_box(record: ConeRecord, entry: ConeEntry, g: torch.Tensor) -> None:
    """Tensor hook on a conv output in the structural probe: store the box of its gradient."""
    if record.active and entry.box is None:
        entry.box = box_of(g)


def box_of(g: torch.Tensor) -> Box | None:
    """Bounding box of the nonzero positions of a gradient ``[..., C, H, W]`` (``None`` if all zero)."""
    mask = g.detach().reshape(-1, *g.shape[-2:]).ne(0).any(0)  # [H, W]
    rows = torch.nonzero(mask.any(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pair(v) -> tuple[int, int] | None:
    """An int or a 1-/2-sequence of ints (a conv's stride, padding, ...) as ``(h, w)``; ``None`` otherwise."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[-1])
    return None


def clip_window(g: torch.Tensor, r0: int, c0: int, hw: tuple[int, int]):
    """Cut a window ``g`` ``[..., h, w]`` whose first row/column is map position ``(r0, c0)`` to the map
    ``hw``: ``(window, r0, c0)`` of what is inside, or ``None`` if nothing is."""
    H, W = hw
    h, w = g.shape[-2:]
    a, b = max(0, -r0), min(h, H - r0)
    c, d = max(0, -c0), min(w, W - c0)
    if b <= a or d <= c:
        return None
    if (a, b, c, d) != (0, h, 0, w):
        g = g[..., a:b, c:d]
    return g, r0 + a, c0 + c


def _place(gi: torch.Tensor, top: int, left: int, hw: tuple[int, int]) -> torch.Tensor:
    """Put a gradient window whose first row/column is input position ``(top, left)`` into a zero map
    ``hw``; rows/columns of the window outside the map (conv padding) are cut."""
    H, W = hw
    hit = clip_window(gi, top, left, hw)
    if hit is None:  # the window lies in the padding: zero gradient
        hit = gi[..., :0, :0], 0, 0
    gi, top, left = hit
    return F.pad(gi, (left, W - left - gi.shape[-1], top, H - top - gi.shape[-2]))


class ConeConv2d(torch.autograd.Function):
    """``F.conv2d`` whose input gradient is computed from the output cotangent inside ``box`` only
    (``conv_transpose2d`` of that window, placed at its input offset). No weight/bias gradients."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups, box):
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _b, stride, padding, dilation, groups, box = inputs
        ctx.save_for_backward(w)
        ctx.geom = (tuple(x.shape[-2:]), stride, padding, dilation, groups, box)

    @staticmethod
    def backward(ctx, go):
        (w,) = ctx.saved_tensors
        hw, (sh, sw), (ph, pw), dilation, groups, (r0, r1, c0, c1) = ctx.geom
        gi = F.conv_transpose2d(go[..., r0:r1, c0:c1], w, stride=(sh, sw), dilation=dilation, groups=groups)
        return _place(gi, r0 * sh - ph, c0 * sw - pw, hw), None, None, None, None, None, None, None


class ConePointwise(torch.autograd.Function):
    """A 1x1 conv as ``einsum("oi,bihw->bohw", w, x)`` (``w`` ``[C_out, C_in]``) whose input gradient is
    computed inside ``box`` only."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w, box):
        return torch.einsum("oi,bihw->bohw", w, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, box = inputs
        ctx.save_for_backward(w)
        ctx.geom = (tuple(x.shape[-2:]), box)

    @staticmethod
    def backward(ctx, go):
        (w,) = ctx.saved_tensors
        hw, (r0, r1, c0, c1) = ctx.geom
        gi = torch.einsum("oi,bohw->bihw", w, go[..., r0:r1, c0:c1])
        return _place(gi, r0, c0, hw), None, None


def conv_geometry(w: torch.Tensor, stride, padding, dilation) -> tuple | None:
    """``(stride, padding, dilation)`` as int pairs for a 2D conv, or ``None`` when not handled (string
    padding other than "valid")."""
    if padding == "valid":
        padding = 0
    s, p, d = pair(stride), pair(padding), pair(dilation)
    if s is None or p is None or d is None or w.dim() != 4:
        return None
    return s, p, d

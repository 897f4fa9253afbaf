"""The backward of one ``dst`` position restricted to its cone (private; used by :func:`data_weights` with
several units).

The gradient of ``dst[u]`` at position ``p`` w.r.t. ``src`` lives in the window of ``p`` when every route
between the layers is local. Instead of a backward over the whole map per unit, each (unit, image) gets a
small crop of ``src``'s map around its window, and ONE forward + backward of the ``src -> dst`` part of the
real model over the batch of all crops gives every gradient (the crops are independent batch items).

Geometry (per axis): every crop has the same length ``L = H - e`` (``H``: the map's length, ``e`` the largest
multiple of ``S`` with ``H - e >= K + S - 1``, or ``L = H`` for a shorter map; ``S``: the total stride from
``src`` to ``dst``; ``K``: the window) so that all crops run as ONE batch. A crop starts at
``r = max(0, floor(start / S) * S)`` (``start``: the window's first ``src`` row; a multiple of ``S`` keeps
every strided layer on the same sampling grid), or at ``e`` where that would pass the map's end (then it
ends where the map ends, and the crop's layers pad there as the real model does). Position ``p`` of the full map is position ``p - r / S`` of the crop's
map, and every value in its cone is computed from the same inputs as in the full model. The caller checks
that the crop reproduces ``dst[u]`` at ``p`` (it does not where a route is global or the padding depends on
the map size) and otherwise falls back to full-map backwards.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from ..models import get_module
from . import windows as _crops

__all__ = ["CropSet", "cone_grads"]


class _Stop(Exception):
    pass


class CropSet:
    """Crops of ``src``'s map collected over batches: per (unit index, image index) one crop, grouped by shape."""

    def __init__(self, win: _crops.Window, size: tuple[int, int]):
        self.win, self.size = win, size
        self.groups: dict[tuple[int, int], list] = defaultdict(list)

    def add(self, z: torch.Tensor, b: int, ui: int, unit: int, n: int, pos: tuple[int, int], want: float) -> None:
        """Crop ``z[b]`` ``[C, Hs, Ws]`` for ``unit`` (index ``ui``) at ``dst`` position ``pos`` of image ``n``;
        ``want``: ``dst[unit]`` at ``pos`` in the full forward."""
        start = self.win.start(pos)
        hs, ws = z.shape[-2:]
        r, q, shape = [], [], []
        for a, full in enumerate((hs, ws)):
            s = self.win.stride[a]
            kc = self.size[a] + s - 1
            end = max(0, ((full - kc) // s) * s)          # the last crop start: a multiple of s, ending at the map end
            size = full - end                             # one crop size per axis (kc <= size < kc + s)
            r0 = max(0, (start[a] // s) * s)
            if r0 + size > full:
                r0 = end
            r.append(r0)
            q.append(pos[a] - r0 // s)
            shape.append(size)
        crop = z[b, :, r[0]:r[0] + shape[0], r[1]:r[1] + shape[1]].clone()   # not a view: frees the batch's map
        self.groups[tuple(shape)].append((crop, ui, unit, n, tuple(q), (start[0] - r[0], start[1] - r[1]), want))


def cone_grads(model: nn.Module, src: str | None, dst: str, x1: torch.Tensor, crops: CropSet, attribution: bool,
               out: torch.Tensor, tol: float) -> bool:
    """Fill ``out[ui, n]`` ``[C, Kh, Kw]`` with each crop's window gradient (x activation with
    ``attribution``). ``x1``: one input image, for the layers before ``src`` (their output is replaced).
    Returns False (``out`` partly written) when a crop's ``dst`` value differs from the full forward's by
    more than ``tol`` or the crop run fails: the caller then uses full-map backwards."""
    kh, kw = crops.size
    for _shape, items in crops.groups.items():
        z = torch.stack([it[0] for it in items]).contiguous(memory_format=torch.channels_last).detach().requires_grad_(True)
        cap: dict[str, torch.Tensor] = {}

        def src_hook(_m, _i, _o, z=z):
            torch.set_grad_enabled(True)
            return z.clone()

        def dst_hook(_m, _i, o, cap=cap):
            cap["y"] = o
            raise _Stop

        handles = [get_module(model, dst).register_forward_hook(dst_hook)]
        if src is not None:
            handles.append(get_module(model, src).register_forward_hook(src_hook))
        try:
            with torch.inference_mode(False), torch.no_grad():
                if src is None:
                    torch.set_grad_enabled(True)
                try:
                    model(x1 if src is not None else z.clone())
                except _Stop:
                    pass
        except Exception:   # the crop batch does not fit this model (e.g. a skip from before src)
            return False
        finally:
            for h in handles:
                h.remove()
        y = cap.get("y")
        if y is None or y.dim() != 4:
            return False
        units = torch.tensor([it[2] for it in items])
        qy = torch.tensor([it[4][0] for it in items])
        qx = torch.tensor([it[4][1] for it in items])
        if bool((qy >= y.shape[2]).any()) or bool((qx >= y.shape[3]).any()):
            return False
        idx = torch.arange(len(items))
        sel = y[idx, units.to(y.device), qy.to(y.device), qx.to(y.device)]
        want = torch.tensor([it[6] for it in items], dtype=sel.dtype, device=sel.device)
        if not bool(((sel.detach() - want).abs() <= tol).all()):
            return False
        with torch.inference_mode(False):
            if not sel.requires_grad:
                return False
            (g,) = torch.autograd.grad(sel.sum(), z)
        v = g * z.detach() if attribution else g
        for i, it in enumerate(items):
            out[it[1], it[3]] = _crops.crop(v[i], it[5], (kh, kw))
    return True

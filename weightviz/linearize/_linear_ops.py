"""The linearizer's handlers for ops that stay linear but need care: convs restricted to a cone (or run as
an einsum), eval batch norm as a per-channel scale, average pooling, sums and concatenations, each recorded
on the op tape (:mod:`.compose`) when the tape is on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..utils.calls import arg as _arg
from . import compose as _compose
from . import cone as _cone
from .ops import MAX_POOLS, op_name

__all__ = ["LinearOps"]


class LinearOps:
    """Mixin of :class:`.linearizer.Linearizer`: the handlers of conv, batch norm, avg-pool, add and cat
    (they use its tracking: ``track``, ``node_of``, ``tape``, ``cones``, ``_run``)."""

    def _cone_box(self, x, w) -> _cone.Box | None:
        """The recorded cone box of this conv2d call (value mode with ``cones``), or ``None``. If the call
        does not match the recorded one (input size or weight shape), cones are off for the rest."""
        if self.cones is None or self.structural:
            return None
        i = self._conv_calls
        self._conv_calls += 1
        entry = self.cones[i] if i < len(self.cones) else None
        if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or x.dim() != 4:
            return None
        if entry is None or entry.in_hw != tuple(x.shape[-2:]) or entry.w_shape != tuple(w.shape):
            self.cones = None
            return None
        return entry.box if entry.box is not None else (0, 1, 0, 1)  # zero cotangent: any box is exact

    def _cone_conv(self, args, kwargs, box):
        """A conv2d whose backward only covers the cone ``box`` of its output (:class:`_cone.ConeConv2d`)."""
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        geom = _cone.conv_geometry(w, _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0),
                                   _arg(args, kwargs, 5, "dilation", 1))
        if geom is None:
            return None
        out = _cone.ConeConv2d.apply(x, w, _arg(args, kwargs, 2, "bias"), *geom, _arg(args, kwargs, 6, "groups", 1),
                                     box)
        self.track(out)
        return out

    def _pointwise_conv(self, args, kwargs, box=None):
        """A 1x1, stride-1, ungrouped, unpadded conv as an einsum (same map; its batched backward is a
        batched matrix product, several times faster on CPU than vmapped ``convolution_backward``); with
        a cone ``box``, the backward covers only that box."""
        x, w = args[0], _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        stride, padding = _arg(args, kwargs, 3, "stride", 1), _arg(args, kwargs, 4, "padding", 0)
        groups = _arg(args, kwargs, 6, "groups", 1)
        if (not isinstance(w, torch.Tensor) or w.dim() != 4 or tuple(w.shape[-2:]) != (1, 1) or groups != 1
                or x.dim() != 4 or stride not in (1, (1, 1), [1, 1])
                or padding not in (0, (0, 0), [0, 0], "valid", "same")):
            return None
        if box is None:
            out = torch.einsum("oi,bihw->bohw", w[:, :, 0, 0], x)
        else:
            out = _cone.ConePointwise.apply(x, w[:, :, 0, 0], box)
        if b is not None:
            out = out + b[:, None, None]
        self.track(out)
        return out

    def _affine_batch_norm(self, args, kwargs):
        """Eval batch norm as an explicit per-channel ``x * scale + shift`` (its backward is a cheap
        product, which batches far better under vmap than ``native_batch_norm_backward``)."""
        x = args[0]
        rm, rv = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
        if rm is None or rv is None:
            return self._run(F.batch_norm, args, kwargs)
        w, b = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
        eps = _arg(args, kwargs, 7, "eps", 1e-5)
        scale = torch.rsqrt(rv + eps)
        if w is not None:
            scale = scale * w
        shift = -rm * scale
        if b is not None:
            shift = shift + b
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out = torch.add(x * scale.reshape(shape), shift.reshape(shape))
        self.track(out)
        if self.tape is not None:
            _compose.scale(self.tape, self.node_of(x), self.node_of(out), scale.detach())
        return out

    def _avg_pool(self, func, name, args, kwargs):
        nd = MAX_POOLS[name]
        x = args[0]
        kernel = _arg(args, kwargs, 1, "kernel_size")
        stride = _arg(args, kwargs, 2, "stride", None)
        padding = _arg(args, kwargs, 3, "padding", 0)
        dilation = _arg(args, kwargs, 4, "dilation", 1)
        ceil_mode = bool(_arg(args, kwargs, 5, "ceil_mode", False))
        if name.endswith("_with_indices") or _arg(args, kwargs, 6, "return_indices", False):
            raise self._fail(func, "max-pool indices have no linear counterpart")
        dil = tuple(dilation) if isinstance(dilation, (list, tuple)) else (dilation,)
        if any(int(d) != 1 for d in dil):
            raise self._fail(func, "a dilated max-pool has no average-pool counterpart")
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
            stride = kernel
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
        out = fn(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True)
        self.track(out)
        if self.tape is not None:
            _compose.record(self.tape, "avg_pool2d" if nd == 2 else name, (x, kernel, stride, padding, ceil_mode),
                            {}, self.node_of, out, self.node_of(out))
        return out

    def _add(self, func, name, args, kwargs):
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other")
        ops = [t for t in (a, b) if self.is_tracked(t)]
        if self.merge is None or len(ops) < 2:
            return self._run(func, args, kwargs)
        keep = self.merge(op_name(func), [a, b])
        if keep is None:
            return self._run(func, args, kwargs)
        inplace = name in ("add_", "sub_", "__iadd__", "__isub__")
        if keep == 0:
            return self._run(func, (a, b.detach(), *args[2:]), {k: v for k, v in kwargs.items() if k != "other"})
        if inplace:  # keep only `other`: cut the history of `self` in place, values stay
            try:
                a.detach_()
            except RuntimeError:  # a view: fall back to an out-of-place result (fine for `x += y`)
                a = a.detach()
            self.untrack(a)
            return self._run(func, (a, b, *args[2:]), {k: v for k, v in kwargs.items() if k not in ("input", "other")})
        return self._run(func, (a.detach(), b, *args[2:]),
                         {k: v for k, v in kwargs.items() if k not in ("input", "other")})

    def _cat(self, func, name, args, kwargs):
        seq = args[0] if args else kwargs.get("tensors")
        n_tracked = sum(1 for t in seq if self.is_tracked(t))
        if self.merge is None or n_tracked < 2:
            return self._run(func, args, kwargs)
        seq = list(seq)
        keep = self.merge(op_name(func), seq)
        if keep is not None:
            seq = [t if i == keep or not isinstance(t, torch.Tensor) else t.detach() for i, t in enumerate(seq)]
        if args:
            return self._run(func, (seq, *args[1:]), kwargs)
        return self._run(func, (), {**kwargs, "tensors": seq})

"""Data-conditioned connections: per-example gradients between two layers, and the cases they fall into.

Expanded weights (:mod:`weightviz.expand`) linearize the model and show what a connection does "on
average". Where the nonlinear structure matters they mislead: a boundary detector excited by
high-to-low *and* low-to-high frequency transitions has expanded weights from high-frequency detectors
that cancel (Voss et al. 2021, "Expanded weights"). The article names the remedies; two are here:

- :func:`data_weights`: the gradient for particular examples. For each image, the gradient of
  ``dst[unit]`` (the ``dst`` module's output as hooked: a conv's pre-activation) at one position
  with respect to the output of ``src``, through the REAL model (no linearization), in the same
  ``K x K`` window as :func:`weightviz.expanded_weights` (same field, same index convention).
- :func:`cases`: the gradient factored over many examples into a few major cases (one-sided NMF).

How the window is placed: :func:`weightviz.expanded_weights` takes the window of the ``dst`` centre at
its own input size; here the window of the chosen position ``p`` of each image is the one that position
reads at the image's size (:mod:`weightviz.conditioned.windows`: ``start = offset + p * stride``, measured at that
size, so asymmetric TF-"SAME" padding is right too). Window positions past the border of ``src``'s map
(a position near the image border) are zero (the gradient there is not defined: no such input exists);
``DataWeights.inside`` marks the positions that exist. When every op between ``src`` and ``dst`` is
linear, the gradient does not depend on the image and equals the expanded weight at every position that
exists.

Batched: images are independent in eval mode, so the gradient of the *sum* over a batch of each
image's selected output gives every image's own gradient in one backward. The model runs in eval mode
(BatchNorm with running statistics; the caller's train/eval flags are restored afterwards).

>>> import weightviz as wv
>>> m = wv.load_model()                                                                  # doctest: +SKIP
>>> d = wv.data_weights(m, "blocks.2.0", "blocks.3.0", 5, wv.images(n=16, model=m))       # doctest: +SKIP
>>> d.weights.shape, d.activations.shape                  # [N, C_src, K, K], [N]         # doctest: +SKIP
(torch.Size([16, 40, 7, 7]), torch.Size([16]))
>>> c = wv.cases(m, "blocks.2.0", "blocks.3.0", 5, wv.images(n=64, model=m), n_cases=2)  # doctest: +SKIP
>>> c.patterns.shape, c.loadings.shape                    # [n_cases, C_src, K, K], [N, n_cases]  # doctest: +SKIP
(torch.Size([2, 40, 7, 7]), torch.Size([64, 2]))
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import default_batch
from ..errors import WeightvizError, WeightvizWarning
from ..expand import receptive_field
from ..models import device_dtype, get_module, parse_units, resolve
from ..utils.progress import progress as _progress
from . import _cone
from . import windows as _crops

__all__ = ["OUTSIDE_WARN", "DataWeights", "data_weights"]

_POSITIONS = ("max", "centre")
_CONE_INPUT = 64     # px of the input the layers before src run on in the cone pass (their output is replaced)
OUTSIDE_WARN = 0.02  # share of the gradient squared norm outside the window above which data_weights warns


# ------------------------------------------------------------------------------------------- results
@dataclass
class DataWeights:
    """Per-example connections from ``src`` into ``dst`` unit(s) (:func:`data_weights`).

    One unit (``unit`` an int): ``weights``: ``[N, C_src, Kh, Kw]``, the gradient (``attribution=True``:
    gradient x ``src`` activation) in the window of each image's position, same convention as
    :func:`weightviz.expanded_weights`. ``activations``: ``[N]``, ``dst[unit]`` (pre-activation) at that
    position. ``positions``: ``[N, 2]`` long, the ``dst`` position ``(y, x)`` used per image.
    ``inside``: ``[N, Kh, Kw]`` bool, window positions that exist in ``src``'s map (the others are 0).
    ``outside``: ``[N]``, per image the share of the gradient's squared L2 norm (over the whole ``src`` map,
    all channels; the plain gradient also when ``attribution=True``) that lies OUTSIDE the window, computed
    from the full-map gradient: 0 when every route from ``dst`` to ``src`` stays in the window (convs,
    pooling of a fixed size), larger through global pooling (squeeze-excite) or attention, whose share the
    window drops. ``window``: the geometry (:class:`weightviz.conditioned.windows.Window`).

    Several units (``unit`` a list, :func:`data_weights` with ``unit=[...]`` or a spec like ``"0:32"``): every
    per-image tensor gets a leading unit axis ``U`` (``weights`` ``[U, N, C_src, Kh, Kw]``, ``activations``
    and ``outside`` ``[U, N]``, ``positions`` ``[U, N, 2]``, ``inside`` ``[U, N, Kh, Kw]``);
    :meth:`for_unit` gives one unit's :class:`DataWeights`.
    """

    weights: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor
    inside: torch.Tensor
    src: str | None
    dst: str
    unit: int | list[int]
    position: Any
    attribution: bool
    window: _crops.Window = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    images: Any = field(default=None, repr=False, compare=False)
    outside: torch.Tensor | None = None

    @property
    def units(self) -> list[int]:
        """The ``dst`` units, as a list (one element for a single-unit result)."""
        return list(self.unit) if isinstance(self.unit, list) else [self.unit]

    def for_unit(self, unit: int) -> DataWeights:
        """The single-unit :class:`DataWeights` of ``unit`` (one of :attr:`units`)."""
        if not isinstance(self.unit, list):
            if unit != self.unit:
                raise WeightvizError(f"unit {unit!r} is not in this result (unit {self.unit})")
            return self
        if unit not in self.unit:
            raise WeightvizError(f"unit {unit!r} is not in this result (units {_short(self.unit)})")
        i = self.unit.index(unit)
        return DataWeights(self.weights[i], self.activations[i], self.positions[i], self.inside[i], self.src,
                           self.dst, unit, self.position, self.attribution, self.window, self.model, self.images,
                           None if self.outside is None else self.outside[i])

    def _single(self, what: str) -> None:
        if isinstance(self.unit, list):
            raise WeightvizError(f"{what} is per unit: this result holds {len(self.unit)} units; use "
                                 f".for_unit(u).{what}")

    def input_boxes(self) -> list[tuple[int, int, int, int]]:
        """Per image, the box ``(r0, c0, h, w)`` of input pixels the chosen ``dst`` position reads (may reach
        past the image border)."""
        self._single("input_boxes()")
        win = _input_window(self.model, self.dst, self.window.image_size)
        return [(*win.start(tuple(p.tolist())), *win.size) for p in self.positions]

    def crops(self, indices: list[int]) -> torch.Tensor:
        """``[len(indices), C, h, w]`` display crops in [0, 1] (white past the image border) of what the chosen
        position of those images reads."""
        self._single("crops()")
        return _crop_examples(self, indices)


def _short(units: list[int]) -> str:
    return ",".join(map(str, units[:8])) + (",..." if len(units) > 8 else "")


# ------------------------------------------------------------------------------------------- helpers
class _Stop(Exception):
    """Raised from the ``dst`` hook to end the forward (private control flow)."""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside the block; the caller's flags restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def _images(images: Any, model: nn.Module):
    """An image set ready for ``model`` (:func:`weightviz.as_images`)."""
    from ..data import as_images

    return as_images(images, model)


def _parse_position(position: Any) -> Any:
    if isinstance(position, str):
        if position == "center":
            return "centre"
        if position not in _POSITIONS:
            raise WeightvizError(f"position must be 'max', 'centre' or (y, x), got {position!r}")
        return position
    if isinstance(position, (tuple, list)) and len(position) == 2 and \
            all(isinstance(v, int) and not isinstance(v, bool) for v in position):
        return (int(position[0]), int(position[1]))
    raise WeightvizError(f"position must be 'max', 'centre' or (y, x) ints, got {position!r}")


def _select(a: torch.Tensor, position: Any, dst: str) -> torch.Tensor:
    """``a`` ``[B, Hd, Wd]`` -> positions ``[B, 2]`` (long): argmax (first maximum in row-major order),
    the centre ``((Hd-1)//2, (Wd-1)//2)``, or a fixed ``(y, x)``."""
    b, hd, wd = a.shape
    if position == "max":
        flat = a.reshape(b, -1).argmax(dim=1)
        return torch.stack([flat // wd, flat % wd], dim=1)
    if position == "centre":
        y, x = (hd - 1) // 2, (wd - 1) // 2
    else:
        y, x = position
        if not (0 <= y < hd and 0 <= x < wd):
            raise WeightvizError(f"position {position} is outside {dst!r}'s {hd}x{wd} output map at this image "
                                 f"size; use 0..{hd - 1}, 0..{wd - 1}")
    return torch.tensor([[y, x]], dtype=torch.long, device=a.device).expand(b, 2).clone()


def _forward(model: nn.Module, src: str | None, dst: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward of the real model on ``x`` ``[B, C, H, W]``, stopped after ``dst``, recording autograd from
    ``src`` on: returns ``dst``'s output ``[B, C_dst, Hd, Wd]`` (with its graph) and ``src``'s output ``z``
    ``[B, C_src, Hs, Ws]`` (the leaf the gradients are taken for). Images are independent (eval mode), so
    the gradient of a sum over the batch of one output per image gives every image's own gradient."""
    cap: dict[str, torch.Tensor] = {}

    def src_hook(_m, _inp, out):
        if "z" in cap:
            raise WeightvizError(f"layer {src!r} runs more than once in one forward (a reused module); choose a "
                                 "layer that runs once")
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise WeightvizError(f"layer {src!r} must output a tensor [B, C, H, W]; choose another src")
        torch.set_grad_enabled(True)   # layers before src ran without autograd
        cap["z"] = out.detach().requires_grad_(True)
        return cap["z"].clone()        # a non-leaf: the model may modify it in place

    def dst_hook(_m, _inp, out):
        if src is not None and "z" not in cap:
            raise WeightvizError(f"layer {dst!r} runs before {src!r} in the forward: choose an earlier src")
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise WeightvizError(f"layer {dst!r} must output a tensor [B, C, H, W] (a spatial map), got "
                                 f"{type(out).__name__ if not isinstance(out, torch.Tensor) else list(out.shape)}")
        cap["y"] = out
        raise _Stop

    handles = []
    try:
        if src is not None:
            handles.append(get_module(model, src).register_forward_hook(src_hook))
        handles.append(get_module(model, dst).register_forward_hook(dst_hook))
        with torch.inference_mode(False), torch.no_grad():
            if src is None:
                torch.set_grad_enabled(True)
                cap["z"] = x.detach().clone().requires_grad_(True)
                x = cap["z"]
            try:
                model(x)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    if "y" not in cap:
        raise WeightvizError(f"layer {dst!r} did not run in the forward pass" +
                             (f" after {src!r}" if src is not None else ""))
    return cap["y"], cap["z"]


def _unit_grad(y: torch.Tensor, z: torch.Tensor, src: str | None, dst: str, unit: int, position: Any,
               retain: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The full-map gradient ``[B, C_src, Hs, Ws]`` of each image's selected ``dst[unit]`` w.r.t. ``z`` (one
    backward of their sum), the activations ``[B]`` and positions ``[B, 2]``."""
    if not 0 <= unit < y.shape[1]:
        raise WeightvizError(f"unit {unit} out of range: {dst!r} has {y.shape[1]} channels (0..{y.shape[1] - 1})")
    a = y[:, unit].detach()
    pos = _select(a, position, dst)
    idx = torch.arange(a.shape[0], device=a.device)
    sel = y[idx, unit, pos[:, 0], pos[:, 1]]
    with torch.inference_mode(False):
        if not sel.requires_grad:
            raise WeightvizError(f"layer {dst!r} does not depend on {src or 'the input'!r}: no route between them")
        (g,) = torch.autograd.grad(sel.sum(), z, allow_unused=True, retain_graph=retain)
    if g is None:
        raise WeightvizError(f"layer {dst!r} does not depend on {src or 'the input'!r}: no route between them")
    return g.detach(), sel.detach(), pos


def _outside_share(g: torch.Tensor, starts: list[tuple[int, int]], size: tuple[int, int]) -> torch.Tensor:
    """Per image, the share of ``g``'s ``[B, C, Hs, Ws]`` squared norm outside its window (0 where ``g`` is 0):
    the window's part is removed from the per-position energy map, not subtracted, so a gradient with
    nothing outside gives exactly 0."""
    e = g.float().pow(2).sum(1)                                     # [B, Hs, Ws]
    total = e.flatten(1).sum(1)
    rest = e.clone()
    hs, ws = e.shape[-2:]
    for b, (r0, c0) in enumerate(starts):
        rest[b, max(0, r0):max(0, min(hs, r0 + size[0])), max(0, c0):max(0, min(ws, c0 + size[1]))] = 0
    out = rest.flatten(1).sum(1)
    return torch.where(total > 0, out / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def _input_window(model: nn.Module, dst: str, image_hw: tuple[int, int]) -> _crops.Window:
    rf = receptive_field(model, dst, None)
    return _crops.window(model, None, dst, image_hw, rf.size)


def _crop_examples(d: DataWeights, indices: list[int]) -> torch.Tensor:
    """Display crops ``[n, C, h, w]`` in [0, 1] of the input box of each example's position."""
    if not indices:
        return torch.zeros(0, 3, 1, 1)
    win = _input_window(d.model, d.dst, d.window.image_size)
    out = []
    for i in indices:
        img = d.images.raw(int(i)).float()
        out.append(_crops.crop(img, win.start(tuple(d.positions[i].tolist())), win.size, fill=1.0))
    return torch.stack(out)




def _check_int(v: Any, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise WeightvizError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------------------- data_weights
def data_weights(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    unit: int | str | list[int],
    images: Any,
    *,
    position: str | tuple[int, int] = "max",
    attribution: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
    warn_outside: float = OUTSIDE_WARN,
    _use_cone: bool = True,
) -> DataWeights:
    """Per-example connections: the gradient of ``dst[unit]`` w.r.t. ``src``'s output, per image.

    ``unit``: one int, or several units (a list of ints or a unit spec such as ``"0:32"`` or ``"3,7,9"``,
    :func:`weightviz.models.parse_units`): they share ONE forward pass over the images (per batch: one
    forward stopped after ``dst``, then one backward per unit), and every result tensor gets a leading unit
    axis (``.weights`` ``[U, N, C_src, K, K]``; :meth:`DataWeights.for_unit`).

    ``images``: an image set (:func:`weightviz.images`), a folder, or a tensor ``[N, C, H, W]`` prepared
    for the model. ``position``: ``"max"`` (where the unit's pre-activation is largest on that image; the
    first maximum in row-major order), ``"centre"`` (``((Hd-1)//2, (Wd-1)//2)`` of ``dst``'s map, as
    :func:`weightviz.expanded_weights`) or a fixed ``(y, x)``. ``attribution=True``: gradient x ``src``
    activation (each input's contribution, to first order). ``src=None``: the model input.

    Returns :class:`DataWeights` with ``.weights`` ``[N, C_src, K, K]`` in the window and convention of
    :func:`weightviz.expanded_weights` (window positions past the map border are 0, see ``.inside``),
    ``.activations`` ``[N]``, ``.positions`` ``[N, 2]`` and ``.outside`` ``[N]`` (the share of each image's
    gradient squared norm that the window leaves out, from the full-map gradient; a
    :class:`weightviz.errors.WeightvizWarning` when it exceeds ``warn_outside``, default 2%, on any image).
    Through the real model, in eval mode; per batch of ``batch_size`` images (default:
    :func:`weightviz.data.default_batch`, 4 on a CPU, 32 on a GPU) one forward and a full-map backward
    for the (first) unit. With several units, when that unit's full-map gradient has nothing outside the
    window on any image of the batch (every route is local), the other units' gradients come from their
    cones: a crop of ``src``'s map around each window, all crops in one forward + backward of the
    ``src -> dst`` layers at the end (:mod:`weightviz.conditioned._cone`; their ``outside`` is 0); where the
    crops do not reproduce ``dst``'s values (global routes, size-dependent padding) every unit gets its
    full-map backward instead.

    Raises :class:`WeightvizError` for unknown layers, a unit out of range, ``dst`` not after ``src``,
    images with the wrong channel count for the model, or a position outside ``dst``'s map.
    """
    model = resolve(model)
    for name in (src, dst):
        if name is not None:
            get_module(model, name)
    if src is not None and src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    single = isinstance(unit, int) and not isinstance(unit, bool)
    if isinstance(unit, bool) or not (single or isinstance(unit, (str, list, tuple, range))):
        raise WeightvizError(f"unit must be an int, a list of ints or a unit spec like '0:32', got {unit!r}")
    position = _parse_position(position)
    device, dtype = device_dtype(model)
    if batch_size is None:
        batch_size = default_batch(device)
    batch_size = _check_int(batch_size, "batch_size", 1)
    imgs = _images(images, model)
    n = len(imgs)
    if n == 0:
        raise WeightvizError("the image set is empty; give at least one image")
    rf = receptive_field(model, dst, src)                     # the field of expanded_weights
    if len(rf.src_shape) != 3 or len(rf.dst_shape) != 3:
        raise WeightvizError(f"per-example connections need spatial maps: {src or 'the input'!r} -> {dst!r} gives "
                             f"{list(rf.src_shape)} -> {list(rf.dst_shape)}")
    units = parse_units(list(unit) if isinstance(unit, (tuple, range)) else unit, rf.dst_shape[0],
                        what=f"layer {dst!r}")
    if not units:
        raise WeightvizError(f"no units selected by {unit!r}; give at least one unit of {dst!r}")
    nu = len(units)
    first = imgs[0]
    hw = (int(first.shape[-2]), int(first.shape[-1]))
    win = _crops.window(model, src, dst, hw, rf.size)
    kh, kw = rf.size
    out = acts = poss = ins = outs = None
    cone = _cone.CropSet(win, (kh, kw)) if nu > 1 and _use_cone else None
    x1 = None
    what = f"{dst}[{units[0]}]" if single else f"{dst}[{nu} units]"
    with _eval_mode(model), _progress(progress, n, f"gradients {what}") as advance:
        s = 0
        for x in imgs.batches(batch_size):
            x = x.to(device=device, dtype=dtype)
            if x1 is None:   # the crop runs replace src's output: the layers before it need only a small input
                x1 = x[:1, :, :_CONE_INPUT, :_CONE_INPUT]
            y, z = _forward(model, src, dst, x)
            nb = x.shape[0]
            local = False
            for i, u in enumerate(units):
                if local:      # no route leaves the window: the unit's gradient from the crops of its cone
                    a = y[:, u].detach()
                    pos = _select(a, position, dst)
                    a = a[torch.arange(nb, device=a.device), pos[:, 0], pos[:, 1]]
                    hs, ws = z.shape[-2:]
                    for b in range(nb):
                        p = tuple(pos[b].tolist())
                        cone.add(z.detach(), b, i, u, s + b, p, float(a[b]))
                        ins[i, s + b] = _crops.inside(win.start(p), (kh, kw), (hs, ws))
                    acts[i, s:s + nb] = a
                    poss[i, s:s + nb] = pos.cpu()
                    continue
                g, a, pos = _unit_grad(y, z, src, dst, u, position, retain=i + 1 < nu)
                if out is None:
                    c = g.shape[1]
                    out = g.new_zeros(nu, n, c, kh, kw)
                    acts, poss = a.new_zeros(nu, n), torch.zeros(nu, n, 2, dtype=torch.long)
                    ins = torch.zeros(nu, n, kh, kw, dtype=torch.bool)
                    outs = torch.zeros(nu, n)
                hs, ws = g.shape[-2:]
                v = g * z.detach() if attribution else g
                starts = [win.start(tuple(pos[b].tolist())) for b in range(nb)]
                for b, start in enumerate(starts):
                    out[i, s + b] = _crops.crop(v[b], start, (kh, kw))
                    ins[i, s + b] = _crops.inside(start, (kh, kw), (hs, ws))
                outs[i, s:s + nb] = _outside_share(g, starts, (kh, kw)).cpu()
                acts[i, s:s + nb] = a
                poss[i, s:s + nb] = pos.cpu()
                # the first unit's full-map gradient has nothing outside the window on any image: every route is
                # local, so the other units' gradients (outside share 0 likewise) come from their cones
                local = cone is not None and i == 0 and bool((outs[0, s:s + nb] == 0).all())
            del y, z
            s += nb
            advance(nb)
        if cone is not None and cone.groups:
            scale = float(acts.abs().max()) if acts.numel() else 0.0
            tol = (1e-4 if dtype in (torch.float32, torch.float64) else 1e-2) * scale + 1e-7
            if not _cone.cone_grads(model, src, dst, x1, cone, attribution, out, tol):
                return data_weights(model, src, dst, units, imgs, position=position, attribution=attribution,
                                    batch_size=batch_size, progress=progress, warn_outside=warn_outside,
                                    _use_cone=False)
    _warn_outside(outs, units, src, dst, (kh, kw), warn_outside)
    if single:
        out, acts, poss, ins, outs = out[0], acts[0], poss[0], ins[0], outs[0]
    return DataWeights(out, acts, poss, ins, src, dst, units[0] if single else units, position, bool(attribution),
                       win, model, imgs, outs)


def _warn_outside(outs: torch.Tensor, units: list[int], src: str | None, dst: str, size: tuple[int, int],
                  limit: float) -> None:
    """One :class:`WeightvizWarning` line when some image's gradient has more than ``limit`` of its squared
    norm outside the window."""
    worst = float(outs.max())
    if worst <= limit:
        return
    n_bad = int((outs > limit).sum())
    who = f"unit {units[0]}" if len(units) == 1 else f"{len(units)} units"
    warnings.warn(f"{dst!r} ({who}) reads {src or 'the input'!r} outside its {size[0]}x{size[1]} window (a global "
                  f"route: pooling over the whole map, squeeze-excite, attention): up to {100 * worst:.1f}% of the "
                  f"gradient's squared norm is outside, more than {100 * limit:.0f}% on {n_bad} image(s); "
                  "the window leaves it out (see .outside)", WeightvizWarning, stacklevel=3)

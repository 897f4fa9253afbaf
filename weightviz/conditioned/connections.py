"""Data-conditioned connections: per-example gradients between two layers, and the cases they fall into.

Expanded weights (:mod:`weightviz.expand.expanded`) linearize the model and show what a connection does "on
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
reads at the image's size (:mod:`weightviz._crops`: ``start = offset + p * stride``, measured at that
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
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import default_batch
from ..errors import WeightvizError
from ..expand import Connection, expanded_weights, rank_connections, receptive_field
from ..models import device_dtype, get_module, parse_units, resolve
from ..utils.progress import progress as _progress
from . import _crops

__all__ = ["CaseExamples", "Cases", "DataWeights", "cases", "data_weights"]

_POSITIONS = ("max", "centre")


# ------------------------------------------------------------------------------------------- results
@dataclass
class DataWeights:
    """Per-example connections from ``src`` into one ``dst`` unit (:func:`data_weights`).

    ``weights``: ``[N, C_src, Kh, Kw]``, the gradient (``attribution=True``: gradient x ``src``
    activation) in the window of each image's position, same convention as
    :func:`weightviz.expanded_weights`. ``activations``: ``[N]``, ``dst[unit]`` (pre-activation) at that
    position. ``positions``: ``[N, 2]`` long, the ``dst`` position ``(y, x)`` used per image.
    ``inside``: ``[N, Kh, Kw]`` bool, window positions that exist in ``src``'s map (the others are 0).
    ``window``: the geometry (:class:`weightviz._crops.Window`).
    """

    weights: torch.Tensor
    activations: torch.Tensor
    positions: torch.Tensor
    inside: torch.Tensor
    src: str | None
    dst: str
    unit: int
    position: Any
    attribution: bool
    window: _crops.Window = field(repr=False)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    images: Any = field(default=None, repr=False, compare=False)

    def input_boxes(self) -> list[tuple[int, int, int, int]]:
        """Per image, the box ``(r0, c0, h, w)`` of input pixels the chosen ``dst`` position reads (may reach
        past the image border)."""
        win = _input_window(self.model, self.dst, self.window.image_size)
        return [(*win.start(tuple(p.tolist())), *win.size) for p in self.positions]

    def crops(self, indices: list[int]) -> torch.Tensor:
        """``[len(indices), C, h, w]`` display crops in [0, 1] (white past the image border) of what the chosen
        position of those images reads."""
        return _crop_examples(self, indices)


@dataclass
class CaseExamples:
    """The images that load most on one case: ``indices`` into the image set, their ``loadings`` on the
    case (weighted by firing, descending), ``activations`` and ``crops`` ``[n, C, h, w]`` in [0, 1] (what
    the chosen ``dst`` position reads in each)."""

    indices: list[int]
    loadings: torch.Tensor
    activations: torch.Tensor
    crops: torch.Tensor = field(repr=False)


@dataclass
class Cases:
    """The gradients of one connection factored over an image set (:func:`cases`).

    ``patterns``: ``[n_cases, C_src, Kh, Kw]``, each case's signed gradient pattern, scaled to the
    gradient of the examples that carry it (their mean loading is 1). ``loadings``: ``[N, n_cases]``,
    non-negative: ``gradient[n] ≈ loadings[n] @ patterns`` for every image on which the unit fires
    (0 for the others). ``explained``: fraction of the firing-weighted sum of squares of the gradients
    that the cases reconstruct. ``share``: ``[n_cases]``, each case's fraction of the summed weighted
    loadings. ``top_inputs``: per case, its input channels ranked by slice norm
    (:func:`weightviz.rank_connections`). ``examples``: per case, :class:`CaseExamples`.
    ``expanded``: ``[C_src, Kh, Kw]``, the expanded weight of the same connection (for comparison).
    ``data``: the :class:`DataWeights` factored.
    """

    patterns: torch.Tensor
    loadings: torch.Tensor
    explained: float
    share: torch.Tensor
    top_inputs: list[list[Connection]]
    examples: list[CaseExamples]
    expanded: torch.Tensor
    data: DataWeights = field(repr=False)

    @property
    def n_cases(self) -> int:
        return int(self.patterns.shape[0])

    def norm_ratio(self) -> float:
        """Firing-weighted mean of the per-example gradient norms over the expanded weight's norm (how much
        the expanded weight cancels; ``inf`` when it is exactly 0)."""
        g = self.data.weights.flatten(1).norm(dim=1)
        w = self.data.activations.clamp(min=0)
        mean = float((w * g).sum() / w.sum())
        e = float(self.expanded.norm())
        return mean / e if e > 0 else math.inf


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


def _batch_pass(model: nn.Module, src: str | None, dst: str, unit: int, x: torch.Tensor, position: Any):
    """One forward of the real model on ``x`` ``[B, C, H, W]`` and one backward of the sum over the batch
    of each image's selected ``dst[unit]``: returns the gradients and values of ``src``'s output
    ``[B, C_src, Hs, Ws]`` (each image's own gradient: images are independent), the activations ``[B]``
    and positions ``[B, 2]``."""
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
    y, z = cap["y"], cap["z"]
    if not 0 <= unit < y.shape[1]:
        raise WeightvizError(f"unit {unit} out of range: {dst!r} has {y.shape[1]} channels (0..{y.shape[1] - 1})")
    a = y[:, unit].detach()
    pos = _select(a, position, dst)
    idx = torch.arange(a.shape[0], device=a.device)
    sel = y[idx, unit, pos[:, 0], pos[:, 1]]
    with torch.inference_mode(False):
        if not sel.requires_grad:
            raise WeightvizError(f"layer {dst!r} does not depend on {src or 'the input'!r}: no route between them")
        (g,) = torch.autograd.grad(sel.sum(), z, allow_unused=True)
    if g is None:
        raise WeightvizError(f"layer {dst!r} does not depend on {src or 'the input'!r}: no route between them")
    return g.detach(), z.detach(), sel.detach(), pos


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
    unit: int,
    images: Any,
    *,
    position: str | tuple[int, int] = "max",
    attribution: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> DataWeights:
    """Per-example connections: the gradient of ``dst[unit]`` w.r.t. ``src``'s output, per image.

    ``images``: an image set (:func:`weightviz.images`), a folder, or a tensor ``[N, C, H, W]`` prepared
    for the model. ``position``: ``"max"`` (where the unit's pre-activation is largest on that image; the
    first maximum in row-major order), ``"centre"`` (``((Hd-1)//2, (Wd-1)//2)`` of ``dst``'s map, as
    :func:`weightviz.expanded_weights`) or a fixed ``(y, x)``. ``attribution=True``: gradient x ``src``
    activation (each input's contribution, to first order). ``src=None``: the model input.

    Returns :class:`DataWeights` with ``.weights`` ``[N, C_src, K, K]`` in the window and convention of
    :func:`weightviz.expanded_weights` (window positions past the map border are 0, see ``.inside``),
    ``.activations`` ``[N]`` and ``.positions`` ``[N, 2]``. Through the real model, in eval mode; one
    forward and one backward per batch of ``batch_size`` images (default: :func:`weightviz.data.default_batch`, 4 on a CPU, 32 on a GPU).

    Raises :class:`WeightvizError` for unknown layers, a unit out of range, ``dst`` not after ``src``,
    images with the wrong channel count for the model, or a position outside ``dst``'s map.
    """
    model = resolve(model)
    for name in (src, dst):
        if name is not None:
            get_module(model, name)
    if src is not None and src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise WeightvizError(f"unit must be one int, got {unit!r}")
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
    (unit,) = parse_units(unit, rf.dst_shape[0], what=f"layer {dst!r}")
    first = imgs[0]
    hw = (int(first.shape[-2]), int(first.shape[-1]))
    win = _crops.window(model, src, dst, hw, rf.size)
    kh, kw = rf.size
    out = acts = poss = ins = None
    with _eval_mode(model), _progress(progress, n, f"gradients {dst}[{unit}]") as advance:
        s = 0
        for x in imgs.batches(batch_size):
            x = x.to(device=device, dtype=dtype)
            g, z, a, pos = _batch_pass(model, src, dst, unit, x, position)
            if out is None:
                c = g.shape[1]
                out = g.new_zeros(n, c, kh, kw)
                acts, poss = a.new_zeros(n), torch.zeros(n, 2, dtype=torch.long)
                ins = torch.zeros(n, kh, kw, dtype=torch.bool)
            hs, ws = g.shape[-2:]
            v = g * z if attribution else g
            for b in range(g.shape[0]):
                start = win.start(tuple(pos[b].tolist()))
                out[s + b] = _crops.crop(v[b], start, (kh, kw))
                ins[s + b] = _crops.inside(start, (kh, kw), (hs, ws))
            acts[s:s + g.shape[0]] = a
            poss[s:s + g.shape[0]] = pos.cpu()
            s += g.shape[0]
            advance(g.shape[0])
    return DataWeights(out, acts, poss, ins, src, dst, unit, position, bool(attribution), win, model, imgs)


# ------------------------------------------------------------------------------------------------ cases
def cases(
    model: nn.Module | str | None,
    src: str | None,
    dst: str,
    unit: int,
    images: Any,
    n_cases: int = 2,
    *,
    position: str | tuple[int, int] = "max",
    k: int = 8,
    n_examples: int = 6,
    seed: int = 0,
    iters: int = 400,
    batch_size: int | None = None,
    progress: bool = False,
    data: DataWeights | None = None,
) -> Cases:
    """The gradients of one connection over an image set, factored into ``n_cases`` cases.

    Per image, the gradient ``g_n`` ``[C_src, K, K]`` of :func:`data_weights` (at ``position``) is
    weighted by how strongly the unit fires, ``w_n = relu(activation_n) / max``; images where it does
    not fire are left out. One-sided NMF as for a neuron's NMF image (methods.md): each weighted gradient
    is split into its positive and negative parts along the feature axis, ``X[n] = w_n * concat(relu(g_n),
    relu(-g_n))`` ``[N_fire, 2*C_src*K*K]``, and ``X ≈ A @ H`` (:func:`weightviz.nmf`, ``A >= 0``): the
    examples side stays non-negative (an example *loads* on a case), the pattern side absorbs the sign:
    ``pattern_c = H[c, :F] - H[c, F:]``. The loadings are ``A / w`` (then ``g_n ≈ loadings[n] @ patterns``
    for each firing image, the fit weighted by ``w_n``) and each case is scaled so the mean loading of its
    ``n_examples`` strongest examples is 1.

    ``k``: input channels kept per case in ``.top_inputs``; ``n_examples``: examples (with crops) per case.
    ``data``: a :class:`DataWeights` already computed for this connection (skips the data pass).

    Raises :class:`WeightvizError` (one line) when the unit never fires on the images, or ``n_cases`` is
    more than the data allows (the number of images on which the unit fires, or of distinct cases found).
    """
    from ..stats import nmf

    n_cases = _check_int(n_cases, "n_cases", 1)
    k = _check_int(k, "k", 1)
    n_examples = _check_int(n_examples, "n_examples", 1)
    if data is None:
        model = resolve(model)
        data = data_weights(model, src, dst, unit, images, position=position, batch_size=batch_size,
                            progress=progress)
    src, dst, unit = data.src, data.dst, data.unit
    G = data.weights.float()
    n, c, kh, kw = G.shape
    w = data.activations.float().clamp(min=0)
    fire = (w > 0).nonzero().flatten()
    where = "at its most active position" if data.position == "max" else f"at position {data.position}"
    if fire.numel() == 0:
        raise WeightvizError(f"unit {unit} of {dst!r} never fires on these {n} images (pre-activation <= 0 {where} "
                             f"in every one, max {float(data.activations.max()):.3g}); use other images or another unit")
    if n_cases > fire.numel():
        raise WeightvizError(f"n_cases={n_cases} is more than the data allows: unit {unit} of {dst!r} fires on only "
                             f"{fire.numel()} of the {n} images; use n_cases <= {fire.numel()} or more images")
    wf = w[fire] / w[fire].max()                                    # [M]
    g = G[fire].flatten(1)                                          # [M, F]
    if not bool(g.abs().sum() > 0):
        raise WeightvizError(f"the gradients of unit {unit} of {dst!r} w.r.t. {src or 'the input'!r} are 0 on every "
                             "image where it fires; nothing to factor")
    X = wf[:, None] * torch.cat([g.clamp(min=0), (-g).clamp(min=0)], dim=1)   # [M, 2F]
    A, H = nmf(X, n_cases, seed=seed, iters=iters)                  # [M, r], [r, 2F]
    f = g.shape[1]
    P = H[:, :f] - H[:, f:]                                         # [r, F] signed patterns
    L = A / wf[:, None]                                             # unweighted loadings
    empty = [j for j in range(n_cases) if not bool(A[:, j].max() > 0) or not bool(P[j].abs().max() > 0)]
    if empty:
        found = n_cases - len(empty)
        raise WeightvizError(f"n_cases={n_cases} is more than the data allows: the gradients of unit {unit} of "
                             f"{dst!r} hold only {found} distinct case(s) on these images; use n_cases <= {max(1, found)}")
    order = [A[:, j].argsort(descending=True, stable=True) for j in range(n_cases)]
    for j in range(n_cases):
        top = order[j][:n_examples]
        top = top[A[top, j] > 0]
        scale = float(L[top, j].mean())
        P[j] *= scale
        L[:, j] /= scale
    resid = (g - L @ P)
    num = float((wf[:, None] ** 2 * resid ** 2).sum())
    den = float((wf[:, None] ** 2 * g ** 2).sum())
    explained = 1.0 - num / den
    loadings = G.new_zeros(n, n_cases)
    loadings[fire] = L
    weighted = A.sum(0)
    share = weighted / weighted.sum()
    patterns = P.reshape(n_cases, c, kh, kw)
    top_inputs = [rank_connections(patterns[j], min(k, c)) for j in range(n_cases)]
    examples = []
    for j in range(n_cases):
        top = order[j][:n_examples]
        top = top[A[top, j] > 0]
        idx = [int(fire[t]) for t in top]
        crops = _crop_examples(data, idx) if data.images is not None and data.model is not None else None
        examples.append(CaseExamples(idx, L[top, j].clone(), data.activations[idx].clone(), crops))
    m = data.model if data.model is not None else resolve(model)
    expanded = expanded_weights(m, src, dst, units=[unit])[0]
    return Cases(patterns, loadings, explained, share, top_inputs, examples, expanded, data)

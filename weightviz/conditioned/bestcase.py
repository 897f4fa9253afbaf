"""Best-case excitation between two layers: the input that makes a connection as strong as it can be.

Expanded weights (:func:`weightviz.expanded_weights`) are the connection from ``src`` to ``dst`` with
every nonlinearity linearized: what it does "on average". Through the real model the connection is the
gradient ``d dst[unit] / d src`` and depends on the input: the ReLUs in between gate routes on and off,
so routes that cancel in the expanded weights (Voss et al. 2021, boundary detectors) can act alone. The
*best case* (the article's "maximum achievable gradient") is found by optimizing the input:

    maximize  G(x)[src_unit, c, c]         (``src_unit`` given: the gradient between the two neurons at
                                            the centre of the connection window, signed: excitation)
    maximize  || G(x) ||                   (``src_unit=None``: the norm of the whole connection)

where ``G(x) = d dst(x)[unit, centre] / d src(x)`` restricted to the ``[C_src, K, K]`` window of
``expanded_weights`` (the receptive field of ``dst``'s centre over ``src``; ``c = (K - 1) // 2``) and
``dst`` is the output of the ``dst`` module (pre-activation for a conv), at the centre of its map.

It is a feature visualization whose objective is a gradient (a double backward, ``create_graph=True``),
rendered by :func:`weightviz.render`: the same Fourier parameterization, transforms, seeding and disk
cache. Through piecewise-linear activations a gradient is piecewise constant in the input (its own
gradient is zero almost everywhere), so the optimization runs through softplus-smoothed ReLUs whose
sharpness grows until they are nearly exact (``smooth_relu``).

The render is followed by a *pixel stage* (``pixel_steps``): Adam directly on the pixels, clamped to
[0, 1], through the same annealed smoothing, once from the rendered image and once from a grey image per
learning rate of ``PIXEL_LRS`` (restarts). The Fourier parameterization cannot place sharp, high-contrast
pixels at exactly the positions the window needs, the pixels can. Every iterate of every run (the render
included) is measured on the real model and the best one is the best case, so it is at least as strong as
plain Adam on raw pixels from grey (issue 20 item 7) and as the render. Everything reported is measured on
the real model at the returned image.

>>> import weightviz as wv
>>> b = wv.best_case("lite0", "blocks.2.0", "blocks.3.0", 24, steps=128)   # doctest: +SKIP
>>> b.gradient.shape, round(b.ratio, 2)                                  # doctest: +SKIP
(torch.Size([40, 7, 7]), 3.1)
>>> wv.figures.best_case(b).save("best_case.png")                              # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from ..expand import ReceptiveField, expanded_weights, receptive_field
from ..models import Capture, device_dtype, frozen, get_module, input_spec, resolve
from ..optvis import SmoothReLU
from ..optvis.objectives import Objective
from ..optvis.render import render
from ..optvis.transforms import TransformConfig
from ..utils.limits import check_size, check_steps

__all__ = ["BestCase", "best_case", "connection_gradient"]

#: softplus sharpness at the first and last optimization step (see the module docstring)
SMOOTH_RELU = (1.0, 20.0)
#: defaults chosen by measurement on lite0 (benchmarks/bestcase.py, BENCHMARKS.md): the FV learning rate,
#: but no random transforms: the gradient is a local, sharp quantity, and jitter moves the pattern off the
#: one position it must excite (with Lucid's transforms the best case reached half the value, below the data)
LR = 0.05
STEPS = 128
#: the pixel stage after the render (:func:`_pixel_search`): Adam directly on the pixels, clamped to [0, 1],
#: through smoothed ReLUs annealed ``smooth_relu`` (1 -> 20) over ``PIXEL_STEPS`` steps, once from the rendered
#: image (learning rate ``PIXEL_LRS[0]``) and once from a grey image per learning rate of ``PIXEL_LRS``
#: (restarts); the best iterate of all (the render included), measured on the real model, is the best case.
#: The grey restarts are plain Adam on raw pixels (issue 20 item 7), so the best case is at least as strong
#: as that baseline at these learning rates by construction; the render usually adds to it (BENCHMARKS.md)
PIXEL_STEPS = 50
PIXEL_LRS = (0.01, 0.05)
#: then a sharpening run from the best of those: ``SHARPEN_STEPS`` steps at learning rate ``SHARPEN_LR``,
#: smoothing annealed from ``smooth_relu[1]`` to 4x that (closer to the real model); measured on lite0, it adds
#: 0.2-2 % (single runs differ by a few % with float rounding: Adam's step is scale-free, so a tiny gradient
#: moves a pixel by a full step; every extra candidate makes the best case less exposed to that luck)
SHARPEN_STEPS = 30
SHARPEN_LR = 0.005


@dataclass
class BestCase:
    """The best-case excitation of a connection (see the module docstring).

    ``image``: ``[C, H, W]`` in [0, 1], the optimized input. ``gradient``: the achieved connection on the
    real model at ``image``: ``[K, K]`` for ``src_unit``, else ``[C_src, K, K]`` (the window and index
    convention of :func:`weightviz.expanded_weights`). ``expanded``: the expanded weight's same slice.
    ``ratio``: ``||gradient|| / ||expanded||`` (``inf`` when the expanded slice is zero). ``value``: the
    maximized quantity on the real model (the centre entry ``gradient[c, c]`` for ``src_unit``, else
    ``||gradient||``). ``window``: the window (receptive field of ``dst``'s centre over ``src`` at ``size``).
    """

    src: str
    dst: str
    unit: int
    src_unit: int | None
    image: torch.Tensor
    gradient: torch.Tensor
    expanded: torch.Tensor
    ratio: float
    value: float
    size: int
    steps: int
    seed: int
    window: ReceptiveField = field(repr=False)
    model_name: str = field(default="", repr=False)
    #: which candidate gave ``image``: ``"render"`` (the FV render itself), ``"render+pixels"`` (its pixel
    #: refinement) or ``"grey+pixels lr=..."`` (a pixel-space restart from a grey image); ``"+sharpen"`` when
    #: the final sharpening run improved it
    source: str = "render"


def _window(g: torch.Tensor, rf: ReceptiveField) -> torch.Tensor:
    """``[B, C, H, W]`` gradient -> ``[B, C, K, K]`` on the connection window."""
    (r0, c0), (kh, kw) = rf.start, rf.size
    return g[:, :, r0:r0 + kh, c0:c0 + kw]


def _grad(dst_out: torch.Tensor, z: torch.Tensor, unit: int, target: tuple[int, int], create_graph: bool
          ) -> torch.Tensor:
    """``d dst_out[:, unit, y, x] / d z`` per batch item: ``[b, C_src, H, W]``. ``z`` may be a batch slice
    of the captured tensor (as :func:`weightviz.render` hands one objective its item): the gradient is then
    taken w.r.t. the whole captured tensor and summed over its batch (items are independent)."""
    base = z._base if z._base is not None and z._base.dim() == z.dim() else z
    y = dst_out[:, unit, target[0], target[1]]
    (g,) = torch.autograd.grad(y.sum(), base, create_graph=create_graph)
    return g.sum(0, keepdim=True) if base is not z else g


def _objective(src: str, dst: str, unit: int, src_unit: int | None, rf: ReceptiveField) -> Objective:
    target = rf.target
    kc = ((rf.size[0] - 1) // 2, (rf.size[1] - 1) // 2)

    def fn(acts):
        w = _window(_grad(acts[dst], acts[src], unit, target, create_graph=True), rf)
        if src_unit is None:
            return w.flatten(1).norm(dim=1)
        return w[:, src_unit, kc[0], kc[1]]

    what = "norm" if src_unit is None else f"src_unit={src_unit}"
    key = (f"best_case({src!r}, {dst!r}, {unit}, {what}, target={tuple(target)}, window={tuple(rf.start)}"
           f"+{tuple(rf.size)})")
    return Objective(fn, (src, dst), key)


def _values(acts, src: str, dst: str, unit: int, src_unit: int | None, rf: ReceptiveField, create_graph: bool
            ) -> torch.Tensor:
    """The maximized quantity per batch item ``[B]`` from captured activations (module docstring)."""
    w = _window(_grad(acts[dst], acts[src], unit, rf.target, create_graph=create_graph), rf)
    if src_unit is None:
        return w.flatten(1).norm(dim=1)
    return w[:, src_unit, (rf.size[0] - 1) // 2, (rf.size[1] - 1) // 2]


def _pixel_search(model: nn.Module, src: str, dst: str, unit: int, src_unit: int | None, rf: ReceptiveField,
                  start: torch.Tensor, lr: float, steps: int, smooth: tuple[float, float]
                  ) -> tuple[torch.Tensor, float, int]:
    """Adam (learning rate ``lr``) directly on the pixels of ``start`` ``[C, H, W]`` in [0, 1], clamped to
    [0, 1] after every step, through softplus-smoothed ReLUs whose sharpness grows geometrically
    ``smooth[0] -> smooth[1]`` over ``steps``; every iterate (the start included) is measured on the real
    model. Returns the best iterate, its real value and the step it was reached at (0: the start).
    One image at a time (no batch): the arithmetic of each step is that of the obvious single-image loop."""
    spec = input_spec(model)
    device, dtype = device_dtype(model)
    x = start[None].to(device=device, dtype=torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=float(lr))
    b0, b1 = smooth
    with torch.inference_mode(False), torch.enable_grad(), frozen(model), Capture(model, [src, dst]) as cap:
        def real() -> float:
            xin = spec.normalize(x.detach().clone()).to(dtype).requires_grad_(True)
            return float(_values(cap.run(xin), src, dst, unit, src_unit, rf, create_graph=False)[0])

        best_img, best_val, best_step = start.detach().float().cpu().clone(), real(), 0
        for t in range(steps):
            with SmoothReLU(b0 * (b1 / b0) ** (t / max(steps - 1, 1))):
                loss = -_values(cap.run(spec.normalize(x).to(dtype)), src, dst, unit, src_unit, rf, True).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0.0, 1.0)
            v = real()
            if v > best_val:
                best_img, best_val, best_step = x.detach()[0].float().cpu().clone(), v, t + 1
    return best_img, best_val, best_step


def connection_gradient(model: nn.Module | str | None, src: str, dst: str, unit: int, images: torch.Tensor,
                        *, input_size: int | None = None) -> torch.Tensor:
    """The real-model connection ``d dst[unit, centre] / d src`` on the window of
    :func:`weightviz.expanded_weights`, per image: ``[N, C_src, K, K]``. ``images``: ``[N, C, H, W]`` in
    [0, 1], square (normalized for the model here). One batched forward and backward."""
    from ..models import Capture, frozen

    model = resolve(model)
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise WeightvizError(f"images must be [N, C, H, W] with H == W, got {tuple(x.shape)}")
    rf = receptive_field(model, dst, src, input_size=input_size or int(x.shape[-1]))
    p = next(model.parameters(), None)
    xin = input_spec(model).normalize(x.to(dtype=p.dtype if p is not None else torch.float32,
                                           device=p.device if p is not None else "cpu"))
    with torch.inference_mode(False), torch.enable_grad(), frozen(model), Capture(model, [src, dst]) as cap:
        acts = cap.run(xin.requires_grad_(True))
        g = _grad(acts[dst], acts[src], unit, rf.target, create_graph=False)
    return _window(g, rf).detach().float().cpu()


def _int(v: Any, name: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise WeightvizError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def best_case(
    model: nn.Module | str | None,
    src: str,
    dst: str,
    unit: int,
    src_unit: int | None = None,
    *,
    size: int | None = None,
    steps: int = STEPS,
    seed: int = 0,
    lr: float = LR,
    transforms: TransformConfig | None = None,
    smooth_relu: tuple[float, float] = SMOOTH_RELU,
    cache: Any = None,
    progress: bool = True,
    pixel_steps: int = PIXEL_STEPS,
) -> BestCase:
    """Optimize an input for the strongest connection from ``src`` to unit ``unit`` of ``dst``: the
    gradient between neuron ``src[src_unit]`` and ``dst[unit]`` at the centre (signed), or with
    ``src_unit=None`` the norm of the whole ``[C_src, K, K]`` connection (module docstring).

    ``size``: image side (default: the smallest input that holds the fields of ``dst`` over the input and
    over ``src``); ``steps``, ``seed``, ``lr``, ``transforms`` (default none), ``cache``, ``progress``: as
    for :func:`weightviz.render` (same seed, same image; ``cache=True`` reuses renders from disk).
    ``smooth_relu``: softplus sharpness at the first and last step (render and pixel stage).
    ``pixel_steps``: steps of each pixel-stage run (module docstring; 0: the render alone).

    Returns :class:`BestCase` (``.image``, ``.gradient`` measured on the real model, ``.ratio`` to the
    expanded weight; drawn by :func:`weightviz.figures.best_case`).
    """
    from ..models import model_name

    model = resolve(model)
    for name in (src, dst):
        if not isinstance(name, str):
            raise WeightvizError(f"src and dst must be layer names, got {name!r}")
        get_module(model, name)
    if src == dst:
        raise WeightvizError(f"src and dst are the same layer {src!r}; choose a later dst")
    unit = _int(unit, "unit")
    src_unit = None if src_unit is None else _int(src_unit, "src_unit")
    if not (pixel_steps == 0 and type(pixel_steps) is int):
        pixel_steps = check_steps(pixel_steps, "pixel_steps")
    if size is None:
        size = max(32, receptive_field(model, dst, src).input_size)
        try:   # the whole input field of dst's centre, when it is not too large
            size = max(size, receptive_field(model, dst, None).input_size)
        except WeightvizError:
            pass
    size = _int(size, "size", 16)
    check_size(size, "size")  # the bound of render: a huge size is one line, not an allocator error
    rf = receptive_field(model, dst, src, input_size=size)
    if rf.target is None:
        raise WeightvizError(f"{dst!r} has no spatial axes; best_case needs a conv/block output [C, H, W]")
    if rf.truncated:
        need = receptive_field(model, dst, src).input_size
        raise WeightvizError(f"at size={size} the field of {dst!r} over {src!r} is cut by the image border; "
                             f"use size >= {need}")
    c_dst, c_src = rf.dst_shape[0], rf.src_shape[0]
    if unit >= c_dst:
        raise WeightvizError(f"unit {unit} out of range: layer {dst!r} has {c_dst} channels (0..{c_dst - 1})")
    if src_unit is not None and src_unit >= c_src:
        raise WeightvizError(f"src_unit {src_unit} out of range: layer {src!r} has {c_src} channels "
                             f"(0..{c_src - 1})")
    result = render(model, _objective(src, dst, unit, src_unit, rf), size=size, steps=steps, seed=seed,
                    batch=1, progress=progress, cache=cache, lr=lr, redirect_steps=0, transforms=transforms,
                    smooth_relu=smooth_relu)
    image, source = result.images[0], "render"
    if pixel_steps > 0:   # the pixel stage: refine the render, restart from grey (see PIXEL_STEPS)
        starts = [("render+pixels", image, PIXEL_LRS[0])]
        starts += [(f"grey+pixels lr={lr}", torch.full_like(image, 0.5), lr) for lr in PIXEL_LRS]
        best = -math.inf
        for name, start, lr in starts:
            img, val, at = _pixel_search(model, src, dst, unit, src_unit, rf, start, lr, pixel_steps,
                                         smooth_relu)
            if val > best:
                best, image, source = val, img, (name if at > 0 or name != "render+pixels" else "render")
        img, val, at = _pixel_search(model, src, dst, unit, src_unit, rf, image, SHARPEN_LR, SHARPEN_STEPS,
                                     (smooth_relu[1], 4 * smooth_relu[1]))
        if at > 0 and val > best:
            image, source = img, source + "+sharpen"
    G = connection_gradient(model, src, dst, unit, image[None], input_size=size)[0]      # [C_src, K, K]
    E = expanded_weights(model, src, dst, units=[unit])[0].detach().float().cpu()       # [C_src, K, K]
    if E.shape != G.shape:
        raise WeightvizError(f"internal: window {tuple(G.shape)} at size {size} differs from the expanded "
                             f"weights' {tuple(E.shape)}")
    if src_unit is not None:
        G, E = G[src_unit], E[src_unit]
        kc = ((G.shape[0] - 1) // 2, (G.shape[1] - 1) // 2)
        value = float(G[kc])
    else:
        value = float(G.norm())
    en = float(E.norm())
    ratio = float(G.norm()) / en if en > 0 else math.inf
    return BestCase(src=src, dst=dst, unit=unit, src_unit=src_unit, image=image, gradient=G, expanded=E,
                    ratio=ratio, value=value, size=size, steps=result.steps, seed=seed, window=rf,
                    model_name=model_name(model), source=source)

"""``render``: feature visualization by gradient ascent on a parameterized image.

Per batch of objectives: a decorrelated Fourier image (:mod:`.param`), each step one random
transform shared by the batch (:mod:`.transforms`), the model's input normalization, a forward pass
that stops after the deepest layer the objectives read (:mod:`weightviz.models.hooks`), and Adam on minus the sum of
each item's own objective. During the first ``redirect_steps`` steps ReLU/ReLU6 gradients are redirected
(Lucid's trick) so units that are dead on the initial noise still start to fire: a ``TorchFunctionMode``
(:class:`._relu.RedirectReLU`) swaps every relu/relu6/hardtanh call, functional or module, for a custom
autograd function whose backward, for a batch item whose ordinary gradient is all zero, lets through the
gradient components that push the pre-activation towards the active range.

Every item starts from the same noise and sees the same transforms, so an item's image depends only on
(model, its objective, parameters, seed) and not on the rest of its batch: this is what makes caching
per item and splitting large lists into batches safe (up to float rounding of batched kernels).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightvizError
from ..models import (
    Capture,
    activations,
    device_dtype,
    fixed_input_size,
    frozen,
    input_spec,
    layers,
    model_hash,
    probe_shapes,
    refuse_conv1d,
    resolve,
)
from ..utils.limits import MAX_SIZE, MIN_SIZE, check_size
from ..utils.progress import progress as _progress
from ._relu import RedirectReLU, SmoothReLU
from .cache import RenderCache, resolve_cache
from .image import grid, save_png, to_uint8
from .objectives import Objective
from .param import FourierImage
from .transforms import TransformConfig, apply_transform, sample_transform

__all__ = ["DEFAULT_STEPS", "ENGINE_VERSION", "MAX_SIZE", "MIN_SIZE", "RenderResult", "activations", "check_size",
           "render"]

#: Default number of optimization steps, chosen by measurement (benchmarks/steps.py, BENCHMARKS.md): the
#: fewest steps reaching >= 90 % of the 512-step activation for lite0 channels at three depths.
DEFAULT_STEPS = 256
#: Bumped whenever a change alters rendered pixels (invalidates cache entries).
ENGINE_VERSION = 1
_DEFAULT_BATCH = 32


@dataclass
class RenderResult:
    """Rendered images and their objective values.

    ``images``: float ``[B, C, size, size]`` in [0, 1] on the CPU (``C`` = the model's input channels);
    ``values``: ``[B]`` each objective evaluated on its final image (no transforms);
    ``objectives``: the ``B`` objectives; ``cached``: which items came from the cache.
    """

    images: torch.Tensor
    values: torch.Tensor
    objectives: list[Objective]
    size: int
    steps: int
    seed: int
    cached: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"RenderResult(images={list(self.images.shape)}, steps={self.steps}, seed={self.seed}, "
                f"values={[round(v, 3) for v in self.values.tolist()][:8]}{'...' if len(self) > 8 else ''})")

    def uint8(self):
        """The images as uint8 ``[B, size, size, C]`` (numpy) via :func:`to_uint8` (what :meth:`save` writes)."""
        return to_uint8(self.images)

    def save(self, path: str | os.PathLike, ncols: int | None = None, pad: int = 2) -> Path:
        """Write the images as one PNG grid (a single image: the image itself, no border).

        The file holds exactly :meth:`uint8` (``load_png`` returns those pixels)."""
        arr = self.uint8()
        out = arr[0] if len(arr) == 1 else grid(arr, ncols=ncols, pad=pad)
        return save_png(out, path)


def _as_objectives(objective) -> tuple[list[Objective], bool]:
    if isinstance(objective, Objective):
        return [objective], True
    if isinstance(objective, (str, bytes)) or not isinstance(objective, Sequence):
        raise WeightvizError(
            f"objective must be an Objective (e.g. objectives.channel('blocks.4.0', 3)) or a list of them, "
            f"got {type(objective).__name__}"
        )
    objs = list(objective)
    if not objs:
        raise WeightvizError("objective list is empty; give at least one objective")
    for o in objs:
        if not isinstance(o, Objective):
            raise WeightvizError(f"every item of the objective list must be an Objective, got {type(o).__name__}")
    return objs, False


def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise WeightvizError(f"{name} must be a positive integer, got {v!r}")
    return v




def render(
    model: nn.Module | str | None,
    objective: Objective | Sequence[Objective],
    *,
    size: int = 128,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    batch: int | None = None,
    progress: bool = True,
    cache: RenderCache | bool | str | os.PathLike | None = None,
    lr: float = 0.05,
    redirect_steps: int = 16,
    transforms: TransformConfig | None = TransformConfig(),
    decorrelate: bool = True,
    callback: Callable[[int, torch.Tensor, list[int]], None] | None = None,
    smooth_relu: tuple[float, float] | None = None,
) -> RenderResult:
    """Feature-visualize one objective or a list of objectives (one image each, rendered as batches).

    ``model``: an ``nn.Module`` or a spec (``None`` = embedded lite0). ``size``: image side in pixels (a model with a fixed
    input size, e.g. ViT/Swin: :func:`weightviz.models.fixed_input_size`, sees it upsampled bilinearly to that size).
    ``steps``: Adam steps at learning rate ``lr``. ``seed``: same seed, same image. ``batch``: at most
    this many objectives per forward pass (default 32); objectives reading different layers go in
    different passes, so each forward stops at its own deepest layer. ``cache``: ``True`` (default directory), a path
    or a :class:`RenderCache` to reuse earlier renders; ``None`` renders afresh. ``redirect_steps``: steps
    with redirected ReLU gradients. ``transforms``: random transform ranges (``None``: no transforms).
    ``callback(step, images, indices)``: called after every step (``step`` from 1) with the current
    images ``[b, C, size, size]`` (detached) of the objectives at ``indices`` (not for cached items).
    ``smooth_relu=(beta0, beta1)``: optimize through softplus-smoothed ReLU/ReLU6/hardtanh whose sharpness
    grows geometrically from ``beta0`` to ``beta1`` over the steps (:class:`._relu.SmoothReLU`): needed
    by objectives that are gradients of the model (second order), which are flat through piecewise-linear
    activations; the final ``values`` are measured on the real model.

    Returns :class:`RenderResult` with ``images`` ``[B, C, size, size]`` in [0, 1] (``C`` = channels of
    the model's first conv) and ``values`` ``[B]``. The model is left as it was (mode, weights,
    ``requires_grad`` flags, no hooks). Bad layer / unit / vector length raise :class:`WeightvizError`
    before any optimization.

    >>> import weightviz as wv
    >>> from weightviz import objectives as obj
    >>> r = wv.render("lite0", [obj.channel("blocks.4.0", n) for n in range(4)], steps=64)  # doctest: +SKIP
    >>> r.images.shape                                                                  # doctest: +SKIP
    torch.Size([4, 3, 128, 128])
    """
    objs, _single = _as_objectives(objective)
    size = check_size(size)
    steps = _positive_int(steps, "steps")
    batch = _DEFAULT_BATCH if batch is None else _positive_int(batch, "batch")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WeightvizError(f"seed must be an integer, got {seed!r}")
    if isinstance(redirect_steps, bool) or not isinstance(redirect_steps, int) or redirect_steps < 0:
        raise WeightvizError(f"redirect_steps must be an integer >= 0, got {redirect_steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise WeightvizError(f"lr must be a positive number, got {lr!r}")
    smooth_relu = _betas(smooth_relu)
    model = resolve(model)
    spec = input_spec(model)
    store = resolve_cache(cache)
    # a model with a fixed input size (ViT, Swin) sees the image upsampled to it (as lucent does)
    fixed = fixed_input_size(model)
    model_size = fixed if fixed is not None and fixed != size else None

    # validate every objective (layer names, units, vector lengths, positions) before any optimization
    layer_names = list(dict.fromkeys(n for o in objs for n in o.layers))
    refuse_conv1d(model, *layer_names)
    shapes = probe_shapes(model, layer_names, spec.channels, model_size or size)
    if any(len(s) == 2 for s in shapes.values()):   # tokens [N, C] or a 1-D conv map [C, L]: the module tells
        refuse_conv1d(model, *layer_names, table=layers(model, model_size or size))
    for o in objs:
        o.check(shapes)

    params = {
        "engine": ENGINE_VERSION, "size": size, "steps": steps, "seed": seed, "lr": float(lr),
        "redirect_steps": min(redirect_steps, steps), "decorrelate": bool(decorrelate),
        "transforms": transforms.key() if transforms is not None else None,
        "channels": spec.channels, "mean": spec.mean, "std": spec.std,
    }
    if model_size is not None:
        params["model_input"] = model_size
    if smooth_relu is not None:  # only when used: cache keys of ordinary renders stay as they were
        params["smooth_relu"] = list(smooth_relu)
    keys = [RenderCache.key(model_hash(model), o.key, params) for o in objs] if store is not None else [None] * len(objs)

    images: list[torch.Tensor | None] = [None] * len(objs)
    values: list[float | None] = [None] * len(objs)
    cached = [False] * len(objs)
    if store is not None:
        for i, k in enumerate(keys):
            hit = store.get(k)
            if hit is not None and tuple(hit[0].shape) == (spec.channels, size, size):
                images[i], values[i], cached[i] = hit[0], hit[1], True
    todo = [i for i in range(len(objs)) if images[i] is None]
    # equal objectives (same key) in one call are rendered once
    first: dict[str, int] = {}
    unique = [i for i in todo if first.setdefault(objs[i].key, i) == i]
    # batches: objectives reading the same layers go together (a shallow objective never pays for the
    # forward to a deeper one), at most `batch` per forward pass
    groups: dict[tuple[str, ...], list[int]] = {}
    for i in unique:
        groups.setdefault(tuple(sorted(objs[i].layers)), []).append(i)
    chunks = [g[s:s + batch] for g in groups.values() for s in range(0, len(g), batch)]

    with _progress(progress and bool(chunks), steps * len(chunks), "rendering") as advance:
        for idx in chunks:
            imgs, vals = _render_batch(model, [objs[i] for i in idx], spec, size, steps, seed, float(lr),
                                       redirect_steps, transforms, decorrelate, advance,
                                       None if callback is None else (lambda k, im, idx=idx: callback(k, im, idx)),
                                       model_size, smooth_relu)
            for j, i in enumerate(idx):
                images[i], values[i] = imgs[j], float(vals[j])
                if store is not None:
                    store.put(keys[i], imgs[j], float(vals[j]), objs[i].key)
    for i in todo:
        j = first[objs[i].key]
        images[i], values[i] = images[j], values[j]

    return RenderResult(
        images=torch.stack(images), values=torch.tensor(values, dtype=torch.float32), objectives=objs,
        size=size, steps=steps, seed=seed, cached=cached,
    )


def _betas(smooth) -> tuple[float, float] | None:
    if smooth is None:
        return None
    try:
        b0, b1 = (float(v) for v in smooth)
    except (TypeError, ValueError):
        raise WeightvizError(f"smooth_relu must be None or (beta0, beta1), got {smooth!r}") from None
    if not (0 < b0 < float("inf") and 0 < b1 < float("inf")):
        raise WeightvizError(f"smooth_relu sharpnesses must be positive and finite, got {smooth!r}")
    return b0, b1


def _relu_mode(step: int, steps: int, redirect_steps: int, smooth):
    """The activation mode of one step: smoothed ReLUs (second-order objectives), the ReLU redirect
    (first ``redirect_steps``) or none."""
    if smooth is not None:
        b0, b1 = smooth
        return SmoothReLU(b0 * (b1 / b0) ** (step / max(steps - 1, 1)))
    return RedirectReLU() if step < redirect_steps else contextlib.nullcontext()


def _to_model(img: torch.Tensor, spec, dtype, model_size: int | None) -> torch.Tensor:
    """Rendered images ``[B, C, size, size]`` in [0, 1] -> model input (bilinear upsampling, corners aligned as
    lucent's ``fixed_image_size``, to a fixed model input size; then the model's normalization)."""
    if model_size is not None:
        img = torch.nn.functional.interpolate(img, size=(model_size, model_size), mode="bilinear", align_corners=True)
    return spec.normalize(img).to(dtype)


def _render_batch(model, objs, spec, size, steps, seed, lr, redirect_steps, transforms, decorrelate, advance,
                  callback=None, model_size=None, smooth=None):
    device, dtype = device_dtype(model)
    g = torch.Generator().manual_seed(seed)
    param = FourierImage(len(objs), spec.channels, size, decorrelate=decorrelate, generator=g, device=device)
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    layer_names = list(dict.fromkeys(n for o in objs for n in o.layers))

    def evaluate(acts) -> torch.Tensor:
        vals = [o({n: acts[n][i:i + 1] for n in o.layers}).reshape(-1) for i, o in enumerate(objs)]
        return torch.cat(vals)

    with frozen(model), Capture(model, layer_names) as cap:
        for step in range(steps):
            img = param.image()
            if transforms is not None:
                img = apply_transform(img, sample_transform(transforms, g), transforms.pad_value)
            x = _to_model(img, spec, dtype, model_size)
            with _relu_mode(step, steps, redirect_steps, smooth):
                acts = cap.run(x)
                loss = -evaluate(acts).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            advance(1)
            if callback is not None:
                with torch.no_grad():
                    callback(step + 1, param.image().detach())
        with torch.no_grad():
            final = param.image()
        # values on the clean final image; the input requires grad so that objectives which are gradients
        # of the model (weightviz.best_case) can be evaluated too
        x = _to_model(final, spec, dtype, model_size).requires_grad_(True)
        vals = evaluate(cap.run(x)).detach()
    return final.detach().float().cpu(), vals.float().cpu()

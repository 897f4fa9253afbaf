"""Banding of every conv layer of a model (:func:`scan_banding`, :class:`BandingScan`); its picture is
:func:`weightviz.figures.banding_scan`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError, suggest
from ..models import LayerTable, model_name, resolve, weights
from ..models import layers as layer_table
from .banding import ALPHA, MAJORITY, N_PERM, BandingResult, banding_test
from .factor import nmf_image

__all__ = ["BandingScan", "LayerBanding", "banding_layers", "scan_banding"]


# ------------------------------------------------------------------------------------ model scan
@dataclass
class LayerBanding:
    """One row of :class:`BandingScan`: a layer, the image its score used, and its :class:`BandingResult`."""

    layer: str
    depth: int
    weight_shape: tuple[int, ...]
    image: str  # "raw" (the kernel itself, channels as colours) or "nmf" (one-sided NMF image)
    result: BandingResult


@dataclass
class BandingScan:
    """Banding of every k>=3 conv layer of a model, in depth order. ``rows``: :class:`LayerBanding`.

    ``repr`` is a table; :func:`weightviz.figures.banding_scan` the figure across depth; :meth:`to_dicts` plain numbers.
    """

    model: str
    rows: list[LayerBanding] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str) -> LayerBanding:
        if isinstance(key, str):
            for r in self.rows:
                if r.layer == key:
                    return r
            raise WeightvizError(f"layer {key!r} is not in this scan.{suggest(key, [r.layer for r in self.rows])}")
        return self.rows[key]

    @property
    def layers(self) -> list[str]:
        return [r.layer for r in self.rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One plain dict per layer (for JSON / tables)."""
        out = []
        for r in self.rows:
            b = r.result
            out.append({
                "layer": r.layer, "depth": r.depth, "kernel": f"{b.kernel[0]}x{b.kernel[1]}", "n": b.n,
                "image": r.image, "median": b.median, "p_value": b.p_value,
                "fraction_horizontal": b.fraction_horizontal, "fraction_vertical": b.fraction_vertical,
                "banded": b.label,
            })
        return out

    def table(self) -> str:
        head = ("layer", "kernel", "N", "image", "median S", "null 95%", "p", "horiz.", "vert.", "banded")
        lines = [head]
        for r in self.rows:
            b = r.result
            lines.append((
                r.layer, f"{b.kernel[0]}x{b.kernel[1]}", str(b.n), r.image, f"{b.median:+.3f}",
                f"{b.null_median[0]:+.2f}..{b.null_median[1]:+.2f}", f"{b.p_value:.3f}",
                f"{b.fraction_horizontal:.0%}", f"{b.fraction_vertical:.0%}", b.label,
            ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        text = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
        if self.rows:
            b = self.rows[0].result
            text += (f"\nbanded = >= {b.majority:.0%} of neurons with permutation p < {b.alpha:g} in the median's "
                     f"direction (horiz./vert. columns) and median p < {b.alpha:g}; neuron p-values exact for 3x3 "
                     f"kernels (all shuffles), from {b.n_perm} shuffles otherwise")
        return text

    def __repr__(self) -> str:
        return f"BandingScan of {self.model}: {len(self.rows)} layers\n{self.table()}"


def banding_layers(model: nn.Module, min_kernel: int = 3) -> list[str]:
    """Names of the 2-D conv layers whose kernels are at least ``min_kernel`` in both directions, in
    definition order (those :func:`scan_banding` scores)."""
    out = []
    for r in layer_table(model).with_weights():
        if r.kernel is not None and len(r.kernel) == 2 and r.weight_shape is not None and len(r.weight_shape) == 4:
            if min(r.kernel) >= min_kernel:
                out.append(r.name)
    return out


def _layer_image(w: torch.Tensor, image: str, n_factors: int, seed: int) -> tuple[torch.Tensor, str]:
    """Kernels ``[C_out, kh, kw, F]`` of one layer's weights ``[C_out, C_in, kh, kw]`` and their kind."""
    c_in = w.shape[1]
    if image == "raw" or (image == "auto" and c_in <= 3):
        return w.permute(0, 2, 3, 1), "raw"
    _, A, _ = nmf_image(w, n_factors=n_factors, shared=False, seed=seed, return_factors=True)
    return A.reshape(w.shape[0], w.shape[2], w.shape[3], -1), "nmf"  # the factor maps, before colouring


def scan_banding(
    model: nn.Module | str | None = None,
    layers: Iterable[str] | None = None,
    *,
    image: str = "auto",
    n_factors: int = 3,
    n_perm: int = N_PERM,
    seed: int = 0,
    alpha: float = ALPHA,
    majority: float = MAJORITY,
    progress: Callable[[], Any] | None = None,
) -> BandingScan:
    """Run :func:`banding_test` on every conv layer with kernels >= 3x3 (or the given ``layers``).

    Per layer, the kernel image of each output neuron ``[C_out, kh, kw, F]`` comes from the weights
    ``[C_out, C_in/groups, kh, kw]``:

    - ``image="auto"`` (default): layers with at most 3 input channels per group (depthwise convs, the
      RGB stem) use the kernel itself, input channels as colours (signed values are fine for the ANOVA);
      the others use the one-sided NMF image :func:`weightviz.nmf_image` (``n_factors`` spatial factor
      maps ``[kh, kw, n_factors]`` per neuron, fitted per neuron with ``seed``, taken before they are mixed
      into colours), as the Weight Banding article does;
    - ``image="raw"``: always the kernel itself, energies summed over all input channels (no NMF; every
      input slice counts by its energy);
    - ``image="nmf"``: always the NMF image.

    ``progress`` is called once per finished layer. The model is only read (no hooks, no mode change).

    >>> scan = scan_banding("efficientnet_lite0")          # doctest: +SKIP
    >>> scan["blocks.5.3.conv_dw"].result.label            # doctest: +SKIP
    >>> wv.figures.banding_scan(scan).save("banding.png")                    # doctest: +SKIP
    """
    if image not in ("auto", "raw", "nmf"):
        raise WeightvizError(f"image must be 'auto', 'raw' or 'nmf', got {image!r}")
    model = resolve(model)
    candidates = banding_layers(model)
    if layers is None:
        names = candidates
    else:
        if isinstance(layers, str):
            layers = [layers]
        table: LayerTable = layer_table(model)
        names = []
        for name in layers:
            info = table[name]  # unknown names raise with close matches
            if name not in candidates:
                raise WeightvizError(
                    f"layer {name!r} ({info.type}, kernel {info.kernel}) is not a 2-D conv with kernels of at least "
                    f"3x3; banding layers of this model: {', '.join(candidates[:6])}{'...' if len(candidates) > 6 else ''}"
                )
            names.append(name)
    order = {n: i for i, n in enumerate(candidates)}
    scan = BandingScan(model=model_name(model))
    for name in names:
        w = weights(model, name)
        kernels, kind = _layer_image(w, image, n_factors, seed)
        res = banding_test(kernels, n_perm=n_perm, seed=seed, alpha=alpha, majority=majority)
        scan.rows.append(LayerBanding(layer=name, depth=order[name], weight_shape=tuple(w.shape), image=kind,
                                      result=res))
        if progress is not None:
            progress()
    return scan



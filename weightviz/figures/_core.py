"""Figure plumbing shared by every weightviz figure: the article's diverging colormap, a
:class:`Figure` wrapper (``.save(path)`` to PNG/SVG atomically, inline display in notebooks), image grids
and heatmap grids.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot global state), so they work
headless, in scripts, servers and notebooks alike.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure as _MplFigure

from ..errors import WeightvizError
from ..utils.io import atomic_path

__all__ = [
    "DIVERGING",
    "DIVERGING_STOPS",
    "Figure",
    "as_images",
    "image_array",
    "heatmap",
    "heatmap_grid",
    "image_grid",
    "new_figure",
]

#: The article's heatmap colours for -1, -0.5, 0, +0.5, +1 (ColorBrewer RdBu reversed, 5 stops).
DIVERGING_STOPS = ("#0571b0", "#92c5de", "#f7f7f7", "#f4a582", "#ca0020")
#: Diverging colormap for signed weights: blue = inhibitory (negative), red = excitatory (positive).
DIVERGING = LinearSegmentedColormap.from_list("weightviz_diverging", DIVERGING_STOPS, N=256)

SAVE_SUFFIXES = (".png", ".svg")


class Figure:
    """A finished figure: ``.save(path)`` writes PNG or SVG (by suffix), atomically; in a notebook it
    displays inline. ``.data`` holds the structure it shows (which units, which order, which scale),
    for tests and for the explorer.
    """

    def __init__(self, fig: _MplFigure, data: dict[str, Any] | None = None, dpi: int = 100):
        self.fig = fig
        self.data: dict[str, Any] = dict(data or {})
        self.dpi = dpi

    def save(self, path: str | os.PathLike, dpi: int | None = None) -> Path:
        """Write the figure to ``path`` (``.png`` or ``.svg``); nothing is left half-written."""
        path = Path(path)
        fmt = path.suffix.lower()
        if fmt not in SAVE_SUFFIXES:
            raise WeightvizError(f"cannot save figure as {str(path)!r}: use a .png or .svg file name")
        with atomic_path(path) as tmp:
            self.fig.savefig(tmp, format=fmt[1:], dpi=dpi or self.dpi, facecolor="white")
        return path

    def to_png(self, dpi: int | None = None) -> bytes:
        """The PNG bytes of the figure."""
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=dpi or self.dpi, facecolor="white")
        return buf.getvalue()

    def to_svg(self) -> str:
        buf = io.StringIO()
        self.fig.savefig(buf, format="svg", facecolor="white")
        return buf.getvalue()

    def add_footer(self, text: str, strip: float = 0.22) -> None:
        """Add a ``strip`` inch band under the figure holding ``text`` (small, red, left-aligned); the
        figure grows by the band, everything already drawn keeps its size and place."""
        w, h = self.fig.get_size_inches()
        new_h = h + strip

        def remap(y: float) -> float:  # figure fraction in the old figure -> in the taller one
            return (y * h + strip) / new_h

        for ax in self.fig.axes:
            pos = ax.get_position()
            ax.set_position([pos.x0, remap(pos.y0), pos.width, pos.height * h / new_h])
        for t in [*self.fig.texts, *([self.fig._suptitle] if self.fig._suptitle is not None else [])]:
            if t.get_transform() == self.fig.transFigure:
                x, y = t.get_position()
                t.set_position((x, remap(y)))
        self.fig.set_size_inches(w, new_h)
        self.fig.text(0.01, 0.5 * strip / new_h, text, fontsize=7, color="#b2182b", ha="left", va="center")

    def mark_random_init(self) -> None:
        """Say on the figure (footer) and in ``data["random_init"]`` that its model is randomly initialized."""
        if not self.data.get("random_init"):
            self.data["random_init"] = True
            self.add_footer("random init: this model was built without a weights file (pass ARCH@file)")

    def _repr_png_(self) -> bytes:  # Jupyter inline display
        return self.to_png()

    def __repr__(self) -> str:
        w, h = self.fig.get_size_inches()
        keys = ", ".join(sorted(self.data))
        return f"<weightviz Figure {w:.1f}x{h:.1f} in; data: {keys}>"


def new_figure(width: float, height: float) -> _MplFigure:
    """A pyplot-free matplotlib figure of ``width`` x ``height`` inches."""
    return _MplFigure(figsize=(max(width, 0.5), max(height, 0.5)), layout=None)


def image_array(images: Any) -> np.ndarray:
    """Normalize images to a float array ``[N, H, W, C]`` in [0, 1] with C in {1, 3, 4}.

    Accepts ``[N, H, W, C]`` or ``[N, C, H, W]`` (torch or numpy, float in [0,1] or uint8), or a list of
    ``[H, W, C]`` arrays. Channel-first input is recognised when dim 1 is 1, 3 or 4 and the last is not.
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([_to_numpy(i) for i in images])
    arr = _to_numpy(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise WeightvizError(f"expected images [N, H, W, C] or [N, C, H, W], got shape {tuple(arr.shape)}")
    if arr.shape[1] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def as_images(images: Any) -> np.ndarray:
    """Deprecated name of :func:`image_array` (``weightviz.as_images`` makes an image *set*; this one an
    array): kept so existing code runs, with a ``DeprecationWarning``."""
    warnings.warn("weightviz.figures.as_images is deprecated: use weightviz.figures.image_array (an array "
                  "[N, H, W, C]); weightviz.as_images makes an ImageSet", DeprecationWarning, stacklevel=2)
    return image_array(images)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.dtype != torch.uint8 else x.cpu().numpy()
    return np.asarray(x)


def _show_image(ax, img: np.ndarray) -> None:
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    elif img.shape[-1] == 4:  # show RGB of RGBA-like 4-channel images, the 4th channel as alpha
        ax.imshow(img, interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def image_grid(
    images: Any,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    title: str | None = None,
    cell: float = 1.1,
    data: dict[str, Any] | None = None,
) -> Figure:
    """A grid of images with a label under each.

    ``images``: ``[N, H, W, C]`` / ``[N, C, H, W]`` in [0, 1] (see :func:`image_array`); ``labels``: N
    strings. Pixel images (small kernels) are drawn with nearest-neighbour sampling.

    >>> image_grid(torch.rand(4, 3, 5, 5), ["a", "b", "c", "d"]).save("grid.png")  # doctest: +SKIP
    """
    arr = image_array(images)
    n = arr.shape[0]
    if n == 0:
        raise WeightvizError("nothing to draw: the image list is empty")
    if labels is not None and len(labels) != n:
        raise WeightvizError(f"got {len(labels)} labels for {n} images")
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    label_h = 0.22 if labels is not None else 0.0
    title_h = 0.35 + 0.17 * title.count("\n") if title else 0.0
    fig = new_figure(ncols * cell, nrows * (cell + label_h) + title_h)
    top = 1 - title_h / fig.get_figheight()
    gs = fig.add_gridspec(nrows, ncols, left=0.01, right=0.99, bottom=(0.02 + label_h) / fig.get_figheight(), top=top,
                          wspace=0.08, hspace=label_h / cell + 0.05)
    for i in range(nrows * ncols):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        if i < n:
            _show_image(ax, arr[i])
            if labels is not None:
                ax.set_xlabel(str(labels[i]), fontsize=7, labelpad=2)
        else:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig.get_figheight())
    return Figure(fig, {"labels": list(labels) if labels is not None else None, "n": n, **(data or {})})


def heatmap(ax, w: Any, vmax: float) -> Any:
    """Draw one 2-D weight slice ``[kh, kw]`` on ``ax`` with the article colormap, scale ±``vmax``."""
    arr = _to_numpy(w).astype(np.float32)
    if arr.ndim != 2:
        raise WeightvizError(f"a heatmap needs a 2-D slice [kh, kw], got shape {tuple(arr.shape)}")
    vmax = float(vmax) if vmax and vmax > 0 else 1.0
    im = ax.imshow(arr, cmap=DIVERGING, vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def shared_scale(slices: Any) -> float:
    """One abs-max scale for a set of slices (so magnitudes compare); 1.0 if all are zero."""
    arr = np.abs(_to_numpy(slices))
    m = float(arr.max()) if arr.size else 0.0
    return m if m > 0 else 1.0


def heatmap_grid(
    slices: Any,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    vmax: float | None = None,
    title: str | None = None,
    cell: float = 1.1,
    data: dict[str, Any] | None = None,
) -> Figure:
    """A grid of signed weight slices ``[N, kh, kw]`` sharing one abs-max scale, with a colour bar
    stating that scale (``vmax`` overrides the shared abs-max).
    """
    arr = _to_numpy(slices).astype(np.float32)
    if arr.ndim != 3:
        raise WeightvizError(f"expected slices [N, kh, kw], got shape {tuple(arr.shape)}")
    n = arr.shape[0]
    if labels is not None and len(labels) != n:
        raise WeightvizError(f"got {len(labels)} labels for {n} slices")
    scale = float(vmax) if vmax else shared_scale(arr)
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    label_h = 0.22 if labels is not None else 0.0
    title_h = 0.35 if title else 0.0
    bar_w = 0.9
    fig = new_figure(ncols * cell + bar_w, nrows * (cell + label_h) + title_h)
    top = 1 - title_h / fig.get_figheight()
    right = 1 - bar_w / fig.get_figwidth()
    gs = fig.add_gridspec(nrows, ncols, left=0.01, right=right, bottom=0.02, top=top,
                          wspace=0.08, hspace=label_h / cell + 0.05)
    im = None
    for i in range(nrows * ncols):
        ax = fig.add_subplot(gs[i // ncols, i % ncols])
        if i < n:
            im = heatmap(ax, arr[i], scale)
            if labels is not None:
                ax.set_xlabel(str(labels[i]), fontsize=7, labelpad=2)
        else:
            ax.set_axis_off()
    add_scale_bar(fig, im, scale, rect=(right + 0.15 * bar_w / fig.get_figwidth(), 0.1,
                                        0.18 * bar_w / fig.get_figwidth(), 0.75 * top))
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig.get_figheight())
    return Figure(fig, {"labels": list(labels) if labels is not None else None, "n": n, "vmax": scale,
                        **(data or {})})


def add_scale_bar(fig: _MplFigure, im: Any, vmax: float, rect: tuple[float, float, float, float]) -> None:
    """A vertical colour bar at ``rect`` (figure fractions) labelled with the shared scale ±vmax."""
    if im is None:
        return
    cax = fig.add_axes(rect)
    bar = fig.colorbar(im, cax=cax)
    bar.set_ticks([-vmax, 0, vmax])
    bar.ax.set_yticklabels([f"-{vmax:.3g}", "0", f"+{vmax:.3g}"], fontsize=6)
    bar.ax.set_title("weight", fontsize=6)

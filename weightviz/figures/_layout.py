"""A small absolute-layout canvas for the contextual figures (private).

Figures such as "top inputs" or "paths" mix feature-visualization tiles, weight heatmaps, labels and
colour bars in irregular arrangements that gridspec does badly. :class:`Canvas` places every element at
``(x, y)`` inches from the top-left corner with a width/height in inches, records the extent, and builds
the matplotlib figure at the end, so the figure is exactly as large as its content and nothing overlaps
unless placed to overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from ._core import DIVERGING, Figure, _to_numpy, new_figure

__all__ = ["EXCITATORY", "INHIBITORY", "Canvas", "fade_to_white", "sign_word"]

#: Border colours marking an excitatory (positive) / inhibitory (negative) connection: the ends of the
#: article's diverging colormap.
EXCITATORY = "#ca0020"
INHIBITORY = "#0571b0"
PLACEHOLDER = "#e6e6e6"

FONT = 7.0  # points, labels
TITLE_FONT = 9.0
LABEL_H = 0.16  # inches per label line


def text_width(s: str, size: float = FONT, bold: bool = False) -> float:
    """A generous estimate of the width in inches of text ``s`` at ``size`` points (DejaVu Sans)."""
    longest = max((len(line) for line in s.split("\n")), default=0)
    return longest * size / 72 * (0.72 if bold else 0.6)


def sign_word(value: float) -> str:
    """``"excitatory"`` for a positive sum, ``"inhibitory"`` for a negative one."""
    return "excitatory" if value >= 0 else "inhibitory"


def fade_to_white(img: np.ndarray, alpha: float) -> np.ndarray:
    """Blend an image ``[H, W, C]`` in [0, 1] with white: ``alpha * img + (1 - alpha)``."""
    a = float(np.clip(alpha, 0.0, 1.0))
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return a * img + (1.0 - a)


class Canvas:
    """Collects drawing operations in inches (origin top-left, y down) and renders them into a
    :class:`~weightviz.figures.Figure` sized to the content plus ``margin``."""

    def __init__(self, margin: float = 0.12):
        self.margin = margin
        self._ops: list[tuple[tuple[float, float, float, float], Callable[[Any, Callable], None]]] = []
        self.right = 0.0
        self.bottom = 0.0

    # ---------------------------------------------------------------------------- bookkeeping
    def _extent(self, x: float, y: float, w: float, h: float) -> None:
        self.right = max(self.right, x + w)
        self.bottom = max(self.bottom, y + h)

    def _add(self, box: tuple[float, float, float, float], draw: Callable[[Any, Callable], None]) -> None:
        self._extent(*box)
        self._ops.append((box, draw))

    # ------------------------------------------------------------------------------- elements
    def image(
        self,
        x: float,
        y: float,
        w: float,
        img: np.ndarray | None,
        *,
        label: str | None = None,
        top_label: str | None = None,
        border: str | None = None,
        lines: int = 1,
    ) -> None:
        """An image tile ``[H, W, C]`` in [0, 1] (``None`` draws a grey placeholder) of width ``w``."""
        arr = None if img is None else np.clip(_to_numpy(img).astype(np.float32), 0, 1)

        def draw(ax, _fig_to):
            if arr is None:
                ax.add_patch(Rectangle((0, 0), 1, 1, color=PLACEHOLDER, transform=ax.transAxes))
            else:
                shown = arr[..., 0] if arr.shape[-1] == 1 else arr
                ax.imshow(shown, cmap="gray" if arr.shape[-1] == 1 else None, vmin=0, vmax=1,
                          interpolation="nearest" if max(arr.shape[:2]) < 32 else "antialiased")
            _frame(ax, border)

        self._add((x, y, w, w), draw)
        self._labels(x, y, w, w, label, top_label, lines)

    def heat(
        self,
        x: float,
        y: float,
        w: float,
        arr: Any,
        vmax: float,
        *,
        label: str | None = None,
        top_label: str | None = None,
        border: str | None = None,
        lines: int = 1,
    ) -> None:
        """A signed 2-D weight slice ``[kh, kw]`` drawn with the article colormap on the scale ±vmax."""
        a = _to_numpy(arr).astype(np.float32)
        if a.ndim != 2:
            raise ValueError(f"heat needs a 2-D slice, got {a.shape}")
        vmax = float(vmax) if vmax > 0 else 1.0
        kh, kw = a.shape
        h = w * kh / kw

        def draw(ax, _fig_to):
            ax.imshow(a, cmap=DIVERGING, vmin=-vmax, vmax=vmax, interpolation="nearest")
            _frame(ax, border)

        self._add((x, y, w, h), draw)
        self._labels(x, y, w, h, label, top_label, lines)

    def text(self, x: float, y: float, s: str, *, size: float = FONT, ha: str = "left", va: str = "top",
             width: float | None = None, height: float = LABEL_H, **kw: Any) -> None:
        """Text anchored at ``(x, y)`` inches; ``width``/``height`` reserve space for the extent
        (``width=None``: estimated from the text)."""
        if width is None:
            width = 0.0 if kw.get("rotation") else text_width(s, size)
        x0 = x - width / 2 if ha == "center" else (x - width if ha == "right" else x)
        y0 = y - height / 2 if va == "center" else (y - height if va in ("bottom", "baseline") else y)
        box = (x0, y0, width, height)

        def draw(_ax, fig_to):
            fig, fx, fy = fig_to(x, y)
            fig.text(fx, fy, s, fontsize=size, ha=ha, va=va, **kw)

        self._extent(*box)
        self._ops.append((None, draw))  # type: ignore[arg-type]

    def arrow(self, x0: float, y0: float, x1: float, y1: float, color: str = "#555555") -> None:
        """A thin arrow between two points (inches)."""

        def draw(_ax, fig_to):
            fig, fx0, fy0 = fig_to(x0, y0)
            _, fx1, fy1 = fig_to(x1, y1)
            from matplotlib.patches import FancyArrowPatch

            fig.patches.append(FancyArrowPatch((fx0, fy0), (fx1, fy1), transform=fig.transFigure,
                                               arrowstyle="-|>", mutation_scale=8, color=color, lw=0.8))

        self._extent(min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
        self._ops.append((None, draw))  # type: ignore[arg-type]

    def colorbar(self, x: float, y: float, h: float, vmax: float, title: str = "weight", w: float = 0.12) -> None:
        """A vertical colour bar stating the shared scale ±vmax, ticks and title included."""
        vmax = float(vmax) if vmax > 0 else 1.0

        def draw(ax, _fig_to):
            fig = ax.figure
            sm = ScalarMappable(norm=Normalize(-vmax, vmax), cmap=DIVERGING)
            bar = fig.colorbar(sm, cax=ax)
            bar.set_ticks([-vmax, 0, vmax])
            bar.ax.set_yticklabels([f"\u2212{vmax:.3g}", "0", f"+{vmax:.3g}"], fontsize=FONT - 1)
            bar.ax.set_title(title, fontsize=FONT - 1, pad=3)

        self._add((x, y, w, h), draw)
        self._extent(x, y - 0.2, w + 0.55, h + 0.2)  # room for the tick labels and title

    def _labels(self, x, y, w, h, label, top_label, lines) -> None:
        if label:
            n = max(lines, label.count("\n") + 1)
            self.text(x + w / 2, y + h + 0.03, label, ha="center", va="top", width=w, height=LABEL_H * n)
        if top_label:
            n = top_label.count("\n") + 1
            self.text(x + w / 2, y - 0.03, top_label, ha="center", va="bottom", width=w, height=LABEL_H * n)

    # --------------------------------------------------------------------------------- output
    def figure(self, data: dict[str, Any] | None = None, title: str | None = None, dpi: int = 100) -> Figure:
        """Render all operations into a :class:`Figure` (``title`` on top, in bold)."""
        m = self.margin
        title_h = 0.3 if title else 0.0
        width = max(self.right, text_width(title, TITLE_FONT, bold=True) if title else 0.0) + 2 * m
        height = self.bottom + 2 * m + title_h
        fig = new_figure(width, height)
        oy = m + title_h

        def fig_to(x: float, y: float):
            return fig, (x + m) / width, 1 - (y + oy) / height

        for box, draw in self._ops:
            if box is None:
                draw(None, fig_to)
                continue
            x, y, w, h = box
            ax = fig.add_axes(((x + m) / width, 1 - (y + oy + h) / height, w / width, h / height))
            draw(ax, fig_to)
        if title:
            fig.text(0.5, 1 - (m * 0.6) / height, title, fontsize=TITLE_FONT, ha="center", va="top",
                     fontweight="bold")
        return Figure(fig, data, dpi=dpi)


def _frame(ax, border: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        if border:
            s.set_edgecolor(border)
            s.set_linewidth(2.0)
        else:
            s.set_edgecolor("#bbbbbb")
            s.set_linewidth(0.5)

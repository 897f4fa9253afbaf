"""The explorer's URL / file layout, shared by the static site and the live server.

Every page and image has one path relative to the site root; the static builder writes files at those
paths and the server computes the same paths on demand, so links are identical (and relative) in both::

    index.html                                   layers
    layer/<L>.html                               one layer: FV + NMF image of every unit
    unit/<L>/<u>.html                            one unit
    img/fv/<L>/<u>.png                           feature visualization of unit u of layer L
    img/nmf/<L>/<S>/<u>.png                      NMF image of unit u's weights from source S
    img/w/<L>/<S>/<u>/<i>.png                    heatmap of the weight slice input i (of S) -> unit u
    img/fmap/<L>/<S>/<u>/<f>.png                 spatial map of weight factor f of unit u (from S)
    img/factor/<L>/<S>/<u>/<f>.png               FV of weight factor f of unit u (a direction in S)
    img/out/<L>/<N>/<u>/<o>.png                  heatmap of the weight slice unit u -> unit o of N
    img/ex/<L>/<u>/<j>.png                       j-th dataset example of unit u (receptive-field crop)
    static/style.css, static/explore.js

``<L>``, ``<S>``, ``<N>`` are layer slugs (:func:`slug`); a source ``S`` is a layer of the model or
``input`` (the model input).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "INPUT",
    "Route",
    "example_path",
    "factor_path",
    "fmap_path",
    "fv_path",
    "heatmap_path",
    "layer_path",
    "nmf_path",
    "out_path",
    "parse",
    "relative_root",
    "slug",
    "unit_path",
]

#: source slug meaning "the model input"
INPUT = "input"

_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,120}")


def slug(layer: str) -> str:
    """A file-name-safe, reversible-by-lookup name for a layer: the name itself when it is made of
    ``[A-Za-z0-9_.-]`` (and does not start with a dot), else a sanitized name plus a short hash.

    >>> slug("blocks.2.0"), slug("features/3")[:10]
    ('blocks.2.0', 'features_3')
    """
    if _SAFE.fullmatch(layer) and layer != INPUT and ".." not in layer:
        return layer
    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", layer).replace("..", "_").lstrip(".") or "layer"
    return f"{clean[:80]}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"


def layer_path(layer: str) -> str:
    return f"layer/{slug(layer)}.html"


def unit_path(layer: str, unit: int) -> str:
    return f"unit/{slug(layer)}/{int(unit)}.html"


def fv_path(layer: str, unit: int) -> str:
    return f"img/fv/{slug(layer)}/{int(unit)}.png"


def _src(src: str | None) -> str:
    return INPUT if src is None else slug(src)


def nmf_path(layer: str, src: str | None, unit: int) -> str:
    return f"img/nmf/{slug(layer)}/{_src(src)}/{int(unit)}.png"


def heatmap_path(layer: str, src: str | None, unit: int, inp: int) -> str:
    return f"img/w/{slug(layer)}/{_src(src)}/{int(unit)}/{int(inp)}.png"


def fmap_path(layer: str, src: str | None, unit: int, factor: int) -> str:
    return f"img/fmap/{slug(layer)}/{_src(src)}/{int(unit)}/{int(factor)}.png"


def factor_path(layer: str, src: str | None, unit: int, factor: int) -> str:
    return f"img/factor/{slug(layer)}/{_src(src)}/{int(unit)}/{int(factor)}.png"


def out_path(layer: str, nxt: str, unit: int, out: int) -> str:
    return f"img/out/{slug(layer)}/{slug(nxt)}/{int(unit)}/{int(out)}.png"


def example_path(layer: str, unit: int, j: int) -> str:
    return f"img/ex/{slug(layer)}/{int(unit)}/{int(j)}.png"


def relative_root(path: str) -> str:
    """The relative prefix from the page at ``path`` back to the site root (``""``, ``"../"``, ...)."""
    return "../" * path.count("/")


@dataclass(frozen=True)
class Route:
    """A parsed request path: ``kind`` is one of ``index``, ``layer``, ``unit``, ``fv``, ``nmf``, ``w``,
    ``fmap``, ``factor``, ``out``, ``ex``, ``static``; slugs are not yet resolved to layer names (``src`` holds
    the second slug: the source, or for ``out`` the next layer)."""

    kind: str
    layer: str | None = None
    src: str | None = None
    unit: int | None = None
    index: int | None = None
    name: str | None = None  # static file name


_INT = r"(0|[1-9][0-9]{0,6})"
_SLUG = r"([A-Za-z0-9_][A-Za-z0-9_.\-]{0,130})"
_ROUTES = [
    ("layer", re.compile(rf"layer/{_SLUG}\.html")),
    ("unit", re.compile(rf"unit/{_SLUG}/{_INT}\.html")),
    ("fv", re.compile(rf"img/fv/{_SLUG}/{_INT}\.png")),
    ("nmf", re.compile(rf"img/nmf/{_SLUG}/{_SLUG}/{_INT}\.png")),
    ("w", re.compile(rf"img/w/{_SLUG}/{_SLUG}/{_INT}/{_INT}\.png")),
    ("fmap", re.compile(rf"img/fmap/{_SLUG}/{_SLUG}/{_INT}/{_INT}\.png")),
    ("factor", re.compile(rf"img/factor/{_SLUG}/{_SLUG}/{_INT}/{_INT}\.png")),
    ("out", re.compile(rf"img/out/{_SLUG}/{_SLUG}/{_INT}/{_INT}\.png")),
    ("ex", re.compile(rf"img/ex/{_SLUG}/{_INT}/{_INT}\.png")),
    ("static", re.compile(r"static/([A-Za-z0-9_\-]+\.(?:css|js|svg|png|ico))")),
]


def parse(url_path: str) -> Route | None:
    """Parse the path part of a request URL (percent-decoded here) into a :class:`Route`, or ``None``
    for anything outside the layout — including any path that tries to leave the root (``..``,
    backslashes, NUL, absolute components).

    >>> parse("/unit/blocks.2.0/7.html")
    Route(kind='unit', layer='blocks.2.0', src=None, unit=7, index=None, name=None)
    >>> parse("/static/../../etc/passwd") is None
    True
    """
    path = unquote(url_path.split("?", 1)[0].split("#", 1)[0])
    if "\x00" in path or "\\" in path:
        return None
    parts = path.split("/")
    if any(p in ("..", ".") for p in parts):
        return None
    path = posixpath.normpath("/" + path).lstrip("/")
    if path in ("", ".", "index.html"):
        return Route("index")
    for kind, rx in _ROUTES:
        m = rx.fullmatch(path)
        if not m:
            continue
        g = m.groups()
        if kind == "layer":
            return Route(kind, layer=g[0])
        if kind in ("unit", "fv"):
            return Route(kind, layer=g[0], unit=int(g[1]))
        if kind == "nmf":
            return Route(kind, layer=g[0], src=g[1], unit=int(g[2]))
        if kind == "ex":
            return Route(kind, layer=g[0], unit=int(g[1]), index=int(g[2]))
        if kind in ("w", "fmap", "factor", "out"):
            return Route(kind, layer=g[0], src=g[1], unit=int(g[2]), index=int(g[3]))
        if kind == "static":
            return Route(kind, name=g[0])
    return None

"""The explorer's layer graph: which layers can be explored (:func:`explorable`), the default selection
(:func:`default_layers`), and who feeds whom (:class:`LayerGraph`: a layer's predecessor, found by tracing
one forward pass, and the sources its inputs are shown from)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightvizError, suggest
from ..models import LayerInfo, layers, parse_units
from .config import Source, _lru

__all__ = ["INPUT", "LayerGraph", "default_layers", "explorable"]

_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")
INPUT = None  # a source meaning "the model input"


def explorable(model: nn.Module) -> list[LayerInfo]:
    """Layers the explorer can show: conv layers and blocks (not pure containers such as
    ``nn.Sequential``) whose output is a feature map ``[C, H, W]``, in definition order."""
    out = []
    for r in layers(model):
        if r.kind not in ("weight", "block") or r.type in _CONTAINERS:
            continue
        if r.out_shape is None or len(r.out_shape) != 3 or not r.out_channels:
            continue
        out.append(r)
    return out


def _depth(name: str) -> int:
    return name.count(".")


def _is_ancestor(a: str, b: str) -> bool:
    """True if module ``a`` contains module ``b``."""
    return b.startswith(a + ".")


def _related(a: str, b: str) -> bool:
    """True if one of the two modules contains the other (their outputs are not a source/target pair)."""
    return _is_ancestor(a, b) or _is_ancestor(b, a)


def default_layers(model: nn.Module, limit: int = 8) -> list[str]:
    """The layers explored when none are given: the outermost blocks (e.g. timm ``blocks.2.0``,
    torchvision ``layer2.0``, ``inception3a``), or the conv layers of a model without blocks; if more
    than ``limit``, only the *stage entries* (blocks that change the output shape), e.g. ``blocks.0.0``
    ... ``blocks.6.0`` of EfficientNet-Lite0."""
    rows = explorable(model)
    blocks = [r for r in rows if r.kind == "block"]
    pool = blocks or rows
    outer = [r for r in pool if not any(_is_ancestor(o.name, r.name) for o in pool)]
    if len(outer) > limit:
        entries, prev = [], None
        for r in outer:
            if r.out_shape != prev:
                entries.append(r)
            prev = r.out_shape
        outer = entries
    return [r.name for r in outer]



class LayerGraph:
    """Mixin of :class:`~weightviz.explore.data.Explorer`: the explored layers and units, their
    :class:`LayerInfo`, and the graph of sources (it needs ``model``, ``layers``, ``units``, ``config``,
    ``_rows``, ``_order``, ``compute_lock`` and ``weights_from`` from the explorer)."""

    def _resolve_layers(self, spec) -> list[str]:
        if spec is None:
            names = default_layers(self.model)
        elif isinstance(spec, str):
            names = [s.strip() for s in spec.split(",") if s.strip()]
        else:
            names = [str(s) for s in spec]
        if not names:
            raise WeightvizError("no layers to explore: pass --layers NAME,NAME (see `weightviz layers MODEL`)")
        for n in names:
            self.info(n)
        names = list(dict.fromkeys(names))
        return sorted(names, key=self._order.__getitem__)

    def _select_units(self, layer: str, spec) -> list[int]:
        n = self.channels(layer)
        if spec is None:
            return list(range(n))
        if isinstance(spec, str) and ":" in spec and "," not in spec:
            # a range is clipped to each layer's size ("0:16" on an 8-unit layer = all 8)
            try:
                bits = [int(b) if b.strip() else None for b in spec.split(":")]
            except ValueError:
                bits = []
            if not 2 <= len(bits) <= 3 or bits[-1] == 0 and len(bits) == 3:
                raise WeightvizError(f"cannot read units {spec!r}: use e.g. '0:16', '0:64:2' or '3,7,9'")
            return list(range(n))[slice(*bits)]
        if isinstance(spec, slice):
            return list(range(n))[spec]
        units = parse_units(spec, 1 << 30, what=f"layer {layer!r}")
        return [u for u in units if u < n]

    def info(self, layer: str) -> LayerInfo:
        """The :class:`LayerInfo` of an explorable layer; unknown names raise :class:`WeightvizError`
        with close matches."""
        row = self._rows.get(layer) if isinstance(layer, str) else None
        if row is None:
            all_names = [r.name for r in layers(self.model)]
            if isinstance(layer, str) and layer in all_names:
                raise WeightvizError(
                    f"layer {layer!r} cannot be explored (it needs a feature-map output [C, H, W] and must not be a "
                    f"plain container).{suggest(layer, list(self._rows))}"
                )
            raise WeightvizError(f"unknown layer {layer!r}.{suggest(str(layer), list(self._rows))} "
                                 "List layers with `weightviz layers MODEL`")
        return row

    def channels(self, layer: str) -> int:
        return int(self.info(layer).out_channels)

    def check_unit(self, layer: str, unit: int) -> int:
        """Validate ``unit`` for ``layer`` (raises :class:`WeightvizError` if out of range)."""
        return parse_units(int(unit), self.channels(layer), what=f"layer {layer!r}")[0]

    @property
    def all_layers(self) -> list[str]:
        """Every explorable layer of the model, in definition order."""
        return list(self._rows)

    def is_explored(self, layer: str) -> bool:
        return layer in self.units

    def next_layer(self, layer: str) -> str | None:
        """The next explored layer after ``layer`` (whose units the outputs panel shows)."""
        pos = self._order[self.info(layer).name]
        later = [n for n in self.layers if self._order[n] > pos and not _related(n, layer)]
        return later[0] if later else None

    @_lru(4096)
    def predecessor(self, layer: str) -> str | None:
        """The explorable layer whose output feeds ``layer`` (``None``: the model input).

        Found by tracing one forward pass: the layer whose output tensor is ``layer``'s input (or
        shares its storage, for in-place ops). If the input comes from a non-explorable op (pooling,
        activation, a plain function), the nearest earlier layer in the module tree from which expanded
        weights to ``layer`` exist is used (e.g. googlenet ``inception4a`` <- ``inception3b`` across
        ``maxpool3``).
        """
        self.info(layer)
        traced = self._traced_inputs().get(layer)
        if traced is not None:
            return traced
        for n, cand in enumerate(self._earlier_in_tree(layer)):
            if n >= 8:
                break
            try:
                self.weights_from(cand, layer)
                return cand
            except WeightvizError:
                continue
        return INPUT

    def _earlier_in_tree(self, layer: str):
        """Explorable layers that may feed ``layer``, nearest first: the earlier siblings of ``layer``,
        then of its parent, and so on up the module tree (a plain container stands for its last
        explorable descendant, e.g. ``blocks.1`` for ``blocks.1.1``)."""
        modules = dict(self.model.named_modules())

        def children(name: str) -> list[str]:
            return [f"{name}.{c}" if name else c for c, _ in modules[name].named_children()]

        def last_explorable(name: str) -> str | None:
            for c in reversed(children(name)):
                if c in self._rows:
                    return c
                found = last_explorable(c)
                if found:
                    return found
            return None

        parts = layer.split(".")
        for depth in range(len(parts), 0, -1):
            node, parent = ".".join(parts[:depth]), ".".join(parts[:depth - 1])
            sibs = children(parent)
            for sib in reversed(sibs[:sibs.index(node)]):
                cand = sib if sib in self._rows else last_explorable(sib)
                if cand is not None:
                    yield cand

    @_lru(1)
    def _traced_inputs(self) -> dict[str, str | None]:
        """``{layer: producer}`` from one no-grad forward of a grey image, for every explorable layer
        whose input is exactly (or in place of) another explorable layer's output."""
        from ..models import input_spec

        spec = input_spec(self.model)
        produced: dict[int, str] = {}
        found: dict[str, str | None] = {}
        modules = dict(self.model.named_modules())
        handles = []

        def pre(name):
            def hook(_m, args):
                x = args[0] if args else None
                if isinstance(x, torch.Tensor) and name not in found:
                    owner = produced.get(id(x)) or produced.get(x.untyped_storage().data_ptr())
                    if owner is not None:
                        found[name] = owner
            return hook

        alive: list[torch.Tensor] = []  # keep outputs alive: a freed tensor's id/memory may be reused

        def post(name):
            def hook(_m, _args, out):
                if isinstance(out, torch.Tensor):
                    alive.append(out)
                    produced[id(out)] = name
                    produced[out.untyped_storage().data_ptr()] = name
            return hook

        was_training = self.model.training
        try:
            for name in self._rows:
                handles.append(modules[name].register_forward_pre_hook(pre(name)))
                handles.append(modules[name].register_forward_hook(post(name)))
            self.model.eval()
            p = next(self.model.parameters(), None)
            kw = {"device": p.device if p is not None else "cpu", "dtype": p.dtype if p is not None else None}
            # which module feeds which does not depend on the image size: try a small, cheap one first
            for size in dict.fromkeys((min(64, spec.size), spec.size)):
                try:
                    with self.compute_lock, torch.no_grad():
                        self.model(torch.zeros(1, spec.channels, size, size, **kw))
                    break
                except Exception:  # noqa: BLE001 - too small for this model: retry at its own size
                    produced.clear()
                    found.clear()
                    alive.clear()
        except Exception:  # noqa: BLE001 - tracing is best effort; the fallback search is exact
            pass
        finally:
            for h in handles:
                h.remove()
            self.model.train(was_training)
        # an output consumed by an ancestor/descendant is a container relation, not data flow
        return {k: v for k, v in found.items() if not _is_ancestor(v, k) and not _is_ancestor(k, v)}

    def sources(self, layer: str) -> list[Source]:
        """Where ``layer``'s inputs are shown from: its predecessor (direct) and up to
        ``config.sources`` earlier explored layers (expanded weights)."""
        pred = self.predecessor(layer)
        out = [Source(pred, f"direct: {pred or 'model input'}", "direct")]
        pos = self._order[layer]
        earlier = [n for n in self.layers if self._order[n] < pos and n != pred and not _related(n, layer)]
        for n in reversed(earlier[-self.config.sources:] if self.config.sources else []):
            out.append(Source(n, f"expanded from {n}", "expanded"))
        return out

    def primary_source(self, layer: str) -> str | None:
        """The source of a layer's NMF images: the previous explored layer if there is one (expanded
        weights show more structure), else the predecessor."""
        srcs = self.sources(layer)
        return srcs[1].layer if len(srcs) > 1 else srcs[0].layer

    def source_choices(self, layer: str, limit: int = 60) -> list[str]:
        """Earlier layers a user may pick to expand from (live server): same kind as ``layer``, nearest
        first, plus the model input."""
        kind = self.info(layer).kind
        pos = self._order[layer]
        earlier = [n for n, r in self._rows.items() if self._order[n] < pos and r.kind == kind
                   and not _related(n, layer)]
        return list(reversed(earlier))[:limit]

    def source_for(self, layer: str, src: str | None) -> Source:
        """A :class:`Source` for an arbitrary earlier layer (or the input)."""
        if src is not None:
            self.info(src)
            if self._order[src] >= self._order[layer] or _related(src, layer):
                raise WeightvizError(f"source {src!r} does not come before {layer!r}; choose an earlier layer")
        pred = self.predecessor(layer)
        if src == pred:
            return Source(src, f"direct: {src or 'model input'}", "direct")
        return Source(src, f"expanded from {src or 'model input'}", "expanded")

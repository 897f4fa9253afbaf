"""What the explorer shows, computed by weightviz's own APIs: a thin adapter layer.

:class:`Explorer` holds a model, the explored layers and the build settings, and answers every
question a page asks, each by calling the library:

- feature visualizations: :func:`weightviz.render` with :func:`weightviz.objectives.channel` /
  :func:`~weightviz.objectives.direction` and the disk :class:`weightviz.RenderCache`;
- weights between layers: :func:`weightviz.expanded_weights` (``src`` directly before ``dst`` gives
  exactly the direct weights; ``src=None`` is the model input);
- top inputs: :func:`weightviz.top_inputs` (ranking by slice L2 norm, sign of the slice sum);
- NMF images and weight factors: :func:`weightviz.nmf_image` (``return_factors=True``: spatial factors
  ``A`` and channel factors ``H``); the first layer (3 input channels) shown as
  :func:`weightviz.rgb_weights`;
- banding: :func:`weightviz.banding_score` on the unit's NMF factor maps, and the per-unit permutation
  p-values of :func:`weightviz.metrics.banding_test`.

Layer-level results (all units of a layer at once) are memoized in memory, so a page for one unit and
a layer of pages cost the same batched computation.

Vocabulary: the *explored layers* are the ones listed on the index (``--layers``); a unit page's
*sources* are the layers its inputs are shown from: the layer feeding it directly (its *predecessor*)
and earlier explored layers (expanded weights). Its *outputs* are the units of the next explored layer
it drives most (expanded weights from this layer to that one).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError, suggest
from ..expand import rank_connections
from ..models import LayerInfo, layers, model_hash, model_name, parse_units, resolve
from .store import KeyLocks

__all__ = [
    "ExploreConfig",
    "Explorer",
    "default_layers",
    "explorable",
]

_SCORE_BATCH = 32  # images per forward when the explorer scores a layer for its dataset examples

_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")
INPUT = None  # a source meaning "the model input"


@dataclass(frozen=True)
class ExploreConfig:
    """Settings of an explorer build. FVs: ``size`` px, ``steps`` Adam steps, ``seed``; ``top_k``
    inputs/outputs per unit; ``n_factors`` weight factors (one-sided NMF components) per unit;
    ``factor_k`` inputs listed per factor; ``sources``: how many earlier explored layers (besides the
    direct predecessor) a unit's inputs are expanded from; ``batch``: FVs per render batch;
    ``factor_fvs``: render the FV of each factor direction. Cases panel (:func:`weightviz.cases` of each
    unit's inputs from its primary source over an image set): ``cases`` per unit (0, the default here: no
    panel; the CLI's ``explore``/``serve`` default to 2),
    ``case_images`` images of side ``case_size`` px from folder ``images`` (``None``: the embedded set).
    Dataset examples: ``examples`` crops per unit page (0: no section) from ``example_images`` images (a
    seeded subset; ``None``: all) of folder ``images`` (``None``: the embedded set) at the model's input
    size."""

    size: int = 64
    steps: int = 64
    seed: int = 0
    top_k: int = 8
    n_factors: int = 3
    factor_k: int = 5
    sources: int = 1
    batch: int = 32
    factor_fvs: bool = True
    cases: int = 0
    case_images: int = 32
    case_size: int = 96
    images: str | None = None
    examples: int = 9
    example_images: int | None = 128

    def __post_init__(self):
        for name in ("size", "steps", "top_k", "n_factors", "factor_k", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WeightvizError(f"{name} must be a positive integer, got {v!r}")
        from .._limits import check_size

        check_size(self.size, "FV size")
        if isinstance(self.sources, bool) or not isinstance(self.sources, int) or self.sources < 0:
            raise WeightvizError(f"sources must be an integer >= 0, got {self.sources!r}")
        if isinstance(self.cases, bool) or not isinstance(self.cases, int) or not 0 <= self.cases <= 6:
            raise WeightvizError(f"cases must be an integer in 0..6 (0: no cases panel), got {self.cases!r}")
        for name in ("case_images", "case_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (16 if name == "case_size" else 1):
                raise WeightvizError(f"{name} must be an integer >= {16 if name == 'case_size' else 1}, got {v!r}")
        if isinstance(self.examples, bool) or not isinstance(self.examples, int) or self.examples < 0:
            raise WeightvizError(f"examples must be an integer >= 0 (0: no dataset examples), got {self.examples!r}")
        n = self.example_images
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise WeightvizError(f"example_images must be a positive integer or None (all), got {n!r}")
        if self.images is not None:
            object.__setattr__(self, "images", str(self.images))

    def key(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ layers
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


# ------------------------------------------------------------------------------------------ config
def _lru(maxsize: int):
    """A per-instance, thread-safe LRU memo for Explorer methods (hashable arguments). Concurrent calls
    with the same arguments compute once: the others wait on that key's lock."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args):
            memo: OrderedDict = self._memo.setdefault(fn.__name__, OrderedDict())
            with self._memo_lock:
                if args in memo:
                    memo.move_to_end(args)
                    return memo[args]
            with self._key_locks(repr((fn.__name__, args))):
                with self._memo_lock:
                    if args in memo:
                        return memo[args]
                value = fn(self, *args)
                with self._memo_lock:
                    memo[args] = value
                    while len(memo) > maxsize:
                        memo.popitem(last=False)
            return value

        return wrapper

    return deco


@dataclass
class Source:
    """One source of a unit's inputs: ``layer`` (``None``: the model input), ``label`` for the page,
    ``kind``: ``"direct"`` (the layer feeding ``dst``) or ``"expanded"``."""

    layer: str | None
    label: str
    kind: str


class Cancelled(RuntimeError):
    """Raised inside computations of an :class:`Explorer` after :meth:`Explorer.cancel` (shutdown)."""


class _ComputeLock:
    """The re-entrant lock every model computation of an :class:`Explorer` takes; once ``cancel`` is set,
    entering it raises :class:`Cancelled`, so queued computations stop instead of running one by one."""

    def __init__(self, cancel: threading.Event):
        self._lock = threading.RLock()
        self._cancel = cancel

    def __enter__(self) -> _ComputeLock:
        self._lock.acquire()
        if self._cancel.is_set():
            self._lock.release()
            raise Cancelled("the explorer is shutting down")
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def wait_idle(self) -> None:
        """Block until no computation holds the lock (the one running, if any, has finished)."""
        with self._lock:
            pass


class Explorer:
    """A model plus the explored layers/units and :class:`ExploreConfig`; computes what pages show.

    ``layers``: names (or a comma-separated string) of the layers on the index (default
    :func:`default_layers`); ``units``: which units get pages, one selection for every layer
    (``"0:16"``, ``[1, 5]``, ``None`` = all; units past a layer's size are dropped). ``render_cache``:
    ``True`` (default directory), a path or :class:`weightviz.RenderCache`, or ``None``.

    Thread safety: every computation that touches the model runs under :attr:`compute_lock` (renders
    add hooks, so two must never overlap); memoized layer-level results are computed once and shared.
    (Rule inside this class: never call a memoized method while holding ``compute_lock``.)

    >>> ex = Explorer("lite0", layers="blocks.1.0,blocks.2.0", units="0:8")   # doctest: +SKIP
    >>> ex.sources("blocks.2.0")                                           # doctest: +SKIP
    [Source(layer='blocks.1.1', label='direct: blocks.1.1', kind='direct'), Source(layer='blocks.1.0', ...)]
    """

    def __init__(
        self,
        model: nn.Module | str | None,
        layers: str | Sequence[str] | None = None,
        units: int | str | Iterable[int] | slice | None = None,
        config: ExploreConfig | None = None,
        render_cache: Any = True,
        name: str | None = None,
    ):
        self.model = resolve(model)
        self.config = config or ExploreConfig()
        self.name = name or (model if isinstance(model, str) else model_name(self.model))
        self.hash = model_hash(self.model)
        self._rows = {r.name: r for r in explorable(self.model)}
        self._order = {n: i for i, n in enumerate(self._rows)}
        self.layers = self._resolve_layers(layers)
        self._units_spec = units
        self.units = {layer: self._select_units(layer, units) for layer in self.layers}
        from ..optvis.render import _resolve_cache

        self.render_cache = _resolve_cache(render_cache)
        self.cancelled = threading.Event()
        self.compute_lock = _ComputeLock(self.cancelled)
        self._memo: dict[str, OrderedDict] = {}
        self._memo_lock = threading.Lock()
        self._key_locks = KeyLocks()

    # ----------------------------------------------------------------------------- structure
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

    # ---------------------------------------------------------------------------- weights
    @_lru(24)
    def weights_from(self, src: str | None, dst: str) -> torch.Tensor:
        """``[C_dst, C_src, K, K]``: :func:`weightviz.expanded_weights` from ``src`` (``None``: input)."""
        from ..expand import expanded_weights

        with self.compute_lock:
            w = expanded_weights(self.model, src, dst)
        return w.detach().float().cpu()

    def src_channels(self, src: str | None) -> int:
        if src is None:
            from ..models import input_spec

            return input_spec(self.model).channels
        return self.channels(src)

    @_lru(24)
    def nmf(self, dst: str, src: str | None) -> dict[str, torch.Tensor]:
        """NMF images and factors of every unit of ``dst`` from ``src``: ``image`` ``[C, K, K, 3]``,
        ``A`` ``[C, K*K, F]`` (spatial factors), ``H`` ``[C, F, 2*C_src]`` (channel factors); for weights
        straight from a 3-channel input, ``image`` is :func:`weightviz.rgb_weights` and there are no
        factors."""
        from ..factor import nmf_image, rgb_weights

        W = self.weights_from(src, dst)
        if src is None and W.shape[1] == 3:
            return {"image": rgb_weights(W), "A": None, "H": None}
        with self.compute_lock:
            image, A, H = nmf_image(W, n_factors=self.config.n_factors, seed=self.config.seed,
                                    return_factors=True)
        return {"image": image, "A": A, "H": H}

    @_lru(24)
    def banding(self, dst: str, src: str | None) -> dict[str, torch.Tensor] | None:
        """Per-unit banding score (:func:`weightviz.banding_score`) of the NMF factor maps (raw weights
        for <= 3 input channels), with the permutation p-values of
        :func:`weightviz.metrics.banding_test`; ``None`` for 1x1 kernels."""
        from ..metrics import banding_score, banding_test

        W = self.weights_from(src, dst)
        if W.shape[2] < 2 or W.shape[3] < 2:
            return None
        nm = self.nmf(dst, src)
        if nm["A"] is None:
            kernels = W.permute(0, 2, 3, 1)
        else:
            kernels = nm["A"].reshape(W.shape[0], W.shape[2], W.shape[3], -1)
        score = banding_score(kernels)
        test = banding_test(kernels, seed=self.config.seed)
        return {"score": score, "p_h": test.p_horizontal, "p_v": test.p_vertical, "alpha": test.alpha}

    def top_inputs(self, dst: str, unit: int, src: str | None) -> list:
        """The ``config.top_k`` strongest inputs of ``unit`` from ``src``, as
        :class:`weightviz.expand.Connection` (channel, norm, sign, slice), ranked exactly as
        :func:`weightviz.top_inputs` ranks (L2 norm of the slice, sign of its sum; tested equal).

        Read from the layer's memoized :func:`weightviz.expanded_weights` (all units in one batched
        call) instead of calling ``top_inputs`` per unit, which expands again for every unit: a layer of
        units costs one expansion, not one per unit."""
        W = self.weights_from(src, dst)
        return rank_connections(W[unit], min(self.config.top_k, W.shape[1]))

    def top_outputs(self, layer: str, unit: int) -> tuple[str, torch.Tensor, list] | None:
        """Units of the next explored layer that ``unit`` drives most: ``(next, W, connections)`` with
        ``W`` = expanded weights ``[C_next, C_layer, K, K]`` and the connections ranked by the L2 norm
        of ``W[o, unit]`` (:func:`weightviz.rank_connections` along the other axis; ``.channel`` is the unit ``o``)."""
        nxt = self.next_layer(layer)
        if nxt is None:
            return None
        W = self.weights_from(layer, nxt)
        return nxt, W, rank_connections(W[:, unit], min(self.config.top_k, W.shape[0]))

    def factors(self, dst: str, unit: int, src: str | None) -> list[dict[str, Any]]:
        """Weight factors of ``unit`` (one-sided NMF of its weights from ``src``): per factor its
        colour, spatial map ``[K, K]`` (non-negative), signed direction over ``src`` channels
        ``H[f, :C] - H[f, C:]`` and the ``factor_k`` channels loading most on it."""
        from ..factor import factor_colors

        nm = self.nmf(dst, src)
        if nm["A"] is None:
            return []
        A, H = nm["A"][unit], nm["H"][unit]  # [P, F], [F, 2C]
        W = self.weights_from(src, dst)
        kh, kw = W.shape[2], W.shape[3]
        c = W.shape[1]
        colors = factor_colors(A.shape[1])
        out = []
        for f in range(A.shape[1]):
            if float(A[:, f].abs().max()) == 0.0:
                continue
            vec = H[f, :c] - H[f, c:]
            order = torch.argsort(vec.abs(), descending=True)[: self.config.factor_k]
            out.append({
                "index": f,
                "color": "#" + "".join(f"{round(float(v) * 255):02x}" for v in colors[f]),
                "rgb": colors[f].tolist(),
                "map": A[:, f].reshape(kh, kw),
                "vector": vec,
                "items": [(int(i), float(vec[i]), 1 if float(vec[i]) > 0 else -1) for i in order],
            })
        return out

    # ---------------------------------------------------------------------------- renders
    def render_units(self, layer: str, units: Sequence[int]) -> torch.Tensor:
        """FVs of ``units`` of ``layer``: ``[U, C, size, size]`` in [0, 1] (one batched
        :func:`weightviz.render` call, channel objectives, through the render cache)."""
        from .. import objectives as obj

        return self._render([obj.channel(layer, int(u)) for u in units])

    def render_directions(self, layer: str, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """FVs of directions (vectors over ``layer``'s channels): ``[N, C, size, size]``."""
        from .. import objectives as obj

        return self._render([obj.direction(layer, torch.as_tensor(v, dtype=torch.float32)) for v in vectors])

    # ------------------------------------------------------------------- cases (image set)
    @_lru(1)
    def image_set(self):
        """The image set of the cases panels (``config.images`` or the embedded set, ``case_images``
        images of ``case_size`` px, normalized for the model); :func:`weightviz.images`."""
        from ..imageset import images

        cfg = self.config
        return images(cfg.images, model=self.model, size=cfg.case_size, n=cfg.case_images, seed=cfg.seed)

    @_lru(256)
    def cases(self, layer: str, unit: int, src: str | None):
        """:func:`weightviz.cases` of ``unit``'s inputs from ``src`` over :meth:`image_set` (``config.cases``
        cases, ``top_k`` inputs and 4 examples each); raises :class:`WeightvizError` e.g. when the unit never
        fires on the images."""
        from ..conditioned import cases

        imgs = self.image_set()
        cfg = self.config
        with self.compute_lock:
            return cases(self.model, src, layer, unit, imgs, cfg.cases, k=cfg.top_k, n_examples=4, seed=cfg.seed)

    def _render(self, objectives: list) -> torch.Tensor:
        from ..optvis.render import render

        cfg = self.config

        def stop_if_cancelled(*_) -> None:  # after every optimization step: shutdown does not wait for a render
            if self.cancelled.is_set():
                raise Cancelled("the explorer is shutting down")

        with self.compute_lock:
            result = render(self.model, objectives, size=cfg.size, steps=cfg.steps, seed=cfg.seed,
                            batch=cfg.batch, progress=False, cache=self.render_cache, callback=stop_if_cancelled)
        return result.images

    def cancel(self) -> None:
        """Stop: computations running now end at their next step (renders) or finish (others); later ones
        raise :class:`Cancelled`. Returns when none is running. :meth:`resume` undoes it."""
        self.cancelled.set()
        self.compute_lock.wait_idle()

    def resume(self) -> None:
        self.cancelled.clear()

    # ---------------------------------------------------------------------------- dataset examples
    @_lru(1)
    def example_image_set(self):
        """The image set of the dataset examples (folder :attr:`ExploreConfig.images` or the embedded set,
        ``example_images`` of them, seeded, at the model's input size), normalized for the model."""
        from ..imageset import images

        cfg = self.config
        with self.compute_lock:
            imgs = images(cfg.images, model=self.model, seed=cfg.seed)
            if cfg.example_images is not None and cfg.example_images < len(imgs):
                imgs = images(cfg.images, model=self.model, n=cfg.example_images, seed=cfg.seed)
        return imgs

    @_lru(24)
    def layer_scores(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Every unit's activation on every image of :meth:`image_set`: :func:`weightviz.examples.layer_scores`
        (values ``[N, C]``, positions ``[N, C, 2]``, output shape), one batched pass for the whole layer."""
        from ..examples import layer_scores

        imgs = self.example_image_set()
        with self.compute_lock:  # a fixed batch, not the device default: with batches of 4 the scores of local
            # (2 threads) and Ray (1 thread) builds differed in the last bits; the tests compare sites byte for byte
            return layer_scores(self.model, layer, imgs, batch_size=_SCORE_BATCH)

    @_lru(256)
    def unit_examples(self, layer: str, unit: int):
        """The dataset examples of ``unit`` (:class:`weightviz.TopExamples`, ``config.examples`` of them),
        from the layer's memoized scores (no forward per unit)."""
        from ..examples import select

        values, positions, shape = self.layer_scores(layer)
        imgs = self.example_image_set()
        with self.compute_lock:
            return select(self.model, layer, unit, imgs, values, positions, shape, self.config.examples, warn=False)


Linker = Callable[[str, int], "str | None"]

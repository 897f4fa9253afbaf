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
  p-values of :func:`weightviz.banding_test`.

Layer-level results (all units of a layer at once) are memoized in memory, so a page for one unit and
a layer of pages cost the same batched computation.

Vocabulary: the *explored layers* are the ones listed on the index (``--layers``); a unit page's
*sources* are the layers its inputs are shown from: the layer feeding it directly (its *predecessor*)
and earlier explored layers (expanded weights). Its *outputs* are the units of the next explored layer
it drives most (expanded weights from this layer to that one).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import WeightvizError
from ..expand import rank_connections
from ..models import model_hash, model_name, resolve
from .config import Cancelled, ExploreConfig, _ComputeLock, _lru
from .graph import LayerGraph, default_layers, explorable
from .store import KeyLocks

__all__ = [
    "ExploreConfig",
    "Explorer",
    "default_layers",
    "explorable",
]

#: the share of a model's layers before the last ones whose units get a "votes for" row
LATE_LAYERS = 0.75
_SCORE_BATCH = 32  # images per forward when the explorer scores a layer for its dataset examples



# ------------------------------------------------------------------------------------------ layers


# ------------------------------------------------------------------------------------------ config


class Explorer(LayerGraph):
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
        from ..optvis.cache import resolve_cache

        self.render_cache = resolve_cache(render_cache)
        self.cancelled = threading.Event()
        self.compute_lock = _ComputeLock(self.cancelled)
        self._memo: dict[str, OrderedDict] = {}
        self._memo_lock = threading.Lock()
        self._key_locks = KeyLocks()
        self._prefetched: dict[tuple, Any] = {}   # cases of units computed in one shared data pass (prefetch_cases)


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
        from ..stats import nmf_image, rgb_weights

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
        :func:`weightviz.banding_test`; ``None`` for 1x1 kernels."""
        from ..stats import banding_score, banding_test

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

    @_lru(8)
    def class_votes(self, layer: str) -> tuple[list[str], torch.Tensor] | None:
        """``(class names, [C_classes, C_layer])`` votes of ``layer``'s units for the classes
        (:func:`weightviz.expand.class_votes`), for the last explored layer when it lies in the last quarter
        of the model's layers (a vote through many linearized layers says little) and the weights name their
        classes; ``None`` otherwise (or when the head cannot be linearized)."""
        from ..expand import class_votes
        from ..models import class_names

        if self.next_layer(layer) is not None or self._order[layer] < LATE_LAYERS * len(self._order):
            return None
        names = class_names(self.model)
        if not names:
            return None
        try:
            with self.compute_lock:
                V = class_votes(self.model, layer)
        except WeightvizError:
            return None
        return (names, V.cpu()) if V.shape[0] == len(names) else None

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
        from ..stats import factor_colors

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
        from ..optvis import objectives as obj

        return self._render([obj.channel(layer, int(u)) for u in units])

    def render_directions(self, layer: str, vectors: Sequence[torch.Tensor]) -> torch.Tensor:
        """FVs of directions (vectors over ``layer``'s channels): ``[N, C, size, size]``."""
        from ..optvis import objectives as obj

        return self._render([obj.direction(layer, torch.as_tensor(v, dtype=torch.float32)) for v in vectors])

    # ------------------------------------------------------------------- cases (image set)
    @_lru(1)
    def image_set(self):
        """The image set of the cases panels (``config.images`` or the embedded set, ``case_images``
        images of ``case_size`` px, normalized for the model); :func:`weightviz.images`."""
        from ..data import images

        cfg = self.config
        return images(cfg.images, model=self.model, size=cfg.case_size, n=cfg.case_images, seed=cfg.seed)

    @_lru(256)
    def cases(self, layer: str, unit: int, src: str | None):
        """:func:`weightviz.cases` of ``unit``'s inputs from ``src`` over :meth:`image_set` (``config.cases``
        cases, ``top_k`` inputs and 4 examples each); raises :class:`WeightvizError` e.g. when the unit never
        fires on the images."""
        from ..conditioned import cases

        with self._memo_lock:
            done = self._prefetched.pop((layer, unit, src), None)
        if isinstance(done, Exception):
            raise done
        if done is not None:
            return done
        imgs = self.image_set()
        cfg = self.config
        with self.compute_lock:
            return cases(self.model, src, layer, unit, imgs, cfg.cases, k=cfg.top_k, n_examples=4, seed=cfg.seed)

    def prefetch_cases(self, layer: str, units: Sequence[int], src: str | None) -> None:
        """Compute the cases of several units of ``layer`` (those :meth:`cases` has not memoized) from ONE
        shared data pass (:func:`weightviz.data_weights` with the units: one forward over the image set, each
        unit's gradient from its cone), for the :meth:`cases` calls that follow; each unit's factorization
        (or its :class:`WeightvizError`) is kept until that call takes it."""
        from ..conditioned import cases, data_weights

        memo = self._memo.get("cases", {})
        with self._memo_lock:
            todo = [int(u) for u in units if (layer, int(u), src) not in memo and
                    (layer, int(u), src) not in self._prefetched]
        if len(todo) < 2:
            return
        imgs = self.image_set()
        cfg = self.config
        with self.compute_lock:
            try:
                data = data_weights(self.model, src, layer, todo, imgs)
            except WeightvizError:       # the per-unit calls raise it, one line each
                return
            done: dict[tuple, Any] = {}
            for u in todo:
                try:
                    done[(layer, u, src)] = cases(self.model, src, layer, u, imgs, cfg.cases, k=cfg.top_k, n_examples=4,
                                                  seed=cfg.seed, data=data.for_unit(u))
                except WeightvizError as e:
                    done[(layer, u, src)] = e
        with self._memo_lock:
            self._prefetched.update(done)

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
        from ..data import images

        cfg = self.config
        with self.compute_lock:
            imgs = images(cfg.images, model=self.model, seed=cfg.seed)
            if cfg.example_images is not None and cfg.example_images < len(imgs):
                imgs = images(cfg.images, model=self.model, n=cfg.example_images, seed=cfg.seed)
        return imgs

    @_lru(24)
    def layer_scores(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """Every unit's activation on every image of :meth:`image_set`: :func:`weightviz.conditioned.layer_scores`
        (values ``[N, C]``, positions ``[N, C, 2]``, output shape), one batched pass for the whole layer."""
        from ..conditioned import layer_scores

        imgs = self.example_image_set()
        with self.compute_lock:  # a fixed batch, not the device default: with batches of 4 the scores of local
            # (2 threads) and Ray (1 thread) builds differed in the last bits; the tests compare sites byte for byte
            return layer_scores(self.model, layer, imgs, batch_size=_SCORE_BATCH)

    @_lru(256)
    def unit_examples(self, layer: str, unit: int):
        """The dataset examples of ``unit`` (:class:`weightviz.TopExamples`, ``config.examples`` of them),
        from the layer's memoized scores (no forward per unit)."""
        from ..conditioned import select

        values, positions, shape = self.layer_scores(layer)
        imgs = self.example_image_set()
        with self.compute_lock:
            return select(self.model, layer, unit, imgs, values, positions, shape, self.config.examples, warn=False)


Linker = Callable[[str, int], "str | None"]

"""A unit's top classes: the expanded weights from a unit to each logit, through the linearized head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WeightvizError
from ..models import class_names, fixed_input_size, input_spec, layers, resolve
from .expanded import expanded_weights

__all__ = ["TopClasses", "class_votes", "classifier_layer", "top_classes"]


@dataclass
class TopClasses:
    """A unit's votes for the classes: ``indices``/``values``/``names`` of the ``k`` largest expanded
    weights to the logits (descending) and ``bottom`` (the ``k`` most negative, ascending)."""

    layer: str
    unit: int
    classifier: str
    indices: list[int]
    values: list[float]
    names: list[str] | None
    bottom: TopClasses | None = None
    all_values: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self) -> list[tuple[int, float, str]]:
        names = self.names or [""] * len(self.indices)
        return list(zip(self.indices, self.values, names))


def classifier_layer(model: nn.Module) -> str:
    """The layer whose outputs are the logits: timm's ``get_classifier()``, else the last ``nn.Linear`` (or
    1x1 conv classifier) in module order."""
    named = dict(model.named_modules())
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            clf = get()
        except Exception:  # noqa: BLE001
            clf = None
        for name, m in named.items():
            if m is clf and isinstance(m, (nn.Linear, nn.Conv2d)):
                return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise WeightvizError("the model has no linear classifier (no nn.Linear): top classes need its logits")
    return last


def class_votes(model, layer: str, *, classifier: str | None = None) -> torch.Tensor:
    """``[C_classes, C_layer]``: for every unit of ``layer``, its expanded weight to each logit summed over
    the unit's positions, through the linearized head (one expansion for all units of the layer)."""
    model = resolve(model)
    layers(model)[layer]  # a one-line error with suggestions for an unknown layer
    clf = classifier or classifier_layer(model)
    size = fixed_input_size(model) or input_spec(model).size
    E = expanded_weights(model, layer, clf, input_size=size)  # [C_cls, C_src, ...positions]
    return E.reshape(E.shape[0], E.shape[1], -1).sum(-1).detach().float()


def rank_classes(values: torch.Tensor, names: list[str] | None, k: int, layer: str = "", unit: int = 0,
                 classifier: str = "") -> TopClasses:
    """The :class:`TopClasses` of one unit's votes ``values`` ``[C_classes]``."""
    k = max(1, min(int(k), values.numel()))
    if names is not None and len(names) != values.numel():
        names = None

    def pick(largest: bool) -> TopClasses:
        vals, idx = values.topk(k, largest=largest)
        idx_l = idx.tolist()
        return TopClasses(layer, int(unit), classifier, idx_l, vals.tolist(),
                          [names[i] for i in idx_l] if names else None)

    top = pick(True)
    top.bottom = pick(False)
    top.all_values = values
    return top


def top_classes(model, layer: str, unit: int, k: int = 10, *, classifier: str | None = None) -> TopClasses:
    """The classes ``layer``'s ``unit`` votes for: the expanded weight from the unit to each logit, summed
    over the unit's positions, through the linearized head (global pool, classifier).

    For a layer feeding global-average-pool + a linear classifier this is the classifier's column
    ``fc.weight[:, unit]``. ``.names`` come from :func:`~weightviz.models.class_names` (``None`` when unknown).
    """
    model = resolve(model)
    table = layers(model)
    table[layer]
    n_src = table[layer].out_channels
    if n_src is None or not 0 <= int(unit) < n_src:
        raise WeightvizError(f"unit {unit} is out of range for {layer!r} ({n_src} channels)")
    clf = classifier or classifier_layer(model)
    V = class_votes(model, layer, classifier=clf)
    return rank_classes(V[:, int(unit)], class_names(model), k, layer, unit, clf)

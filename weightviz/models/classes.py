"""Class names of a model's output logits, from the metadata of the weights it was loaded with."""

from __future__ import annotations

from torch import nn

__all__ = ["class_names"]


def _imagenet(subset: str = "imagenet-1k") -> list[str] | None:
    try:
        from timm.data import ImageNetInfo
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return list(ImageNetInfo(subset).label_descriptions())


def class_names(model: nn.Module) -> list[str] | None:
    """The names of the model's classes (one per logit), or ``None`` when unknown.

    torchvision weights: ``weights.meta["categories"]``; timm pretrained weights: timm's ImageNet info
    (``infer_imagenet_subset``: ImageNet-1k, 22k, ...); the embedded lite0: the ImageNet-1k labels. A
    randomly initialized model has none.
    """
    if getattr(model, "weightviz_random_init", False):
        return None
    weights = getattr(model, "weightviz_weights", None)
    if weights is not None:
        cats = getattr(weights, "meta", {}).get("categories")
        return list(cats) if cats else None
    if getattr(model, "pretrained_cfg", None) and type(model).__module__.startswith("timm."):
        try:
            from timm.data import infer_imagenet_subset
        except ImportError:  # pragma: no cover
            return None
        subset = infer_imagenet_subset(model)
        if subset:
            names = _imagenet(subset)
            if names and len(names) == getattr(model, "num_classes", len(names)):
                return names
    return None

"""Reading the arguments of intercepted torch calls (shared by the linearizer and its gate rules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["arg", "inplace_method", "leaves"]


def leaves(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from leaves(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from leaves(o)


def inplace_method(key: str) -> bool:
    """``relu_``, ``add_``, ...: the in-place form of a method (not a dunder such as ``__add__``)."""
    return key.endswith("_") and not key.startswith("__")


def arg(args: tuple, kwargs: dict, index: int | None, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    if index is not None and len(args) > index:
        return args[index]
    return default

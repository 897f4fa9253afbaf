"""Disk cache of rendered images, so figures and the explorer never render the same thing twice.

One entry per rendered item: key = SHA-256 of (model weights hash, objective key, every render
parameter, engine version). Entries are ``.safetensors`` files holding the float image ``[C, H, W]``
and the objective value, written atomically; a corrupt entry counts as a miss.

Location: ``RenderCache(path)``, default ``models.default_cache_dir() / "renders"``
(``$WEIGHTVIZ_CACHE/renders`` or ``~/.cache/weightviz/renders``).

>>> cache = RenderCache("/tmp/wv-renders")            # doctest: +SKIP
>>> wv.render(model, obj.channel("blocks.4.0", 3), cache=cache)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ..errors import WeightvizError
from ..utils.io import atomic_path

__all__ = ["RenderCache", "resolve_cache"]


class RenderCache:
    """A directory of cached renders. ``get(key)`` -> ``(image [C, H, W], value)`` or ``None``."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        if path is None:
            from ..models import default_cache_dir

            path = default_cache_dir() / "renders"
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise WeightvizError(f"render cache {str(self.path)!r} exists and is not a directory")

    def __repr__(self) -> str:
        return f"RenderCache({str(self.path)!r})"

    @staticmethod
    def key(model_hash: str, objective_key: str, params: dict) -> str:
        """The entry key: hex SHA-256 of model hash, objective key and the render parameters."""
        blob = json.dumps({"model": model_hash, "objective": objective_key, "params": params},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[torch.Tensor, float] | None:
        f = self._file(key)
        if not f.is_file():
            return None
        from safetensors.torch import load_file

        try:
            d = load_file(str(f))
            return d["image"], float(d["value"])
        except Exception:  # corrupt or foreign file: treat as a miss, it will be overwritten
            return None

    def put(self, key: str, image: torch.Tensor, value: float, description: str = "") -> None:
        from safetensors.torch import save_file

        f = self._file(key)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WeightvizError(f"cannot create render cache directory {str(f.parent)!r}: {e.strerror}") from None
        tensors = {"image": image.detach().float().cpu().contiguous(), "value": torch.tensor(float(value))}
        with atomic_path(f) as tmp:
            save_file(tensors, str(tmp), metadata={"objective": description[:1000]})

    def __contains__(self, key: str) -> bool:
        return self._file(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.path.glob("*/*.safetensors")) if self.path.is_dir() else 0

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        n = 0
        if self.path.is_dir():
            for f in self.path.glob("*/*.safetensors"):
                f.unlink(missing_ok=True)
                n += 1
        return n


def resolve_cache(cache) -> RenderCache | None:
    """A ``cache=`` argument -> a :class:`RenderCache` or ``None``: ``None``/``False`` none, ``True`` the
    default directory, a path, or a cache itself."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return RenderCache()
    if isinstance(cache, RenderCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return RenderCache(cache)
    raise WeightvizError(f"cache must be None, True, a path or a RenderCache, got {type(cache).__name__}")

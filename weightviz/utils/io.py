"""Atomic file output and safe tensor-file input (private helpers)."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import WeightvizError

__all__ = ["atomic_path", "load_state_dict", "save_tensors"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Nothing half-written is ever left at ``path``: on error the temporary file is removed.
    Raises :class:`WeightvizError` if the target directory does not exist or is not writable.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise WeightvizError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    suffix = suffix if suffix is not None else path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=parent)
    except OSError as e:
        raise WeightvizError(f"cannot write {str(path)!r}: {e.strerror}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save named tensors to a ``.safetensors`` file atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    return path


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a PyTorch file, never executing pickled code.

    PyTorch files are read with ``torch.load(weights_only=True)``; a checkpoint that nests the
    state dict under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is unwrapped.
    Raises :class:`WeightvizError` for a missing, corrupt or code-carrying file.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightvizError(f"weights file {str(path)!r} is a directory; give the .safetensors or .pth file in it")
    if not path.is_file():
        raise WeightvizError(f"weights file not found: {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises several types for corrupt headers
            raise WeightvizError(f"cannot read {str(path)!r} as safetensors: {_first_line(e)}") from None
    else:
        sd = _torch_load(path)
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightvizError(f"{str(path)!r} does not hold a state dict (name -> tensor)")
    return sd


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` with messages of our own: torch's warnings are kept off stderr and
    its advice (ANSI-coloured, suggesting ``weights_only=False``) is never passed on."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise WeightvizError(f"cannot read {str(path)!r}: {e.strerror}") from None
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):  # neither torch's zip format nor a (legacy) pickle
        raise WeightvizError(
            f"{str(path)!r} is not a weights file (neither .safetensors nor a PyTorch .pth/.pt file); pass a "
            "state dict saved with torch.save(model.state_dict(), path) or a .safetensors file"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # the class/function the pickle would import
        name = found.group(1) if found else (None if is_zip else _pickle_global(path))
        if name is None:
            raise WeightvizError(f"{str(path)!r} is not a readable PyTorch weights file: it is corrupt or "
                                 "truncated") from None
        raise WeightvizError(
            f"refusing to load {str(path)!r}: it holds pickled Python objects, not only tensors (it references "
            f"{name}), and pickles are never loaded here; save model.state_dict() instead (or use .safetensors)"
        ) from None
    except Exception:  # noqa: BLE001 - torch raises many types for damaged files
        raise WeightvizError(f"{str(path)!r} is not a readable PyTorch weights file: it is corrupt or "
                             "truncated") from None


def _pickle_global(path: Path) -> str | None:
    """The first class/function a plain pickle file would import, read with :mod:`pickletools` (which
    only parses opcodes, never runs them); ``None`` if there is none or the file is not a pickle."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle (or a damaged one)
        return None
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__

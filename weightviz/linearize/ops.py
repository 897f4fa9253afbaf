"""The linearizer's op tables: which torch calls are identities, gates, max-pools, linear in their first
argument, merges (sums, concatenations), products or shape-only (see :mod:`weightviz.linearize.linearizer`
for what each becomes), and the names of intercepted callables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["ADAPTIVE_MAX_POOLS", "ADD_BINARY", "CAT", "GATE_INPLACE_ARG", "IDENTITY_INPLACE_ARG", "LINEAR_FIRST",
           "MAX_POOLS", "MULTILINEAR", "Merge", "OTHER_ADDITIVE", "SHAPE_ONLY", "SHAPE_SECOND", "WEIGHTED",
           "op_key", "op_name"]

# ------------------------------------------------------------------------------------------ op tables
# Activations replaced by the identity; value = position of the positional ``inplace`` argument.
IDENTITY_INPLACE_ARG: dict[str, int | None] = {
    "relu": 1, "relu6": 1, "hardtanh": 3, "clamp": None, "clip": None, "clamp_min": None,
    "clamp_max": None, "threshold": 3, "leaky_relu": 2, "prelu": None, "rrelu": 4, "elu": 2, "celu": 2,
    "gelu": None, "silu": 1, "mish": 1, "hardswish": 1, "softplus": None,
    "dropout": 3, "dropout1d": 3, "dropout2d": 3, "dropout3d": 3, "alpha_dropout": 3,
    "feature_alpha_dropout": 3, "feature_dropout": 3, "local_response_norm": None,
}
GATE_INPLACE_ARG: dict[str, int | None] = {"sigmoid": None, "hardsigmoid": 1}
MAX_POOLS = {
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3,
    "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2, "max_pool3d_with_indices": 3,
}
ADAPTIVE_MAX_POOLS = {
    "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3,
    "adaptive_max_pool1d_with_indices": 1, "adaptive_max_pool2d_with_indices": 2,
    "adaptive_max_pool3d_with_indices": 3,
}
# Linear in the first argument; every other tensor argument must be untracked.
LINEAR_FIRST = {
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
    "batch_norm", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "pad", "constant_pad_nd", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "grid_sample", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle", "view", "reshape", "flatten", "unflatten", "permute", "transpose", "t",
    "contiguous", "squeeze", "unsqueeze", "expand", "repeat", "narrow", "select", "chunk", "split",
    "split_with_sizes", "tensor_split", "unbind", "clone", "to", "float", "double", "half", "bfloat16",
    "type", "cpu", "cuda", "roll", "flip", "fliplr", "flipud", "rot90", "unfold", "fold", "movedim",
    "moveaxis", "swapaxes", "swapdims", "sum", "mean", "cumsum", "neg", "negative", "positive",
    "__neg__", "__pos__", "diagonal", "tile", "gather", "index_select", "take", "masked_fill",
    "masked_fill_", "__getitem__", "real", "conj", "div", "div_", "divide", "true_divide",
    "__truediv__", "__itruediv__", "__div__", "requires_grad_", "retain_grad",
    "__get__:T", "__get__:mT", "__get__:H", "__get__:mH", "__get__:real",
}
# Linear ops with weights (replaced by positive stand-ins in structural mode).
WEIGHTED = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
             "linear", "batch_norm"}
# Linear in the first argument; the second is only read for its shape/dtype.
SHAPE_SECOND = {"view_as", "reshape_as", "expand_as", "type_as"}
# Sums / concatenations: any number of tracked operands (these are the "merges" of routes).
ADD_BINARY = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__",
               "__isub__", "rsub", "subtract"}
CAT = {"cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack"}
OTHER_ADDITIVE = {"where", "__setitem__", "copy_"}
# Products: linear when exactly one tensor operand is tracked.
MULTILINEAR = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__",
                "__rmatmul__", "mm", "bmm", "einsum", "outer", "tensordot", "kron"}
# Results do not depend on the values (untracked output).
SHAPE_ONLY = {
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim", "numel", "nelement",
    "ndimension", "stride", "is_contiguous", "is_floating_point", "is_complex", "element_size",
    "__len__", "data_ptr", "storage_offset", "get_device", "__format__", "__repr__", "detach",
    "detach_", "__hash__",
}

Merge = Callable[[str, Sequence[torch.Tensor]], "int | None"]


def op_name(func: Any) -> str:
    """A readable name of a torch callable: ``torch.softmax``, ``Tensor.relu_``, ``torch.nn.functional.gelu``."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":
        return f"Tensor.{getattr(getattr(func, '__self__', None), '__name__', '?')}"
    qual = getattr(func, "__qualname__", "") or ""
    mod = getattr(func, "__module__", None)
    if qual.startswith(("TensorBase.", "Tensor.")) or mod is None:
        return f"Tensor.{name}"
    if mod in ("torch", "torch._C._VariableFunctions") or qual.startswith("_VariableFunctionsClass"):
        return f"torch.{name}"
    if mod == "torch._C._nn":
        return f"torch.nn.functional.{name}"
    return f"{mod}.{name}"


def op_key(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return "__get__:" + str(getattr(getattr(func, "__self__", None), "__name__", ""))
    return name

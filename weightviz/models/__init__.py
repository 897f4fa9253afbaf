"""Models: loading by spec (:mod:`.load`), the layer table and weights (:mod:`.layers`), inputs and
preprocessing (:mod:`.inputs`), devices (:mod:`.device`), token layouts (:mod:`.tokens`) and the hooks
that read layer outputs inside a context (:mod:`.hooks`)."""

from . import tokens
from .classes import class_names
from .device import DEVICE_CHOICES, device_dtype, model_device, resolve_device, to_device
from .hooks import Capture, activations, frozen, probe_shapes
from .inputs import InputSpec, fixed_input_size, input_spec, preprocess, sequence_channels
from .layers import (
    CONV1D_TYPES,
    LayerInfo,
    LayerTable,
    conv1d_map,
    get_module,
    has_conv1d,
    layers,
    parse_units,
    refuse_conv1d,
    weights,
)
from .load import (
    DEFAULT_MODEL,
    check_finite,
    default_cache_dir,
    is_random_init,
    load_model,
    model_hash,
    model_label,
    model_name,
    resolve,
    weights_source,
)

__all__ = [
    "activations", "Capture", "check_finite", "class_names", "conv1d_map", "CONV1D_TYPES",
    "default_cache_dir", "DEFAULT_MODEL", "DEVICE_CHOICES", "device_dtype", "fixed_input_size", "frozen",
    "get_module", "has_conv1d", "input_spec", "InputSpec", "is_random_init", "LayerInfo", "layers",
    "LayerTable", "load_model", "model_device", "model_hash", "model_label", "model_name", "parse_units",
    "preprocess", "probe_shapes", "refuse_conv1d", "resolve", "resolve_device", "sequence_channels",
    "to_device", "tokens", "weights", "weights_source",
]

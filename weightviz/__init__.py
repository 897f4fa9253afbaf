"""weightviz: see the weights of neural networks (PyTorch).

One-sided NMF images of neurons, expanded weights through any model, feature visualization of units
and directions, the figures of the Distill article "Visualizing Weights" (Voss et al., 2021), and a
circuit explorer.

>>> import weightviz as wv
>>> model = wv.load_model()                      # embedded EfficientNet-Lite0, ImageNet weights
>>> W = wv.weights(model, "blocks.6.0.conv_pwl")   # [C_out, C_in, kh, kw]
>>> W.shape
torch.Size([320, 1152, 1, 1])

Public names are imported lazily so that ``import weightviz`` (and the CLI) start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import WeightvizError, WeightvizWarning

__version__ = "0.1.0"

# public name -> module that defines it (one place; the CLI and docs read the same API)
_EXPORTS: dict[str, str] = {
    # models
    "load_model": "models",
    "layers": "models",
    "weights": "models",
    "get_module": "models",
    "input_spec": "models",
    "fixed_input_size": "models",
    "preprocess": "models",
    "parse_units": "models",
    "model_hash": "models",
    "resolve_device": "models",
    "to_device": "models",
    "InputSpec": "models",
    "LayerInfo": "models",
    "LayerTable": "models",
    "class_names": "models",
    "is_random_init": "models",
    "weights_source": "models",
    # factorization
    "nmf": "stats",
    "nmf_image": "stats",
    "rgb_weights": "stats",
    # expanded weights
    "expanded_weights": "expand",
    "top_inputs": "expand",
    "rank_connections": "expand",
    "receptive_field": "expand",
    "Expanded": "expand",
    "Connection": "expand",
    "ReceptiveField": "expand",
    "top_classes": "expand",
    "TopClasses": "expand",
    "linearized": "linearize",
    # data-conditioned connections
    "data_weights": "conditioned",
    "cases": "conditioned",
    "DataWeights": "conditioned",
    "Cases": "conditioned",
    # feature visualization
    "render": "optvis.render",
    "RenderResult": "optvis.render",
    "RenderCache": "optvis.cache",
    "render_dir": "explore.bulk",
    # image sets
    "images": "data",
    "ImageSet": "data",
    "as_images": "data",
    # dataset examples and best-case excitation
    "top_examples": "conditioned",
    "TopExamples": "conditioned",
    "best_case": "conditioned",
    "BestCase": "conditioned",
    # analysis
    "banding_score": "stats",
    "banding_test": "stats",
    "scan_banding": "stats",
    "long_tail": "stats",
}
_SUBMODULES = {"objectives": "optvis.objectives", "figures": "figures", "optvis": "optvis", "explore": "explore",
               "testing": "testing"}

__all__ = ["WeightvizError", "WeightvizWarning", "__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'weightviz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .models import (  # noqa: F401
        InputSpec,
        LayerInfo,
        LayerTable,
        get_module,
        input_spec,
        layers,
        load_model,
        model_hash,
        parse_units,
        preprocess,
        weights,
    )

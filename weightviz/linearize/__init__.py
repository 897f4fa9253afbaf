"""The linearized model: :func:`linearized` (a torch-function mode, :mod:`.linearizer`, with its op
tables in :mod:`.ops`), the frozen statistics of norms and attention (:mod:`.norms`), and the op tape that
expanded weights are composed on (:mod:`.compose`, with conv cones :mod:`.cone` and map geometry
:mod:`.geometry`)."""

from . import compose, cone, geometry, norms, ops
from .linearizer import DEFAULT_GATE, Linearizer, linearized

__all__ = ["DEFAULT_GATE", "Linearizer", "compose", "cone", "geometry", "linearized", "norms", "ops"]

"""Expanded weights: :func:`expanded_weights` between any two layers (composed on the op tape, autograd
for the rest; token layers in :mod:`.tokens`), :func:`top_inputs` and :func:`rank_connections`, the
receptive fields they are computed on (:mod:`.field`), and a unit's votes for the classes (:mod:`.classes`)."""

from ._trace import reference_paths
from .classes import TopClasses, class_votes, classifier_layer, rank_classes, top_classes
from .expanded import Connection, Expanded, expanded_weights, rank_connections, top_inputs
from .field import ReceptiveField, receptive_field

__all__ = ["Connection", "Expanded", "ReceptiveField", "TopClasses", "class_votes", "classifier_layer",
           "expanded_weights", "rank_classes", "rank_connections", "receptive_field", "reference_paths",
           "top_classes", "top_inputs"]

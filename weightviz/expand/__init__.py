"""Expanded weights: :func:`expanded_weights` between any two layers (composed on the op tape, autograd
for the rest; token layers in :mod:`.tokens`), :func:`top_inputs` and :func:`rank_connections`, and the
receptive fields they are computed on (:mod:`.field`)."""

from .classes import TopClasses, class_votes, classifier_layer, rank_classes, top_classes
from .expanded import Connection, Expanded, expanded_weights, rank_connections, top_inputs
from .field import ReceptiveField, receptive_field

__all__ = ["TopClasses", "class_votes", "classifier_layer", "rank_classes", "top_classes", "Connection", "Expanded", "ReceptiveField", "expanded_weights", "rank_connections", "receptive_field",
           "top_inputs"]

"""Data-conditioned connections: per-example gradients and their cases (:mod:`.connections`), dataset
examples of a unit (:mod:`.examples`) and best-case excitation of a connection (:mod:`.bestcase`)."""

from .bestcase import STEPS, BestCase, best_case
from .connections import Cases, DataWeights, cases, data_weights
from .examples import TopExamples, layer_scores, select, top_examples

__all__ = ["STEPS", "BestCase", "Cases", "DataWeights", "TopExamples", "best_case", "cases", "data_weights",
           "layer_scores", "select", "top_examples"]

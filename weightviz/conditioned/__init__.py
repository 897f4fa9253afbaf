"""Data-conditioned connections: per-example gradients (:mod:`.per_example`) and their cases
(:mod:`.cases_nmf`), dataset examples of a unit (:mod:`.examples`) and best-case excitation of a
connection (:mod:`.bestcase`)."""

from .bestcase import STEPS, BestCase, best_case
from .cases_nmf import STABILITY_WARN, Cases, cases
from .examples import TopExamples, layer_scores, select, top_examples
from .per_example import OUTSIDE_WARN, DataWeights, data_weights

__all__ = ["OUTSIDE_WARN", "STABILITY_WARN", "STEPS", "BestCase", "Cases", "DataWeights", "TopExamples", "best_case",
           "cases", "data_weights", "layer_scores", "select", "top_examples"]

"""Data-conditioned connections: per-example gradients between two layers (:mod:`.per_example`:
:func:`data_weights`, :class:`DataWeights`) and the cases they fall into (:mod:`.cases_nmf`: :func:`cases`,
:class:`Cases`). This module gathers both names (the place they were defined before the split)."""

from __future__ import annotations

from .cases_nmf import STABILITY_WARN, CaseExamples, Cases, cases
from .per_example import OUTSIDE_WARN, DataWeights, data_weights

__all__ = ["OUTSIDE_WARN", "STABILITY_WARN", "CaseExamples", "Cases", "DataWeights", "cases", "data_weights"]

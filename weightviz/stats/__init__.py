"""Statistics of weights: one-sided NMF (:mod:`.factor`), the banding score (:mod:`.anova`), the banding
test (:mod:`.banding`) and scan of a model (:mod:`.scan`), and the long tail of a neuron's inputs
(:mod:`.longtail`). Their pictures are in :mod:`weightviz.figures`."""

from .anova import anova_energies, banding_score
from .banding import BandingResult, banding_test
from .factor import factor_colors, nmf, nmf_image, rgb_weights
from .longtail import LongTail, long_tail
from .scan import BandingScan, LayerBanding, banding_layers, scan_banding

__all__ = ["BandingResult", "BandingScan", "LayerBanding", "LongTail", "anova_energies", "banding_layers",
           "banding_score", "banding_test", "factor_colors", "long_tail", "nmf", "nmf_image", "rgb_weights",
           "scan_banding"]

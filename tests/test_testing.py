"""weightviz.testing, the slow reference: its crop and timings options, and agreement with
expanded_weights on the tiny net (two independent implementations)."""

from __future__ import annotations

import torch

import weightviz as wv
from weightviz.testing import hand_linearized, slow_expanded_weights


def test_slow_reference_crop_timings_and_agreement(tiny):
    rf = wv.receptive_field(tiny, "conv2", "conv1", input_size=16)
    (r0, c0), (kh, kw) = rf.start, rf.size
    timings: dict = {}
    full = slow_expanded_weights(tiny, "conv1", "conv2", [0, 3], 16)
    cut = slow_expanded_weights(tiny, "conv1", "conv2", [0, 3], 16, crop=(r0, c0, kh, kw), timings=timings)
    assert full.shape == (2, 8, 16, 16) and cut.shape == (2, 8, kh, kw)
    assert torch.equal(cut, full[..., r0:r0 + kh, c0:c0 + kw])
    assert float(full.abs().sum()) == float(cut.abs().sum())   # nothing outside the field
    assert timings["forward_s"] > 0 and timings["backward_s"] > 0
    ours = wv.expanded_weights(tiny, "conv1", "conv2", units=[0, 3], input_size=16)
    torch.testing.assert_close(ours, cut, rtol=1e-5, atol=1e-6)


def test_hand_linearized_is_a_copy(tiny):
    lin = hand_linearized(tiny)
    assert lin is not tiny and isinstance(lin.relu, torch.nn.Identity)
    assert isinstance(tiny.relu, torch.nn.ReLU)

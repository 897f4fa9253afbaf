"""Objectives: values against hand-written loops, composition identities, keys, validation errors."""

from __future__ import annotations

import pytest
import torch

from weightviz import objectives as obj
from weightviz.errors import WeightvizError


@pytest.fixture
def acts():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 5, 4, 6, generator=g), "b": torch.randn(3, 7, 3, 3, generator=g),
            "fc": torch.randn(3, 10, generator=g)}


def test_channel_and_neuron_values(acts):
    a = acts["a"]
    for i in range(3):
        assert obj.channel("a", 2)(acts)[i] == pytest.approx(float(sum(a[i, 2, y, x] for y in range(4) for x in range(6)) / 24), abs=1e-6)
    torch.testing.assert_close(obj.neuron("a", 4)(acts), a[:, 4, 1, 2])          # centre ((4-1)//2, (6-1)//2)
    torch.testing.assert_close(obj.neuron("a", 4, x=5, y=0)(acts), a[:, 4, 0, 5])
    torch.testing.assert_close(obj.channel("fc", 9)(acts), acts["fc"][:, 9])
    torch.testing.assert_close(obj.neuron("fc", 3)(acts), acts["fc"][:, 3])


def test_direction_values_against_loops(acts):
    a = acts["a"]
    v = torch.randn(5, generator=torch.Generator().manual_seed(1))
    ref = torch.zeros(3)
    ref_cos = torch.zeros(3)
    for i in range(3):
        for y in range(4):
            for x in range(6):
                vec = a[i, :, y, x]
                dot = float((vec * v).sum())
                cos = dot / float(vec.norm() * v.norm())
                ref[i] += dot / 24
                ref_cos[i] += dot * max(cos, 0.1) ** 2 / 24
    torch.testing.assert_close(obj.direction("a", v)(acts), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(obj.direction("a", v, cosine_power=2)(acts), ref_cos, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(obj.direction_neuron("a", v, x=3, y=2)(acts), (a[:, :, 2, 3] * v).sum(1))
    torch.testing.assert_close(obj.direction_neuron("a", v.tolist())(acts), (a[:, :, 1, 2] * v).sum(1))


def test_one_hot_direction_is_channel(acts):
    onehot = torch.zeros(5)
    onehot[3] = 1
    torch.testing.assert_close(obj.direction("a", onehot)(acts), obj.channel("a", 3)(acts))
    torch.testing.assert_close(obj.direction_neuron("a", onehot, 1, 2)(acts), obj.neuron("a", 3, 1, 2)(acts))


def test_composition(acts):
    c, n = obj.channel("a", 1), obj.neuron("b", 2)
    torch.testing.assert_close((c + n)(acts), c(acts) + n(acts))
    torch.testing.assert_close((c - 2 * n)(acts), c(acts) - 2 * n(acts))
    torch.testing.assert_close((-c)(acts), -c(acts))
    torch.testing.assert_close((c / 4 + 1.5)(acts), c(acts) / 4 + 1.5)
    torch.testing.assert_close((3 - c)(acts), 3 - c(acts))
    total = sum(obj.channel("a", k) for k in range(5))
    torch.testing.assert_close(total(acts), acts["a"].mean((2, 3)).sum(1))
    assert (c + n).layers == ("a", "b") and (c + c).layers == ("a",)
    assert repr(c - 0.5 * n) == "channel('a', 1) - 0.5 * neuron('b', 2)"
    assert repr(c - (n + c)) == "channel('a', 1) - (neuron('b', 2) + channel('a', 1))"


def test_keys_identify_objectives():
    v = torch.arange(5.0)
    assert obj.direction("a", v).key == obj.direction("a", v.tolist()).key
    assert obj.direction("a", v).key != obj.direction("a", v + 1).key
    assert obj.direction("a", v).key != obj.direction("a", v, cosine_power=1).key
    assert obj.neuron("a", 1).key != obj.neuron("a", 1, 0, 0).key
    assert obj.channel("a", 1).key != obj.channel("a", 2).key


def test_construction_errors():
    with pytest.raises(WeightvizError, match="non-negative integer, got -1"):
        obj.channel("a", -1)
    with pytest.raises(WeightvizError, match="non-negative integer, got 1.5"):
        obj.neuron("a", 1.5)
    with pytest.raises(WeightvizError, match="layer must be a non-empty layer name"):
        obj.channel(3, 1)
    with pytest.raises(WeightvizError, match="all zeros"):
        obj.direction("a", torch.zeros(4))
    with pytest.raises(WeightvizError, match=r"1-D vector \[C\], got shape \(2, 3\)"):
        obj.direction("a", torch.ones(2, 3))
    with pytest.raises(WeightvizError, match="NaN"):
        obj.direction("a", [1.0, float("nan")])
    with pytest.raises(WeightvizError, match="cannot multiply two objectives"):
        obj.channel("a", 1) * obj.channel("a", 2)
    with pytest.raises(TypeError):
        obj.channel("a", 1) + "x"


def test_check_against_shapes():
    shapes = {"a": (5, 4, 6), "fc": (10,)}
    obj.channel("a", 4).check(shapes)
    with pytest.raises(WeightvizError, match=r"unit 5 out of range: layer 'a' has 5 channels \(0..4\)"):
        obj.channel("a", 5).check(shapes)
    with pytest.raises(WeightvizError, match="direction has length 4 but layer 'a' has 5 channels"):
        obj.direction("a", torch.ones(4)).check(shapes)
    with pytest.raises(WeightvizError, match="outside layer 'a' output of height 4, width 6"):
        obj.neuron("a", 0, x=6).check(shapes)
    with pytest.raises(WeightvizError, match="no spatial positions"):
        obj.neuron("fc", 0, x=0, y=0).check(shapes)
    with pytest.raises(WeightvizError, match="unit 7 out of range"):
        (obj.channel("a", 1) + obj.channel("a", 7)).check(shapes)

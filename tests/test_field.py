"""Receptive fields from one traced forward (weightviz._geometry) against the real probes at every size
the search asks for, forward counts of a first call, fixed-input-size models (issue 13)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import weightviz as wv
from weightviz.errors import WeightvizError
from weightviz.expand import _trace
from weightviz.expand import expanded as ex
from weightviz.expand import field as _field


def probe_search(model, src, dst):
    """The reference: the search on real forwards (a tape or structural probe per size)."""
    return _field._search(lambda n: _field._probe(model, src, dst, n), src, dst)


def fast(model, src, dst):
    return _field._fast_search(model, src, dst, None)


@pytest.mark.parametrize("fixture, src, dst", [
    ("lite0", "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl"), ("lite0", "blocks.2.0", "blocks.3.0"),
    ("lite0", None, "blocks.1.0"), ("lite0", "blocks.4.0", "blocks.5.0"), ("lite0", "conv_stem", "blocks.0.0.conv_dw"),
    ("lite0", "blocks.0.0", "blocks.2.0.conv_dw"), ("lite0", "blocks.5.3", "blocks.6.0.conv_pwl"),
    ("googlenet", "maxpool2", "inception3a"), ("googlenet", "inception3a", "inception4a"), ("googlenet", None, "inception3a"),
    ("googlenet", "inception4e", "inception5b"),
    ("resnet18", "layer1.0", "layer2.0"), ("resnet18", None, "layer3.1"), ("resnet18", "layer2.1", "layer4.0.conv1"),
])
def test_fields_from_one_trace_equal_the_probes(request, fixture, src, dst):
    model = request.getfixturevalue(fixture)
    got = fast(model, src, dst)
    assert got is not None        # these models are sized from the trace (TF-SAME pads, ceil-mode pools, ...)
    assert got == probe_search(model, src, dst)


class Stack(nn.Module):
    """A random conv stack: convs (stride, dilation, padding), TF-SAME pads (timm Conv2dSame), ceil-mode
    and padded max-pools, a residual add and a concat; the layers are named l0, l1, ..."""

    def __init__(self, layers):
        super().__init__()
        self.specs = layers
        c = 3
        for i, (kind, k, s, d, p) in enumerate(layers):
            if kind in ("conv", "same"):
                setattr(self, f"l{i}", nn.Conv2d(c, 4, k, stride=s, dilation=d, padding=p if kind == "conv" else 0))
                c = 4
            elif kind == "pool":
                setattr(self, f"l{i}", nn.MaxPool2d(k, s, padding=min(p, k // 2), ceil_mode=bool(d - 1)))
            else:   # "res": a 3x3 conv added to its input, then concatenated with it
                setattr(self, f"l{i}", nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        from timm.layers.padding import pad_same

        for i, (kind, k, s, d, _p) in enumerate(self.specs):
            m = getattr(self, f"l{i}")
            if kind == "same":
                x = m(pad_same(x, (k, k), (s, s), (d, d)))
            elif kind == "res":
                y = m(x) + x
                x = torch.cat([y, x], 1)[:, :4] if x.shape[1] == 4 else y
            else:
                x = m(x)
        return x


layer = st.tuples(st.sampled_from(["conv", "same", "pool", "res"]), st.integers(1, 4), st.integers(1, 3),
                  st.integers(1, 2), st.integers(0, 2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(layer, min_size=2, max_size=6), data=st.data())
def test_random_stacks_fast_field_equals_probe_search(layers, data):
    torch.manual_seed(0)
    model = Stack(layers).eval()
    n = len(layers)
    i = data.draw(st.integers(-1, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    src, dst = (None if i < 0 else f"l{i}"), f"l{j}"
    try:
        ref = probe_search(model, src, dst)
    except WeightvizError:
        return     # e.g. a map that vanishes at every size: nothing to compare
    got = fast(model, src, dst)
    if got is not None:            # None: the geometry could not tell (the probes then run)
        assert got == ref


class Resized(nn.Module):
    """An interpolation before src: map sizes the geometry cannot derive."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, stride=2)
        self.c = nn.Conv2d(4, 2, 3)

    def forward(self, x):
        x = F.interpolate(self.a(x), scale_factor=0.75)
        return self.c(self.b(x))


def test_unsizable_prefix_falls_back_to_probes():
    model = Resized().eval()
    assert fast(model, "b", "c") is None
    _field._RF_CACHE.clear()
    assert wv.receptive_field(model, "c", "b") == probe_search(model, "b", "c")


def test_first_call_runs_two_forwards_and_reuses_the_second(lite0, monkeypatch):
    """Field from the geometry trace at 32 (no convolution runs), one real forward at the size found (a check),
    reused for the weights."""
    import copy

    model = copy.deepcopy(lite0)
    calls = []
    orig = _trace.forward

    def counting(*args, **kwargs):
        calls.append(args[3])
        return orig(*args, **kwargs)

    monkeypatch.setattr(_trace, "forward", counting)
    monkeypatch.setattr(ex, "_forward", counting)
    E = wv.expanded_weights(model, "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl")
    rf = wv.receptive_field(model, "blocks.2.1.conv_pwl", "blocks.1.1.conv_pwl")
    assert calls == [32, rf.input_size] and rf.input_size != 32
    E2 = wv.expanded_weights(model, "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl")   # cached: a new forward
    assert calls == [32, rf.input_size, rf.input_size]
    torch.testing.assert_close(E, E2, rtol=0, atol=0)
    # receptive_field alone keeps nothing: a later call with changed weights runs its own forward
    other = copy.deepcopy(lite0)
    wv.receptive_field(other, "blocks.2.1.conv_pwl", "blocks.1.1.conv_pwl")
    with torch.no_grad():
        other.blocks[2][0].bn1.running_var.mul_(4.0)
    E3 = wv.expanded_weights(other, "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl")
    ref = wv.expanded_weights(copy.deepcopy(other), "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl")
    torch.testing.assert_close(E3, ref, rtol=0, atol=0)
    assert not torch.allclose(E3, E)


# -------------------------------------------------------------------------- fixed input size (defect 4)
@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return wv.load_model("timm:vit_tiny_patch16_224@random")


def test_fixed_input_size_is_read_from_the_model(vit, lite0, resnet18):
    assert wv.fixed_input_size(vit) == 224
    assert wv.fixed_input_size(lite0) is None and wv.fixed_input_size(resnet18) is None
    assert wv.fixed_input_size(wv.load_model("timm:convnext_atto@random")) is None

    class Declared(nn.Module):
        weightviz_fixed_input_size = 96

    assert wv.fixed_input_size(Declared()) == 96


def test_field_search_uses_the_fixed_input_size(vit):
    rf = wv.receptive_field(vit, "patch_embed.proj")
    assert rf.input_size == 224 and rf.size == (16, 16) and rf.stride == (16, 16) and not rf.truncated
    E = wv.expanded_weights(vit, None, "patch_embed.proj", units=[0, 5])
    torch.testing.assert_close(E, wv.weights(vit, "patch_embed.proj")[[0, 5]])
    with pytest.raises(WeightvizError, match="only 224x224") as e:
        wv.receptive_field(vit, "patch_embed.proj", input_size=32)
    assert "\n" not in str(e.value)


def test_token_pair_gives_a_one_line_error_not_an_assertion(vit):
    """patch_embed.proj -> blocks.0.attn.qkv (issue 13, defect 4): never an AssertionError from a probe at a
    size the model refuses; whatever the route holds that cannot be expanded is named in one line."""
    try:
        wv.expanded_weights(vit, "patch_embed.proj", "blocks.0.attn.qkv", units=[0])
    except WeightvizError as e:
        assert "\n" not in str(e) and "Input height" not in str(e)


@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"padding": "same"}, {"padding": "valid"},
                                {"dilation": 2, "padding": 3, "groups": 2}, {"stride": (2, 1), "padding": (0, 2)}])
def test_shape_only_conv_has_the_shape_of_conv2d(kw):
    from weightviz.linearize.geometry import conv2d

    x, w = torch.randn(1, 4, 9, 11), torch.randn(6, 4 // kw.get("groups", 1), 3, 3)
    out = conv2d(x, w, None, **kw)
    assert out.shape == F.conv2d(x, w, None, **kw).shape and not out.any()


# ---------------------------------------------- attention on the route: the field is the whole input (issue 20.8)
@pytest.fixture(scope="module")
def mobilevit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("mobilevit_xxs", pretrained=False).eval()


def test_attention_field_is_the_whole_input_at_the_default_size(mobilevit, monkeypatch):
    """stages.2.0 -> stages.3.0 crosses the MobileViT block stages.2.1 (attention over every patch): the search
    stops once the field covers the whole map through attention, instead of growing the input to 1024 px and
    failing, and measures at the model's default input size (its config's 256), with a warning."""
    from weightviz.errors import WeightvizWarning

    sizes: list[int] = []
    real = _field._probe
    monkeypatch.setattr(_field, "_probe", lambda m, s, d, n, t=None: sizes.append(n) or real(m, s, d, n, t))
    images = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    default = wv.input_spec(mobilevit).size
    assert default == 256 and wv.fixed_input_size(mobilevit) is None
    with pytest.warns(WeightvizWarning, match="whole input .*default input size 256px") as rec:
        E = wv.expanded_weights(mobilevit, "stages.2.0", "stages.3.0", units=[0, 3], images=images)
    assert all("\n" not in str(w.message) for w in rec)
    assert sizes and max(sizes) <= default          # never grown past the default size
    with pytest.warns(WeightvizWarning, match="whole input"):
        rf = wv.receptive_field(mobilevit, "stages.3.0", "stages.2.0")
    assert rf.whole and rf.truncated and rf.input_size == default
    assert rf.src_shape == (48, 32, 32) and rf.start == (0, 0) and rf.size == (32, 32)
    assert E.shape == (2, 48, 32, 32) and torch.isfinite(E).all() and E.abs().sum() > 0
    # the same weights as asking for that size explicitly (no warning then: the caller chose it)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightvizWarning)
        E2 = wv.expanded_weights(mobilevit, "stages.2.0", "stages.3.0", units=[0, 3], images=images,
                                 input_size=default)
    torch.testing.assert_close(E, E2)


def test_conv_pairs_of_an_attention_model_keep_their_search(mobilevit):
    """A pair before any attention block is searched as in a CNN (no warning, a bounded field)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rf = wv.receptive_field(mobilevit, "stages.1.1", "stages.1.0")
    assert not rf.whole and not rf.truncated and rf.size[0] < rf.src_shape[1]

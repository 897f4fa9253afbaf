"""The article's InceptionV1: same outputs as lucent's port at every named layer (one random state dict in
lucent's layout, loaded through ``load_model("inceptionv1@file")``), a one-line error without a weights
file, its input range, and expanded weights on it against the slow hand-linearized reference."""

from __future__ import annotations

import pytest
import torch

import weightviz as wv
from weightviz.errors import WeightvizError
from weightviz.testing import slow_expanded_weights

lucent_v1 = pytest.importorskip("lucent.modelzoo.inceptionv1.InceptionV1")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(lucent's module with random weights, weightviz's InceptionV1 loaded from that state dict as .pth)."""
    torch.manual_seed(0)
    ref = lucent_v1.InceptionV1(pretrained=False, redirected_ReLU=False).eval()
    path = tmp_path_factory.mktemp("v1") / "inception5h.pth"
    torch.save(ref.state_dict(), path)
    return ref, wv.load_model(f"inceptionv1@{path}")


def _outputs(model, names, x):
    out, handles = {}, []
    for name in names:
        m = model.get_submodule(name)
        handles.append(m.register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, o.detach())))
    try:
        with torch.no_grad():
            out["<output>"] = model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def test_same_outputs_as_lucent_at_every_named_layer(pair):
    ref, ours = pair
    ours_names = {n for n, _ in ours.named_modules() if n}
    common = [n for n, _ in ref.named_modules() if n]
    assert set(common) <= ours_names   # every layer lucent names exists here under the same name
    assert len(common) == 138 and {"conv2d0", "conv2d2", "mixed3a", "mixed3b_5x5_bottleneck", "mixed5b",
                                  "maxpool0", "mixed4a_pool", "softmax2_pre_activation_matmul"} <= set(common)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 224, 224, generator=gen) * 255 - 117
    a, b = _outputs(ref, common, x), _outputs(ours, common, x)
    for name in [*common, "<output>"]:
        scale = float(a[name].abs().max())
        assert scale > 0, name
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    # and the pre-ReLU concatenation is the concatenation of lucent's pre-ReLU convs
    pre = torch.cat([a[f"mixed4a_{k}_pre_relu_conv"] for k in ("1x1", "3x3", "5x5", "pool_reduce")], 1)
    torch.testing.assert_close(_outputs(ours, ["mixed4a_pre_relu"], x)["mixed4a_pre_relu"], pre,
                               rtol=1e-4, atol=1e-5 * float(pre.abs().max()))


def test_safetensors_and_layer_table(tmp_path, pair):
    from safetensors.torch import save_file

    ref, ours = pair
    path = tmp_path / "v1.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    m = wv.load_model(f"inceptionv1@{path}")
    for (k, v), (k2, v2) in zip(m.state_dict().items(), ours.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    table = wv.layers(m)
    assert table["mixed3b"].out_shape == (480, 28, 28)
    assert table["mixed3a_5x5_bottleneck_pre_relu_conv"].weight_shape == (16, 192, 1, 1)
    assert wv.fixed_input_size(m) is None


def test_missing_weights_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache, downloads off (conftest)
    with pytest.raises(WeightvizError) as e:
        wv.load_model("inceptionv1")
    msg = str(e.value)
    assert "\n" not in msg and "inceptionv1@path/to/inception5h.pth" in msg and "lucent" in msg
    assert str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(WeightvizError, match="no such file|not found|does not exist|cannot read"):
        wv.load_model("inceptionv1@/nonexistent/inception5h.pth")


def test_input_spec_is_lucids_range(pair):
    _, ours = pair
    spec = wv.input_spec(ours)
    x = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1).expand(1, 3, 2, 1)
    y = spec.normalize(x)
    # lucent's preprocess_inceptionv1: x * 255 - 117
    torch.testing.assert_close(y, x * 255 - 117, rtol=1e-6, atol=1e-4)


def test_expanded_weights_match_slow_reference(pair):
    _, ours = pair
    units = [0, 7, 100, 208, 479]
    E = wv.expanded_weights(ours, "mixed3a", "mixed3b", units=units)
    rf = wv.receptive_field(ours, "mixed3b", "mixed3a")
    assert E.shape == (5, 256, *rf.size) and rf.size == (5, 5)
    (r0, c0), (kh, kw) = rf.start, rf.size
    ref = slow_expanded_weights(ours, "mixed3a", "mixed3b", units, rf.input_size, crop=(r0, c0, kh, kw))
    torch.testing.assert_close(E, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    # across the stride-2 pool and a block: conv2d2 (through LRN -> identity, max-pool -> avg-pool) to mixed3a
    E2 = wv.expanded_weights(ours, "conv2d1", "mixed3a", units=[3, 200])
    rf2 = wv.receptive_field(ours, "mixed3a", "conv2d1")
    (r0, c0), (kh, kw) = rf2.start, rf2.size
    ref2 = slow_expanded_weights(ours, "conv2d1", "mixed3a", [3, 200], rf2.input_size, crop=(r0, c0, kh, kw))
    torch.testing.assert_close(E2, ref2, rtol=1e-4, atol=1e-5 * float(ref2.abs().max()))


def test_render_and_figure(pair, tmp_path):
    _, ours = pair
    img = wv.render(ours, wv.objectives.channel("mixed3b", 208), size=32, steps=2, cache=None, progress=False)
    assert img.images.shape == (1, 3, 32, 32) and torch.isfinite(img.images).all() and img.values[0] != 0
    fig = wv.figures.top_inputs(ours, "mixed3b", 208, src="mixed3a", k=3, steps=2, size=32, cache=None,
                                progress=False)
    fig.save(tmp_path / "top.png")
    assert (tmp_path / "top.png").stat().st_size > 0

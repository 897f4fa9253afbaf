import pickle

import numpy as np
import pytest
import skimage.data
import torch
from torch import nn

import weightviz as wv
from weightviz import WeightvizError


def _top(model, image, k=3):
    with torch.no_grad():
        return model(wv.preprocess(image, model)).softmax(-1).topk(k).indices[0].tolist()


def test_lite0_classifies_natural_images(lite0):
    # standard timm eval preprocessing for tf_efficientnet_lite0: bicubic resize of the short side to
    # 256 (= 224 / 0.875), centre crop 224, (x - 0.5) / 0.5
    cat = _top(lite0, skimage.data.chelsea())
    assert 281 <= cat[0] <= 285 and 285 in cat  # a cat class on top, Egyptian cat among the top 3
    assert _top(lite0, skimage.data.coffee())[0] == 967  # espresso


def test_lite0_layers_table(lite0):
    table = wv.layers(lite0)
    assert table["conv_stem"].weight_shape == (32, 3, 3, 3)
    assert table["blocks.1.0.conv_dw"].groups == 96
    assert table["blocks.6.0"].kind == "block" and table["blocks.6.0"].out_shape == (320, 7, 7)
    assert table["classifier"].weight_shape == (1000, 1280)
    assert "blocks.6.0.conv_pwl" in table.with_weights().names
    assert all(r.kind == "block" for r in table.blocks())
    assert "conv_stem" in repr(table)


def test_weights_shapes_and_dense(lite0):
    w = wv.weights(lite0, "blocks.1.0.conv_dw")
    assert w.shape == (96, 1, 3, 3)
    d = wv.weights(lite0, "blocks.1.0.conv_dw", dense=True)
    assert d.shape == (96, 96, 3, 3)
    # dense depthwise: output o reads only input o
    assert torch.equal(d[torch.arange(96), torch.arange(96)], w[:, 0])
    off = d.clone()
    off[torch.arange(96), torch.arange(96)] = 0
    assert off.abs().sum() == 0
    assert wv.weights(lite0, "classifier").shape == (1000, 1280, 1, 1)


def test_grouped_dense_matches_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, groups=2, bias=False)
    dense = nn.Conv2d(6, 4, 3, bias=False)
    net = nn.Sequential(conv)
    dense.weight.data = wv.weights(net, "0", dense=True)
    x = torch.randn(1, 6, 5, 5)
    torch.testing.assert_close(conv(x), dense(x))


def test_unknown_layer_suggests(lite0):
    with pytest.raises(WeightvizError, match=r"unknown layer 'blocks\.1\.0\.conv_dww'.*blocks\.1\.0\.conv_dw"):
        wv.weights(lite0, "blocks.1.0.conv_dww")
    with pytest.raises(WeightvizError, match="no conv/linear weight"):
        wv.weights(lite0, "blocks.1.0")


def test_parse_units():
    assert wv.parse_units("0:4", 10) == [0, 1, 2, 3]
    assert wv.parse_units("1,3,5", 10) == [1, 3, 5]
    assert wv.parse_units(None, 3) == [0, 1, 2]
    assert wv.parse_units(7, 10) == [7]
    with pytest.raises(WeightvizError, match="out of range"):
        wv.parse_units(10, 10)
    with pytest.raises(WeightvizError, match="out of range"):
        wv.parse_units("0:40", 10)
    with pytest.raises(WeightvizError, match="cannot read units"):
        wv.parse_units("a-b", 10)


def test_torchvision_weights_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    m = wv.load_model("torchvision:resnet18@random")
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    save_file(sd, str(tmp_path / "r.safetensors"))
    torch.save(sd, tmp_path / "r.pth")
    for f in ("r.safetensors", "r.pth"):
        m2 = wv.load_model(f"torchvision:resnet18@{tmp_path / f}")
        assert torch.equal(m2.conv1.weight, m.conv1.weight)
        assert wv.model_hash(m2) == wv.model_hash(m)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_bad_weight_files(tmp_path):
    with pytest.raises(WeightvizError, match="not found"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'missing.pth'}")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(WeightvizError, match="cannot read"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'corrupt.safetensors'}")
    (tmp_path / "corrupt.pth").write_bytes(b"not a zip")
    with pytest.raises(WeightvizError, match="is not a weights file"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'corrupt.pth'}")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(WeightvizError, match="refusing|cannot read"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'evil.pth'}")
    torch.save({"evil": _Evil()}, tmp_path / "evil2.pth")
    with pytest.raises(WeightvizError, match="refusing"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'evil2.pth'}")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(WeightvizError, match="does not fit"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'wrong.pth'}")


def test_nonfinite_weights_rejected(tmp_path):
    torch.manual_seed(0)
    m = wv.load_model("torchvision:resnet18@random")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(WeightvizError, match="non-finite.*layer1.0.conv1.weight"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'nan.pth'}")


def test_unknown_models():
    with pytest.raises(WeightvizError, match="unknown model"):
        wv.load_model("resnet18")
    with pytest.raises(WeightvizError, match="Did you mean 'resnet18'"):
        wv.load_model("torchvision:resnet17@random")
    with pytest.raises(WeightvizError, match="unknown timm"):
        wv.load_model("timm:not_a_model_xyz@random")


def test_module_passthrough(tiny):
    tiny.train()
    assert wv.load_model(tiny) is tiny and not tiny.training


def test_preprocess_shape(lite0):
    x = wv.preprocess(np.zeros((300, 400, 3), np.uint8), lite0)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x, torch.full_like(x, -1.0))


# ------------------------------------------------------------------------------- weights-file messages
def test_weights_file_messages_plain_and_no_torch_warnings(tmp_path):
    import warnings

    import torchvision

    torch.save(torchvision.models.resnet18(), tmp_path / "whole.pth")  # a pickled model, not a state dict
    torch.save({"x": _Evil()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "notes.txt").write_text("hello\n")
    sd = torchvision.models.resnet18().state_dict()
    torch.save(sd, tmp_path / "full.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:100_000])
    expected = {"whole.pth": "refusing to load .* torchvision.models.resnet.ResNet",
                "legacy.pth": "refusing to load", "random.pth": "is not a weights file",
                "notes.txt": "is not a weights file", "truncated.pth": "corrupt or truncated"}
    for name, pattern in expected.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(WeightvizError, match=pattern) as e:
                wv.load_model(f"torchvision:resnet18@{tmp_path / name}")
        msg = str(e.value)
        assert "\n" not in msg and "\x1b" not in msg and "weights_only" not in msg, msg
        assert [w for w in caught if "random init" not in str(w.message)] == [], name


# --------------------------------------------------------------------------------------- NaN modules
def _nan_tiny(tiny):
    with torch.no_grad():
        tiny.conv2.weight[0, 0, 0, 0] = float("nan")
    return tiny


@pytest.mark.parametrize("call", [
    lambda m: wv.render(m, wv.objectives.channel("conv2", 0), size=16, steps=1, cache=None, progress=False),
    lambda m: wv.expanded_weights(m, "conv1", "conv3"),
    lambda m: wv.receptive_field(m, "conv3", "conv1"),
    lambda m: wv.figures.top_inputs(m, "conv3", 0, fv=False),
    lambda m: wv.figures.nmf_grid(m, "conv2"),
    lambda m: wv.scan_banding(m, n_perm=19),
    lambda m: wv.explore.Explorer(m),
    lambda m: wv.load_model(m),
], ids=["render", "expanded_weights", "receptive_field", "figure", "nmf_grid", "scan_banding", "explorer",
        "load_model"])
def test_a_module_with_nan_weights_is_refused_everywhere(tiny, call):
    m = _nan_tiny(tiny)
    with pytest.raises(WeightvizError, match="non-finite weights .*'conv2.weight'"):
        call(m)


def test_the_finite_check_is_cached_but_sees_changes(tiny):
    from weightviz.models.load import check_finite

    check_finite(tiny)  # remembered
    with torch.no_grad():
        tiny.conv1.bias[0] = float("inf")  # an in-place change bumps the version counter
    with pytest.raises(WeightvizError, match="conv1.bias"):
        check_finite(tiny)
    with torch.no_grad():
        tiny.conv1.bias[0] = 0.0
    check_finite(tiny)


# ------------------------------------------------------------------------------------ preprocessing
def test_preprocess_gives_the_channels_of_the_first_conv():
    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    img = np.zeros((250, 300, 3), np.uint8)
    img[...] = (200, 100, 50)
    x = wv.preprocess(img, gray)
    assert x.shape == (1, 1, 224, 224)
    # luminance by hand (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B), then the 1-channel spec (0.5, 0.5)
    lum = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    torch.testing.assert_close(x, torch.full_like(x, (lum - 0.5) / 0.5), rtol=1e-6, atol=1e-6)
    assert tuple(gray(x).shape[:2]) == (1, 4)  # the model takes it
    with pytest.raises(WeightvizError, match="takes 2-channel input"):
        wv.preprocess(img, nn.Sequential(nn.Conv2d(2, 4, 3)).eval())
    assert wv.preprocess(img[..., 0], nn.Sequential(nn.Conv2d(3, 4, 3))).shape == (1, 3, 224, 224)  # grey in


# ------------------------------------------------------------------------------------------- units
@pytest.mark.parametrize("units", ["0:5:0", "::0", slice(0, 5, 0)])
def test_unit_step_zero_is_bad_input(units):
    with pytest.raises(WeightvizError, match="step must not be 0"):
        wv.parse_units(units, 10)


# ----------------------------------------------------------------------------------- random init
def test_random_init_warns_and_marks_the_model(tmp_path):
    import warnings

    from safetensors.torch import save_file

    from weightviz.models.load import is_random_init

    with pytest.warns(UserWarning, match=r"^no weights given: random initialization; pass "
                                         r"torchvision:resnet18@file to load yours$"):
        m = wv.load_model("torchvision:resnet18@random")
    assert is_random_init(m)
    with pytest.warns(UserWarning, match="pass timm:resnet18@file"):
        assert is_random_init(wv.load_model("timm:resnet18@random"))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with weights (or the embedded lite0, or a module): no warning
        assert not is_random_init(wv.load_model(f"torchvision:resnet18@{tmp_path / 'w.safetensors'}"))
        assert not is_random_init(wv.load_model(nn.Conv2d(3, 3, 1)))


def test_figures_and_pages_of_a_random_init_model_say_so(tmp_path, tiny):
    import warnings

    from weightviz.explore import ExploreConfig, build_site

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = wv.load_model("torchvision:squeezenet1_1@random")
    fig = wv.figures.top_inputs(m, "features.4.expand1x1", 0, fv=False)
    assert fig.data["random_init"] is True
    assert any("random init" in t.get_text() for t in fig.fig.texts)
    fig.save(tmp_path / "top.png")
    plain = wv.figures.top_inputs(tiny, "conv2", 0, fv=False)  # a module of one's own: no mark
    assert "random_init" not in plain.data and not any("random init" in t.get_text() for t in plain.fig.texts)
    cfg = ExploreConfig(size=16, steps=1, top_k=2, n_factors=2, factor_k=2)
    report = build_site(m, tmp_path / "site", layers="features.3", units="0:1", config=cfg, render_cache=None)
    assert "random init" in report.index.read_text()
    assert "random init" in (tmp_path / "site" / "unit" / "features.3" / "0.html").read_text()


# ------------------------------------------------------------------------------------------- sizes
def test_one_size_bound_for_render_figures_and_explorer(tiny):
    from weightviz.explore import ExploreConfig
    from weightviz.utils.limits import MAX_SIZE, MIN_SIZE

    assert (MIN_SIZE, MAX_SIZE) == (16, 1024)
    for bad in (MIN_SIZE - 1, MAX_SIZE + 1):
        with pytest.raises(WeightvizError, match="from 16 to 1024 pixels"):
            wv.render(tiny, wv.objectives.channel("conv2", 0), size=bad, steps=1, cache=None, progress=False)
        with pytest.raises(WeightvizError, match="from 16 to 1024 pixels"):
            wv.figures.top_inputs(tiny, "conv3", 0, size=bad)
        with pytest.raises(WeightvizError, match="from 16 to 1024 pixels"):
            ExploreConfig(size=bad)

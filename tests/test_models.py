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
    m = wv.load_model("torchvision:resnet18")
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
    with pytest.raises(WeightvizError, match="cannot read|refusing"):
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
    m = wv.load_model("torchvision:resnet18")
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(WeightvizError, match="non-finite.*layer1.0.conv1.weight"):
        wv.load_model(f"torchvision:resnet18@{tmp_path / 'nan.pth'}")


def test_unknown_models():
    with pytest.raises(WeightvizError, match="unknown model"):
        wv.load_model("resnet18")
    with pytest.raises(WeightvizError, match="Did you mean 'resnet18'"):
        wv.load_model("torchvision:resnet17")
    with pytest.raises(WeightvizError, match="unknown timm"):
        wv.load_model("timm:not_a_model_xyz")


def test_module_passthrough(tiny):
    tiny.train()
    assert wv.load_model(tiny) is tiny and not tiny.training


def test_preprocess_shape(lite0):
    x = wv.preprocess(np.zeros((300, 400, 3), np.uint8), lite0)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x, torch.full_like(x, -1.0))

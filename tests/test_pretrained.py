"""Pretrained weights by name through the libraries' own caches, planted in fresh caches (no network):
timm (Hugging Face hub cache, HF_HUB_OFFLINE=1), torchvision and InceptionV1 (torch hub cache), @enum,
@file, @random, offline-uncached errors, wrong shapes, preprocessing, class names and top classes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import weightviz as wv
from weightviz import WeightvizError
from weightviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
TIMM_NAME = "test_resnet.r160_in1k"  # timm's tiny test net: fast to build, real hub layout
REV = "0123456789abcdef0123456789abcdef01234567"


def _plant_hf(hf_home: Path, repo: str, state: dict) -> Path:
    """Write ``state`` as model.safetensors into ``hf_home``'s hub cache in huggingface_hub's own layout."""
    from huggingface_hub.file_download import repo_folder_name
    from safetensors.torch import save_file

    folder = hf_home / "hub" / repo_folder_name(repo_id=repo, repo_type="model")
    snap = folder / "snapshots" / REV
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REV)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def _env(tmp_path, **extra):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "WEIGHTVIZ_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "torch"), "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    env.update(extra)
    return env


def _py(code: str, env, timeout=300):
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("WEIGHTVIZ_OFFLINE", "1")
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _rn18_file(ckpt: Path, state: dict) -> Path:
    import torchvision

    path = ckpt / os.path.basename(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url)
    torch.save(state, path)
    return path


# ------------------------------------------------------------------------------------------ timm
def test_timm_by_name_and_tag_from_a_planted_hub_cache(tmp_path):
    import timm

    torch.manual_seed(1)
    ref = timm.create_model(TIMM_NAME, pretrained=False)
    with torch.no_grad():
        ref.fc.weight.normal_()
    cfg = timm.models.get_pretrained_cfg(TIMM_NAME)
    path = _plant_hf(tmp_path / "hf", cfg.hf_hub_id, ref.state_dict())
    keep = ("tag", "input_size", "interpolation", "crop_pct", "mean", "std", "num_classes", "first_conv", "classifier")
    (path.parent / "config.json").write_text(json.dumps(  # what timm's hf-hub: specs read first
        {"architecture": "test_resnet", "num_classes": 1000,
         "pretrained_cfg": {k: v for k, v in cfg.to_dict().items() if k in keep}}))
    torch.save(ref.fc.weight.detach().clone(), tmp_path / "fc.pt")
    code = f"""
import json, warnings, torch, weightviz as wv
warnings.simplefilter("error")
out = {{}}
for spec in ["timm:{TIMM_NAME}", "timm:{TIMM_NAME.partition('.')[0]}", "timm:hf-hub:timm/{TIMM_NAME}"]:
    m = wv.load_model(spec)
    out[spec] = [wv.is_random_init(m), bool(torch.equal(m.fc.weight, torch.load(r"{tmp_path / 'fc.pt'}"))),
                 m.weightviz_weights_source, len(wv.class_names(m) or [])]
print(json.dumps(out))
"""
    r = _py(code, _env(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(out) == 3
    for spec, (random_init, equal, source, n_names) in out.items():
        assert not random_init and equal, spec
        assert "hf-hub timm/test_resnet.r160_in1k" in source and n_names == 1000


def test_timm_offline_uncached_is_one_line_and_fast(tmp_path):
    # the CLI in a fresh process (HF_HUB_OFFLINE is read at import); the time is measured inside it, after
    # the imports, so that a loaded machine's interpreter start-up does not count: no retry wait
    code = f"""
import sys, time, timm, torch, huggingface_hub
from weightviz.cli import main
t = time.perf_counter()
rc = main(["layers", "timm:{TIMM_NAME}"])
print(f"ELAPSED {{time.perf_counter() - t:.3f}} RC {{rc}}")
"""
    r = _py(code, _env(tmp_path), timeout=120)
    elapsed, rc = r.stdout.split("ELAPSED ")[1].split(" RC ")
    assert float(elapsed) < 10 and int(rc) == 2
    assert "Traceback" not in r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "model.safetensors" in err and "timm/test_resnet.r160_in1k" in err
    assert str(tmp_path / "hf" / "hub") in err and f"timm:{TIMM_NAME}@path/to/" in err
    r = subprocess.run([sys.executable, "-m", "weightviz.cli", "layers", f"timm:{TIMM_NAME}"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == err  # the process exits 2 with the same one line


def test_timm_cached_file_with_wrong_shapes(tmp_path):
    import timm

    state = timm.create_model(TIMM_NAME, pretrained=False, num_classes=10).state_dict()
    _plant_hf(tmp_path / "hf", timm.models.get_pretrained_cfg(TIMM_NAME).hf_hub_id, state)
    r = subprocess.run([sys.executable, "-m", "weightviz.cli", "layers", f"timm:{TIMM_NAME}"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "do not fit" in err and "fc.weight" in err


def test_timm_preprocess_is_timms_transform(lite0):
    from timm.data import create_transform, resolve_data_config

    img = Image.fromarray(skimage.data.chelsea())
    want = create_transform(**resolve_data_config({}, model=lite0))(img)[None]
    torch.testing.assert_close(wv.preprocess(img, lite0), want, rtol=0, atol=0)
    assert wv.class_names(lite0)[285].startswith("Egyptian cat")


# ----------------------------------------------------------------------------------- torchvision
def test_torchvision_by_name_enum_and_file(torch_home, tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18()
    _rn18_file(torch_home, ref.state_dict())
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    for spec in ("torchvision:resnet18", "torchvision:resnet18@IMAGENET1K_V1", "torchvision:resnet18@DEFAULT"):
        m = wv.load_model(spec)
        assert not wv.is_random_init(m) and torch.equal(m.fc.weight, ref.fc.weight)
        assert m.weightviz_weights is weights
        assert wv.class_names(m) == list(weights.meta["categories"])
    img = Image.fromarray(skimage.data.coffee())
    torch.testing.assert_close(wv.preprocess(img, m), weights.transforms()(img)[None], rtol=0, atol=0)
    spec = wv.input_spec(m)
    assert spec.size == 224 and spec.mean == pytest.approx((0.485, 0.456, 0.406))
    with pytest.raises(WeightvizError, match="has no weights 'IMAGENET9'"):
        wv.load_model("torchvision:resnet18@IMAGENET9")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    m = wv.load_model(f"torchvision:resnet18@{tmp_path / 'w.safetensors'}")
    assert not wv.is_random_init(m) and torch.equal(m.conv1.weight, ref.conv1.weight)
    with pytest.warns(UserWarning, match="random initialization"):
        assert wv.is_random_init(wv.load_model("torchvision:resnet18@random"))


def test_torchvision_offline_uncached_and_wrong_shapes(torch_home, capsys):
    import torchvision

    t = time.perf_counter()
    assert main(["layers", "torchvision:resnet18"]) == 2
    assert time.perf_counter() - t < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "resnet18-f37072fd.pth" in err and str(torch_home) in err
    assert "torchvision:resnet18@path/to/resnet18-f37072fd.pth" in err
    _rn18_file(torch_home, torchvision.models.resnet18(num_classes=10).state_dict())
    with pytest.raises(WeightvizError, match=r"fc.weight has shape \(10, 512\), the model expects \(1000, 512\)"):
        wv.load_model("torchvision:resnet18")


def test_inceptionv1_from_lucents_cache_file(torch_home):
    from weightviz.models._inceptionv1 import InceptionV1

    torch.manual_seed(0)
    ref = InceptionV1()
    torch.save(ref.state_dict(), torch_home / "inception5h.pth")
    m = wv.load_model("inceptionv1")
    assert not wv.is_random_init(m)
    assert torch.equal(m.state_dict()["conv2d0_pre_relu_conv.weight"], ref.state_dict()["conv2d0_pre_relu_conv.weight"])
    (torch_home / "inception5h.pth").unlink()
    with pytest.raises(WeightvizError, match=r"inception5h.pth .*torch hub cache .*inceptionv1@path/to/inception5h"):
        wv.load_model("inceptionv1")


# ------------------------------------------------------------------------------------ top classes
def test_top_classes_is_the_fc_column(resnet18):
    u = 7
    r = wv.top_classes(resnet18, "layer4", u, k=10)
    col = resnet18.fc.weight[:, u].detach()
    want = col.topk(10)
    assert r.indices == want.indices.tolist()
    np.testing.assert_allclose(r.values, want.values.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.bottom.values, col.topk(10, largest=False).values.numpy(), rtol=1e-5, atol=1e-7)
    assert r.values == sorted(r.values, reverse=True)
    torch.testing.assert_close(r.all_values, col, rtol=1e-5, atol=1e-7)
    assert r.names is None  # random init: no class names


def test_top_classes_cli_and_figure(lite0, capsys, tmp_path):
    assert main(["top-classes", "efficientnet_lite0", "blocks.6.0", "3", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if ln.strip()]) >= 3
    assert main(["figure", "top-classes", "efficientnet_lite0", "blocks.6.0", "3", "-k", "4",
                 "-o", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").stat().st_size > 0
    fig = wv.figures.top_classes(lite0, "blocks.6.0", 3, k=5)
    fig.save(tmp_path / "tc.png")
    assert (tmp_path / "tc.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------- CLIP
def test_open_clip_visual_tower_from_a_planted_hub_cache(tmp_path):
    pytest.importorskip("open_clip")
    code = """
import json, sys, torch, open_clip
from pathlib import Path
from safetensors.torch import save_file
from huggingface_hub.file_download import repo_folder_name
import weightviz as wv
from PIL import Image
import skimage.data
hf, REV = Path(sys.argv[1]), sys.argv[2]
cfg = open_clip.get_pretrained_cfg("RN50", "openai")
repo = cfg["hf_hub"].rstrip("/")
try:
    wv.load_model("open_clip:RN50@openai")
    uncached = ""
except wv.WeightvizError as e:
    uncached = str(e)
torch.manual_seed(0)
ref = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
folder = hf / "hub" / repo_folder_name(repo_id=repo, repo_type="model")
(folder / "snapshots" / REV).mkdir(parents=True)
(folder / "refs").mkdir()
(folder / "refs" / "main").write_text(REV)
save_file({k: v.detach().contiguous() for k, v in ref.state_dict().items()},
          str(folder / "snapshots" / REV / "open_clip_model.safetensors"))
m = wv.load_model("open_clip:RN50@openai")
_, _, pre = open_clip.create_model_and_transforms("RN50", pretrained=None, force_quick_gelu=True)
img = Image.fromarray(skimage.data.chelsea())
import open_clip.modified_resnet as mr
feat = {}
hook = m.layer4.register_forward_hook(lambda mod, i, o: feat.__setitem__("f", o))
x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    y = m(x)
    hook.remove()
    pool_diff = float((mr.AttentionPool2d.forward(m.attnpool, feat["f"]) - y).abs().max())
print(json.dumps({
    "pool_diff": pool_diff,
    "uncached": uncached,
    "equal": bool(torch.equal(m.conv1.weight, ref.visual.conv1.weight)),
    "random": wv.is_random_init(m),
    "source": wv.weights_source(m),
    "pre": bool(torch.equal(wv.preprocess(img, m), pre(img)[None])),
    "out": list(m(wv.preprocess(img, m)).shape),
}))
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf"), REV], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "timm/resnet50_clip.openai" in out["uncached"] and str(tmp_path / "hf" / "hub") in out["uncached"]
    assert "open_clip:RN50@path/to/" in out["uncached"] and "\n" not in out["uncached"]
    assert out["equal"] and not out["random"] and out["pre"] and out["out"] == [1, 1024]
    assert out["source"] == "open_clip RN50 pretrained=openai"
    assert out["pool_diff"] < 1e-5  # the attention pool, decomposed for the frozen-attention path, is unchanged


def test_explorer_unit_page_shows_votes_for_the_last_layer(torch_home):
    import torchvision

    from weightviz.explore import ExploreConfig, Explorer, pages

    torch.manual_seed(0)
    _rn18_file(torch_home, torchvision.models.resnet18().state_dict())
    m = wv.load_model("torchvision:resnet18")
    cfg = ExploreConfig(size=16, steps=2, top_k=3, n_factors=3, factor_k=3, batch=32, examples=4, example_images=6)
    ex = Explorer(m, ["layer3.1", "layer4.1"], [0, 1], config=cfg, render_cache=None, name="torchvision:resnet18")
    assert pages.unit_data(ex, "layer3.1", 1).get("classes") is None  # not the last explored layer
    d = pages.unit_data(ex, "layer4.1", 1)
    want = wv.top_classes(m, "layer4.1", 1, k=5)
    assert [c["index"] for c in d["classes"]["top"]] == want.indices
    assert [c["name"] for c in d["classes"]["top"]] == want.names
    html = pages.unit_html(ex, d, "static", lambda layer, unit: True)
    assert "Votes for" in html and want.names[0].split(",")[0] in html
    index = pages.index_html(ex, {"layer4.1": [0, 1]}, "static")
    assert "torchvision ResNet18_Weights.IMAGENET1K_V1" in index
    # an early layer votes through many linearized layers: no row even when it is the last explored one
    early = Explorer(m, ["layer1.0"], [0], config=cfg, render_cache=None, name="torchvision:resnet18")
    assert pages.unit_data(early, "layer1.0", 0).get("classes") is None


def test_unknown_weights_names_are_one_line_errors():
    with pytest.raises(WeightvizError, match=r"choose one of \['test_resnet.r160_in1k'\]"):
        wv.load_model("timm:test_resnet.bogus")
    with pytest.raises(WeightvizError, match="unknown timm architecture"):
        wv.load_model("timm:no_such_net")
    with pytest.raises(WeightvizError, match="unknown torchvision architecture"):
        wv.load_model("torchvision:resnet17")

"""`weightviz nmf`: output files, and bad input -> one line on stderr, exit 2, no output file."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from weightviz.cli import main

ARCH = "torchvision:squeezenet1_1"
MODEL = f"{ARCH}@random"  # small; features.0 is a 3x3 RGB conv, features.3.expand3x3 is 3x3


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A good, a NaN, a corrupt and a code-carrying weights file for squeezenet1_1."""
    import torchvision
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in torchvision.models.squeezenet1_1().state_dict().items()}
    save_file(sd, str(d / "good.safetensors"))
    bad = dict(sd)
    bad["features.0.weight"] = sd["features.0.weight"].clone()
    bad["features.0.weight"][0, 0, 0, 0] = float("nan")
    save_file(bad, str(d / "nan.safetensors"))
    (d / "corrupt.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json" + os.urandom(64))
    torch.save({"features.0.weight": _Evil()}, d / "code.pth")
    return d


class _Evil:  # pickled as a class reference: weights_only loading must refuse it
    pass


def outputs(d):
    return sorted(p.name for p in d.iterdir())


def test_nmf_png_and_svg(tmp_path, capsys):
    assert main(["nmf", MODEL, "features.3.expand3x3", "--units", "0:12", "-o", str(tmp_path / "a.png")]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(tmp_path / "a.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert main(["nmf", MODEL, "features.3.expand3x3", "-u", "3,5", "--shared", "--factors", "5",
                 "-o", str(tmp_path / "b.svg")]) == 0
    assert "<svg" in (tmp_path / "b.svg").read_text()[:2000]
    assert outputs(tmp_path) == ["a.png", "b.svg"]


def test_rgb_and_weights_file(tmp_path, weight_files):
    spec = f"{ARCH}@{weight_files / 'good.safetensors'}"
    assert main(["nmf", spec, "features.0", "--rgb", "-o", str(tmp_path / "rgb.png")]) == 0
    assert outputs(tmp_path) == ["rgb.png"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["torchvision:resnet17@random", "conv1"], "unknown torchvision architecture 'resnet17'"),
        ([MODEL, "features.33"], "unknown layer 'features.33'. Did you mean"),
        ([MODEL, "features.0", "--units", "60:70"], "out of range: layer 'features.0' has 64 channels"),
        ([MODEL, "features.0", "--units", "64"], "unit 64 out of range"),
        ([MODEL, "features.0", "--units", "a:b"], "cannot read units 'a:b'"),
        ([MODEL, "features.3.expand3x3", "--rgb"], "RGB display needs 3"),
        (["@missing"], "weights file not found"),
        (["@nan"], "non-finite weights"),
        (["@corrupt"], "cannot read"),
        (["@code"], "refusing to load"),
    ],
)
def test_bad_input_exit2_one_line_no_output(tmp_path, weight_files, capsys, args, match):
    if args[0].startswith("@"):
        name = {"missing": "none.safetensors", "nan": "nan.safetensors", "corrupt": "corrupt.safetensors",
                "code": "code.pth"}[args[0][1:]]
        args = [f"{ARCH}@{weight_files / name}", "features.0"]
    out = tmp_path / "out"
    out.mkdir()
    assert main(["nmf", *args, "-o", str(out / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    if args[0] == MODEL:  # random init (plumbing only): its one warning line comes first
        assert err.startswith("no weights given: random initialization")
        err = err.split("\n", 1)[1]
    assert err.count("\n") == 0 and match in err and err.startswith("error: ")
    assert outputs(out) == []


@pytest.mark.parametrize("target", ["nodir/x.png", "file.txt/x.png", "x.jpg"])
def test_unwritable_output_checked_before_work(tmp_path, capsys, target):
    (tmp_path / "file.txt").write_text("a file, not a directory")
    # an unknown layer would fail later: the output check must come first
    assert main(["nmf", MODEL, "no.such.layer", "-o", str(tmp_path / target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ("cannot write" in err or "must end in" in err)
    assert outputs(tmp_path) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_read_only_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["nmf", MODEL, "features.0", "-o", str(ro / "x.png")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_subprocess_nan_weights(tmp_path, weight_files):
    r = subprocess.run(
        [sys.executable, "-m", "weightviz.cli", "nmf", f"{ARCH}@{weight_files / 'nan.safetensors'}",
         "features.0", "-o", str(tmp_path / "x.png")],
        capture_output=True, text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "non-finite weights" in r.stderr and "Traceback" not in r.stderr
    assert outputs(tmp_path) == []

import subprocess
import sys

from weightviz.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "weightviz.cli", *args], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("weightviz ")


def test_layers_lists_names(capsys):
    assert main(["layers", "torchvision:googlenet", "--weights-only"]) == 0
    out = capsys.readouterr().out
    assert "inception3a.branch2.1.conv" in out and "128x96x3x3" in out


def test_bad_model_exit2_one_line():
    r = run("layers", "torchvision:resnet17")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Did you mean 'resnet18'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_weights_exit2(tmp_path):
    r = run("layers", f"timm:resnet18@{tmp_path / 'none.safetensors'}")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr

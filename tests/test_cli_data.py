"""`weightviz examples` and `weightviz best-case`: write figures, teach in --help, and fail with one line,
exit 2 and no file on bad input (empty/unreadable folders, unit out of range, a unit that never fires)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from weightviz.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "weightviz.cli", *args], capture_output=True, text=True)


@pytest.fixture
def folder(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (70, 80, 3), dtype=np.uint8)).save(d / ("sub" if i % 2 else "") / f"{i}.png")
    return d


def test_examples_writes_figure(folder, tmp_path, capsys):
    out = tmp_path / "ex.png"
    assert main(["examples", "lite0", "blocks.1.0", "3", "--images", str(folder), "--size", "64", "-k", "4",
                 "-o", str(out)]) == 0
    assert "examples of blocks.1.0 unit 3 from 5 images" in capsys.readouterr().out
    assert out.stat().st_size > 1000
    assert main(["examples", "lite0", "blocks.1.0", "3", "--images", str(folder), "--size", "64", "-k", "2",
                 "--position", "centre", "-o", str(tmp_path / "ex.svg")]) == 0
    assert (tmp_path / "ex.svg").read_text().startswith("<?xml")


def test_examples_bad_input_one_line_no_file(folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    out = tmp_path / "o.png"
    for args, msg in [
        (["blocks.1.0", "0", "--images", str(empty)], "no readable images"),
        (["blocks.1.0", "0", "--images", str(bad)], "no readable images"),
        (["blocks.1.0", "0", "--images", str(tmp_path / "missing")], "not a folder"),
        (["blocks.1.0", "24", "--images", str(folder)], "out of range"),
        (["blocks.1.O", "0", "--images", str(folder)], "Did you mean"),
        (["blocks.1.0", "0", "--images", str(folder), "--position", "left"], "'max' or 'centre'"),
    ]:
        assert main(["examples", "lite0", *args, "--size", "64", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err, err
        assert err.strip().count("\n") == 0
        assert not out.exists()


def test_examples_never_firing_unit_exit2(folder, tmp_path):
    """A squeezenet whose first conv has a huge negative bias on unit 0: it never fires."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = torchvision.models.squeezenet1_1().state_dict()
    sd["features.0.bias"][0] = -1e4
    w = tmp_path / "sq.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(w))
    out = tmp_path / "o.png"
    r = _run("examples", f"torchvision:squeezenet1_1@{w}", "features.0", "0", "--images", str(folder),
             "--size", "64", "-o", str(out))
    assert r.returncode == 2 and "never fires" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert not out.exists()


def test_best_case_writes_figure_and_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "b.png"
    assert main(["best-case", "lite0", "blocks.0.0", "blocks.1.0", "2", "--steps", "3", "--no-fv", "--no-cache",
                 "-o", str(out)]) == 0
    assert "best case blocks.0.0 -> blocks.1.0 unit 2" in capsys.readouterr().out and out.stat().st_size > 1000
    assert main(["best-case", "lite0", "blocks.0.0", "blocks.1.0", "2", "--src-unit", "5", "--steps", "2",
                 "--no-fv", "--no-cache", "-o", str(tmp_path / "b.svg")]) == 0
    capsys.readouterr()
    bad = tmp_path / "x.png"
    for args, msg in [
        (["blocks.0.0", "blocks.1.0", "99"], "out of range"),
        (["blocks.0.0", "blocks.1.0", "0", "--src-unit", "16"], "src_unit 16 out of range"),
        (["blocks.0.0", "blocks.0.0", "0"], "same layer"),
        (["blocks.0.O", "blocks.1.0", "0"], "Did you mean"),
    ]:
        assert main(["best-case", "lite0", *args, "--steps", "1", "--no-fv", "--no-cache", "-o", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and msg in err and err.strip().count("\n") == 0, err
        assert not bad.exists()
    assert main(["best-case", "lite0", "blocks.0.0", "blocks.1.0", "0", "-o", str(tmp_path / "b.jpg")]) == 2


def test_help_teaches():
    for cmd, words in [("examples", ["receptive field", "--images", "fires on none", "Example:"]),
                       ("best-case", ["maximum achievable gradient", "--src-unit", "expanded weight", "Example:"])]:
        r = _run(cmd, "--help")
        assert r.returncode == 0
        text = " ".join(r.stdout.split())
        for w in words:
            assert w in text, (cmd, w)

"""`weightviz cases`: a cheap run on lite0 (few small images, no FVs) and bad input (exit 2, one line, no file)."""

from __future__ import annotations

from weightviz.cli import main


def test_cases_cli_writes_figure(tmp_path, capsys):
    out = tmp_path / "cases.png"
    rc = main(["cases", "efficientnet_lite0", "blocks.2.0", "blocks.3.0", "5", "-o", str(out), "--n-images", "6",
               "--image-size", "64", "--n-cases", "2", "--no-fv", "--examples", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "case 1" in text and "case 2" in text and "explain" in text
    assert out.stat().st_size > 0


def test_cases_cli_bad_input_exit2_no_file(tmp_path, capsys):
    out = tmp_path / "cases.png"
    base = ["cases", "efficientnet_lite0", "blocks.2.0", "blocks.3.0", "5", "-o", str(out), "--no-fv",
            "--image-size", "64"]
    for extra, words in [(["--n-images", "2", "--n-cases", "3"], "more than the data allows"),
                         (["--images", str(tmp_path / "missing")], "not a folder"),
                         (["--position", "top"], "--position"),
                         (["--n-images", "2", "--position", "99,0"], "outside")]:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and err.count("\n") == 0, err
        assert not out.exists() and not list(tmp_path.glob(".cases.png*"))
    bad = ["cases", "efficientnet_lite0", "blocks.2.0", "blocks.3.O", "5", "-o", str(out)]
    assert main(bad) == 2
    assert "blocks.3.0" in capsys.readouterr().err

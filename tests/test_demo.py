"""The demo runs its steps, writes what it says, and fails cleanly on bad options."""

from __future__ import annotations

from PIL import Image

from weightviz.cli import demo


def test_demo_steps_write_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "NMF_FIGURES", [("nmf_stem", "conv_stem", "0:4", True)])
    out = tmp_path / "out"
    assert demo.main(["--out", str(out), "--only", "layers", "--only", "stem_rgb", "--only", "nmf"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["layers.txt", "nmf_stem.png", "stem_rgb.png"]
    for name in ("layers.txt", "nmf_stem.png", "stem_rgb.png"):
        assert f"wrote {out / name}" in printed
    table = (out / "layers.txt").read_text()
    assert "conv_stem" in table and "blocks.6.0.conv_pwl" in table and "320x1152x1x1" in table
    with Image.open(out / "stem_rgb.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_demo_list_and_unknown_step(capsys):
    assert demo.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name, _, _ in demo.STEPS)
    assert demo.main(["--only", "nope"]) == 2
    assert "unknown demo step 'nope'" in capsys.readouterr().err

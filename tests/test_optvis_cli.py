"""`weightviz render`: writes a labelled grid (or exact pixels), uses the cache, fails with one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from weightviz.cli import main
from weightviz.optvis import RenderCache, grid, load_png


def _run(*args):
    return subprocess.run([sys.executable, "-m", "weightviz.cli", *args], capture_output=True, text=True)


def test_render_grid_and_raw_with_cache(tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    args = ["render", "lite0", "blocks.1.0", "0,3,5", "--size", "32", "--steps", "2", "--cache-dir", str(cache_dir)]
    assert main([*args, "-o", str(tmp_path / "g.png")]) == 0
    assert "3 units of blocks.1.0" in capsys.readouterr().out
    assert (tmp_path / "g.png").stat().st_size > 1000 and len(RenderCache(cache_dir)) == 3
    assert main([*args, "-o", str(tmp_path / "raw.png"), "--raw", "--ncols", "3"]) == 0
    assert "3 from cache" in capsys.readouterr().out
    # --raw writes exactly the cached images' pixels
    import weightviz as wv
    from weightviz import objectives as obj

    r = wv.render("lite0", [obj.channel("blocks.1.0", u) for u in (0, 3, 5)], size=32, steps=2, progress=False,
                  cache=RenderCache(cache_dir))
    assert all(r.cached)
    assert np.array_equal(load_png(tmp_path / "raw.png"), grid(r.uint8(), ncols=3))
    assert main([*args, "-o", str(tmp_path / "g.svg")]) == 0 and (tmp_path / "g.svg").read_text().startswith("<?xml")


def test_render_errors_one_line(tmp_path, capsys):
    r = _run("render", "lite0", "blocks.1.O", "0", "-o", str(tmp_path / "a.png"), "--size", "32", "--steps", "1")
    assert r.returncode == 2 and "Did you mean" in r.stderr and "'blocks.1.0'" in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    capsys.readouterr()
    for args, msg in [
        (["blocks.1.0", "0:30", "-o", str(tmp_path / "a.png")], "24 channels"),
        (["blocks.1.0", "0", "-o", str(tmp_path / "a.jpg")], ".png"),
        (["blocks.1.0", "0", "-o", str(tmp_path / "a.svg"), "--raw"], ".png"),
        (["blocks.1.0", "0", "-o", str(tmp_path / "a.png"), "--objective", "pixel"], "'channel' or 'neuron'"),
    ]:
        assert main(["render", "lite0", *args, "--size", "32", "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.startswith("error:"), err
    assert not list(tmp_path.iterdir())

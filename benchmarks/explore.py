"""Explorer benchmark: a unit page from a warm cache vs cold (render vs weights), and the demo site build.

Usage: ``.venv/bin/python benchmarks/explore.py [--layers blocks.0.0,blocks.1.0,blocks.2.0] [--unit 5]``

On the embedded lite0, in one run:

1. **cold unit page** (live server app, empty SQLite cache, empty render cache): the page itself
   (expanded weights, NMF, banding, top inputs/outputs: "weights") and then every image it shows, split
   into feature visualizations ("render") and weight images (heatmaps, NMF, factor maps: "weights");
2. **warm unit page**: the same page and all its images again (SQLite cache), and once more from a new
   app on the same SQLite file (a restarted server);
3. **site build** for the demo layers (units ``--units``), cold, then the no-op re-run (all jobs skipped).

Prints the timings and warm/cold ratios. Renders use the explorer's default size/steps unless given.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def page_images(html: str, page_path: str) -> list[str]:
    """Absolute request paths of the images on a page served at ``page_path``."""
    base = page_path.rsplit("/", 1)[0].lstrip("/")
    out = []
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        parts = (base.split("/") if base else []) + src.split("/")
        stack: list[str] = []
        for p in parts:
            if p == "..":
                stack.pop()
            elif p not in ("", "."):
                stack.append(p)
        out.append("/" + "/".join(stack))
    return out


def load_page(app, path: str) -> dict[str, float]:
    """Request a page, then all its images 6 at a time in parallel (as a browser does); seconds for the
    page, its FV images (renders) and its weight images."""
    t = time.perf_counter()
    status, _, body = app.handle(path)
    assert status == 200, (path, status)
    t_page = time.perf_counter() - t
    images = page_images(body.decode(), path)
    out = {"page": t_page}
    # like a browser: the weight images first, then the FVs, each group fetched 6 at a time in parallel
    for name, group in (("weight_images", [i for i in images if not _is_fv(i)]), ("fv", [i for i in images if _is_fv(i)])):
        t = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            for status, _, _ in pool.map(app.handle, group):
                assert status == 200, status
        out[name] = time.perf_counter() - t
    out["total"] = out["page"] + out["fv"] + out["weight_images"]
    return out


def _is_fv(path: str) -> bool:
    return path.startswith(("/img/fv/", "/img/factor/"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="blocks.0.0,blocks.1.0,blocks.2.0")
    ap.add_argument("--layer", default="blocks.2.0", help="layer of the unit page")
    ap.add_argument("--unit", type=int, default=5)
    ap.add_argument("--units", default="0:8", help="units of the site build")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5, help="warm repeats (median)")
    ap.add_argument("--no-site", action="store_true", help="skip the site build")
    args = ap.parse_args()
    torch.set_num_threads(2)

    import weightviz as wv
    from weightviz.explore import ExploreConfig, Explorer, SqliteCache, build_site
    from weightviz.explore.server import ExplorerApp

    model = wv.load_model()
    cfg = ExploreConfig(**{k: v for k, v in {"size": args.size, "steps": args.steps}.items() if v is not None})
    print(f"load average before: {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs: cold times vary)")
    print(f"lite0, layers {args.layers}; unit page {args.layer}:{args.unit}; FV {cfg.size} px, {cfg.steps} steps, "
          f"top {cfg.top_k}, {cfg.n_factors} factors; torch threads {torch.get_num_threads()}")
    tmp = Path(tempfile.mkdtemp(prefix="wv-bench-explore-"))
    path = f"/unit/{args.layer}/{args.unit}.html"

    # 1. cold
    ex = Explorer(model, args.layers, None, config=cfg, render_cache=tmp / "renders", name="efficientnet_lite0")
    db = tmp / "explorer.sqlite"
    app = ExplorerApp(ex, SqliteCache(db, ex.hash))
    for layer in ex.layers:  # server start-up (make_server): trace the layer graph once
        ex.sources(layer)
    cold = load_page(app, path)
    n_images = len(page_images(app.handle(path)[2].decode(), path))
    print(f"\ncold unit page ({n_images} images): {cold['total']:.2f} s = page data (weights) {cold['page']:.2f} s"
          f" + FV images (render) {cold['fv']:.2f} s + weight images {cold['weight_images']:.2f} s")
    print(f"  -> render {cold['fv'] / cold['total']:.0%}, weights {(cold['page'] + cold['weight_images']) / cold['total']:.0%}"
          f" ({app.computations} values computed, {app.renders.batches} render batches)")

    # 2. warm (same app), then a restarted app on the same SQLite file
    warm = [load_page(app, path)["total"] for _ in range(args.repeats)]
    app.close()
    ex2 = Explorer(model, args.layers, None, config=cfg, render_cache=tmp / "renders", name="efficientnet_lite0")
    app2 = ExplorerApp(ex2, SqliteCache(db, ex2.hash))
    for layer in ex2.layers:  # what make_server does at start-up (trace the layer graph)
        ex2.sources(layer)
    restarted = load_page(app2, path)["total"]
    assert app2.computations == 0, "a restarted server recomputed something"
    rest = [load_page(app2, path)["total"] for _ in range(args.repeats)]
    app2.close()
    w = statistics.median(warm)
    print(f"warm unit page + all images: {w * 1000:.0f} ms (median of {args.repeats}); cold/warm = {cold['total'] / w:.0f}x")
    print(f"restarted server, first load from SQLite: {restarted * 1000:.0f} ms; then {statistics.median(rest) * 1000:.0f} ms")

    # 3. site build
    if not args.no_site:
        ex3 = Explorer(model, args.layers, args.units, config=cfg, render_cache=tmp / "renders-site",
                       name="efficientnet_lite0")
        t = time.perf_counter()
        report = build_site(model, tmp / "site", explorer=ex3)
        total = time.perf_counter() - t
        print(f"\nsite build ({args.layers}, units {args.units}): {total:.1f} s cold; {report.summary()}")
        print("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
        t = time.perf_counter()
        again = build_site(model, tmp / "site", explorer=ex3)
        print(f"  re-run (up to date): {time.perf_counter() - t:.2f} s, {sum(again.run.values())} jobs run, "
              f"{sum(again.skipped.values())} skipped")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}; scratch files in {tmp}")


if __name__ == "__main__":
    main()

"""The explorer's executors side by side in one run, and the whole-model numbers (issue 14).

1. jobs/s on the same small lite0 site: local executor (this process) vs Ray with 1 and 2 workers
   (one local Ray instance started first, so its start-up is reported apart; actor start-up, i.e. each
   worker loading the model, is inside the build time);
2. Ray's per-job overhead: trivial jobs through one Ray actor vs the serial executor;
3. whole-model atlases (``--all``): explorable layers, units, FVs and jobs of lite0 and ResNet-50
   (counted from the plan: unit FVs + one FV per weight factor per source);
4. measured cost of one render job (32 FVs) at the default quality (128 px, 256 steps: measured on a
   batch of 2 and scaled to 32, FV cost is close to linear in the batch on CPU) and at 64 px / 64 steps;
5. a measured fraction of the lite0 atlas at 64 px / 64 steps on Ray (2 workers): wall time, size,
   and the extrapolation to the full atlas here and on N workers.

Usage: python benchmarks/ray_explore.py [--sections 1,2,3,4,5] [--plan LITE0_UNITS,LITE0_FVS,RESNET50_FVS]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import weightviz as wv
from weightviz.explore import ExploreConfig, Explorer, RayExecutor, SerialExecutor, build_site, explorable
from weightviz.explore.jobs import Job

SMALL = dict(layers="blocks.1.0,blocks.2.0", units="0:2")
SMALL_CFG = ExploreConfig(size=16, steps=8, batch=8)


def _noop(_state, job):
    return job.inputs["i"]


def _size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def small_site(model, tmp: Path) -> None:
    print(f"\n## 1. jobs/s on the same small site (lite0 {SMALL['layers']} units {SMALL['units']}, "
          f"{SMALL_CFG.size} px, {SMALL_CFG.steps} steps, batch {SMALL_CFG.batch})")
    rows = []
    for name, kw in [("local (this process)", {"executor": "local"}),
                     ("ray, 1 worker", {"executor": "ray", "jobs": 1}),
                     ("ray, 2 workers", {"executor": "ray", "jobs": 2})]:
        root = tmp / name.replace(" ", "_").replace(",", "")
        ex = Explorer(model, SMALL["layers"], SMALL["units"], config=SMALL_CFG, render_cache=None, name="lite0")
        t = time.perf_counter()
        r = build_site(model, root, explorer=ex, **kw)
        wall = time.perf_counter() - t
        n = r.run["weights"] + r.run["render"]
        rows.append((name, n, wall, n / wall))
        print(f"  {name:22s} {n} weights+render jobs, {sum(r.run.values())} jobs in all, wall {wall:6.1f} s, "
              f"{n / wall:.3f} jobs/s   [{r.stats()}]")
    base = rows[0][3]
    print("  ratios to local: " + ", ".join(f"{name}: {rate / base:.2f}x" for name, _, _, rate in rows[1:]))


def overhead() -> None:
    print("\n## 2. Ray per-job overhead (trivial jobs, one actor, 2 queued per actor)")
    jobs = [Job("render", {"i": i}, (f"{i}.png",)) for i in range(300)]
    t = time.perf_counter()
    list(SerialExecutor(state=None).imap(_noop, jobs))
    serial = (time.perf_counter() - t) / len(jobs)
    with RayExecutor(1, lambda: None, ()) as ex:
        list(ex.imap(_noop, jobs[:20]))  # warm
        t = time.perf_counter()
        list(ex.imap(_noop, jobs))
        ray_per = (time.perf_counter() - t) / len(jobs)
    print(f"  serial {serial * 1e3:.3f} ms/job, ray {ray_per * 1e3:.2f} ms/job -> overhead {1e3 * (ray_per - serial):.2f} ms/job")


def counts() -> dict[str, dict]:
    print("\n## 3. whole-model atlases (--all; default ExploreConfig: 3 factors per source, batch 32)")
    out = {}
    for spec in ("efficientnet_lite0", "torchvision:resnet50"):
        torch.manual_seed(0)
        m = wv.load_model(spec)
        names = [r.name for r in explorable(m)]
        ex = Explorer(m, names, None, config=ExploreConfig(), render_cache=None)
        cfg = ex.config
        srcs = {layer: [s for s in ex.sources(layer) if s.layer is not None] for layer in ex.layers}
        units = sum(len(v) for v in ex.units.values())
        factor_fvs = sum(len(ex.units[layer]) * cfg.n_factors * len(srcs[layer]) for layer in ex.layers)
        unit_jobs = sum(math.ceil(len(ex.units[layer]) / cfg.batch) for layer in ex.layers)
        factor_jobs = sum(math.ceil(len(ex.units[layer]) * cfg.n_factors / cfg.batch)
                          for layer in ex.layers for _ in srcs[layer])
        out[spec] = {"layers": len(names), "units": units, "fvs": units + factor_fvs,
                     "render_jobs": unit_jobs + factor_jobs}
        print(f"  {spec:22s} {len(names)} layers, {units} units (= unit pages), {units + factor_fvs} FVs "
              f"({units} units + {factor_fvs} factor directions), {unit_jobs + factor_jobs} render jobs + "
              f"{len(names)} weights jobs")
    return out


def job_cost(model) -> dict[str, float]:
    print("\n## 4. cost of one render job (lite0 blocks.4.0, 32 FVs per job), this process, 2 torch threads")
    objs = [wv.objectives.channel("blocks.4.0", u) for u in range(32)]
    t = time.perf_counter()
    wv.render(model, objs[:2], size=128, steps=256, batch=2, progress=False)
    default = (time.perf_counter() - t) * 16
    t = time.perf_counter()
    wv.render(model, objs, size=64, steps=64, batch=32, progress=False)
    reduced = time.perf_counter() - t
    print(f"  default quality (128 px, 256 steps): {default:.0f} s per job (measured on 2 FVs, x16), "
          f"{default / 32:.1f} s per FV")
    print(f"  reduced (64 px, 64 steps):          {reduced:.1f} s per job (measured on 32 FVs), {reduced / 32:.2f} s per FV")
    return {"default": default / 32, "reduced": reduced / 32}


def fraction(model, tmp: Path, cost: dict[str, float], plan: dict[str, dict], layers: str) -> None:
    print("\n## 5. a measured fraction of the lite0 atlas at 64 px / 64 steps, Ray 2 workers")
    cfg = ExploreConfig(size=64, steps=64)
    ex = Explorer(model, layers, None, config=cfg, render_cache=None, name="lite0")
    root = tmp / "fraction"
    t = time.perf_counter()
    r = build_site(model, root, explorer=ex, executor="ray", jobs=2)
    wall = time.perf_counter() - t
    n_files, n_bytes = _size(root)
    fvs = r.renders
    print(f"  layers {layers}: {r.pages} unit pages, {fvs} FVs, {sum(r.run.values())} jobs, wall {wall:.0f} s "
          f"(weights {r.seconds['weights']:.0f} s, render {r.seconds['render']:.0f} s, pages {r.seconds['page']:.0f} s), "
          f"{n_files} files, {n_bytes / 1e6:.1f} MB   [{r.stats()}]")
    full = plan.get("efficientnet_lite0")
    if full:
        per_fv = r.seconds["render"] / max(1, fvs)
        per_page = (r.seconds["weights"] + r.seconds["page"]) / max(1, r.pages)
        est = full["fvs"] * per_fv + full["units"] * per_page
        size = n_bytes / max(1, r.pages) * full["units"]
        print(f"  EXTRAPOLATED full lite0 atlas at 64 px / 64 steps: {full['fvs']} FVs x {per_fv:.2f} s + "
              f"{full['units']} pages x {per_page:.2f} s = {est / 3600:.1f} h on this 2-core machine (2 workers), "
              f"~{size / 1e9:.1f} GB; on N such 2-worker machines ~{est / 3600:.1f}/N h")
        if not cost:
            return
        est_default = full["fvs"] * cost["default"]
        print(f"  EXTRAPOLATED at default quality: {full['fvs']} FVs x {cost['default']:.1f} s = "
              f"{est_default / 3600:.0f} CPU-hours (one 2-thread worker here); ResNet-50: "
              f"{plan['torchvision:resnet50']['fvs']} FVs -> ~{plan['torchvision:resnet50']['fvs'] * cost['default'] / 3600:.0f} "
              "hours with the lite0 per-FV cost (ResNet-50 FVs cost more)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sections", default="1,2,3,4,5", help="which sections to run, e.g. 1,2 or 4,5")
    ap.add_argument("--plan", default=None, help="with section 5 but not 3: the counts section 3 printed, as "
                    "LITE0_UNITS,LITE0_FVS,RESNET50_FVS")
    ap.add_argument("--fraction-layers", default="blocks.1.0,blocks.1.1,blocks.2.0")
    args = ap.parse_args()
    sections = {int(x) for x in args.sections.split(",")}
    import ray

    torch.set_num_threads(2)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    print(f"local Ray instance started in {time.perf_counter() - t:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="wv-ray-bench-"))
    try:
        model = wv.load_model()
        if 1 in sections:
            small_site(model, tmp)
        if 2 in sections:
            overhead()
        plan: dict[str, dict] = {}
        if 3 in sections:
            plan = counts()
        elif args.plan:
            lu, lf, rf = (int(x) for x in args.plan.split(","))
            plan = {"efficientnet_lite0": {"units": lu, "fvs": lf}, "torchvision:resnet50": {"fvs": rf}}
        cost = job_cost(model) if 4 in sections else {}
        if 5 in sections:
            fraction(model, tmp, cost, plan, args.fraction_layers)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

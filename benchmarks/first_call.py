"""Benchmark: the first ``expanded_weights`` call on a pair against a cached one, with the receptive field
from one traced forward (``weightviz._geometry``, the default) and with the probe search at growing sizes
(the previous method), side by side in one run.

Each measurement runs in a fresh subprocess, as a notebook session that already used weightviz on another
model: import and one call on a warm-up pair of another architecture (torch's and weightviz's one-time
set-up: lazy imports, first use of each kernel), then load the model, time the first call on the pair
(all units of ``dst``; no field cache, no backend kernels set up yet for its sizes), then the same call
``--cached`` times (median). ``probes`` is the same with the geometry switched off (the field search then
runs real forwards at every size it asks for). The two methods alternate, ``--repeats`` subprocesses each;
the table shows medians and the ratio first / cached.

Run: ``.venv/bin/python benchmarks/first_call.py [--repeats 5] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

PAIRS = [
    ("efficientnet_lite0", "blocks.1.1.conv_pwl", "blocks.2.1.conv_pwl"),
    ("efficientnet_lite0", "blocks.2.0", "blocks.3.0"),
    ("efficientnet_lite0", "blocks.4.0", "blocks.5.0"),
    ("torchvision:googlenet", "inception3a", "inception3b"),
    ("torchvision:resnet18", "layer1.0", "layer2.0"),
]

WARMUP = ("torchvision:googlenet", "inception3a", "inception3b")
WARMUP_OTHER = ("torchvision:resnet18", "layer1.0", "layer2.0")


def child(spec: str, src: str, dst: str, method: str, cached: int, threads: int) -> dict:
    import contextlib

    import weightviz as wv

    torch.set_num_threads(threads)
    # "probes": fields by the structural probe (the reference path), weights composed as usual
    from weightviz.expand import reference_paths

    paths = reference_paths(weights=False, field=True) if method == "probes" else contextlib.nullcontext()
    paths.__enter__()
    torch.manual_seed(0)
    warm = wv.load_model(WARMUP[0] if spec != WARMUP[0] else WARMUP_OTHER[0])
    w_src, w_dst = WARMUP[1:] if spec != WARMUP[0] else WARMUP_OTHER[1:]
    wv.expanded_weights(warm, w_src, w_dst)
    torch.manual_seed(0)
    model = wv.load_model(spec)
    t = time.perf_counter()
    E = wv.expanded_weights(model, src, dst)
    first = time.perf_counter() - t
    times = []
    for _ in range(cached):
        t = time.perf_counter()
        E2 = wv.expanded_weights(model, src, dst)
        times.append(time.perf_counter() - t)
    assert torch.equal(E, E2)
    rf = wv.receptive_field(model, dst, src)
    return {"first_s": first, "cached_s": statistics.median(times), "shape": list(E.shape),
            "input_size": rf.input_size}


def run_child(spec, src, dst, method, cached, threads) -> dict:
    cmd = [sys.executable, __file__, "--child", spec, src, dst, method, "--cached", str(cached),
           "--threads", str(threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="subprocesses per method and pair (median)")
    parser.add_argument("--cached", type=int, default=5, help="cached calls per subprocess (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the first pair only")
    parser.add_argument("--child", nargs=4, metavar=("SPEC", "SRC", "DST", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.cached, args.threads)))
        return
    print(f"# first vs cached expanded_weights call, all units; torch {torch.__version__}, {args.threads} "
          f"threads, {platform.machine()}; medians of {args.repeats} fresh processes")
    print(f"{'model':<20} {'src -> dst':<42} {'U x C x K':>12} {'in':>4} | {'geometry 1st':>12} {'cached':>7} "
          f"{'ratio':>6} | {'probes 1st':>10} {'cached':>7} {'ratio':>6}")
    for spec, src, dst in PAIRS[:1] if args.quick else PAIRS:
        runs: dict[str, list[dict]] = {"geometry": [], "probes": []}
        for _ in range(args.repeats):
            for method in runs:
                runs[method].append(run_child(spec, src, dst, method, args.cached, args.threads))
        med = {m: {k: statistics.median(r[k] for r in rs) for k in ("first_s", "cached_s")} for m, rs in runs.items()}
        ratio = {m: statistics.median(r["first_s"] / r["cached_s"] for r in rs) for m, rs in runs.items()}
        r0 = runs["geometry"][0]
        shape = "x".join(str(v) for v in (r0["shape"][0], r0["shape"][1], r0["shape"][2]))
        g, p = med["geometry"], med["probes"]
        print(f"{spec:<20} {src + ' -> ' + dst:<42} {shape:>12} {r0['input_size']:>4} | "
              f"{g['first_s'] * 1e3:>9.1f} ms {g['cached_s'] * 1e3:>4.1f} ms {ratio['geometry']:>5.2f}x | "
              f"{p['first_s'] * 1e3:>7.1f} ms {p['cached_s'] * 1e3:>4.1f} ms {ratio['probes']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()

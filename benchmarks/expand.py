"""Benchmark: expanded weights for all units of a layer, weightviz vs the obvious per-channel autograd loop,
measured side by side in one run, with the max error between them and the peak memory of each.

Methods (each pair: all units of ``dst``, all channels of ``src``):

- ``ours``: :func:`weightviz.expanded_weights` on a fresh model object (so the receptive-field search is
  included), then ``ours (field cached)``: the same call again (median of ``--repeats``). Its defaults:
  recorded linear ops composed backwards on cropped windows (``weightviz.linearize.compose``), autograd fallback.
- ``loop@224``: the obvious way (Captum notebook): a hand-linearized copy (ReLU/ReLU6 modules -> Identity,
  ``F.relu`` patched to the identity for GoogLeNet's BasicConv2d, max-pool -> avg-pool), one full forward
  on a 224x224 input, then one ``autograd.grad`` per ``dst`` unit at the centre position (graph retained),
  cropped to the field. One run (it is slow): its time is the forward plus ``C_dst`` x the mean backward,
  measured on ``--loop-units`` evenly spaced units (all units when ``C_dst`` is not larger).
- ``loop@small``: the same per-unit loop on weightviz's small input (ablation: how much comes from the
  small input and how much from batching the cotangents).

Memory: every method runs in its own subprocess; "peak MiB" is the rise of the peak resident set size
over the process's RSS just before the method starts (model loaded, everything imported).

Run: ``.venv/bin/python benchmarks/expand.py [--repeats 3] [--threads 1] [--loop-units 96] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

PAIRS = [
    ("efficientnet_lite0", "blocks.1.0", "blocks.2.0"),
    ("efficientnet_lite0", "blocks.2.0", "blocks.3.0"),
    ("efficientnet_lite0", "blocks.3.0", "blocks.4.0"),
    ("efficientnet_lite0", "blocks.4.0", "blocks.5.0"),
    ("torchvision:googlenet", "maxpool2", "inception3a"),
    ("torchvision:googlenet", "inception3a", "inception3b"),
    ("torchvision:googlenet", "inception3b", "inception4a"),
]


def _load(spec: str):
    import weightviz as wv

    torch.manual_seed(0)
    return wv.load_model(spec)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_unit_loop(model, src, dst, size, rf_at_size, units):
    """The obvious method (:func:`weightviz.testing.slow_expanded_weights`): forward the hand-linearized copy
    at ``size``, one backward per unit. Returns ``(forward_s, mean_backward_s, [len(units), C_src, K, K])``."""
    from weightviz.testing import slow_expanded_weights

    timings: dict = {}
    (r0, c0), (kh, kw) = rf_at_size.start, rf_at_size.size
    g = slow_expanded_weights(model, src, dst, units, size, crop=(r0, c0, kh, kw), timings=timings)
    return timings["forward_s"], timings["backward_s"], g


def child(spec: str, src: str, dst: str, method: str, repeats: int, threads: int, loop_units: int) -> dict:
    import weightviz as wv

    torch.set_num_threads(threads)
    model = _load(spec)
    result: dict = {}
    if method == "ours":
        rss0 = _rss_mib()
        t = time.perf_counter()
        E = wv.expanded_weights(model, src, dst)
        result["first_s"] = time.perf_counter() - t
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            E = wv.expanded_weights(model, src, dst)
            times.append(time.perf_counter() - t)
        result["time_s"] = statistics.median(times)
        result["peak_mib"] = _peak_mib() - rss0
        rf = wv.receptive_field(model, dst, src)
        result.update(shape=list(E.shape), input_size=rf.input_size, field=list(rf.size))
        torch.save(E, f"/tmp/wv_bench_ours_{spec.replace(':', '_')}_{src}_{dst}.pt")
    else:
        size = 224 if method == "loop@224" else wv.receptive_field(model, dst, src).input_size
        rf_at = wv.receptive_field(model, dst, src, input_size=size if method == "loop@224" else None)
        n_dst = rf_at.dst_shape[0]
        step = max(1, -(-n_dst // loop_units))
        units = list(range(0, n_dst, step))
        rss0 = _rss_mib()
        fwd, bwd, E = per_unit_loop(model, src, dst, size, rf_at, units)
        result["time_s"] = fwd + bwd * n_dst   # exact cost model: one forward + one backward per unit
        result["measured_units"] = len(units)
        result["peak_mib"] = _peak_mib() - rss0
        ours = torch.load(f"/tmp/wv_bench_ours_{spec.replace(':', '_')}_{src}_{dst}.pt")[units]
        result["max_rel_err"] = float((E - ours).abs().max() / ours.abs().max())
        result["input_size"] = size
    return result


def run_child(spec, src, dst, method, repeats, threads, loop_units) -> dict:
    cmd = [sys.executable, __file__, "--child", spec, src, dst, method, "--repeats", str(repeats),
           "--threads", str(threads), "--loop-units", str(loop_units)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of ours (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see BENCHMARKS.md)")
    parser.add_argument("--loop-units", type=int, default=96,
                        help="units timed in the per-unit loops (evenly spaced); the loop's time is its forward "
                             "plus C_dst times the mean backward")
    parser.add_argument("--quick", action="store_true", help="first lite0 and googlenet pair only")
    parser.add_argument("--child", nargs=4, metavar=("SPEC", "SRC", "DST", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.repeats, args.threads, args.loop_units)))
        return
    print(f"# expanded weights, all units; torch {torch.__version__}, {args.threads} threads, "
          f"{platform.machine()}, {torch.get_num_threads()} default threads")
    pairs = [PAIRS[1], PAIRS[5]] if args.quick else PAIRS
    head = (f"{'model':<10} {'src -> dst':<28} {'units x C x K':>14} {'in':>4} | {'ours 1st':>8} {'ours':>7} "
            f"{'MiB':>5} | {'loop@224':>8} {'MiB':>5} {'x1st':>6} {'x':>6} | {'loop@in':>7} {'x':>5} | max rel err")
    print(head)
    print("-" * len(head))
    rows = []
    for spec, src, dst in pairs:
        o = run_child(spec, src, dst, "ours", args.repeats, args.threads, args.loop_units)
        b = run_child(spec, src, dst, "loop@224", args.repeats, args.threads, args.loop_units)
        s = run_child(spec, src, dst, "loop@small", args.repeats, args.threads, args.loop_units)
        name = "lite0" if "lite0" in spec else spec.split(":")[1]
        u, c, k = o["shape"][0], o["shape"][1], o["field"][0]
        err = max(b["max_rel_err"], s["max_rel_err"])
        rows.append((b["time_s"] / o["first_s"], b["time_s"] / o["time_s"], err))
        note = "" if b["measured_units"] == u else f" (loops timed on {b['measured_units']} units)"
        print(f"{name:<10} {src + ' -> ' + dst:<28} {f'{u}x{c}x{k}':>14} {o['input_size']:>4} | "
              f"{o['first_s']:>7.2f}s {o['time_s']:>6.2f}s {o['peak_mib']:>5.0f} | {b['time_s']:>7.2f}s "
              f"{b['peak_mib']:>5.0f} {b['time_s'] / o['first_s']:>5.1f}x {b['time_s'] / o['time_s']:>5.1f}x | "
              f"{s['time_s']:>6.2f}s {s['time_s'] / o['time_s']:>4.1f}x | {err:.1e}{note}", flush=True)
    first = [r[0] for r in rows]
    warm = [r[1] for r in rows]
    print(f"speed-up vs loop@224: first call {min(first):.1f}x-{max(first):.1f}x (median "
          f"{statistics.median(first):.1f}x), field cached {min(warm):.1f}x-{max(warm):.1f}x (median "
          f"{statistics.median(warm):.1f}x); max rel err {max(r[2] for r in rows):.1e}")


if __name__ == "__main__":
    main()

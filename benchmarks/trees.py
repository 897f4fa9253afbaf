"""Benchmark: the same public calls timed on two checkouts of weightviz side by side (e.g. before and
after a reorganization), each in its own subprocess, alternating, on one thread.

Calls (embedded lite0): the first ``expanded_weights`` on a fresh model (field search included) and the
cached one (median), for ``blocks.1.0 -> blocks.2.0`` and ``blocks.3.0 -> blocks.4.0``; a 64 px, 32-step
render of 4 channels of ``blocks.3.0`` (no cache); ``nmf_image`` of ``blocks.5.1.conv_dw``.

Run: ``.venv/bin/python benchmarks/trees.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, statistics, time, warnings
import torch
warnings.simplefilter("ignore")
torch.set_num_threads(1)
import weightviz as wv
out = {}
for src, dst in (("blocks.1.0", "blocks.2.0"), ("blocks.3.0", "blocks.4.0")):
    m = wv.load_model()
    t = time.perf_counter(); wv.expanded_weights(m, src, dst); out[f"expand {src}->{dst} first"] = time.perf_counter() - t
    ts = []
    for _ in range(5):
        t = time.perf_counter(); wv.expanded_weights(m, src, dst); ts.append(time.perf_counter() - t)
    out[f"expand {src}->{dst} cached"] = statistics.median(ts)
m = wv.load_model()
objs = [wv.objectives.channel("blocks.3.0", c) for c in range(4)]
t = time.perf_counter(); wv.render(m, objs, size=64, steps=32, cache=None, progress=False); out["render 4 x 64px x 32 steps"] = time.perf_counter() - t
W = wv.weights(m, "blocks.5.1.conv_dw")
t = time.perf_counter(); wv.nmf_image(W); out["nmf_image blocks.5.1.conv_dw"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run(tree: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    res = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name in ("old", "new"):
            runs[name].append(run(getattr(args, name)))
    keys = list(runs["old"][0])
    print(f"{'call':42s} {'old s':>9s} {'new s':>9s} {'new/old':>8s}   (median of {args.rounds} rounds, 1 thread)")
    for k in keys:
        o = statistics.median(r[k] for r in runs["old"])
        n = statistics.median(r[k] for r in runs["new"])
        print(f"{k:42s} {o:9.4f} {n:9.4f} {n / o:8.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: per-example connections (:func:`weightviz.data_weights`) batched vs the obvious per-image
autograd loop, side by side in one run, with the max difference between them.

Methods (each: ``--n`` embedded images at 224 px, one ``dst`` unit, position "max"):

- ``ours (cold)``: ``data_weights`` on a fresh model object (receptive-field and window measurement
  included); ``ours``: the same call again (median of ``--repeats``): one forward stopped after ``dst``
  and one backward of the sum of the selected outputs per batch (default: 4 images on a CPU).
- ``loop``: the obvious way: for each image, a full forward of the model with a hook making ``src``'s
  output a leaf, ``autograd.grad`` of ``dst[unit]`` at the argmax position, cropped to the same window
  (window geometry given to it for free).
- ``loop (stop at dst)``: ablation, the per-image loop with the forward stopped after ``dst``: how much
  comes from batching and how much from not running the rest of the model.
- ``floor``: a batched no-grad forward stopped after ``dst`` (no backward): the least any method does.

Many units per data pass (``--units U``, issue 20 item 9; public names only): ``U`` units of one lite0 ``dst``
layer over ``--n`` images, ONE ``data_weights(..., unit=list(range(U)))`` call (one forward per batch, a
full-map backward for the first unit, the others from their cones) against the per-unit loop
``[data_weights(..., u, ...) for u in range(U)]`` (one forward + one backward per unit per batch), measured
side by side in one run (after warm-up calls, so the field measurement is not counted; ``--repeats``
interleaved repeats, medians), with the max difference relative to the max |gradient|.

Run: ``.venv/bin/python benchmarks/data_weights.py [--n 64] [--size 224] [--repeats 3] [--threads 2]``
``.venv/bin/python benchmarks/data_weights.py --units 32 --n 32 [--size 224] [--threads 2]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

PAIRS = [
    ("blocks.1.0", "blocks.2.0", 3),
    ("blocks.2.0", "blocks.3.0", 5),
    ("blocks.4.0", "blocks.5.0", 7),
]


class _Stop(Exception):
    pass


def _loop(model, src, dst, unit, x, win, stop: bool):
    import weightviz as wv
    from weightviz.conditioned import windows

    out = []
    for i in range(x.shape[0]):
        cap = {}

        def hs(_m, _i, o, cap=cap):
            cap["z"] = o.detach().requires_grad_(True)
            return cap["z"] * 1.0

        def hd(_m, _i, o, cap=cap):
            cap["y"] = o
            if stop:
                raise _Stop

        h1 = wv.get_module(model, src).register_forward_hook(hs)
        h2 = wv.get_module(model, dst).register_forward_hook(hd)
        try:
            with torch.enable_grad():
                try:
                    model(x[i:i + 1])
                except _Stop:
                    pass
        finally:
            h1.remove()
            h2.remove()
        y = cap["y"][0, unit]
        flat = int(torch.argmax(y.detach().flatten()))
        p = (flat // y.shape[1], flat % y.shape[1])
        (g,) = torch.autograd.grad(y[p], cap["z"])
        out.append(windows.crop(g[0], win.start(p), win.size))
    return torch.stack(out)


def _floor(model, dst, x):
    import weightviz as wv

    def hd(_m, _i, o):
        raise _Stop

    h = wv.get_module(model, dst).register_forward_hook(hd)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()


UNITS_PAIR = ("blocks.2.0", "blocks.3.0")


def units_per_pass(n_units: int, n: int, size: int, repeats: int = 3) -> None:
    """One multi-unit call vs the per-unit loop, side by side (public API only)."""
    import warnings

    import weightviz as wv

    src, dst = UNITS_PAIR
    warnings.simplefilter("ignore", wv.WeightvizWarning)
    m = wv.load_model()
    x = wv.images(n=n, model=m, size=size).tensor()
    units = list(range(n_units))
    wv.data_weights(m, src, dst, units[:2], x[:2])               # warm-up: field and window measured once
    wv.data_weights(m, src, dst, units[:2], x)
    wv.data_weights(m, src, dst, 0, x)
    t_multis, t_loops = [], []
    for _ in range(repeats):     # interleaved, medians: a shared box's load moves between measurements
        t = time.perf_counter()
        multi = wv.data_weights(m, src, dst, units, x)
        t_multis.append(time.perf_counter() - t)
        t = time.perf_counter()
        loop = [wv.data_weights(m, src, dst, u, x) for u in units]
        t_loops.append(time.perf_counter() - t)
    t_multi, t_loop = statistics.median(t_multis), statistics.median(t_loops)
    print("per repeat: one call " + " ".join(f"{v:.2f}" for v in t_multis) + " s; loop " +
          " ".join(f"{v:.2f}" for v in t_loops) + " s; ratios " +
          " ".join(f"{b / a:.1f}" for a, b in zip(t_multis, t_loops)))
    ref = torch.stack([d.weights for d in loop])
    rel = float((multi.weights - ref).abs().max() / ref.abs().max())
    same = all(torch.equal(multi.positions[i], d.positions) for i, d in enumerate(loop))
    print(f"{n_units} units of {dst} (from {src}) over {n} images at {size} px, position 'max', "
          f"weights {list(multi.weights.shape)}")
    print(f"{'one call s':>10} {'per-unit loop s':>15} {'ratio':>6} {'max |diff| / max |g|':>21} {'positions equal':>15}")
    print(f"{t_multi:>10.2f} {t_loop:>15.2f} {t_loop / t_multi:>6.1f} {rel:>21.2e} {str(same):>15}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--units", type=int, default=0, help="many units per data pass: U units, one call vs loop")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import weightviz as wv

    if args.units:
        print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
        units_per_pass(args.units, args.n, args.size, args.repeats)
        return

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"{args.n} embedded images at {args.size} px, position 'max'")
    print(f"{'pair':<28} {'K':>3} {'ours cold s':>11} {'ours s':>8} {'floor s':>8} {'loop s':>8} {'loop@dst s':>10} "
          f"{'x loop':>7} {'x loop@dst':>10} {'max |diff|':>10}")
    for src, dst, unit in PAIRS:
        m = wv.load_model()
        x = wv.images(n=args.n, model=m, size=args.size).tensor()
        t = time.perf_counter()
        d = wv.data_weights(m, src, dst, unit, x)
        cold = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            d = wv.data_weights(m, src, dst, unit, x)
            times.append(time.perf_counter() - t)
        ours = statistics.median(times)
        t = time.perf_counter()
        for b in range(0, x.shape[0], 4):
            _floor(m, dst, x[b:b + 4])
        floor = time.perf_counter() - t
        t = time.perf_counter()
        ref = _loop(m, src, dst, unit, x, d.window, stop=False)
        loop = time.perf_counter() - t
        t = time.perf_counter()
        _loop(m, src, dst, unit, x, d.window, stop=True)
        loop_stop = time.perf_counter() - t
        diff = float((ref - d.weights).abs().max())
        scale = float(ref.abs().max())
        print(f"{src + ' -> ' + dst:<28} {d.weights.shape[-1]:>3} {cold:>11.2f} {ours:>8.3f} {floor:>8.3f} {loop:>8.2f} "
              f"{loop_stop:>10.2f} {loop / ours:>7.1f} {loop_stop / ours:>10.1f} {diff:>10.2e}  (max |g| {scale:.2g})")


if __name__ == "__main__":
    main()

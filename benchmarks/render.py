"""weightviz.render vs lucent's render_vis, side by side in one run (same model, units, image size).

Both render the same lite0 channels as one batch at the same image size from a decorrelated Fourier
image with Lucid's transforms and Adam(lr=0.05). Every image (both tools, every checkpoint) is scored the
same way: the target channel's mean activation on the clean image (no transforms), lite0 normalization.
Times are process CPU seconds (``time.process_time``, all threads): on a shared machine wall-clock time
measures the neighbours; CPU time measures the work.

Reported:
- lucent: time for its default 512 steps, activation reached;
- weightviz: the fewest checkpoint steps whose mean activation >= lucent's 512-step mean activation,
  the time to get there (from the call to that step), hence images/second to reach lucent's activation;
- per-step time of weightviz vs a bare forward+backward (input gradient only) of the same model at the
  same batch and size: full model, and truncated at the target layer.

lucent (``torch-lucent``, needs ``kornia==0.4.1``; extra ``bench`` in pyproject) must import in the Python
that runs this script. It hooks every module and never removes its hooks, so it gets its own copy of the
model. lucent's default upsamples images smaller than 224 px to 224 before the model; for the same image
size we pass ``fixed_image_size=size`` (``--lucent-upsample`` keeps its default instead). lucent's built-in
normalization is ImageNet's; lite0 expects mean = std = 0.5, so that is applied as a transform instead.

    /work/venv-bench/bin/python benchmarks/render.py --size 128 --units 4 --layer blocks.4.1
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types

import numpy as np
import torch

import weightviz as wv
from weightviz import objectives as obj
from weightviz.models.hooks import Capture, frozen
from weightviz.optvis import activations

CHECKPOINTS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _import_lucent():
    # lucent imports IPython only to display images in notebooks; a stub keeps IPython out of the env
    if "IPython" not in sys.modules:
        ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        disp.display = disp.HTML = disp.Image = lambda *a, **k: None
        ip.display = disp
        sys.modules["IPython"], sys.modules["IPython.display"] = ip, disp
    import warnings

    warnings.filterwarnings("ignore")
    from lucent.optvis import objectives, param, render, transform

    return objectives, param, render, transform


def score(model, images: torch.Tensor, layer: str, units: list[int]) -> list[float]:
    """Mean activation of each unit's channel on its own clean image ``[N, 3, S, S]``."""
    with torch.no_grad():
        a = activations(model, wv.input_spec(model).normalize(images), layer)[layer]
    return [float(a[i, u].mean()) for i, u in enumerate(units)]


def _cpu(f) -> float:
    t = time.process_time()
    f()
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--layer", default="blocks.4.1")
    ap.add_argument("--lucent-steps", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--chunk", type=int, default=16, help="steps per timed call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lucent-upsample", action="store_true", help="keep lucent's default upsampling to 224 px")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lobj, lparam, lrender, ltransform = _import_lucent()

    model = wv.load_model()
    layer, size, n = args.layer, args.size, args.units
    units = torch.randperm(wv.layers(model)[layer].out_channels,
                           generator=torch.Generator().manual_seed(args.seed))[:n].tolist()
    checkpoints = [k for k in CHECKPOINTS if k <= args.lucent_steps]
    objectives = [obj.channel(layer, u) for u in units]
    print(f"lite0 {layer} units {units}, size {size}, batch {n}, {args.threads} threads", flush=True)

    def run_lucent(steps: int, thresholds: tuple[int, ...]):
        lmodel = copy.deepcopy(model).eval()  # lucent leaves hooks on every module: a fresh copy each call
        torch.manual_seed(args.seed)
        np.random.seed(args.seed)
        objective = sum(lobj.channel(layer.replace(".", "_"), u, batch=i) for i, u in enumerate(units))
        transforms = ltransform.standard_transforms + [lambda x: (x - 0.5) / 0.5]
        return lrender.render_vis(
            lmodel, objective, param_f=lambda: lparam.image(size, batch=n), transforms=transforms,
            thresholds=thresholds, preprocess=False, progress=False, show_image=False,
            fixed_image_size=None if args.lucent_upsample else size,
        )

    # ------------------------------------------------------------------- 1. activation vs steps (quality)
    lucent_imgs = run_lucent(args.lucent_steps, tuple(checkpoints))
    lucent_curve = {k: score(model, torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float(), layer, units)
                    for k, im in zip(checkpoints, lucent_imgs)}
    curve: dict[int, list[float]] = {}

    def record(step, images, idx):
        if step in checkpoints:
            curve[step] = score(model, images, layer, units)

    wv.render(model, objectives, size=size, steps=checkpoints[-1], seed=args.seed, progress=False, callback=record)
    target = float(np.mean(lucent_curve[checkpoints[-1]]))
    reached = [k for k in checkpoints if np.mean(curve[k]) >= target]
    k_star = reached[0] if reached else None
    print("\n| steps | lucent activation | weightviz activation |")
    print("|---:|---:|---:|")
    for k in checkpoints:
        print(f"| {k} | {np.mean(lucent_curve[k]):.2f} | {np.mean(curve[k]):.2f} |")
    print(f"per unit at {checkpoints[-1]} steps: lucent {[round(v, 2) for v in lucent_curve[checkpoints[-1]]]}, "
          f"weightviz {[round(v, 2) for v in curve[checkpoints[-1]]]}", flush=True)

    # ------------------------------------------------------------------ 2. per-step CPU time, interleaved
    c = args.chunk
    x0 = torch.rand(n, 3, size, size)
    t_bare_full, t_bare_trunc, t_lucent, t_wv, t_wv_redirect = [], [], [], [], []
    with frozen(model):
        def bare_full():
            x = x0.clone().requires_grad_(True)
            model(x).sum().backward()

        bare_full()
        with Capture(model, [layer]) as cap:
            def bare_trunc():
                x = x0.clone().requires_grad_(True)
                cap.run(x)[layer][:, 0].mean().backward()

            bare_trunc()
            timed_bare = [(bare_full, t_bare_full), (bare_trunc, t_bare_trunc)]
            for _ in range(args.rounds):
                for f, acc in timed_bare:
                    acc.append(min(_cpu(f), _cpu(f)))
                t_lucent.append(_cpu(lambda: run_lucent(c, (c,))) / c)
                t_wv.append(_cpu(lambda: wv.render(model, objectives, size=size, steps=c, redirect_steps=0,
                                                   progress=False)) / c)
                t_wv_redirect.append(_cpu(lambda: wv.render(model, objectives, size=size, steps=c, redirect_steps=c,
                                                            progress=False)) / c)
    med = {k: float(np.median(v)) for k, v in [("bare_full", t_bare_full), ("bare_trunc", t_bare_trunc),
                                                ("lucent", t_lucent), ("wv", t_wv), ("wv_redirect", t_wv_redirect)]}
    print(f"\nper-step CPU s (median of {args.rounds} interleaved rounds; calls of {c} steps, setup included):")
    for k, v in med.items():
        print(f"  {k:12s} {v:.3f}   rounds: {[round(t, 3) for t in dict(bare_full=t_bare_full, bare_trunc=t_bare_trunc, lucent=t_lucent, wv=t_wv, wv_redirect=t_wv_redirect)[k]]}")

    lucent_time = args.lucent_steps * med["lucent"]
    print(f"\nlucent   : {args.lucent_steps} steps -> activation {target:.2f}; {lucent_time:.1f} CPU s -> "
          f"{n / lucent_time:.4f} images/CPU-s")
    if k_star is None:
        print(f"weightviz: did not reach {target:.2f} within {checkpoints[-1]} steps")
    else:
        r = min(16, k_star)
        wv_time = r * med["wv_redirect"] + (k_star - r) * med["wv"]
        print(f"weightviz: {k_star} steps -> activation {np.mean(curve[k_star]):.2f} >= {target:.2f}; {wv_time:.1f} CPU s "
              f"-> {n / wv_time:.4f} images/CPU-s = {lucent_time / wv_time:.1f}x lucent")
        d = checkpoints[-1]
        wv_d = 16 * med["wv_redirect"] + (d - 16) * med["wv"]
        if wv.optvis.DEFAULT_STEPS in curve:
            print(f"weightviz at its default {wv.optvis.DEFAULT_STEPS} steps: activation "
                  f"{np.mean(curve[wv.optvis.DEFAULT_STEPS]):.2f}")
        print(f"weightviz at {d} steps: activation {np.mean(curve[d]):.2f} in {wv_d:.1f} CPU s")
    print(f"weightviz per step / bare fwd+bwd truncated at {layer}: {med['wv'] / med['bare_trunc']:.2f}x "
          f"(ReLU-redirect steps {med['wv_redirect'] / med['bare_trunc']:.2f}x); / bare full model: "
          f"{med['wv'] / med['bare_full']:.2f}x")
    print(f"lucent per step / bare full model: {med['lucent'] / med['bare_full']:.2f}x")


if __name__ == "__main__":
    main()

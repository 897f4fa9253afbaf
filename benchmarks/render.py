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
from weightviz.optvis import activations
from weightviz.optvis._hooks import Capture, frozen

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


def bare_step(model, n: int, size: int, layer: str | None, repeats: int = 5) -> float:
    """Median seconds of forward+backward w.r.t. the input only, batch ``[n, 3, size, size]``."""
    x0 = torch.rand(n, 3, size, size)
    times = []
    with frozen(model):
        if layer is None:
            def f():
                x = x0.clone().requires_grad_(True)
                model(x).sum().backward()
            f()
            for _ in range(repeats):
                t = time.process_time()
                f()
                times.append(time.process_time() - t)
        else:
            with Capture(model, [layer]) as cap:
                def f():
                    x = x0.clone().requires_grad_(True)
                    cap.run(x)[layer][:, 0].mean().backward()
                f()
                for _ in range(repeats):
                    t = time.process_time()
                    f()
                    times.append(time.process_time() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--layer", default="blocks.4.1")
    ap.add_argument("--lucent-steps", type=int, default=512)
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
    print(f"lite0 {layer} units {units}, size {size}, batch {n}, {args.threads} threads", flush=True)

    bare_full = [bare_step(model, n, size, None)]
    bare_trunc = [bare_step(model, n, size, layer)]

    # ---------------------------------------------------------------------------------------- lucent
    lmodel = copy.deepcopy(model).eval()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    objective = sum(lobj.channel(layer.replace(".", "_"), u, batch=i) for i, u in enumerate(units))
    transforms = ltransform.standard_transforms + [lambda x: (x - 0.5) / 0.5]
    t = time.process_time()
    lucent_imgs = lrender.render_vis(
        lmodel, objective, param_f=lambda: lparam.image(size, batch=n), transforms=transforms,
        thresholds=tuple(checkpoints), preprocess=False, progress=False, show_image=False,
        fixed_image_size=None if args.lucent_upsample else size,
    )
    lucent_time = time.process_time() - t
    lucent_curve = {k: score(model, torch.from_numpy(np.asarray(im)).permute(0, 3, 1, 2).float(), layer, units)
                    for k, im in zip(checkpoints, lucent_imgs)}
    lucent_final = lucent_curve[checkpoints[-1]]
    print(f"lucent: {args.lucent_steps} steps in {lucent_time:.1f} s, activation {np.mean(lucent_final):.2f} "
          f"(per unit {[round(v, 2) for v in lucent_final]})", flush=True)

    bare_full.append(bare_step(model, n, size, None))
    bare_trunc.append(bare_step(model, n, size, layer))

    # ------------------------------------------------------------------------------------- weightviz
    stamps: dict[int, float] = {}    # render-clock time at each step (the scoring below is not counted)
    curve: dict[int, list[float]] = {}
    scoring = [0.0]

    def record(step, images, idx):
        now = time.process_time()
        stamps[step] = now - scoring[0]
        if step in checkpoints:
            curve[step] = score(model, images, layer, units)
            scoring[0] += time.process_time() - now

    t0 = time.process_time()
    wv.render(model, [obj.channel(layer, u) for u in units], size=size, steps=checkpoints[-1], seed=args.seed,
              progress=False, callback=record)
    wv_total = time.process_time() - t0 - scoring[0]
    bare_full.append(bare_step(model, n, size, None))
    bare_trunc.append(bare_step(model, n, size, layer))

    def time_to(k):
        return stamps[k] - t0

    target = float(np.mean(lucent_final))
    reached = [k for k in checkpoints if np.mean(curve[k]) >= target]
    k_star = reached[0] if reached else None

    per_step = (time_to(checkpoints[-1]) - time_to(16)) / (checkpoints[-1] - 16)
    per_step_redirect = time_to(16) / 16
    bf, bt = float(np.median(bare_full)), float(np.median(bare_trunc))

    print("\n| steps | lucent activation | weightviz activation |")
    print("|---:|---:|---:|")
    for k in checkpoints:
        print(f"| {k} | {np.mean(lucent_curve[k]):.2f} | {np.mean(curve[k]):.2f} |")
    print()
    lucent_ips = n / lucent_time
    print(f"lucent   : {args.lucent_steps} steps, {lucent_time:.1f} s, activation {target:.2f} -> "
          f"{lucent_ips:.3f} images/s")
    if k_star is None:
        print(f"weightviz: did not reach {target:.2f} within {checkpoints[-1]} steps "
              f"(reached {np.mean(curve[checkpoints[-1]]):.2f})")
    else:
        tk = time_to(k_star)
        print(f"weightviz: reaches {np.mean(curve[k_star]):.2f} >= {target:.2f} at {k_star} steps, {tk:.1f} s -> "
              f"{n / tk:.3f} images/s = {n / tk / lucent_ips:.2f}x lucent")
    print(f"weightviz at {checkpoints[-1]} steps: activation {np.mean(curve[checkpoints[-1]]):.2f}, {wv_total:.1f} s")
    print(f"per step: lucent {lucent_time / args.lucent_steps:.3f} s; weightviz {per_step:.3f} s "
          f"(first 16 steps with ReLU redirect: {per_step_redirect:.3f} s)")
    print(f"bare fwd+bwd (input grad) batch {n}: full model {bf:.3f} s, truncated at {layer} {bt:.3f} s "
          f"(medians of {bare_full}, {bare_trunc})".replace("[", "").replace("]", ""))
    print(f"weightviz per-step / bare truncated = {per_step / bt:.2f}x; / bare full = {per_step / bf:.2f}x; "
          f"lucent per-step / bare full = {lucent_time / args.lucent_steps / bf:.2f}x")


if __name__ == "__main__":
    main()

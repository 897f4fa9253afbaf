"""weightviz.top_examples (batched, forward truncated after the layer) vs the obvious per-image loop,
side by side in one run on the same images, same layer and unit.

- batched: ``wv.top_examples(model, layer, unit, images, k)`` (one forward per ``--batch`` images that stops
  after ``layer``, all units scored at once, then the receptive-field crops of the top k);
- loop: one image at a time through the whole model with a forward hook reading ``layer`` (what one writes
  without the library), then the same crops. The loop's top-k must equal the batched one (checked).

Times are process CPU seconds (``time.process_time``, all threads): on a shared machine wall-clock time
measures the neighbours; CPU time measures the work. Images are decoded and normalized before timing.

    python benchmarks/examples.py --layer blocks.3.0 --unit 5 --n 64
"""

from __future__ import annotations

import argparse
import time

import torch

import weightviz as wv
from weightviz.conditioned import windows
from weightviz.conditioned.examples import FILL, top_examples


def loop_scores(model, layer: str, unit: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: full forward, hook on ``layer``, max over positions of the unit and where it is."""
    store = {}
    h = wv.get_module(model, layer).register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    vals, poss = [], []
    try:
        with torch.no_grad():
            for img in x:
                model(img[None])
                a = store["a"][0, unit]
                i = int(torch.argmax(a.flatten()))
                vals.append(float(a.flatten()[i]))
                poss.append((i // a.shape[-1], i % a.shape[-1]))
    finally:
        h.remove()
    return torch.tensor(vals), torch.tensor(poss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="blocks.3.0")
    ap.add_argument("--unit", type=int, default=5)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = wv.load_model()
    imgs = wv.images(n=args.n, model=model)
    x = imgs.tensor()                          # decode + normalize once, outside the timings
    prepared = wv.as_images(x, model)
    # warm-up (allocator, receptive-field probes of the top positions are memoized by both paths alike)
    top_examples(model, args.layer, args.unit, prepared, args.k, batch_size=args.batch)
    t_batched, t_loop = [], []
    for _ in range(args.repeat):
        t0 = time.process_time()
        res = top_examples(model, args.layer, args.unit, prepared, args.k, batch_size=args.batch)
        t_batched.append(time.process_time() - t0)
        t0 = time.process_time()
        vals, poss = loop_scores(model, args.layer, args.unit, x)
        order = torch.sort(vals, descending=True, stable=True).indices[: args.k].tolist()
        hw = (x.shape[-2], x.shape[-1])
        field = wv.receptive_field(model, args.layer, None).size
        win = windows.window(model, None, args.layer, hw, field)
        crops = [windows.crop(prepared.raw(i), win.start(tuple(poss[i].tolist())), field, fill=FILL) for i in order]
        t_loop.append(time.process_time() - t0)
    assert res.indices.tolist() == [i for i in order if vals[i] > 0], (res.indices.tolist(), order)
    torch.testing.assert_close(res.values, vals[res.indices], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.images, torch.stack(crops)[: len(res)])
    b, lp = min(t_batched), min(t_loop)
    print(f"lite0 {args.layer} unit {args.unit}: {args.n} images 224 px, k={args.k}, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  batched top_examples   {b:7.2f} CPU-s")
    print(f"  per-image loop         {lp:7.2f} CPU-s")
    print(f"  ratio loop / batched   {lp / b:7.2f}x   (same top-{args.k}, values within 1e-4, identical crops)")


if __name__ == "__main__":
    main()

"""Check: the composed path of expanded weights against the autograd path on random layer pairs of many
torchvision/timm architectures (random init, no download). Prints, per pair, which path the default call
took (composed or fallback) and the relative difference to the autograd path; pairs that the library refuses
(no route, global pooling in between, a unit out of range) print their one-line error.

Run: ``.venv/bin/python benchmarks/compose_check.py [--pairs 3] [--seed 0] [--units 16]``
"""

from __future__ import annotations

import argparse
import random
import warnings

import torch

ARCHS = [
    "torchvision:resnet50", "torchvision:densenet121", "torchvision:mobilenet_v3_small",
    "torchvision:efficientnet_b0", "torchvision:regnet_x_400mf", "torchvision:shufflenet_v2_x1_0",
    "torchvision:squeezenet1_1", "torchvision:vgg11_bn", "timm:efficientnet_b0", "timm:mobilenetv3_large_100",
    "timm:resnet26d", "timm:mixnet_s", "timm:tf_efficientnet_b0", "timm:ghostnet_100", "timm:regnety_002",
    "timm:dla34", "timm:hrnet_w18_small", "timm:cspresnet50", "timm:rexnet_100", "timm:densenet121",
    "timm:inception_v3", "timm:mobilenetv2_100", "timm:efficientnet_lite0", "timm:res2net50_14w_8s",
    "timm:selecsls42b",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="random conv pairs per architecture")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--units", type=int, default=16, help="dst units per pair")
    parser.add_argument("--arch", action="append", help="only these specs (repeatable)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import weightviz as wv
    from weightviz.expand import reference_paths
    from weightviz.linearize import compose as _compose

    used = {"composed": 0, "fallback": 0}
    orig = _compose.compose

    def spy(*a, **k):
        res = orig(*a, **k)
        used["composed" if res is not None else "fallback"] += 1
        return res

    _compose.compose = spy
    rng = random.Random(args.seed)
    worst, n = 0.0, 0
    for spec in args.arch or ARCHS:
        torch.manual_seed(0)
        model = wv.load_model(spec)
        convs = [layer.name for layer in wv.layers(model) if "Conv" in layer.type]
        for _ in range(args.pairs):
            i = rng.randrange(0, max(1, len(convs) - 3))
            src, dst = convs[i], convs[min(len(convs) - 1, i + rng.randint(1, 6))]
            units = list(range(args.units))
            before = dict(used)
            try:
                got = wv.expanded_weights(model, src, dst, units=units)
            except wv.WeightvizError as e:
                print(f"{spec} {src} -> {dst}: refused: {str(e)[:100]}")
                continue
            path = "composed" if used["composed"] > before["composed"] else "fallback"
            with reference_paths():
                ref = wv.expanded_weights(model, src, dst, units=units)
            err = float((got - ref).abs().max() / ref.abs().max().clamp(min=1e-30))
            worst, n = max(worst, err), n + 1
            print(f"{spec} {src} -> {dst} {tuple(got.shape)}: {path}, rel. diff {err:.1e}")
    print(f"{n} pairs: {used['composed']} composed, {used['fallback']} fell back; largest rel. diff {worst:.1e}")


if __name__ == "__main__":
    main()

"""The article's InceptionV1 (Lucid's GoogLeNet, "inception5h"), with the layer names of the article and
OpenAI Microscope, loading the state-dict layout of the converted weights used by lucent.

This is *not* torchvision's ``googlenet`` (no batch norm, a real 5x5 branch, local response norm, other
channel counts). Layers (names of ``named_modules()``):

- ``conv2d0_pre_relu_conv`` (7x7, stride 2, TF-"SAME" padding 2/3), ``conv2d0`` (its ReLU), ``maxpool0``,
  ``localresponsenorm0``, ``conv2d1_pre_relu_conv`` / ``conv2d1``, ``conv2d2_pre_relu_conv`` / ``conv2d2``,
  ``localresponsenorm1``, ``maxpool1``;
- per inception block ``B`` in ``mixed3a, mixed3b, mixed4a ... mixed4e, mixed5a, mixed5b``: the convs
  ``B_1x1_pre_relu_conv``, ``B_3x3_bottleneck_pre_relu_conv``, ``B_3x3_pre_relu_conv``,
  ``B_5x5_bottleneck_pre_relu_conv``, ``B_5x5_pre_relu_conv``, ``B_pool_reduce_pre_relu_conv``, their ReLUs
  ``B_1x1``, ``B_3x3_bottleneck``, ``B_3x3``, ``B_5x5_bottleneck``, ``B_5x5``, ``B_pool_reduce``, the
  max-pool ``B_pool`` (3x3, stride 1), and ``B`` (channel concatenation of the four ReLU outputs,
  ``[1x1, 3x3, 5x5, pool_reduce]``) and ``B_pre_relu`` (the same concatenation before the ReLUs);
- ``maxpool4`` (before ``mixed4a``), ``maxpool10`` (before ``mixed5a``), ``avgpool0``,
  ``softmax2_pre_activation_matmul`` (1024 -> 1008 logits), ``softmax2``.

Parameters live only in the ``*_pre_relu_conv`` convs and ``softmax2_pre_activation_matmul`` (weights
``[C_out, C_in, kh, kw]`` and biases), exactly the keys of lucent's ``InceptionV1`` state dict, so
its converted weights file loads as is. TF's "SAME" max-pools with stride 2 (pad 0 before, 1 after,
with -inf) are ``MaxPool2d(3, 2, ceil_mode=True)``: the same windows and values, with no -inf in the
graph. Input: RGB in ``[-117, 138]`` (``255 * x - 117`` for ``x`` in [0, 1]; see :data:`INPUT_SPEC`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BLOCKS", "InceptionV1"]

#: inception blocks: name, input channels, then output channels of 1x1, 3x3 bottleneck, 3x3,
#: 5x5 bottleneck, 5x5 and pool-reduce convs
BLOCKS: tuple[tuple[str, int, int, int, int, int, int, int], ...] = (
    ("mixed3a", 192, 64, 96, 128, 16, 32, 32),
    ("mixed3b", 256, 128, 128, 192, 32, 96, 64),
    ("mixed4a", 480, 192, 96, 204, 16, 48, 64),
    ("mixed4b", 508, 160, 112, 224, 24, 64, 64),
    ("mixed4c", 512, 128, 128, 256, 24, 64, 64),
    ("mixed4d", 512, 112, 144, 288, 32, 64, 64),
    ("mixed4e", 528, 256, 160, 320, 32, 128, 128),
    ("mixed5a", 832, 256, 160, 320, 48, 128, 128),
    ("mixed5b", 832, 384, 192, 384, 48, 128, 128),
)
_POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}
# LRN of the converted graph (TF depth_radius 4 -> size 9), as lucent's port runs it
_LRN = {"size": 9, "alpha": 9.99999974738e-05, "beta": 0.5, "k": 1.0}


class Concat(nn.Module):
    """Channel concatenation ``[B, C_i, H, W]... -> [B, sum C_i, H, W]`` (a named layer of its own)."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, 1)


class InceptionV1(nn.Module):
    """Lucid's InceptionV1 (see the module docstring for layer names). Input ``[B, 3, H, W]`` in
    ``[-117, 138]``; output ``[B, 1008]`` class probabilities (``H = W = 224``; layers up to ``mixed5b``
    run at any size)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d0_pre_relu_conv = nn.Conv2d(3, 64, 7, stride=2)
        self.conv2d0 = nn.ReLU()
        self.maxpool0 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.localresponsenorm0 = nn.LocalResponseNorm(**_LRN)
        self.conv2d1_pre_relu_conv = nn.Conv2d(64, 64, 1)
        self.conv2d1 = nn.ReLU()
        self.conv2d2_pre_relu_conv = nn.Conv2d(64, 192, 3, padding=1)
        self.conv2d2 = nn.ReLU()
        self.localresponsenorm1 = nn.LocalResponseNorm(**_LRN)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for name, c_in, c1, c3r, c3, c5r, c5, cp in BLOCKS:
            if name in _POOL_BEFORE:
                setattr(self, _POOL_BEFORE[name], nn.MaxPool2d(3, 2, ceil_mode=True))
            for branch, cin, cout, k in (("1x1", c_in, c1, 1), ("3x3_bottleneck", c_in, c3r, 1),
                                         ("3x3", c3r, c3, 3), ("5x5_bottleneck", c_in, c5r, 1),
                                         ("5x5", c5r, c5, 5), ("pool_reduce", c_in, cp, 1)):
                setattr(self, f"{name}_{branch}_pre_relu_conv", nn.Conv2d(cin, cout, k, padding=k // 2))
                setattr(self, f"{name}_{branch}", nn.ReLU())
            setattr(self, f"{name}_pool", nn.MaxPool2d(3, 1, padding=1))
            setattr(self, f"{name}_pre_relu", Concat())
            setattr(self, name, Concat())
        self.avgpool0 = nn.AvgPool2d(7, 1)
        self.softmax2_pre_activation_matmul = nn.Linear(1024, 1008)
        self.softmax2 = nn.Softmax(dim=1)
        #: the parameter-free layers listed by :func:`weightviz.layers` (ReLUs, pools, concatenations)
        self.weightviz_named_layers = tuple(n for n, m in self.named_modules()
                                            if n and not isinstance(m, (nn.Conv2d, nn.Linear)))

    def _block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """One inception block: ``[B, C_in, H, W] -> [B, C_out, H, W]``."""
        def conv(branch: str, inp: torch.Tensor) -> torch.Tensor:
            return getattr(self, f"{name}_{branch}_pre_relu_conv")(inp)

        def relu(branch: str, inp: torch.Tensor) -> torch.Tensor:
            return getattr(self, f"{name}_{branch}")(inp)

        p1 = conv("1x1", x)
        p3 = conv("3x3", relu("3x3_bottleneck", conv("3x3_bottleneck", x)))
        p5 = conv("5x5", relu("5x5_bottleneck", conv("5x5_bottleneck", x)))
        pp = conv("pool_reduce", getattr(self, f"{name}_pool")(x))
        out = getattr(self, name)(relu("1x1", p1), relu("3x3", p3), relu("5x5", p5), relu("pool_reduce", pp))
        # after the block's output: a forward that stops at ``name`` never runs this side concatenation
        getattr(self, f"{name}_pre_relu")(p1, p3, p5, pp)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2d0(self.conv2d0_pre_relu_conv(F.pad(x, (2, 3, 2, 3))))
        x = self.localresponsenorm0(self.maxpool0(x))
        x = self.conv2d1(self.conv2d1_pre_relu_conv(x))
        x = self.conv2d2(self.conv2d2_pre_relu_conv(x))
        x = self.maxpool1(self.localresponsenorm1(x))
        for name, *_ in BLOCKS:
            if name in _POOL_BEFORE:
                x = getattr(self, _POOL_BEFORE[name])(x)
            x = self._block(name, x)
        x = self.avgpool0(x).flatten(1)
        return self.softmax2(self.softmax2_pre_activation_matmul(x))

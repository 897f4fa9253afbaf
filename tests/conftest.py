"""Shared fixtures: the embedded lite0 (loaded once), torchvision googlenet/resnet18 with seeded random
weights, and a tiny random conv net."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

# no test ever downloads: pretrained specs fail fast unless a test planted their weights in a fresh cache
os.environ.setdefault("WEIGHTVIZ_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WEIGHTVIZ_CACHE", str(Path(__file__).parent / ".." / ".pytest-weightviz-cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture(scope="session")
def lite0():
    import weightviz as wv

    return wv.load_model()


@pytest.fixture(scope="session")
def googlenet():
    import weightviz as wv

    torch.manual_seed(0)
    return wv.load_model("torchvision:googlenet@random")


@pytest.fixture(scope="session")
def resnet18():
    import weightviz as wv

    torch.manual_seed(0)
    return wv.load_model("torchvision:resnet18@random")


class TinyNet(nn.Module):
    """conv3x3(3->8) -> BN -> ReLU -> conv3x3(8->16, stride 2) -> ReLU -> conv1x1(16->4) -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(16, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    m = TinyNet().eval()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 2.0)
    return m


# ------------------------------------------------------------------------------ sites built two ways
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _texts_match(a: bytes, b: bytes, rel: float = 1e-4, abs_: float = 1e-6) -> bool:
    """Text equal except for numbers, which may differ by float32 rounding (``rel``/``abs_``)."""
    if _NUMBER.sub(b"#", a) != _NUMBER.sub(b"#", b):
        return False
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)):
        fx, fy = float(x), float(y)
        if abs(fx - fy) > max(abs_, rel * max(abs(fx), abs(fy))):
            return False
    return True


def _pngs_match(a: bytes, b: bytes, levels: int = 4) -> bool:
    """Images of the same size whose pixels differ by at most ``levels`` of 255."""
    import io

    import numpy as np
    from PIL import Image

    x, y = (np.asarray(Image.open(io.BytesIO(d)).convert("RGBA")).astype(int) for d in (a, b))
    return x.shape == y.shape and int(np.abs(x - y).max(initial=0)) <= levels


def site_diff(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    """What README promises of one site built by two executors: the same files; text (HTML, JSON, JS) the
    same but for numbers within float32 rounding; images within a few levels of 255. Returns the files
    that break it (empty: the sites are the same in that sense)."""
    bad = sorted(set(a) ^ set(b))
    for f in sorted(set(a) & set(b)):
        if a[f] == b[f]:
            continue
        ok = _pngs_match(a[f], b[f]) if f.endswith(".png") else _texts_match(a[f], b[f])
        if not ok:
            bad.append(f)
    return bad


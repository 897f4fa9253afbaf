"""Shared fixtures: the embedded lite0 (loaded once), torchvision googlenet/resnet18 with seeded random
weights, and a tiny random conv net."""

from __future__ import annotations

import os
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

"""``--device`` / ``device=``: one resolver; models move there and the library follows the model.
CUDA-only checks are skipped on machines without a GPU."""

from __future__ import annotations

import pytest
import torch

import weightviz as wv
from weightviz import WeightvizError
from weightviz.models.device import model_device, resolve_device, to_device

CUDA = torch.cuda.is_available()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if CUDA else "cpu")
    for bad in ("tpu", "gpu0", "", "cuda:x"):
        with pytest.raises(WeightvizError, match="unknown device"):
            resolve_device(bad)


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_in_one_line():
    for spec in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(WeightvizError, match="not available") as e:
            resolve_device(spec)
        assert "\n" not in str(e.value)


def test_to_device_moves_the_model_and_none_leaves_it(tiny):
    assert to_device(tiny, None) is tiny and model_device(tiny).type == "cpu"
    assert to_device(tiny, "cpu") is tiny and model_device(tiny).type == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_render_matches_cpu(tiny, tmp_path):  # pragma: no cover - no GPU on the CI box
    kw = {"size": 32, "steps": 8, "cache": None, "batch": 4}
    cpu = wv.render_dir(tiny, "conv2", "0:4", tmp_path / "cpu", device="cpu", **kw)
    gpu = wv.render_dir(tiny, "conv2", "0:4", tmp_path / "gpu", device="cuda", **kw)
    assert model_device(tiny).type == "cuda" and gpu.run == cpu.run == 1
    import numpy as np
    from PIL import Image

    for f in cpu.files:
        a = np.asarray(Image.open(f), dtype=np.float32)
        b = np.asarray(Image.open(tmp_path / "gpu" / f.name), dtype=np.float32)
        assert np.abs(a - b).mean() < 2.0  # same optimization, float32 on two devices: a few levels apart

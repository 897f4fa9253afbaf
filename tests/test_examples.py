"""top_examples: dataset examples of a unit, checked against an obvious per-image loop and hand-computed
receptive-field boxes; the crop helper; never-firing units; the figure and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import weightviz as wv
from weightviz.conditioned.examples import FILL, top_examples


def _net() -> nn.Sequential:
    """conv3x3 stride 2 pad 1 -> ReLU -> conv3x3 pad 1: position (y, x) of layer "2" sees input rows
    2y-3 .. 2y+3 (7 pixels, clipped to the image), columns likewise."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1)).eval()


def _hand_box(y: int, x: int, n: int) -> tuple[int, int, int, int]:
    return max(0, 2 * y - 3), min(n, 2 * y + 4), max(0, 2 * x - 3), min(n, 2 * x + 4)


def _loop(model, x, unit, position="max"):
    """The obvious reference: one image at a time, the whole model up to layer "2"."""
    vals, poss = [], []
    for img in x:
        with torch.no_grad():
            a = model(img[None])[0, unit]
        h, w = a.shape
        if position == "centre":
            y, xx = (h - 1) // 2, (w - 1) // 2
        else:
            flat = int(torch.argmax(a.flatten()))
            y, xx = divmod(flat, w)
        vals.append(float(a[y, xx]))
        poss.append((y, xx))
    return vals, poss


@pytest.mark.parametrize("position", ["max", "centre"])
def test_matches_per_image_loop_and_hand_boxes(position):
    model = _net()
    torch.manual_seed(1)
    x = torch.randn(13, 3, 16, 16)
    unit, k = 2, 5
    res = top_examples(model, "2", unit, x, k=k, position=position, batch_size=4)
    vals, poss = _loop(model, x, unit, position)
    order = sorted(range(len(vals)), key=lambda i: -vals[i])
    keep = [i for i in order[:k] if vals[i] > 0]
    assert res.indices.tolist() == keep
    torch.testing.assert_close(res.values, torch.tensor([vals[i] for i in keep]), rtol=1e-5, atol=1e-6)
    assert res.positions.tolist() == [list(poss[i]) for i in keep]
    assert bool((res.values[:-1] >= res.values[1:]).all())
    assert res.n_images == 13 and res.fires
    # crops: the hand-computed 7x7 field of the raw image (a prepared tensor is shown min-max scaled),
    # grey where it reaches past the border
    assert res.images.shape == (len(keep), 3, 7, 7)
    for j, i in enumerate(keep):
        y, xx = poss[i]
        r0, r1, c0, c1 = _hand_box(y, xx, 16)
        assert res.boxes[j].tolist() == [r0, r1, c0, c1]
        raw = (x[i] - x[i].min()) / (x[i].max() - x[i].min())
        padded = torch.nn.functional.pad(raw, (3, 3, 3, 3), value=FILL)
        torch.testing.assert_close(res.images[j], padded[:, 2 * y:2 * y + 7, 2 * xx:2 * xx + 7])


def test_non_square_images():
    model = _net()
    torch.manual_seed(2)
    x = torch.randn(5, 3, 12, 20)
    res = top_examples(model, "2", 1, x, k=3)
    vals, poss = _loop(model, x, 1)
    assert res.positions.tolist() == [list(poss[i]) for i in res.indices.tolist()]
    for j, i in enumerate(res.indices.tolist()):
        y, xx = poss[i]
        raw = (x[i] - x[i].min()) / (x[i].max() - x[i].min())
        padded = torch.nn.functional.pad(raw, (3, 3, 3, 3), value=FILL)
        torch.testing.assert_close(res.images[j], padded[:, 2 * y:2 * y + 7, 2 * xx:2 * xx + 7])


def test_lite0_crops_are_receptive_fields(lite0):
    """On lite0 (TF-"SAME" padding) the part of each crop inside the image is the measured receptive
    field of that position (wv.receptive_field with the position as target)."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    res = top_examples(lite0, "blocks.1.0", 4, x, k=3)
    for j in range(len(res)):
        rf = wv.receptive_field(lite0, "blocks.1.0", None, input_size=64, target=tuple(res.positions[j].tolist()))
        assert res.boxes[j].tolist() == [rf.start[0], rf.start[0] + rf.size[0], rf.start[1], rf.start[1] + rf.size[1]]
    full = wv.receptive_field(lite0, "blocks.1.0", None)
    assert tuple(res.images.shape[-2:]) == full.size


def test_never_firing_unit_warns_and_figure_says_so(tmp_path):
    model = _net()
    with torch.no_grad():
        model[2].bias[1] = -1e3
    x = torch.randn(6, 3, 16, 16)
    with pytest.warns(UserWarning, match="never fires"):
        res = top_examples(model, "2", 1, x, k=4)
    assert not res.fires and len(res) == 0 and res.images.shape[0] == 0 and res.max_value <= 0
    fig = wv.figures.top_examples(res)
    assert fig.data["fires"] is False and fig.data["n"] == 0
    texts = " ".join(t.get_text() for t in fig.fig.texts)
    assert "never fires" in texts
    fig.save(tmp_path / "none.png")


def test_keeps_only_firing_examples():
    model = _net()
    torch.manual_seed(3)
    x = torch.randn(20, 3, 16, 16)
    vals, _ = _loop(model, x, 0)
    res = top_examples(model, "2", 0, x, k=20)
    assert len(res) == sum(v > 0 for v in vals)
    assert bool((res.values > 0).all())


def test_linear_layer_crop_is_whole_image():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(5, 3, 12, 12)
    with torch.no_grad():
        ref = model(x)[:, 1]
    res = top_examples(model, "3", 1, x, k=2)
    keep = [i for i in torch.argsort(ref, descending=True)[:2].tolist() if ref[i] > 0]
    assert res.indices.tolist() == keep
    assert res.images.shape[-2:] == (12, 12) and res.positions.tolist() == [[-1, -1]] * len(keep)


def test_folder_images_and_figure(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = _net()
    res = top_examples(model, "2", 3, wv.images(folder, size=16), k=3)
    assert 0 < len(res) <= 3 and res.images.min() >= 0 and res.images.max() <= 1
    fig = wv.figures.top_examples(model, "2", 3, str(folder), k=3)
    assert fig.data["indices"] == res.indices.tolist() or fig.data["n"] > 0
    out = fig.save(tmp_path / "ex.svg")
    assert out.stat().st_size > 0


def test_bad_input():
    model = _net()
    x = torch.randn(4, 3, 16, 16)
    with pytest.raises(wv.WeightvizError, match="out of range"):
        top_examples(model, "2", 5, x)
    with pytest.raises(wv.WeightvizError, match="Did you mean"):
        top_examples(model, "22", 0, x)
    with pytest.raises(wv.WeightvizError, match="k must be"):
        top_examples(model, "2", 0, x, k=0)
    with pytest.raises(wv.WeightvizError, match="position"):
        top_examples(model, "2", 0, x, position="middle")
    with pytest.raises(wv.WeightvizError, match="channels"):
        top_examples(model, "2", 0, torch.randn(4, 1, 16, 16))

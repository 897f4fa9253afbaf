"""weightviz.images / as_images: the embedded natural images, folders, prepared tensors, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import weightviz as wv
from weightviz.data import imageset
from weightviz.errors import WeightvizError


def _pil_square(arr: np.ndarray, size: int) -> torch.Tensor:
    """Independent reference: short side -> size (bicubic), centre crop, [3, H, W] in [0, 1]."""
    im = Image.fromarray(arr)
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    w, h = im.size
    im = im.crop(((w - size) // 2, (h - size) // 2, (w - size) // 2 + size, (h - size) // 2 + size))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def test_embedded_shapes_table_matches_the_photos():
    crops = imageset._embedded_crops()
    for photo in range(len(imageset._EMBEDDED)):
        h, w, c = imageset._embedded_photo(photo).shape
        assert c == 3
        mine = [cr for cr in crops if cr.photo == photo]
        assert all(cr.top + cr.side <= h and cr.left + cr.side <= w for cr in mine)
        # the largest crop spans the short side: the table's (h, w) are the photo's
        assert max(cr.side for cr in mine) == min(h, w)
        assert max(cr.top + cr.side for cr in mine) == h and max(cr.left + cr.side for cr in mine) == w


def test_embedded_set_size_order_and_determinism():
    full = wv.images(size=32)
    assert len(full) == len(imageset._embedded_crops()) >= 300
    a, b, c = wv.images(n=12, size=32), wv.images(n=12, size=32), wv.images(n=12, size=32, seed=1)
    torch.testing.assert_close(a.tensor(), b.tensor(), rtol=0, atol=0)
    assert not torch.equal(a.tensor(), c.tensor())
    x = a[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert not a.model_ready


def test_embedded_images_are_resized_crops_of_the_photos():
    size = 24
    imgs = wv.images(n=4, size=size)
    refs = []
    for cr in imageset._embedded_crops():
        arr = imageset._embedded_photo(cr.photo)[cr.top:cr.top + cr.side, cr.left:cr.left + cr.side]
        arr = np.ascontiguousarray(arr[:, ::-1] if cr.flip else arr)
        refs.append(_pil_square(arr, size))
    refs = torch.stack(refs)
    for i in range(len(imgs)):
        d = (refs - imgs.raw(i)).abs().flatten(1).max(1).values
        assert float(d.min()) < 1e-6, "each image is one crop of one photo"
    # mirrored crops are mirror images of their partners
    crops = imageset._embedded_crops()
    assert crops[0].flip is False and crops[1].flip is True and crops[0].top == crops[1].top
    torch.testing.assert_close(refs[1], refs[0].flip(-1))


def test_batches_iteration_and_tensor():
    imgs = wv.images(n=10, size=16, batch_size=4)
    shapes = [tuple(b.shape) for b in imgs]
    assert shapes == [(4, 3, 16, 16), (4, 3, 16, 16), (2, 3, 16, 16)]
    torch.testing.assert_close(imgs.tensor(), torch.stack([imgs[i] for i in range(10)]))
    assert [tuple(b.shape) for b in imgs.batches(7)] == [(7, 3, 16, 16), (3, 3, 16, 16)]
    torch.testing.assert_close(imgs[-1], imgs[9])
    with pytest.raises(WeightvizError, match="out of range"):
        imgs[10]


def test_normalized_for_lite0_and_for_a_one_channel_model(lite0):
    raw = wv.images(n=3, size=32)
    ready = wv.images(n=3, size=32, model=lite0)
    assert ready.model_ready and ready.spec.channels == 3
    torch.testing.assert_close(ready.tensor(), (raw.tensor() - 0.5) / 0.5)
    torch.testing.assert_close(raw.for_model(lite0).tensor(), ready.tensor())
    assert wv.images(model=lite0, n=1)[0].shape[-1] == wv.input_spec(lite0).size  # model's size by default

    gray = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()).eval()
    g = raw.for_model(gray)
    luma = (0.299 * raw.tensor()[:, 0] + 0.587 * raw.tensor()[:, 1] + 0.114 * raw.tensor()[:, 2])[:, None]
    spec = wv.input_spec(gray)
    torch.testing.assert_close(g.tensor(), (luma - spec.mean[0]) / spec.std[0])


def test_folder_recursive_resize_and_unreadable_files(tmp_path):
    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 256, (40 + 10 * i, 60, 3), dtype=np.uint8) for i in range(3)]
    (tmp_path / "sub").mkdir()
    Image.fromarray(arrs[0]).save(tmp_path / "a.png")
    Image.fromarray(arrs[1]).save(tmp_path / "sub" / "b.png")
    Image.fromarray(arrs[2]).save(tmp_path / "sub" / "c.webp", lossless=True)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file"):
        imgs = wv.images(tmp_path, size=32)
    assert len(imgs) == 3 and imgs.source == str(tmp_path)
    for i, arr in enumerate(arrs):  # sorted paths: a.png, sub/b.png, sub/c.webp
        torch.testing.assert_close(imgs.raw(i), _pil_square(arr, 32), rtol=0, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        two = wv.images(tmp_path, size=32, n=2)
    assert len(two) == 2


def test_folder_errors(tmp_path):
    with pytest.raises(WeightvizError, match="does not exist"):
        wv.images(tmp_path / "nope")
    with pytest.raises(WeightvizError, match="no readable images"):
        wv.images(tmp_path)
    f = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(f)
    with pytest.raises(WeightvizError, match="not a folder"):
        wv.images(f)
    with pytest.raises(WeightvizError, match="asked but"):
        wv.images(tmp_path, n=5)


def test_bad_arguments():
    with pytest.raises(WeightvizError, match="n must be"):
        wv.images(n=0)
    with pytest.raises(WeightvizError, match="image size"):
        wv.images(size=3)
    with pytest.raises(WeightvizError, match="asked but"):
        wv.images(n=100000, size=16)


def test_as_images_accepts_sets_folders_and_prepared_tensors(lite0, tmp_path):
    imgs = wv.images(n=2, size=16)
    assert wv.as_images(imgs) is imgs
    assert wv.as_images(imgs, lite0).model_ready
    x = torch.randn(5, 3, 20, 20)
    s = wv.as_images(x, lite0)
    assert len(s) == 5 and s.model_ready and s.size == 20
    torch.testing.assert_close(s.tensor(), x)
    r = s.raw(0)
    assert r.shape == (3, 20, 20) and float(r.min()) == 0 and float(r.max()) == pytest.approx(1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    assert len(wv.as_images(str(tmp_path), lite0, size=16)) == 1
    assert len(wv.as_images(None, size=16)) == len(imageset._embedded_crops())


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 1, 8, 8), "channels but the model takes 3"),
    (torch.randn(3, 8, 8), r"\[N, C, H, W\]"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.zeros(0, 3, 8, 8), "empty"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float"),
    ([1, 2], "ImageSet, a folder path or a tensor"),
])
def test_as_images_bad_input(lite0, bad, match):
    with pytest.raises(WeightvizError, match=match):
        wv.as_images(bad, lite0)


def test_sixteen_bit_and_other_modes_are_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (a ramp over the whole 16-bit range) reads as the same ramp in [0, 1], not white;
    so do 8-bit grey, palette, grey+alpha, RGBA and 1-bit images (each against its 8-bit RGB meaning)."""
    ramp16 = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))
    Image.fromarray(ramp16).save(tmp_path / "a16.png")
    with Image.open(tmp_path / "a16.png") as im:
        assert im.mode.startswith("I")  # what Pillow gives for a 16-bit PNG
    ramp8 = (ramp16 / 257).round().astype(np.uint8)
    rgb = np.stack([ramp8, ramp8[::-1], np.full_like(ramp8, 90)], -1)
    Image.fromarray(ramp8).save(tmp_path / "b_grey.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "c_palette.png")
    Image.fromarray(ramp8).convert("LA").save(tmp_path / "d_grey_alpha.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "e_rgba.png")
    imgs = wv.images(tmp_path, size=64)
    assert len(imgs) == 5
    grey = torch.from_numpy(ramp8 / 255.0).float()
    with Image.open(tmp_path / "c_palette.png") as im:
        pal = np.asarray(im.convert("RGB"))
    x16 = imgs.raw(0)
    assert x16.mean() < 0.6 and x16.min() == 0  # not clipped to white
    for c in range(3):
        torch.testing.assert_close(x16[c], grey, rtol=0, atol=2.5 / 255)  # bicubic resize at the same size
        torch.testing.assert_close(imgs.raw(1)[c], grey, rtol=0, atol=2.5 / 255)
        torch.testing.assert_close(imgs.raw(2)[c], torch.from_numpy(pal[..., c] / 255.0).float(), rtol=0, atol=2.5 / 255)
        torch.testing.assert_close(imgs.raw(3)[c], grey, rtol=0, atol=2.5 / 255)
        torch.testing.assert_close(imgs.raw(4)[c], torch.from_numpy(rgb[..., c] / 255.0).float(), rtol=0, atol=2.5 / 255)


def test_the_unreadable_files_warning_is_a_weightviz_warning(tmp_path):
    """The CLI prints a WeightvizWarning as its one-line message (no source line)."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(wv.WeightvizWarning, match="skipped 1 unreadable image file"):
        wv.images(tmp_path, size=16)


def test_folder_images_for_a_model_follow_its_evaluation_transform(tmp_path):
    """Loaded for a model at its input size, a folder image is exactly what the weights' own evaluation
    transform makes of it (timm's resolve_data_config + create_transform for lite0), up to float rounding."""
    import numpy as np
    import timm.data
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 410, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    model = wv.load_model()
    got = wv.images(tmp_path, model=model)[0]
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with Image.open(tmp_path / "a.png") as im:
        want = tf(im.convert("RGB"))
    assert got.shape == want.shape == (3, 224, 224)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wv.preprocess(Image.open(tmp_path / "a.png"), model)[0], want, rtol=1e-5, atol=1e-5)
    # another size keeps the plain square resize (no model transform is defined for it)
    assert wv.images(tmp_path, model=model, size=64)[0].shape == (3, 64, 64)

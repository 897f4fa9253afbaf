"""Image sets: natural images to condition connections on, offline by default.

``weightviz.images()`` gives a lazily loaded, deterministic set of ``[C, H, W]`` images. Without a folder
it is cut from the natural colour photographs that ship inside scikit-image (astronaut, chelsea, coffee,
rocket, the motorcycle, the Hubble deep field, immunohistochemistry) and scikit-learn (china, flower): square
crops at four scales on a grid, each also mirrored, so that several hundred examples exist without any
download. With a folder, every jpg/png/webp/bmp under it (recursively) is resized (short side) and
centre-cropped.

Every API that takes images (``data_weights``, ``cases``, ``top_examples``, the frozen statistics of the
linearizer) accepts an :class:`ImageSet`, a folder path or a tensor ``[N, C, H, W]`` already prepared for the
model, and calls :func:`as_images` once at its public boundary.

>>> import weightviz as wv
>>> imgs = wv.images(n=16, size=64)
>>> len(imgs), imgs[0].shape
(16, torch.Size([3, 64, 64]))
>>> next(iter(imgs)).shape            # iterating yields batches [B, C, H, W]
torch.Size([16, 3, 64, 64])
"""

from __future__ import annotations

import math
import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WeightvizError, WeightvizWarning, warn_once

__all__ = ["ImageSet", "as_images", "default_batch", "images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# (package, name) of the embedded natural colour photographs, in a fixed order
_EMBEDDED = (
    ("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"), ("skimage", "rocket"),
    ("skimage", "stereo_motorcycle"), ("skimage", "hubble_deep_field"), ("skimage", "immunohistochemistry"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)
# crop side as a fraction of the photo's short side, and the grid of crop positions per axis at that scale
_SCALES = ((1.0, 2), (0.7, 2), (0.5, 3), (0.35, 4))
_LUMA = (0.299, 0.587, 0.114)


@cache
def _embedded_photo(index: int) -> np.ndarray:
    """The ``index``-th embedded photograph as ``[H, W, 3]`` uint8 (decoded once per process)."""
    package, name = _EMBEDDED[index]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if package == "skimage":
            import skimage.data

            arr = getattr(skimage.data, name)()
            arr = arr[0] if isinstance(arr, tuple) else arr  # the stereo pair: left image
        else:
            from sklearn.datasets import load_sample_image

            arr = load_sample_image(name)
    return np.ascontiguousarray(arr[..., :3])


@dataclass(frozen=True)
class _Crop:
    """A square crop ``(top, left, side)`` of embedded photo ``photo``, optionally mirrored."""

    photo: int
    top: int
    left: int
    side: int
    flip: bool


def _embedded_crops() -> list[_Crop]:
    """All crops of the embedded set in a fixed order (photo, scale, row, column, flip)."""
    shapes = {0: (512, 512), 1: (300, 451), 2: (400, 600), 3: (427, 640), 4: (500, 741), 5: (872, 1000),
              6: (512, 512), 7: (427, 640), 8: (427, 640)}  # checked against the decoded arrays in the tests
    crops = []
    for photo, (h, w) in shapes.items():
        for frac, grid in _SCALES:
            side = int(round(frac * min(h, w)))
            for top in np.linspace(0, h - side, grid).round().astype(int):
                for left in np.linspace(0, w - side, grid).round().astype(int):
                    for flip in (False, True):
                        crops.append(_Crop(photo, int(top), int(left), side, flip))
    return crops


def _resize_square(image, size: int):
    """PIL image -> short side ``size`` (bicubic, antialiased), centre crop ``size x size``."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_rgb(image):
    """Any PIL image -> 8-bit RGB with its values *scaled*, not clipped: Pillow's ``convert("RGB")`` reads
    16-bit grey (modes ``I;16*``, and ``I`` for a 16-bit PNG) as 8-bit values and clips them, which turns
    a 16-bit photo white. Integer modes are scaled from 16 bits (``I`` from a PNG holds 16-bit samples;
    other ``I`` images from their own maximum), float images (``F``) from [0, 1] (or their maximum above
    1); transparency is dropped (palette and alpha modes keep their colours)."""
    from PIL import Image

    mode = image.mode
    if mode in ("RGB", "L"):
        return image.convert("RGB") if mode == "L" else image
    if mode.startswith("I") or mode == "F":
        a = np.asarray(image, dtype=np.float64)
        peak = float(a.max(initial=0.0))
        if mode == "F":
            top = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else peak
        elif mode.startswith("I;16") or image.format == "PNG" or 255 < peak <= 65535:
            top = 65535.0
        else:
            top = max(255.0, peak)
        grey = np.clip(np.nan_to_num(a / top) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> ``[3, H, W]`` float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def default_batch(device: torch.device | str) -> int:
    """Images per forward for the data passes (``data_weights``, ``top_examples``) on ``device``: 4 on a
    CPU, where larger batches of 224 px maps were measured slower per image (lite0, 2 threads, 64 images:
    batches of 4 took 0.48 s, of 32 2.24 s for ``data_weights``; 1.05 vs 2.01 CPU-s for ``layer_scores``),
    32 on a GPU."""
    return 4 if torch.device(device).type == "cpu" else 32


class ImageSet:
    """A lazily loaded, ordered set of images, ``[C, H, W]`` each.

    Indexing gives one image (normalized for the model the set was made for, else in [0, 1]); iterating
    gives batches ``[B, C, H, W]`` of ``batch_size`` images; :meth:`tensor` gives all ``[N, C, H, W]``;
    :meth:`raw` gives image ``i`` in [0, 1] ``[3, H, W]`` for display. Decoded images are kept (uint8) so
    a second pass costs no decoding. Build one with :func:`images` or :func:`as_images`.
    """

    def __init__(self, loaders: list, size: int, *, spec=None, prepared: torch.Tensor | None = None,
                 batch_size: int = 32, source: str = "embedded"):
        self._loaders = loaders          # i -> PIL RGB image of size x size (unused when prepared)
        self._prepared = prepared        # [N, C, H, W] given by the user, already model-ready
        self._cache: dict[int, torch.Tensor] = {}
        self.size = int(size)
        self.spec = spec                 # models.InputSpec the images are normalized for, or None
        self.batch_size = int(batch_size)
        self.source = source

    # ------------------------------------------------------------------ sequence
    def __len__(self) -> int:
        return len(self._prepared) if self._prepared is not None else len(self._loaders)

    @property
    def model_ready(self) -> bool:
        """True when the images are in the model's input space (normalized, right channel count)."""
        return self._prepared is not None or self.spec is not None

    @property
    def channels(self) -> int:
        if self._prepared is not None:
            return int(self._prepared.shape[1])
        return self.spec.channels if self.spec is not None else 3

    def _index(self, i: int) -> int:
        n = len(self)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise WeightvizError(f"image index must be an integer, got {i!r}")
        if not -n <= i < n:
            raise WeightvizError(f"image index {i} out of range for a set of {n} images")
        return int(i) % n

    def raw(self, i: int) -> torch.Tensor:
        """Image ``i`` for display: ``[3, H, W]`` float32 in [0, 1] (a prepared tensor is min-max scaled)."""
        i = self._index(i)
        if self._prepared is not None:
            x = self._prepared[i].float()
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
            return x.expand(3, -1, -1).clone() if x.shape[0] == 1 else x[:3].clone()
        if i not in self._cache:
            self._cache[i] = torch.from_numpy(np.array(self._loaders[i]())).permute(2, 0, 1).contiguous()
        return self._cache[i].float() / 255.0

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._prepared is not None:
            return self._prepared[self._index(i)]
        x = self.raw(i)
        if self.spec is None:
            return x
        if self.spec.channels == 1:
            x = (torch.tensor(_LUMA).view(3, 1, 1) * x).sum(0, keepdim=True)
        elif self.spec.channels != 3:
            raise WeightvizError(f"the model takes {self.spec.channels}-channel input; natural images have 3 "
                                 "(pass a tensor [N, C, H, W] prepared for it)")
        return self.spec.normalize(x[None])[0]

    def batches(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Yield ``[B, C, H, W]`` batches in order (the last one may be smaller)."""
        b = int(batch_size or self.batch_size)
        if b < 1:
            raise WeightvizError(f"batch_size must be >= 1, got {b}")
        for start in range(0, len(self), b):
            if self._prepared is not None:
                yield self._prepared[start:start + b]
            else:
                yield torch.stack([self[i] for i in range(start, min(start + b, len(self)))])

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.batches()

    def tensor(self) -> torch.Tensor:
        """All images, ``[N, C, H, W]``."""
        if self._prepared is not None:
            return self._prepared
        return torch.cat(list(self.batches()), 0)

    # ------------------------------------------------------------------ derived sets
    def for_model(self, model: nn.Module) -> ImageSet:
        """The same images normalized for ``model`` (its channel count, mean and std)."""
        from ..models import input_spec

        if self._prepared is not None:
            _check_prepared(self._prepared, model)
            return self
        spec = input_spec(model)
        if spec == self.spec:
            return self
        out = ImageSet(self._loaders, self.size, spec=spec, batch_size=self.batch_size, source=self.source)
        out._cache = self._cache  # share decoded pixels
        return out

    def __repr__(self) -> str:
        what = "prepared tensor" if self._prepared is not None else self.source
        norm = "model-ready" if self.model_ready else "[0, 1]"
        return f"ImageSet({len(self)} images of {self.channels}x{self.size}x{self.size}, {what}, {norm})"


# ---------------------------------------------------------------------------------------------- builders
def _embedded_loaders(size: int) -> list:
    def loader(crop: _Crop):
        def load():
            from PIL import Image

            arr = _embedded_photo(crop.photo)[crop.top:crop.top + crop.side, crop.left:crop.left + crop.side]
            if crop.flip:
                arr = arr[:, ::-1]
            return Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.Resampling.BICUBIC)
        return load

    return [loader(c) for c in _embedded_crops()]


def _eval_crop(image, spec):
    """The geometry of a model's evaluation transform (timm's and torchvision's alike): resize the short
    side to ``floor(size / crop_pct)`` with the weights' interpolation, centre-crop ``size``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    short = int(math.floor(spec.size / spec.crop_pct + 1e-6))
    try:
        mode = InterpolationMode(spec.interpolation)
    except ValueError:
        mode = InterpolationMode.BILINEAR
    return TF.center_crop(TF.resize(image, short, interpolation=mode), spec.size)


def _folder_loaders(folder: Path, size: int, spec=None) -> list:
    from PIL import Image, UnidentifiedImageError

    if not folder.exists():
        raise WeightvizError(f"image folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise WeightvizError(f"{str(folder)!r} is not a folder of images (pass a directory)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    good, bad = [], 0
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
            good.append(p)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            bad += 1
    if bad:  # a WeightvizWarning (the CLI prints it as one line), once per process for one folder
        warn_once(f"skipped {bad} unreadable image file{'s' if bad > 1 else ''} in {str(folder)!r}",
                  WeightvizWarning, stacklevel=3)
    if not good:
        raise WeightvizError(
            f"no readable images in {str(folder)!r} (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")

    def loader(path: Path):
        def load():
            try:
                with Image.open(path) as im:
                    if spec is not None and spec.size == size:  # the model's own evaluation crop
                        return _eval_crop(_to_rgb(im), spec)
                    return _resize_square(_to_rgb(im), size)
            except (OSError, ValueError) as e:
                raise WeightvizError(f"cannot read image {str(path)!r}: {e}") from None
        return load

    return [loader(p) for p in good]


def images(
    source: str | os.PathLike | None = None,
    *,
    model: nn.Module | str | None = None,
    size: int | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> ImageSet:
    """An image set: a folder of images, or (``source=None``) the embedded natural images.

    ``size``: side of the square images (default: the model's input size, else 224). Images of a folder
    loaded for a ``model`` at its own input size go through the geometry of its evaluation transform
    (short side to ``size / crop_pct`` with the weights' interpolation, centre crop: what timm's
    ``create_transform`` and torchvision's ``weights.transforms()`` do); otherwise the short side is resized
    to ``size`` (bicubic) and centre-cropped. ``n``: how many
    (default all; the embedded set is shuffled with ``seed`` so any ``n`` is varied; a folder keeps sorted
    order and takes a seeded subset). ``model``: normalize for it (its mean/std; a 1-channel model gets
    luminance); else values are in [0, 1]. Loading is lazy: images are decoded when first indexed.

    Returns an :class:`ImageSet`: ``len()``, ``imgs[i]`` -> ``[C, size, size]``, iteration -> batches
    ``[B, C, size, size]``.
    """
    return _image_set(source, model=model, size=size, n=n, seed=seed, batch_size=batch_size)


def _image_set(source, *, model=None, size=None, n=None, seed=0, batch_size=32) -> ImageSet:
    from ..models import input_spec, resolve

    model = resolve(model) if model is not None else None
    spec = input_spec(model) if model is not None else None
    if size is None:
        size = spec.size if spec is not None else 224
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 2048:
        raise WeightvizError(f"image size must be an integer in [8, 2048], got {size!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise WeightvizError(f"n must be a positive number of images, got {n!r}")
    if source is None:
        loaders = _embedded_loaders(int(size))
        random.Random(seed).shuffle(loaders)
        what = "embedded"
    else:
        loaders = _folder_loaders(Path(source), int(size), spec)
        if n is not None and n < len(loaders):
            keep = sorted(random.Random(seed).sample(range(len(loaders)), n))
            loaders = [loaders[i] for i in keep]
        what = str(source)
    if n is not None:
        if n > len(loaders):
            raise WeightvizError(f"n={n} images asked but {what!r} has {len(loaders)}")
        loaders = loaders[:n]
    out = ImageSet(loaders, int(size), batch_size=batch_size, source=what)
    return out.for_model(model) if model is not None else out


def _check_prepared(x: torch.Tensor, model: nn.Module | None) -> None:
    if x.ndim != 4:
        raise WeightvizError(f"images must be a tensor [N, C, H, W], got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise WeightvizError("the image tensor is empty (N = 0)")
    if not x.is_floating_point():
        raise WeightvizError(f"images must be a float tensor prepared for the model, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise WeightvizError("images contain NaN or Inf values")
    if model is not None:
        from ..models import input_spec

        c = input_spec(model).channels
        if x.shape[1] != c:
            raise WeightvizError(f"images have {x.shape[1]} channels but the model takes {c} "
                                 f"(shape {tuple(x.shape)})")


def as_images(images: ImageSet | str | os.PathLike | torch.Tensor | None, model: nn.Module | None = None,
              *, size: int | None = None) -> ImageSet:
    """Turn what a user passed as images into an :class:`ImageSet` ready for ``model``.

    ``images``: an :class:`ImageSet` (normalized for ``model`` if it is not yet), a folder path, ``None``
    (the embedded set), or a tensor ``[N, C, H, W]`` already prepared for the model (wrapped as is).
    """
    if isinstance(images, ImageSet):
        return images.for_model(model) if model is not None else images
    if images is None or isinstance(images, (str, os.PathLike)):
        return _image_set(images, model=model, size=size)
    if isinstance(images, torch.Tensor):
        _check_prepared(images, model)
        return ImageSet([], int(images.shape[-1]), prepared=images.detach(), source="tensor")
    raise WeightvizError(
        f"images must be an ImageSet, a folder path or a tensor [N, C, H, W], got {type(images).__name__}")


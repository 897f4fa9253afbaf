"""Image sets for the data-conditioned methods: the embedded natural images, folders, prepared tensors."""

from .imageset import ImageSet, as_images, default_batch, images

__all__ = ["ImageSet", "as_images", "default_batch", "images"]

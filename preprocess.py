"""Bring any single-digit image to MNIST's form: 28x28, light digit on dark, 0-255."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An input cannot be read as an image, or holds no digit."""


def load_image(source):
    """Return `source` (a path, PIL image or NumPy array) as a float32 grayscale array, 0-255."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as image:
                image.load()
        except FileNotFoundError:
            raise ImageError(f"{source}: no such file") from None
        except (UnidentifiedImageError, OSError) as error:
            raise ImageError(f"{source}: not a readable image ({error})") from None
        source = image
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("L"), dtype=np.float32)
    if isinstance(source, np.ndarray):
        return array_to_gray(source)
    raise ImageError(f"cannot classify a {type(source).__name__}: pass a path, PIL image or NumPy array")


def array_to_gray(array):
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., :3].mean(axis=2)
    if array.ndim != 2 or min(array.shape) == 0:
        raise ImageError(f"an image array must be HxW or HxWxC, got shape {array.shape}")
    array = array.astype(np.float32)
    if array.max() <= 1.0:
        array = array * 255
    return array


def to_mnist(gray):
    """Return a 28x28 float32 array, light digit on dark, from a grayscale array."""
    if np.median(gray) > 127:  # a light background: invert to MNIST's polarity
        gray = 255 - gray
    image = Image.fromarray(gray.clip(0, 255).astype(np.uint8)).resize((28, 28), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)

"""Load MNIST from the Keras download, a Keras-layout .npz, or the four IDX files."""

import gzip
import os
import zipfile

import numpy as np

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only one MNIST uses


class DataError(ValueError):
    """A data file is missing, unreadable or does not hold MNIST."""


def load_mnist(path=None):
    """Return ((x_train, y_train), (x_test, y_test)) as uint8 arrays.

    Args:
        path: a Keras-layout mnist.npz, or a folder with the four IDX files
            (gzip-compressed or not). None downloads MNIST through Keras.
    """
    if path is None:
        import keras  # only this path needs Keras, and it starts TensorFlow

        arrays = dict(zip(("train", "test"), keras.datasets.mnist.load_data()))
        arrays = {"x_train": arrays["train"][0], "y_train": arrays["train"][1],
                  "x_test": arrays["test"][0], "y_test": arrays["test"][1]}
        source = "the Keras MNIST download"
    elif os.path.isdir(path):
        arrays = {key: read_idx(find_idx(path, name)) for key, name in IDX_FILES.items()}
        source = path
    elif os.path.isfile(path):
        arrays = read_npz(path)
        source = path
    else:
        raise DataError(f"{path}: no such file or folder")
    check_arrays(arrays, source)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def read_npz(path):
    """Read the four arrays of a Keras-layout mnist.npz."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted(set(IDX_FILES) - set(npz.files))
            if missing:
                raise DataError(f"{path}: not a Keras MNIST .npz (missing {', '.join(missing)})")
            return {key: npz[key] for key in IDX_FILES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({error})") from None


def find_idx(folder, name):
    """Return the path of IDX file `name` in `folder`, compressed or not."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"{folder}: no {name} or {name}.gz in this folder")


def read_idx(path):
    """Read one IDX file (optionally gzip-compressed) into a uint8 array."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header promises {expected} bytes of data, file holds {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def check_arrays(arrays, source):
    """Raise DataError unless the arrays look like MNIST: 28x28 uint8 images, labels 0-9."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{source}: x_{split} has shape {x.shape}, expected (N, 28, 28)")
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            raise DataError(f"{source}: x_{split} and y_{split} must be uint8, got {x.dtype} and {y.dtype}")
        if y.shape != (len(x),):
            raise DataError(f"{source}: y_{split} has shape {y.shape}, expected ({len(x)},)")
        if len(x) == 0:
            raise DataError(f"{source}: x_{split} is empty")
        if y.max() > 9:
            raise DataError(f"{source}: y_{split} holds label {y.max()}, expected 0-9")

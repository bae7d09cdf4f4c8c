"""Load MNIST from the Keras download, a Keras-layout .npz, or the four IDX files.

Files are read header first: an array's shape and type are checked before any of its
data is decompressed, so a small file that claims (or expands to) far more than MNIST
is refused in a moment and in little memory, and every broken file gives a DataError
whose message names it.
"""

import ast
import gzip
import os
import stat
import zipfile
import zlib

import numpy as np

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_UBYTE = 0x08  # the IDX type code for unsigned bytes, the only one MNIST uses
# MNIST has 60,000 training images; EMNIST's digits in the same layout 240,000. Anything far
# above that is not a digit set this program should hold in memory (300,000 images: 235 MB).
MAX_IMAGES = 300_000
MAX_NPY_HEADER = 10_000  # bytes; numpy writes a few hundred
READ_CHUNK = 1 << 20
# What decompressing or parsing a broken file raises, besides DataError itself
BROKEN = (OSError, EOFError, ValueError, SyntaxError, zipfile.BadZipFile, zlib.error, MemoryError,
          OverflowError, KeyError, TypeError)


class DataError(ValueError):
    """A data file is missing, unreadable or does not hold MNIST."""


class DownloadError(DataError):
    """MNIST could not be downloaded (no internet, say)."""


def load_mnist(path=None):
    """Return ((x_train, y_train), (x_test, y_test)) as uint8 arrays.

    Args:
        path: a Keras-layout mnist.npz, or a folder with the four IDX files
            (gzip-compressed or not). None downloads MNIST through Keras.
    Raises:
        DataError (DownloadError when the download fails), naming the file.
    """
    if path is None:
        arrays, source = download(), "the Keras MNIST download"
    else:
        kind = file_kind(path)
        if kind == "folder":
            arrays = {key: read_idx(find_idx(path, name), key) for key, name in IDX_FILES.items()}
        else:
            arrays = read_npz(path)
        source = path
    check_arrays(arrays, source)
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def download():
    """MNIST through keras.datasets (cached in ~/.keras/datasets after the first time)."""
    import keras  # only this path needs Keras, and it starts TensorFlow

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # Keras raises a bare Exception for a failed fetch
        reason = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise DownloadError(f"could not download MNIST ({reason}); without internet, pass --data with a "
                            "Keras-layout mnist.npz or a folder of the four IDX files") from None
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def file_kind(path):
    """'folder' or 'file' for a path that may be read; DataError for anything else."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file or folder") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read ({describe(error)})") from None
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file or folder (a pipe, socket or device)")
    return "file"


def describe(error):
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).splitlines()[0].strip() if str(error).strip() else ""
    return text or type(error).__name__


def read_npz(path):
    """Read the four arrays of a Keras-layout mnist.npz, each header checked before its data."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {os.path.splitext(name)[0]: name for name in archive.namelist() if name.endswith(".npy")}
            missing = sorted(set(IDX_FILES) - set(members))
            if missing:
                raise DataError(f"{path}: not a Keras MNIST .npz (missing {', '.join(missing)})")
            return {key: read_npy_member(archive, members[key], key, path) for key in IDX_FILES}
    except DataError:
        raise
    except BROKEN as error:
        raise DataError(f"{path}: not a readable .npz file ({describe(error)})") from None


def read_npy_member(archive, member, key, path):
    """One .npy inside the zip: its header read and checked, then exactly its data."""
    info = archive.getinfo(member)
    with archive.open(info) as f:
        shape, dtype, header_size = read_npy_header(f, f"{path}: {member}")
        check_shape(shape, key, f"{path}: {member}")
        if dtype != np.uint8:
            raise DataError(f"{path}: {key} must be uint8, got {dtype}")
        size = int(np.prod(shape))
        if info.file_size != header_size + size:
            raise DataError(f"{path}: {member} holds {info.file_size - header_size} bytes of data, "
                            f"its header promises {size}")
        return np.frombuffer(read_exactly(f, size, f"{path}: {member}"), np.uint8).reshape(shape)


def read_npy_header(f, name):
    """(shape, dtype, header bytes) from a .npy stream, without numpy's unbounded parsing."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise DataError(f"{name}: not a .npy array")
    length_bytes = 2 if magic[6] == 1 else 4
    length = int.from_bytes(f.read(length_bytes), "little")
    if length > MAX_NPY_HEADER:
        raise DataError(f"{name}: a .npy header of {length} bytes, far more than an array needs")
    text = f.read(length)
    try:
        header = ast.literal_eval(text.decode("latin1"))
        shape = tuple(int(d) for d in header["shape"])
        dtype = np.dtype(header["descr"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
        raise DataError(f"{name}: a malformed .npy header") from None
    if fortran or dtype.hasobject or any(d < 0 for d in shape):
        raise DataError(f"{name}: not a plain array of numbers")
    return shape, dtype, 8 + length_bytes + length


def find_idx(folder, name):
    """Return the path of IDX file `name` in `folder`, compressed or not."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"{folder}: no {name} or {name}.gz in this folder")


def read_idx(path, key):
    """Read one IDX file (optionally gzip-compressed): header first, then exactly its data."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != IDX_UBYTE:
                raise DataError(f"{path}: not an IDX file of unsigned bytes")
            dims = f.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise DataError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4))
            check_shape(shape, key, path)
            size = int(np.prod(shape))
            data = read_exactly(f, size, path)
            if f.read(1):
                raise DataError(f"{path}: more data than its header promises ({size} bytes)")
    except DataError:
        raise
    except BROKEN as error:
        raise DataError(f"{path}: cannot read ({describe(error)})") from None
    return np.frombuffer(data, np.uint8).reshape(shape)


def read_exactly(f, size, name):
    """`size` bytes from a stream in chunks, or DataError when it ends early."""
    data = bytearray()
    while len(data) < size:
        chunk = f.read(min(READ_CHUNK, size - len(data)))
        if not chunk:
            raise DataError(f"{name}: header promises {size} bytes of data, file holds {len(data)}")
        data += chunk
    return bytes(data)


def check_shape(shape, key, name):
    """Refuse, before reading any data, what cannot be MNIST's images (N x 28 x 28) or labels (N)."""
    want_images = key.startswith("x_")
    expected = "(N, 28, 28)" if want_images else "(N,)"
    if (want_images and (len(shape) != 3 or shape[1:] != (28, 28))) or (not want_images and len(shape) != 1):
        raise DataError(f"{name}: {key} has shape {shape}, expected {expected}")
    if shape[0] > MAX_IMAGES:
        raise DataError(f"{name}: {key} claims {shape[0]:,} images; more than {MAX_IMAGES:,} is not MNIST")


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

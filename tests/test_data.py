"""Loading MNIST from .npz and IDX files, and one-line errors for bad files."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURE, ROOT
from data import IDX_FILES, DataError, load_mnist


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if compress else open
    with opener(str(path) + (".gz" if compress else ""), "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_folder(folder, arrays, compress):
    for key, name in IDX_FILES.items():
        write_idx(folder / name, arrays[key], compress)
    return folder


def test_npz(small_mnist):
    (x_train, y_train), (x_test, y_test) = load_mnist(str(FIXTURE))
    assert x_train.shape == (300, 28, 28) and x_train.dtype == np.uint8
    assert x_test.shape == (100, 28, 28) and y_test.shape == (100,)
    assert np.array_equal(x_train, small_mnist["x_train"])


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_idx_folder(tmp_path, small_mnist, compress):
    (x_train, y_train), (x_test, y_test) = load_mnist(str(write_idx_folder(tmp_path, small_mnist, compress)))
    assert np.array_equal(x_train, small_mnist["x_train"]) and np.array_equal(y_test, small_mnist["y_test"])


def corrupt(tmp_path, small_mnist, **changes):
    path = tmp_path / "bad.npz"
    np.savez(path, **{**small_mnist, **changes})
    return path


@pytest.mark.parametrize("changes, message", [
    ({"x_train": np.zeros((5, 28, 27), np.uint8)}, "shape"),
    ({"x_test": np.zeros((100, 28, 28), np.float32)}, "uint8"),
    ({"y_train": np.full(300, 10, np.uint8)}, "label 10"),
    ({"y_test": np.zeros(99, np.uint8)}, "y_test"),
])
def test_malformed_arrays(tmp_path, small_mnist, changes, message):
    path = corrupt(tmp_path, small_mnist, **changes)
    with pytest.raises(DataError, match=message) as error:
        load_mnist(str(path))
    assert str(path) in str(error.value)


def test_npz_missing_arrays(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros(3))
    with pytest.raises(DataError, match="missing"):
        load_mnist(str(path))


def test_truncated_npz(tmp_path):
    path = tmp_path / "cut.npz"
    path.write_bytes(FIXTURE.read_bytes()[:5000])
    with pytest.raises(DataError, match="cut.npz"):
        load_mnist(str(path))


def test_missing_path():
    with pytest.raises(DataError, match="no such file"):
        load_mnist("nowhere/mnist.npz")


def test_idx_errors(tmp_path, small_mnist):
    folder = write_idx_folder(tmp_path, small_mnist, compress=False)
    images = folder / IDX_FILES["x_test"]
    images.write_bytes(images.read_bytes()[:-10])  # truncated
    with pytest.raises(DataError, match="header promises"):
        load_mnist(str(folder))
    images.write_bytes(b"\x00\x00\x0d\x03" + bytes(20))  # float32 IDX, not MNIST's bytes
    with pytest.raises(DataError, match="unsigned bytes"):
        load_mnist(str(folder))
    images.unlink()
    with pytest.raises(DataError, match="no t10k-images-idx3-ubyte"):
        load_mnist(str(folder))


def test_corrupt_gzip(tmp_path, small_mnist):
    folder = write_idx_folder(tmp_path, small_mnist, compress=True)
    labels = folder / (IDX_FILES["y_train"] + ".gz")
    labels.write_bytes(labels.read_bytes()[:30])
    with pytest.raises(DataError, match="train-labels"):
        load_mnist(str(folder))


def test_train_cli_reports_bad_data_in_one_line(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_text("not a zip")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(bad), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}")
    assert not list(tmp_path.glob("*.keras"))

"""Loading MNIST from .npz and IDX files, and one-line errors for bad files."""

import gzip
import io
import subprocess
import sys
import zipfile

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


def npz_with(path, small_mnist, x_train_bytes):
    """A Keras-layout .npz whose x_train.npy member holds `x_train_bytes`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, array in small_mnist.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{key}.npy", x_train_bytes if key == "x_train" else buffer.getvalue())
    return path


def npy_header(shape, descr="|u1"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_hostile_npz_files_are_refused_from_their_headers(tmp_path, small_mnist):
    """Each is refused with a DataError naming the file, reading little of it."""
    np.savez_compressed(tmp_path / "good.npz", **small_mnist)
    corrupt_deflate = bytearray((tmp_path / "good.npz").read_bytes())
    for i in range(300, 3000, 11):
        corrupt_deflate[i] ^= 0x5A
    cases = {
        "corrupt deflate data": bytes(corrupt_deflate),
        "a malformed .npy header": npz_with(tmp_path / "h.npz", small_mnist,
                                           b"\x93NUMPY\x01\x00\x20\x00{'descr': '|u1', 'shape': (3,"),
        "a header claiming 71 TiB": npz_with(tmp_path / "t.npz", small_mnist, npy_header((10**14, 28, 28))),
        "400,000 images of zeros": npz_with(tmp_path / "z.npz", small_mnist,
                                            npy_header((400_000, 28, 28)) + bytes(400_000 * 784)),
        "a header that lies about its data": npz_with(tmp_path / "l.npz", small_mnist,
                                                      npy_header((300, 28, 28)) + bytes(100)),
        "an object array": npz_with(tmp_path / "o.npz", small_mnist, npy_header((300, 28, 28), "|O")),
        "an empty file": b"",
    }
    for label, content in cases.items():
        path = tmp_path / "case.npz"
        path.write_bytes(content if isinstance(content, bytes) else content.read_bytes())
        with pytest.raises(DataError) as error:
            load_mnist(str(path))
        assert str(path) in str(error.value) and "\n" not in str(error.value), (label, error.value)


def test_hostile_idx_files_are_refused(tmp_path, small_mnist):
    folder = write_idx_folder(tmp_path, small_mnist, compress=True)
    images = folder / (IDX_FILES["x_train"] + ".gz")
    bomb = bytes([0, 0, 8, 3]) + (2_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    images.write_bytes(gzip.compress(bomb + bytes(10_000_000)))  # 10 KB that expand to 10 MB and claim 1.5 GB
    with pytest.raises(DataError, match="2,000,000 images"):
        load_mnist(str(folder))
    data = bytearray(gzip.compress(bytes([0, 0, 8, 3]) + (300).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                                   + small_mnist["x_train"].tobytes()))
    data[40:60] = bytes(20)  # corrupt deflate data
    images.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-images"):
        load_mnist(str(folder))
    with pytest.raises(DataError, match="not a regular file"):
        load_mnist("/dev/zero")


def test_peak_memory_stays_small_for_a_bomb(tmp_path, small_mnist):
    """A 0.4 MB npz that expands to 400,000 images (314 MB) is refused from its header."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x_train.npy", "w", force_zip64=True) as member:  # written in pieces: no 314 MB here
            member.write(npy_header((400_000, 28, 28)))
            for _ in range(400):
                member.write(bytes(1000 * 784))
        for key in ("y_train", "x_test", "y_test"):
            buffer = io.BytesIO()
            np.save(buffer, small_mnist[key])
            archive.writestr(f"{key}.npy", buffer.getvalue())
    code = (f"import re, data\ntry: data.load_mnist({str(path)!r})\nexcept data.DataError as e: print(e)\n"
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    message, peak_kib = out.strip().splitlines()
    assert "400,000 images" in message
    assert int(peak_kib) < 100 * 1024

"""bulk.py on a local Ray: the same rows as the CLI, its outputs, its errors, a clean shutdown.

The tests that start Ray are marked `bulk` and left out of the default run (pytest.ini);
.ci/run installs requirements-bulk.txt and runs them with `python -m pytest -m bulk`, where
BULK_REQUIRED=1 makes a missing Ray a failure rather than a skip.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image, ImageDraw

import bulk
import test_hostile
from conftest import ROOT

BULK = ROOT / "bulk.py"
CLI = ROOT / "inference.py"
TOLERANCE = 1e-6  # the CLI's JSON lines round to 6 decimals
BAD_FILES = {  # name: content; each must give an error row, never a failed job
    "notes.png": b"shopping list: milk, eggs\n",
    "empty.png": b"",
    "noise.jpg": bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)),
}


@pytest.fixture(scope="module")
def ray_installed():
    if os.environ.get("BULK_REQUIRED") == "1":
        import ray  # noqa: F401  (CI: a missing Ray is a failure)
    else:
        pytest.importorskip("ray", reason="Ray is not installed (pip install -r requirements-bulk.txt)")


@pytest.fixture(scope="module")
def images(tmp_path_factory, small_mnist):
    """A folder of 400 real MNIST digits as PNGs, 30 as dark-on-light drawings, 20 as colour JPEGs,
    bad files, two images that are not one digit, a subfolder with a blank page, a truncated PNG, a
    FIFO and a broken link, and one with every file of tests/test_hostile.py's catalogue."""
    folder = tmp_path_factory.mktemp("bulk-images")
    digits = np.concatenate([small_mnist["x_train"], small_mnist["x_test"]])
    for i, digit in enumerate(digits):
        Image.fromarray(digit).save(folder / f"mnist_{i:03d}.png")
    for i, digit in enumerate(digits[:30]):  # these take the full preprocessing path
        Image.fromarray(255 - digit).resize((84, 84), Image.BILINEAR).save(folder / f"drawn_{i:02d}.png")
    for i, digit in enumerate(digits[30:50]):
        ink = np.asarray(Image.fromarray(digit).resize((120, 120), Image.BILINEAR), np.float32)[..., None] / 255
        paper, pen = np.array([235, 225, 200], np.float32), np.array([30, 40, 120], np.float32)
        Image.fromarray((paper * (1 - ink) + pen * ink).astype(np.uint8)).save(folder / f"photo_{i:02d}.jpg", quality=85)
    for name, content in BAD_FILES.items():
        (folder / name).write_bytes(content)
    special = folder / "special"
    special.mkdir()
    Image.new("L", (64, 64), 255).save(special / "blank.png")
    not_digits = folder / "not-digits"  # is_digit False: the detector's score, and rival ink beside a digit
    not_digits.mkdir()
    (not_digits / "star.png").write_bytes((ROOT / "docs" / "examples" / "star.png").read_bytes())
    rings = Image.new("L", (420, 200), 255)
    for left in (40, 170, 300):
        ImageDraw.Draw(rings).ellipse((left, 40, left + 80, 160), outline=0, width=9)
    rings.save(not_digits / "three-zeros.png")
    (special / "truncated.png").write_bytes((folder / "mnist_000.png").read_bytes()[:60])
    (special / "missing.png").symlink_to(special / "nowhere.png")
    os.mkfifo(special / "pipe.png")
    hostile = folder / "hostile"
    hostile.mkdir()
    for name, (build, _) in test_hostile.FILE_CASES.items():
        (hostile / name).write_bytes(build())
    return folder


def run_bulk(*args, marker=None, timeout=240):
    env = dict(os.environ, BULK_TEST_MARKER=marker or "")
    return subprocess.run([sys.executable, str(BULK), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def cli_rows(*args):
    result = subprocess.run([sys.executable, str(CLI), "--format", "jsonl", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode in (0, 1), result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def assert_same_row(cli, ours, path=None):
    """One output row of bulk.py against the CLI's row for the same file."""
    assert ours["path"] == (path or cli["path"])
    if "error" in cli:
        assert ours["digit"] is None and ours["confidence"] is None and ours["probabilities"] is None
        assert ours["error"] == cli["error"].replace(cli["path"], ours["path"])
        return
    assert ours["error"] is None, ours["error"]
    assert ours["digit"] == cli["digit"]
    assert ours["is_digit"] == cli["is_digit"]
    assert abs(ours["digit_score"] - cli["digit_score"]) <= TOLERANCE
    assert abs(ours["confidence"] - cli["confidence"]) <= TOLERANCE
    assert len(ours["probabilities"]) == 10
    assert max(abs(a - b) for a, b in zip(ours["probabilities"], cli["probabilities"])) <= TOLERANCE


def ray_processes(marker):
    """Processes still running with this test's marker in their environment (Ray's inherit it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"BULK_TEST_MARKER={marker}".encode() in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:  # gone, or not ours to read
            pass
    return found


@pytest.fixture(scope="module")
def parquet_run(ray_installed, images, tmp_path_factory):
    """One bulk.py run over the whole folder, recursive, into Parquet, on a 2-CPU local Ray."""
    out = tmp_path_factory.mktemp("bulk-out") / "digits.parquet"
    marker = uuid.uuid4().hex
    result = run_bulk(images, "--recursive", "--output", out, "--cpus", 2, marker=marker)
    return result, out, marker


@pytest.mark.bulk
def test_parquet_rows_match_the_cli_row_by_row(parquet_run, images):
    from pyarrow import parquet

    result, out, _ = parquet_run
    assert result.returncode == 0, result.stderr
    table = parquet.read_table(out)
    assert table.schema.names == ["path", "digit", "confidence", "probabilities", "is_digit", "digit_score", "error"]
    ours, cli = table.to_pylist(), cli_rows(images, "--recursive")
    assert len(ours) == len(cli) == 400 + 30 + 20 + len(BAD_FILES) + 4 + 2 + len(test_hostile.FILE_CASES)
    assert [row["is_digit"] for row in ours if "/not-digits/" in row["path"]] == [False, False]
    for cli_row, row in zip(cli, ours):  # the same order too: the CLI's
        assert_same_row(cli_row, row)
    failed = {os.path.basename(row["path"]) for row in ours if row["error"] and "/hostile/" not in row["path"]}
    assert failed == set(BAD_FILES) | {"blank.png", "truncated.png", "missing.png", "pipe.png"}
    summary = result.stderr.strip().splitlines()[-1]
    errors = sum(row["error"] is not None for row in ours)
    assert summary.startswith(f"{len(ours)} images, {errors} errors") and str(out) in summary
    assert "Traceback" not in result.stderr and " INFO " not in result.stderr


@pytest.mark.bulk
def test_no_ray_process_is_left_behind(parquet_run):
    _, _, marker = parquet_run
    deadline = time.monotonic() + 15
    while ray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes(marker) == []


@pytest.mark.bulk
def test_ctrl_c_stops_ray_and_leaves_no_output(ray_installed, images, tmp_path):
    out, marker = tmp_path / "digits.parquet", uuid.uuid4().hex
    job = subprocess.Popen([sys.executable, str(BULK), *[str(images)] * 100, "--output", str(out), "--cpus", "2"],
                           cwd=ROOT, stderr=subprocess.PIPE, text=True, env=dict(os.environ, BULK_TEST_MARKER=marker),
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal
    time.sleep(8)  # starting Ray, or classifying the 45,600 files
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130 and "Traceback" not in stderr
    assert os.listdir(tmp_path) == []  # neither the output nor its temporary file
    deadline = time.monotonic() + 15
    while ray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_processes(marker) == []


@pytest.mark.bulk
def test_csv_from_a_pyarrow_filesystem_glob(ray_installed, images, tmp_path):
    """file:// goes through pyarrow's filesystem, as s3:// and gs:// do; the CSV has the CLI's columns."""
    out = tmp_path / "digits.csv"
    result = run_bulk(f"file://{images}/[dn]*.png", "--output", out, "--cpus", 2)
    assert result.returncode == 0, result.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "digit", "confidence", *(f"p{d}" for d in range(10)), "is_digit", "digit_score",
                             "error"]
    expected = sorted(p for p in os.listdir(images) if p.endswith(".png") and p[0] in "dn")
    assert [row["path"] for row in rows] == [f"file://{images}/{name}" for name in expected]
    cli = {row["path"]: row for row in cli_rows(images)}
    for row in rows:
        ours = {"path": row["path"], "error": row["error"] or None,
                "digit": int(row["digit"]) if row["digit"] else None,
                "confidence": float(row["confidence"]) if row["confidence"] else None,
                "probabilities": [float(row[f"p{d}"]) for d in range(10)] if row["digit"] else None,
                "is_digit": row["is_digit"] == "1", "digit_score": float(row["digit_score"] or "nan")}
        assert_same_row(cli[row["path"].removeprefix("file://")], ours, path=row["path"])
    assert sum(bool(row["error"]) for row in rows) == 1  # notes.png


@pytest.mark.bulk
@pytest.mark.parametrize("make_args, message", [
    (lambda d, t: [t / "missing", "-o", t / "out.parquet"], "missing: no such file or folder"),
    (lambda d, t: [f"{d}/*.gif", "-o", t / "out.parquet"], "matches no image files"),
    (lambda d, t: [t, "-o", t / "out.parquet"], "no images"),
    (lambda d, t: [d, "-o", t / "out.json"], "the name must end in .parquet or .csv"),
    (lambda d, t: [d, "-o", t / "no-folder" / "out.csv"], "cannot write into"),
    (lambda d, t: [d, "-o", d / "mnist_000.png.csv"], None),  # made to exist below
    (lambda d, t: [d, "-o", t / "out.csv", "--model", d / "notes.png"], "runs LiteRT .tflite models"),
    (lambda d, t: [d, "-o", t / "out.csv", "--address", "127.0.0.1:1"], "no Ray cluster answers there"),
], ids=["missing", "empty-glob", "no-images", "bad-suffix", "no-folder", "exists", "bad-model", "no-cluster"])
def test_bad_inputs_and_outputs_are_one_line_errors(ray_installed, images, tmp_path, make_args, message):
    args = make_args(images, tmp_path)
    if message is None:
        existing = images / "mnist_000.png.csv"
        existing.write_text("keep me\n")
        message = "already exists (--overwrite replaces it)"
    result = run_bulk(*args, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    if message.startswith("already exists"):
        assert existing.read_text() == "keep me\n"  # never clobbered
        existing.unlink()


def test_without_ray_it_says_how_to_install_it():
    code = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['bulk.py', 'x', '-o', 'y.parquet']; "
            "runpy.run_path('bulk.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: bulk.py needs Ray: pip install -r requirements-bulk.txt"


@pytest.mark.parametrize("pattern, path, matches", [
    ("*.png", "a.png", True), ("*.png", "sub/a.png", False), ("**/*.png", "a.png", True),
    ("**/*.png", "x/y/a.png", True), ("x/*/a.png", "x/y/a.png", True), ("x/*/a.png", "x/y/z/a.png", False),
    ("[ab]?.jpg", "b1.jpg", True), ("[ab]?.jpg", "c1.jpg", False),
])
def test_remote_globs_read_as_the_glob_module_does(pattern, path, matches):
    assert bulk.glob_match(pattern, path) is matches


def test_blocks_are_spread_over_the_cpus():
    assert bulk.block_size(20_000, 2) == bulk.MAX_BLOCK
    assert bulk.block_size(2_000, 2) == 250
    assert bulk.block_size(10, 64) == bulk.MIN_BLOCK

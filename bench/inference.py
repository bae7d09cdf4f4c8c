"""Benchmark inference: this code side by side with the usual Keras way, measured in one run.

    python -m bench.inference --data ../shared/data/mnist.npz --baseline /tmp/baseline

Run it from the repository root, as a module (it imports inference, data and
synthetic.realistic from there). It prints one Markdown table: one digit as an array and
as a PNG path, a batch of MNIST test arrays, a folder of MNIST PNGs and a folder of
photo-size JPEGs through the command line, and a cold start. "The usual way" is what
MNIST tutorials do: keras.saving.load_model("mnist_cnn.keras").predict(...).
With --baseline DIR (a folder holding an older inference.py) the command-line cases
also run through `python DIR/inference.py`, on the same files: current vs before.

The PNGs and JPEGs are written once into --workdir and reused by later runs. The
machine should be quiet: every number here is a wall-clock time.
Benchmarks measure; they are not tests and the test suite never runs them.
"""

import argparse
import csv
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

import numpy as np
from PIL import Image

import data
import inference
from classifier import native_stderr_silenced
from synthetic import realistic

# Set before any function can import Keras (lazily, below): TensorFlow stays quiet, and
# every child process started here inherits it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = inference.HERE
CLI = ROOT / "inference.py"
KERAS_MODEL = ROOT / "mnist_cnn.keras"
COLD_IMAGE = ROOT / "sample_test_image" / "3.png"
SEED = 0  # the photos are the same on every run and every machine
PHOTO_SIDE = 1200  # long side of a "photo-size" JPEG: 1200 x 850-900 is about 1 MP
PHOTO_QUALITY = 90
KERAS_BATCH = 256  # what a tutorial passes to model.predict
REPEATS = 3  # in-process batch timings: the median of this many runs
LATENCY_BUDGET_S = 5.0  # one latency case stops after this long: Keras predict() takes ~0.1 s a call
MIN_CALLS = 20  # ... but never with fewer calls than this
SUMMARY = re.compile(r"([\d,]+) images, (\d+) errors, ([\d.]+) s")  # the CLI's stderr summary line

# The usual way, cold: a tutorial's script for one image, run as a fresh process.
KERAS_COLD_SCRIPT = """
import sys
import numpy as np
from PIL import Image
import keras
model = keras.saving.load_model(sys.argv[1])
x = np.asarray(Image.open(sys.argv[2]), np.float32).reshape(1, 28, 28, 1)
print(int(model.predict(x, verbose=0).argmax()))
"""

# Runs a command and writes "seconds peak_KiB" of it into a file. os.wait4 gives the resource
# use of that one child, where getrusage(RUSAGE_CHILDREN) would give the largest of all so far;
# its ru_maxrss (KiB on Linux) is the peak resident set of its largest process (itself, or a
# worker it waited for), not their sum. Timing here leaves out this launcher's own start.
LAUNCHER = """
import os, subprocess, sys, time
report, command = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
child = subprocess.Popen(command)
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - start
child.returncode = code = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
with open(report, "w") as f:
    f.write(f"{seconds} {usage.ru_maxrss}")
sys.exit(code if code >= 0 else 128 - code)
"""


class Row(NamedTuple):
    """One line of the table."""

    case: str
    ours: str
    usual: str  # the Keras way
    before: str  # the --baseline checkout
    note: str


class Latency(NamedTuple):
    ms: float  # median
    calls: int


class Throughput(NamedTuple):
    seconds: float
    count: int
    accuracy: float  # share of right digits
    detail: str = ""  # what else the run showed (errors, the CLI's own timer)

    @property
    def rate(self):
        return self.count / self.seconds


class Cold(NamedTuple):
    seconds: float  # median wall time, process start included
    peak_mib: float  # peak resident memory of the child


class ChildRun(NamedTuple):
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    peak_mib: float


class Ours(NamedTuple):
    array: Latency
    png: Latency
    arrays: Throughput
    raw_accuracy: float
    raw_differs: int  # predictions where predict() and the bare model disagree


class Keras(NamedTuple):
    version: str
    array_predict: Latency
    array_call: Latency
    png: Latency
    arrays: Throughput
    pngs: Throughput
    photos: Throughput
    cold: Cold


class Commands(NamedTuple):
    """The command-line cases of one checkout (this one or the baseline)."""

    pngs: Throughput
    photos: Throughput
    cold: Cold


# ----------------------------------------------------------------------------- test files

def take(x, y, count):
    """The first `count` test digits, repeated when more are asked for than MNIST has."""
    index = np.arange(count) % len(x)
    return x[index], y[index]


def label_of(path):
    """The true digit of a generated file, from its name: 0007_3.jpg -> 3."""
    return int(Path(path).stem.rsplit("_", 1)[1])


def save_atomically(image, path, **options):
    # an interrupted run must not leave a half-written file that a later run reuses
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format=Image.registered_extensions()[path.suffix], **options)
    os.replace(partial, path)


def write_pngs(x, y, folder):
    """Save MNIST digits as 28x28 PNGs named index_label.png; reuse those already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}_{label}.png" for i, label in enumerate(y.tolist())]
    for path, digit in zip(paths, x):
        if not path.exists():
            save_atomically(Image.fromarray(digit), path)
    return paths


def render_photo(digit, index):
    """A phone photo of the digit written on paper, about 1 MP, as a PIL image."""
    rng = np.random.default_rng([SEED, index])
    picture = realistic.photo_of_paper(realistic.Digit(digit, realistic.skeleton(digit)[1]), rng)
    # The renderer draws 300-1000 px; scaling up keeps its look and gives the pixel count
    # (so the decoding cost) of a real photo.
    scale = PHOTO_SIDE / max(picture.size)
    size = (round(picture.width * scale), round(picture.height * scale))
    return picture.resize(size, Image.LANCZOS)


def write_photos(x, y, folder):
    """Save each digit as a photo-size JPEG named index_label.jpg; reuse those already there."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:04d}_{label}.jpg" for i, label in enumerate(y.tolist())]
    missing = [i for i, path in enumerate(paths) if not path.exists()]
    for done, i in enumerate(missing, 1):
        save_atomically(render_photo(x[i], i), paths[i], quality=PHOTO_QUALITY)
        if done % 100 == 0:
            print(f"  {done} of {len(missing)} photos written", file=sys.stderr)
    return paths


# ----------------------------------------------------------------------------- timing helpers

def median_latency(call, calls):
    """Median wall time of up to `calls` calls, after one warm-up call (loading, tracing).

    Stops early once LATENCY_BUDGET_S is spent (but not before MIN_CALLS), so that a slow
    case does not dominate the run.
    """
    call()
    times, deadline = [], time.perf_counter() + LATENCY_BUDGET_S
    while len(times) < calls and (len(times) < MIN_CALLS or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return Latency(statistics.median(times) * 1000, len(times))


def median_seconds(run, repeats=REPEATS):
    """(median wall time, last result) of `repeats` runs of run()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def share_right(digits, labels):
    return float(np.mean(np.asarray(digits) == np.asarray(labels)))


def run_child(command):
    """Run a command to its end; return its wall time (start included), output and peak memory.

    The command runs under LAUNCHER, a small process of its own: a child forked straight
    from this one would inherit this process's peak memory in its ru_maxrss (Linux keeps
    the peak of the memory image that exec replaces), and this one holds MNIST and models.
    The output goes to files, not pipes, so the child never waits on this process.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        code = subprocess.run([sys.executable, "-c", LAUNCHER, report.name, *map(str, command)],
                              stdout=out, stderr=err, cwd=ROOT).returncode
        measured = report.read().split()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if not measured:  # the launcher could not start the command
        raise RuntimeError(f"{' '.join(map(str, command))} did not run ({code}):\n{stderr[-2000:]}")
    seconds, peak_kib = map(float, measured)
    return ChildRun(seconds, code, stdout, stderr, peak_kib / 1024)


# ----------------------------------------------------------------------------- this code, in process

def measure_ours(x, y, png, model, calls):
    """predict() on one array, one PNG path, and all of x in one call."""
    digit = x[0]
    array = median_latency(lambda: inference.predict(digit, model), calls)
    png_latency = median_latency(lambda: inference.predict(str(png), model), calls)
    arrays, digits = time_arrays(x, y, model)
    raw = inference.get_classifier(model)(x).argmax(axis=1)
    return Ours(array, png_latency, arrays, share_right(raw, y), int(np.sum(raw != digits)))


def time_arrays(x, y, model):
    """N x 28 x 28 arrays through one predict() call, the median of REPEATS runs; and its digits."""
    inference.predict(x[:64], model)  # the model is loaded once per process: not part of the timing
    seconds, predictions = median_seconds(lambda: inference.predict(x, model))
    digits = np.array([p.digit for p in predictions])
    return Throughput(seconds, len(x), share_right(digits, y)), digits


# ----------------------------------------------------------------------------- command lines

def parse_csv(text):
    """[(path, digit or None)] from `inference.py --format csv` output."""
    return [(row["path"], int(row["digit"]) if row["digit"] else None) for row in csv.DictReader(io.StringIO(text))]


def parse_jsonl(text):
    """[(path, digit)] from `inference.py --json` output (the baseline's: errors go to stderr only)."""
    rows = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
    return [(row["path"], row.get("digit")) for row in rows]


def time_folder(command, files, parse):
    """One CLI call on a folder of generated files: wall time and accuracy against the file names.

    A file the CLI did not classify (an error, or no row at all) counts as wrong.
    """
    run = run_child(command)
    if run.returncode not in (0, 1):  # 1: some images had errors, which the accuracy shows
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    digits = {Path(path).name: digit for path, digit in parse(run.stdout)}
    right = sum(digits.get(path.name) == label_of(path) for path in files)
    unclassified = sum(digits.get(path.name) is None for path in files)
    details = [f"{unclassified} not classified"] if unclassified else []
    own = SUMMARY.search(run.stderr)
    if own:  # the CLI's own timer starts after its imports and model load
        details.append(f"its own timer {float(own.group(3)):.2f} s")
    return Throughput(run.seconds, len(files), right / len(files), ", ".join(details))


def time_cold(command, runs):
    """Median wall time and the largest peak memory of `runs` fresh processes."""
    results = []
    for _ in range(runs):
        run = run_child(command)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, command))} failed ({run.returncode}):\n{run.stderr[-2000:]}")
        results.append(run)
    return Cold(statistics.median(r.seconds for r in results), max(r.peak_mib for r in results))


def measure_commands(script, pngs, photos, model, cold_runs, baseline=False):
    """The command-line cases for one checkout's inference.py."""
    python = [sys.executable, str(script)]
    if baseline:  # the older CLI: --json only, its own default model, one image at a time
        output, parse, model_option = ["--json"], parse_jsonl, []
    else:
        output, parse, model_option = ["--format", "csv"], parse_csv, ["--model", str(model)]
    return Commands(
        time_folder(python + [str(pngs[0].parent)] + output + model_option, pngs, parse),
        time_folder(python + [str(photos[0].parent)] + output + model_option, photos, parse),
        time_cold(python + [str(COLD_IMAGE)] + model_option, cold_runs),
    )


# ----------------------------------------------------------------------------- the usual way: Keras

def load_keras_model():
    """keras.saving.load_model("mnist_cnn.keras"), and the Keras version; TensorFlow starts here."""
    # TensorFlow's C++ start-up lines (CUDA probing, oneDNN notes) ignore TF_CPP_MIN_LOG_LEVEL
    with native_stderr_silenced():
        import keras

        model = keras.saving.load_model(KERAS_MODEL)
        model.predict(np.zeros((1, 28, 28, 1), np.float32), verbose=0)
    return keras.__version__, model


def measure_keras(x, y, png, pngs, photos, calls, cold_runs):
    version, model = load_keras_model()
    one = x[:1, ..., None].astype(np.float32)
    return Keras(
        version,
        median_latency(lambda: model.predict(one, verbose=0), calls),
        median_latency(lambda: model(one, training=False), calls),  # no predict() machinery
        median_latency(lambda: keras_png(model, png), calls),
        time_keras_arrays(model, x, y),
        time_keras_files(model, pngs, lambda path: np.asarray(Image.open(path))),
        # a tutorial's recipe for a photo: grey, squashed to 28x28, no other preprocessing
        time_keras_files(model, photos, lambda path: np.asarray(Image.open(path).convert("L").resize((28, 28)))),
        time_cold([sys.executable, "-c", KERAS_COLD_SCRIPT, str(KERAS_MODEL), str(COLD_IMAGE)], cold_runs),
    )


def keras_png(model, path):
    x = np.asarray(Image.open(path), np.float32).reshape(1, 28, 28, 1)
    return model.predict(x, verbose=0)


def time_keras_arrays(model, x, y):
    seconds, probabilities = median_seconds(lambda: model.predict(x[..., None], batch_size=KERAS_BATCH, verbose=0))
    return Throughput(seconds, len(x), share_right(probabilities.argmax(axis=1), y))


def time_keras_files(model, files, load: Callable):
    """A Python loop over the files: load each, predict in batches of KERAS_BATCH (one run)."""
    start, digits, batch = time.perf_counter(), [], []
    for i, path in enumerate(files, 1):
        batch.append(load(path))
        if len(batch) == KERAS_BATCH or i == len(files):
            x = np.stack(batch).astype(np.float32).reshape(-1, 28, 28, 1)
            digits += model.predict(x, batch_size=KERAS_BATCH, verbose=0).argmax(axis=1).tolist()
            batch = []
    seconds = time.perf_counter() - start
    return Throughput(seconds, len(files), share_right(digits, [label_of(p) for p in files]))


# ----------------------------------------------------------------------------- the table

def ms(latency):
    return f"{latency.ms:.2f} ms"


def rate(throughput):
    return f"{throughput.rate:,.0f} images/s, {throughput.accuracy:.2%} right"


def cold(result):
    return f"{result.seconds:.2f} s, {result.peak_mib:,.0f} MiB"


def times(slow, fast):
    """How many times faster `fast` is, from two durations."""
    ratio = slow / fast
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def build_rows(args, photo_mp, ours: Ours, current: Commands, keras: Optional[Keras], before: Optional[Commands]):
    none = "skipped (--skip-keras)"
    dash = "-"
    n_arrays, n_pngs, n_photos = f"{args.arrays:,}", f"{args.pngs:,}", f"{args.photos:,}"
    rows = [
        Row("One 28x28 array, `predict()` latency (median)", ms(ours.array),
            f"`predict(x[None])` {ms(keras.array_predict)}; `model(x)` {ms(keras.array_call)}" if keras else none,
            dash,
            f"{ours.array.calls} calls"
            + (f"; {times(keras.array_predict.ms, ours.array.ms)} faster than `predict`, "
               f"{times(keras.array_call.ms, ours.array.ms)} than `model(x)` "
               f"({keras.array_predict.calls}/{keras.array_call.calls} calls)" if keras else "")),
        Row("One 28x28 PNG path, `predict()` latency (median)", ms(ours.png),
            f"PIL open + `np.asarray` + `predict` {ms(keras.png)}" if keras else none,
            dash,
            f"{ours.png.calls} calls" + (f"; {times(keras.png.ms, ours.png.ms)} faster "
                                         f"({keras.png.calls} calls)" if keras else "")),
        Row(f"{n_arrays} MNIST test arrays, one `predict()` call", rate(ours.arrays),
            f"`predict(x, batch_size={KERAS_BATCH})` {rate(keras.arrays)}" if keras else none,
            dash,
            f"median of {REPEATS}; the bare model on the same arrays: {ours.raw_accuracy:.2%} right, "
            f"{ours.raw_differs} predictions differ from `predict()`"),
        Row(f"{n_pngs} 28x28 PNG files, one CLI call (wall, process start included)", rate(current.pngs),
            f"PIL loop + `predict` in batches of {KERAS_BATCH}, in process: {rate(keras.pngs)}" if keras else none,
            rate(before.pngs) if before else dash,
            notes(keras and "Keras in process, after its import and model load",
                  *details(current.pngs, before and before.pngs))),
        Row(f"{n_photos} photo JPEGs ({PHOTO_SIDE} px long side), one CLI call (wall)", rate(current.photos),
            f"tutorial recipe (grey, resize to 28x28) + `predict`, in process: {rate(keras.photos)}" if keras else none,
            rate(before.photos) if before else dash,
            notes(f"{photo_mp:.2f} MP on average, synthetic/realistic.photo_of_paper, JPEG quality {PHOTO_QUALITY}",
                  keras and "Keras in process", *details(current.photos, before and before.photos))),
        Row(f"Cold CLI, one image (median of {args.cold_runs}): wall, peak RSS", cold(current.cold),
            f"fresh `python -c` script: import keras, load, predict: {cold(keras.cold)}" if keras else none,
            cold(before.cold) if before else dash,
            "peak RSS of the child process"),
    ]
    return rows


def details(current, before):
    """What the CLI runs showed besides their time (their own timer, unclassified files)."""
    return [current.detail and f"this code: {current.detail}", before and before.detail and f"before: {before.detail}"]


def notes(*parts):
    """The parts that are there (not None, False or empty), joined."""
    return "; ".join(part for part in parts if part)


def markdown(rows: List[Row], baseline):
    before = f"Before (`{baseline}`)" if baseline else "Before (no --baseline)"
    lines = [f"| Case | This code | The usual way (Keras) | {before} | Notes |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def header():
    """CPU, cores, date and load: the conditions the numbers were taken under."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0))
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"{name}, {os.cpu_count()} cores ({usable} usable), {date}, "
            f"load average {load} at start, Python {platform.python_version()}")


def megapixels(files):
    """Mean size of the images in millions of pixels (Pillow reads only the headers)."""
    sizes = []
    for path in files:
        with Image.open(path) as image:
            sizes.append(image.width * image.height)
    return statistics.mean(sizes) / 1e6


def file_size(path):
    return f"{Path(path).stat().st_size / 1024:,.0f} KiB"


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark inference against the usual Keras way.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="Keras-layout mnist.npz or a folder of IDX files (default: the Keras download)")
    parser.add_argument("--arrays", type=int, default=10_000, help="MNIST test arrays in one predict() call")
    parser.add_argument("--pngs", type=int, default=10_000, help="28x28 PNG files through one CLI call")
    parser.add_argument("--photos", type=int, default=1_000, help="photo-size JPEGs through one CLI call")
    parser.add_argument("--calls", type=int, default=300, help="calls per latency case (at most; see LATENCY_BUDGET_S)")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold-start case")
    parser.add_argument("--baseline", type=Path, help="a folder with an older inference.py to time the CLI cases with")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="the model this code runs")
    parser.add_argument("--skip-keras", action="store_true", help="no Keras columns (for machines without TensorFlow)")
    parser.add_argument("--workdir", type=Path, help="where test files are written and reused (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("arrays", "pngs", "photos", "calls", "cold_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.baseline and not (args.baseline / "inference.py").is_file():
        parser.error(f"--baseline {args.baseline}: no inference.py in this folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    _, (x_test, y_test) = data.load_mnist(args.data)  # without --data this imports TensorFlow already
    x, y = take(x_test, y_test, args.arrays)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        workdir = args.workdir or Path(scratch)
        print(f"writing test files in {workdir}", file=sys.stderr)
        pngs = write_pngs(*take(x_test, y_test, args.pngs), workdir / f"pngs-{args.pngs}")
        photos = write_photos(*take(x_test, y_test, args.photos), workdir / f"photos-{args.photos}-seed{SEED}")
        photo_mp, started = megapixels(photos), header()
        # This code first and TensorFlow last: once loaded, TensorFlow's thread pools share
        # the process (and, while they spin down, the cores) with whatever is timed after it.
        print("timing this code in process", file=sys.stderr)
        ours = measure_ours(x, y, pngs[0], args.model, args.calls)
        print("timing the command line", file=sys.stderr)
        current = measure_commands(CLI, pngs, photos, args.model, args.cold_runs)
        before = None
        if args.baseline:
            print(f"timing the command line of {args.baseline}", file=sys.stderr)
            before = measure_commands(args.baseline / "inference.py", pngs, photos, args.model, args.cold_runs,
                                      baseline=True)
        keras = None
        if not args.skip_keras:
            print("timing Keras", file=sys.stderr)
            keras = measure_keras(x, y, pngs[0], pngs, photos, args.calls, args.cold_runs)
    print(started)
    print()
    print(markdown(build_rows(args, photo_mp, ours, current, keras, before), args.baseline))
    print()
    runtime = "Keras" if Path(args.model).suffix == ".keras" else "LiteRT"
    print(notes(f"This code: {Path(args.model).name} ({file_size(args.model)}) on {runtime}",
                keras and f"the usual way: {KERAS_MODEL.name} ({file_size(KERAS_MODEL)}) on Keras {keras.version}",
                args.baseline and f"before: {args.baseline / 'inference.py'} with its own default model") + ".")


if __name__ == "__main__":
    main()

"""Benchmark bulk.py on an embedded local Ray against the plain CLI, on the same files, in one run.

    python -m bench.bulk --data /work/shared/data/mnist.npz                  # 20,000 PNGs, 2,000 photos
    python -m bench.bulk --data ../shared/data/mnist.npz --pngs 500 --photos 20   # a smoke run

Run it from the repository root, as a module. The files: 28x28 PNGs of the MNIST test digits
(the first 10,000, twice for 20,000: write_pngs repeats them) and photo-size JPEGs of them
(synthetic/realistic.photo_of_paper, as bench.inference writes them), written once into --workdir.

Each case runs as its own process, pinned with taskset to its cores: the CLI
(`inference.py FOLDER --format csv`) on all --cores and on one core, and bulk.py with
--cpus 1 (on one core) and --cpus N (on N cores). Every case runs three ways per file set:
- once over the folder: wall time T1 for its N files, start-up included;
- over a folder of its first --tiny files (wall time T0, the median of --tiny-runs runs): the
  start-up (for bulk.py: Ray's start, its worker and actor processes, the model load and the
  shutdown; for the CLI: Python, the model load);
- over the folder named P times in one call (P x N images, wall time TP; P is --png-passes for
  the PNGs, --photo-passes for the photos, which take long enough in one pass).
The steady rate is (P x N - tiny) / (TP - T0): the per-image cost with every fixed cost taken
out, the same way for both. Several passes make that difference large against the noise of
the start-up. A benchmark, not a test; the machine should be quiet.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Optional

import data
import inference
from bench.inference import SEED, header, label_of, parse_csv, run_child, take, write_photos, write_pngs

ROOT = inference.HERE
CLI = ROOT / "inference.py"
BULK = ROOT / "bulk.py"
RAY_START = re.compile(r"Ray started in ([\d.]+) s")  # from bulk.py's summary line
# The whole folder must take this much longer than the tiny job (seconds, and a share of the
# tiny job's time) for their difference to measure anything but start-up noise.
MIN_EXTRA_S = 2.0
MIN_EXTRA_SHARE = 0.25
TARGET = 0.70  # the issue's: bulk.py's steady rate on the local Ray against the CLI's, same cores


class Case(NamedTuple):
    label: str
    cores: int  # pinned to this many cores
    bulk: bool  # bulk.py (else the CLI)


class Timing(NamedTuple):
    """One case on one file set."""

    case: Case
    files: int
    seconds: float  # wall time of the whole folder, process start to exit
    passes: int
    seconds_passes: float  # wall time of the folder named `passes` times in one call
    startup: float  # median wall time of the tiny folder
    tiny: int
    right: float  # share of files given their true digit
    digits: dict  # file name -> digit (None: an error)
    ray_start: Optional[float]  # bulk.py's own timer of ray.init(), median over the runs

    @property
    def rate(self):
        return self.files / self.seconds

    @property
    def steady(self):
        """The steady rate, or None where the whole job took hardly longer than the tiny one."""
        extra = self.seconds_passes - self.startup
        enough = extra > max(MIN_EXTRA_S, self.startup * MIN_EXTRA_SHARE)
        return (self.passes * self.files - self.tiny) / extra if enough else None


# ----------------------------------------------------------------------------- running the cases

def pinned(command, cores):
    """`command` under taskset on the first `cores` cores this process may use."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < cores:
        raise SystemExit(f"error: --cores {cores}: only {len(usable)} cores are usable here")
    if shutil.which("taskset") is None:
        raise SystemExit("error: taskset (util-linux) is needed to pin each case to its cores")
    return ["taskset", "-c", ",".join(map(str, usable[:cores])), *command]


def run_case(case, folder, scratch, passes=1):
    """One run of a case on a folder (named `passes` times): (wall seconds, {file name: digit},
    bulk.py's Ray start or None)."""
    folders = [folder] * passes
    if case.bulk:
        out = scratch / "bulk.csv"
        command = [sys.executable, BULK, *folders, "--output", out, "--overwrite", "--cpus", case.cores]
    else:
        command = [sys.executable, CLI, *folders, "--format", "csv"]
    run = run_child(pinned(list(map(str, command)), case.cores))
    if run.returncode != 0:
        raise RuntimeError(f"{case.label} on {folder} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    text = out.read_text() if case.bulk else run.stdout
    digits = {Path(path).name: digit for path, digit in parse_csv(text)}
    ray_start = RAY_START.search(run.stderr) if case.bulk else None
    return run.seconds, digits, ray_start and float(ray_start.group(1))


def time_case(case, files, tiny_folder, tiny_runs, passes, scratch):
    """A case on the folder of `files`, on it `passes` times over, and tiny_runs times on the tiny folder."""
    seconds, digits, ray_start = run_case(case, files[0].parent, scratch)
    seconds_passes, _, passes_start = (seconds, digits, ray_start) if passes == 1 else \
        run_case(case, files[0].parent, scratch, passes)
    tiny = [run_case(case, tiny_folder, scratch) for _ in range(tiny_runs)]
    starts = [start for start in [ray_start, passes_start] + [run[2] for run in tiny] if start is not None]
    right = sum(digits.get(path.name) == label_of(path) for path in files) / len(files)
    return Timing(case, len(files), seconds, passes, seconds_passes, statistics.median(run[0] for run in tiny),
                  len(os.listdir(tiny_folder)), right, digits, statistics.median(starts) if starts else None)


def tiny_folder(files, count, folder):
    """A folder holding the first `count` files (hard links where the filesystem allows)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in files[:count]:
        target = folder / path.name
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:
                shutil.copy(path, target)
    return folder


# ----------------------------------------------------------------------------- the report

def table(results: List[List[Timing]]):
    lines = ["| Files | Case | Cores | Wall, one pass | images/s, start-up included | Start-up (tiny job) "
             "| Wall, passes | Steady images/s | Steady per core | Right | Ray's own start |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, timings in zip(("28x28 PNGs", "photo JPEGs"), results):
        for t in timings:
            ray = f"{t.ray_start:.2f} s" if t.ray_start is not None else "-"
            steady = f"{t.steady:,.0f} | {t.steady / t.case.cores:,.0f}" if t.steady else "too few files | -"
            lines.append(f"| {t.files:,} {kind} | {t.case.label} | {t.case.cores} | {t.seconds:.2f} s | {t.rate:,.0f} "
                         f"| {t.startup:.2f} s ({t.tiny} files) | {t.seconds_passes:.2f} s ({t.passes}x) | {steady} "
                         f"| {t.right:.2%} | {ray} |")
    return "\n".join(lines)


def agreement(timings: List[Timing]):
    """How many files the bulk runs classified differently from the CLI (should be none)."""
    cli = next(t for t in timings if not t.case.bulk)
    differ = sum(t.digits != cli.digits for t in timings if t.case.bulk)
    changed = sum(t.digits.get(name) != digit for t in timings if t.case.bulk for name, digit in cli.digits.items())
    return "the same digit as the CLI for every file" if not differ else f"{changed} digits differ from the CLI's"


def findings(kind, timings: List[Timing], cores):
    """The target, the scaling and the 100-million-image estimate, worked out, for one file set."""
    by_label = {t.case.label: t for t in timings}
    cli, one, many = by_label[f"CLI, {cores} cores"], by_label["bulk.py --cpus 1"], by_label[f"bulk.py --cpus {cores}"]
    if not (cli.steady and one.steady and many.steady):
        return (f"**{kind}** ({agreement(timings)}): too few files to tell the steady rate from the start-up "
                f"(each many-pass run must take {MIN_EXTRA_S:.0f} s and {MIN_EXTRA_SHARE:.0%} longer than its tiny job).")
    share = many.steady / cli.steady
    scaling = many.steady / (cores * one.steady)
    per_core = one.steady
    core_hours = 100e6 / per_core / 3600
    lines = [
        f"**{kind}** ({agreement(timings)}):",
        f"- steady state, {cores} cores: bulk.py {many.steady:,.0f} images/s against the CLI's {cli.steady:,.0f}: "
        f"**{share:.0%}** of it (target {TARGET:.0%}: {'met' if share >= TARGET else 'NOT met'}).",
        f"- scaling: --cpus {cores} gives {many.steady / one.steady:.2f}x the rate of --cpus 1 "
        f"({scaling:.0%} of linear).",
        f"- 100 million images at {per_core:,.0f} images/s per core (bulk.py --cpus 1, steady): "
        f"1e8 / {per_core:,.0f} = {100e6 / per_core:,.0f} core-seconds = **{core_hours:,.0f} core-hours**; "
        f"on 100 cores at the {cores}-core scaling ({scaling:.0%}): {core_hours / (100 * scaling):,.1f} h, "
        f"on 1,000 cores: {core_hours * 60 / (1000 * scaling):,.0f} min, each plus one start-up "
        f"(here {many.startup:.0f} s for the whole job) and the driver's listing of the files.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark bulk.py on a local Ray against the CLI.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="Keras-layout mnist.npz or a folder of IDX files (default: the Keras download)")
    parser.add_argument("--pngs", type=int, default=20_000, help="28x28 PNGs (MNIST test digits, repeated past 10,000)")
    parser.add_argument("--photos", type=int, default=2_000, help="photo-size JPEGs")
    parser.add_argument("--cores", type=int, default=2, help="cores of the many-core cases (bulk.py --cpus N)")
    parser.add_argument("--tiny", type=int, default=10, help="files in the tiny job that measures start-up")
    parser.add_argument("--tiny-runs", type=int, default=3, help="runs of each tiny job (the median is taken)")
    parser.add_argument("--png-passes", type=int, default=3, help="times the PNG folder is named in the steady-state run")
    parser.add_argument("--photo-passes", type=int, default=1, help="the same for the photo folder")
    parser.add_argument("--workdir", type=Path, help="where test files are written and reused (default: a temp dir)")
    args = parser.parse_args(argv)
    for name in ("pngs", "photos", "tiny", "tiny_runs", "png_passes", "photo_passes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.cores < 2:
        parser.error("--cores must be at least 2 (the one-core cases always run)")
    if args.tiny >= min(args.pngs, args.photos):
        parser.error("--tiny must be smaller than --pngs and --photos")
    return args


def main(argv=None):
    args = parse_args(argv)
    _, (x_test, y_test) = data.load_mnist(args.data)
    cases = [Case(f"CLI, {args.cores} cores", args.cores, False), Case("CLI, 1 core", 1, False),
             Case("bulk.py --cpus 1", 1, True), Case(f"bulk.py --cpus {args.cores}", args.cores, True)]
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as scratch:
        workdir = args.workdir or Path(scratch)
        print(f"writing test files in {workdir}", file=sys.stderr)
        pngs = write_pngs(*take(x_test, y_test, args.pngs), workdir / f"pngs-{args.pngs}")
        photos = write_photos(*take(x_test, y_test, args.photos), workdir / f"photos-{args.photos}-seed{SEED}")
        started = header()
        results = []
        for files, passes in ((pngs, args.png_passes), (photos, args.photo_passes)):
            tiny = tiny_folder(files, args.tiny, workdir / f"{files[0].parent.name}-first-{args.tiny}")
            timings = []
            for case in cases:
                print(f"timing {case.label} on {files[0].parent.name}", file=sys.stderr)
                timings.append(time_case(case, files, tiny, args.tiny_runs, passes, Path(scratch)))
            results.append(timings)
    import ray

    print(started + f", Ray {ray.__version__}")
    print()
    print(table(results))
    print()
    for kind, timings in zip(("28x28 PNGs", "Photo JPEGs"), results):
        print(findings(kind, timings, args.cores))
        print()


if __name__ == "__main__":
    main()

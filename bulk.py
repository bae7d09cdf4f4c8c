"""Classify millions of images on a Ray cluster: the CLI's pipeline as a Ray Data job.

    python bulk.py scans/ --output digits.parquet                # an embedded local Ray, all cores
    python bulk.py 'scans/**/*.png' --output digits.csv --cpus 2
    python bulk.py s3://bucket/scans/ --recursive --output s3://bucket/digits.parquet --address auto

Files are listed here (the driver), in the command line's order; then Ray tasks read,
decode and preprocess them (decode.decode and parallel.prepare_list, as predict() does)
and an actor pool classifies them in batches, one LiteRT Classifier per actor. A file
that fails gets its error in its row; the job goes on. The rows come back in input
order and are written to one Parquet or CSV file, atomically (a temporary file renamed
into place once every row is in). Needs Ray: pip install -r requirements-bulk.txt.
"""

import argparse
import contextlib
import dataclasses
import glob
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from fnmatch import fnmatchcase
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np

try:  # Ray Data's own dependency; without it main() says how to install both, in one line
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv as arrow_csv, fs as arrow_fs, parquet as arrow_parquet
except ImportError:
    pa = None

import decode
import inference
import parallel
from classifier import Classifier, ModelError, cores, is_digit, load_classifier, shipped_detector
from errors import ImageError, ImageTooLargeError, UnreadableImageError
from preprocess import SIZE

OUTPUT_SUFFIXES = (".parquet", ".csv")
# Files per block, the unit of work of a decoding task and of a classifier call. A task costs
# the driver and the scheduler a few milliseconds: 1024 PNGs keep that to a few percent of their
# decoding; fewer files to a block when there are few, so that every CPU has several blocks.
MAX_BLOCK = 1024
MIN_BLOCK = 16
BLOCKS_PER_CPU = 4
READ_THREADS = 16  # remote files fetched at once by a decoding task
# Classifier actors: Ray Data grows the pool from one up to one per CORES_PER_ACTOR CPUs as their
# queue fills. A 28x28 PNG takes about 0.6 of the CPU time to classify that it takes to read and
# prepare, a photo a hundredth.
CORES_PER_ACTOR = 2
# A remote file is read whole (one request, not one per Pillow read); a bigger one is refused
# unread. Local files are streamed by decode.decode, whose pixel budget bounds them.
MAX_REMOTE_BYTES = 256 * 2**20
LOCAL = -1  # the filesystem index of a local file
CONNECT_TIMEOUT_S = 10  # for a cluster's address to answer
WILDCARDS = "*?["  # what makes an input a glob, as for the glob module
INSTALL_RAY = "error: bulk.py needs Ray: pip install -r requirements-bulk.txt"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one bulk job does, from the command line."""

    inputs: List[str]  # files, folders and globs, local or URIs (s3://, gs://, file://, ...)
    output: str  # a .parquet or .csv file, local or a URI
    recursive: bool = False  # folders: also the images in their subfolders
    address: Optional[str] = None  # a Ray cluster to join ("auto", "ray://host:10001"); None: a local Ray
    cpus: Optional[int] = None  # the local Ray's CPUs (None: every core this process may use)
    model: str = str(inference.DEFAULT_MODEL)  # a .tflite file
    overwrite: bool = False  # replace an existing output file


class BulkError(Exception):
    """The job cannot start or finish (a bad input or output, no cluster); str() is one line."""


class Files(NamedTuple):
    """The files to classify, in order, as columns."""

    paths: List[str]  # as the output names them: as given, or the URI
    locations: List[str]  # where they are read: an absolute local path, or a path in their filesystem
    filesystems: List[int]  # an index into `systems` (LOCAL: read with decode.decode directly)
    systems: list  # the pyarrow filesystems of remote inputs


class Summary(NamedTuple):
    images: int
    errors: int
    ray_start_s: float  # ray.init()
    seconds: float  # from building the dataset to the last row written


# ----------------------------------------------------------------------------- listing the inputs

def list_files(inputs, recursive):
    """Every file the inputs name, in order: a folder's images sorted, a glob's image files sorted.

    Raises BulkError for an input that names nothing (missing, or no images in it): a typo
    is caught before a cluster spends time on the rest.
    """
    files = Files([], [], [], [])
    for text in inputs:
        if is_uri(text):
            add_remote(files, text, recursive)
        else:
            add_local(files, text, recursive)
    return files


def is_uri(text):
    return "://" in text and not os.path.exists(text)


def add_local(files, text, recursive):
    """A local file, folder (the CLI's listing: inference.expand_paths) or glob."""
    if has_wildcards(text):
        named = [path for path in sorted(glob.glob(text, recursive=True))
                 if os.path.splitext(path)[1].lower() in decode.SUFFIXES and not os.path.isdir(path)]
        if not named:
            raise BulkError(f"{text}: matches no image files")
    elif not os.path.lexists(text):
        raise BulkError(f"{text}: no such file or folder")
    else:
        named = [text]
    for item in inference.expand_paths(named, recursive):
        if isinstance(item, inference.FolderError):
            raise BulkError(str(item))
        files.paths.append(str(item))
        files.locations.append(os.path.abspath(item))
        files.filesystems.append(LOCAL)


def add_remote(files, uri, recursive):
    """A file, folder (prefix) or glob on a filesystem pyarrow reads."""
    base, pattern = split_glob(uri)
    try:
        system, root = arrow_fs.FileSystem.from_uri(base)
        info = system.get_file_info(root)
        if info.type == arrow_fs.FileType.File and not pattern:
            found = [info]
        elif info.type == arrow_fs.FileType.Directory:
            deep = recursive or "/" in pattern or "**" in pattern
            listed = system.get_file_info(arrow_fs.FileSelector(root, recursive=deep))
            found = sorted((item for item in listed if item.type == arrow_fs.FileType.File
                            and os.path.splitext(item.path)[1].lower() in decode.SUFFIXES),
                           key=lambda item: item.path)
        else:
            raise BulkError(f"{uri}: no such file or folder")
    except (OSError, ValueError) as error:  # pyarrow: unknown scheme, no credentials, no network...
        raise BulkError(f"{uri}: cannot list ({decode.describe(error)})") from None
    prefix = base.rstrip("/")
    names = [(item, prefix + item.path[len(root.rstrip("/")):]) for item in found]
    if pattern:
        names = [(item, name) for item, name in names if glob_match(pattern, name[len(prefix) + 1:])]
    if not names:
        raise BulkError(f"{uri}: {'matches no image files' if pattern else 'no images in it'}")
    files.systems.append(system)
    for item, name in names:
        files.paths.append(name)
        files.locations.append(item.path)
        files.filesystems.append(len(files.systems) - 1)


def split_glob(uri):
    """(the folder above the first wildcard, the pattern below it); (uri, "") without wildcards."""
    if not has_wildcards(uri):
        return uri, ""
    first = min(uri.index(char) for char in WILDCARDS if char in uri)
    cut = uri.rindex("/", 0, first) + 1
    return uri[:cut], uri[cut:]


def has_wildcards(text):
    return any(char in text for char in WILDCARDS)


def glob_match(pattern, path):
    """Whether a relative path matches a glob as glob.glob(recursive=True) reads it: * within a
    folder, ** across folders."""
    return match_parts(pattern.split("/"), path.split("/"))


def match_parts(pattern, parts):
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(match_parts(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and match_parts(pattern[1:], parts[1:])


# ----------------------------------------------------------------------------- the Ray stages

def prepare_files(batch, systems):
    """A Ray task: read, decode and preprocess a block of files.

    Args:
        batch: columns path, location, filesystem (see Files).
        systems: the remote filesystems that `filesystem` indexes.
    Returns:
        columns path, image (N x 28 x 28 float32, zeros where a file failed), rivals (the ink
        beside each digit, parallel.Prepared.rivals), error ("" when fine).
    """
    decode.use_own_limits()  # as the CLI: decode()'s budget decides what is too large, not Pillow's
    count = len(batch["path"])
    errors, pictures = [""] * count, {}
    for i, picture in enumerate(read_pictures(batch, systems)):
        if isinstance(picture, ImageError):
            errors[i] = str(picture)
        else:
            pictures[i] = picture
    images, rivals = np.zeros((count, SIZE, SIZE), np.float32), np.zeros(count, np.float32)
    for i, prepared in zip(pictures, parallel.prepare_list(list(pictures.values()), [False] * len(pictures))):
        if prepared.error is None:
            images[i], rivals[i] = prepared.image, prepared.rivals
        else:
            errors[i] = str(prepared.error)
    return {"path": batch["path"], "image": images, "rivals": rivals, "error": np.array(errors, object)}


def read_pictures(batch, systems):
    """Yield each file's decoded Picture, or the ImageError it gave, in order.

    Remote files are fetched by READ_THREADS threads ahead of decoding: a request's latency,
    not the CPU, is what limits reading many small objects one after another.
    """
    paths, locations = [str(path) for path in batch["path"]], [str(where) for where in batch["location"]]
    filesystems = [None if index == LOCAL else systems[index] for index in batch["filesystem"].tolist()]
    local = all(system is None for system in filesystems)
    sources = locations if local else in_threads(fetch, zip(paths, locations, filesystems))
    for path, source in zip(paths, sources):
        try:
            if isinstance(source, ImageError):
                raise source
            yield decode.decode(source, name=path)
        except ImageError as error:
            yield error


def fetch(path, location, system):
    """A remote file's bytes (read whole: one request), or the local location; an ImageError if it cannot be read."""
    if system is None:
        return location
    try:
        with system.open_input_stream(location, compression=None) as stream:
            data = stream.read(MAX_REMOTE_BYTES + 1)
    except FileNotFoundError:
        return UnreadableImageError(f"{path}: no such file")
    except (OSError, ValueError) as error:  # pyarrow: permissions, network, a folder...
        return UnreadableImageError(f"{path}: cannot read ({decode.describe(error)})")
    if len(data) > MAX_REMOTE_BYTES:
        return ImageTooLargeError(f"{path}: too large to read (over {MAX_REMOTE_BYTES >> 20} MB)")
    return data


def in_threads(function, calls):
    """Yield function(*call) for each call, in order, with up to READ_THREADS of them running at once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS) as pool:
        pending = deque()
        for call in calls:
            pending.append(pool.submit(function, *call))
            if len(pending) >= READ_THREADS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ClassifyFiles:
    """A Ray actor: one LiteRT Classifier; a block of prepared files in, their output rows out."""

    def __init__(self, model):
        # The model's path is relative to this code's folder (where the working dir puts it on
        # every node) unless it was given outside it.
        path = inference.HERE / model
        self.classifier = Classifier(path, threads=1)
        self.classifier.detector = shipped_detector(threads=1)  # "not a digit", as predict() says it

    def __call__(self, batch):
        return output_rows(batch["path"], batch["image"], batch["error"], self.classifier, batch["rivals"])


def output_rows(paths, images, errors, classifier, rivals=None):
    """A pyarrow Table of the output schema; only the files without an error are classified."""
    good = np.array([not error for error in errors], bool)
    probabilities = np.zeros((len(paths), 10), np.float32)
    scores = np.full(len(paths), np.nan, np.float32)  # null without a detector
    if good.any():
        probabilities[good] = classifier(images[good])
        if classifier.detector is not None:
            scores[good] = classifier.digit_scores(images[good])
    digits = probabilities.argmax(axis=1)
    scored = good & ~np.isnan(scores)
    offsets = pa.array(np.arange(0, 10 * len(paths) + 1, 10, dtype=np.int32))
    return pa.table({
        "path": pa.array([str(path) for path in paths], pa.string()),
        "digit": pa.array(digits.astype(np.int8), mask=~good),
        "confidence": pa.array(probabilities[np.arange(len(paths)), digits], mask=~good),
        "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probabilities.ravel()), mask=pa.array(~good)),
        "is_digit": pa.array(is_digit(scores, rivals), mask=~scored),  # as predict() says it
        "digit_score": pa.array(scores, mask=~scored),
        "error": pa.array([str(error) or None for error in errors], pa.string()),
    }, schema=output_schema())


def output_schema():
    return pa.schema([("path", pa.string()), ("digit", pa.int8()), ("confidence", pa.float32()),
                      ("probabilities", pa.list_(pa.float32())), ("is_digit", pa.bool_()), ("digit_score", pa.float32()),
                      ("error", pa.string())])


def build_dataset(files, model, cpus):
    """The Ray Data pipeline: blocks of file names -> prepared images (tasks) -> rows (actors)."""
    import ray

    table = pa.table({"path": files.paths, "location": files.locations,
                      "filesystem": pa.array(files.filesystems, pa.int32())})
    size = block_size(len(table), cpus)
    blocks = [table.slice(start, size) for start in range(0, len(table), size)]
    pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cpus // CORES_PER_ACTOR))
    return (ray.data.from_arrow(blocks)
            .map_batches(prepare_files, fn_kwargs={"systems": files.systems}, batch_size=None,
                         batch_format="numpy")
            # The actors hold no CPU of Ray's: they take less than the decoding, which has
            # every CPU, and a reserved core would leave a 1-CPU Ray none for decoding tasks.
            .map_batches(ClassifyFiles, fn_constructor_kwargs={"model": model}, batch_size=None,
                         batch_format="numpy", compute=pool, num_cpus=0))


def block_size(count, cpus):
    """Files per block (one decoding task): BLOCKS_PER_CPU blocks for each CPU, within MIN and MAX_BLOCK."""
    return max(MIN_BLOCK, min(MAX_BLOCK, -(-count // (cpus * BLOCKS_PER_CPU))))


# ----------------------------------------------------------------------------- Ray itself

def start_ray(settings):
    """Join the cluster at settings.address, or start a local one; return the CPUs it has."""
    import ray

    quiet_ray_logs()
    if settings.address:
        check_reachable(settings.address)
    try:
        if settings.address:
            ray.init(address=settings.address, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=settings.cpus or cores(), include_dashboard=False,
                     logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = settings.address or "a local Ray"
        raise BulkError(f"cannot start or join {where} ({first_line(error)})") from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows in input order: reproducible output
    return int(ray.cluster_resources().get("CPU", 1))


def check_reachable(address):
    """Raise BulkError unless HOST:PORT (or ray://HOST:PORT) answers: Ray itself retries for ever."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or an address Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise BulkError(f"--address {address}: no Ray cluster answers there ({decode.describe(error)})") from None


def quiet_ray_logs():
    """Ray Data's console says only warnings and worse; its full log stays in the session folder.

    On a terminal its progress bars still show: they are drawn, not logged.
    """
    import ray.data  # noqa: F401  (configures the "ray.data" logger)

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler) is not logging.FileHandler and isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.WARNING)


# ----------------------------------------------------------------------------- the output file

def open_output(output):
    """(filesystem, path) of the output file."""
    if is_uri(output):
        return arrow_fs.FileSystem.from_uri(output)
    return arrow_fs.LocalFileSystem(), os.path.abspath(output)


def check_output(settings):
    """Raise BulkError unless the output can be written, before any work is done."""
    name = settings.output
    if Path(name).suffix.lower() not in OUTPUT_SUFFIXES:
        raise BulkError(f"--output {name}: the name must end in {' or '.join(OUTPUT_SUFFIXES)}")
    try:
        system, path = open_output(name)
        info = system.get_file_info(path)
    except (OSError, ValueError) as error:
        raise BulkError(f"--output {name}: cannot reach it ({decode.describe(error)})") from None
    if info.type == arrow_fs.FileType.Directory:
        raise BulkError(f"--output {name}: a folder, not a file")
    if info.type != arrow_fs.FileType.NotFound and not settings.overwrite:
        raise BulkError(f"--output {name}: already exists (--overwrite replaces it)")
    if isinstance(system, arrow_fs.LocalFileSystem):
        folder = os.path.dirname(path)
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise BulkError(f"--output {name}: cannot write into {folder}")


@contextlib.contextmanager
def atomic_output(output):
    """Yield a stream to a temporary file beside the output; rename it into place at the end.

    A job that fails or is interrupted leaves the output as it was, and no temporary file.
    """
    system, path = open_output(output)
    partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
    try:
        with system.open_output_stream(partial) as stream:
            yield stream
        system.move(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            system.delete_file(partial)
        raise


def table_writer(output, stream):
    """A writer of output tables to the stream: Parquet, or CSV with p0..p9 columns."""
    if Path(output).suffix.lower() == ".parquet":
        return arrow_parquet.ParquetWriter(stream, output_schema())
    return CsvWriter(stream)


class CsvWriter:
    """The CLI's CSV columns (path, digit, confidence, p0..p9, is_digit, digit_score, error), at full precision."""

    def __init__(self, stream):
        self.stream, self.writer = stream, None

    def write_table(self, table):
        probabilities = table.column("probabilities")
        flat = pa.table({"path": table.column("path"), "digit": table.column("digit"),
                         "confidence": table.column("confidence"),
                         **{f"p{d}": pc.list_element(probabilities, d) for d in range(10)},
                         "is_digit": pc.cast(table.column("is_digit"), pa.int8()),
                         "digit_score": table.column("digit_score"), "error": table.column("error")})
        if self.writer is None:
            self.writer = arrow_csv.CSVWriter(self.stream, flat.schema)
        self.writer.write_table(flat)

    def close(self):
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- the job

def run(settings):
    """List, classify and write; return a Summary. Ray is started here and shut down at the end.

    Raises:
        BulkError for a bad input or output, a model that cannot be loaded, or no cluster.
    """
    check_output(settings)
    files = list_files(settings.inputs, settings.recursive)
    model = model_name(settings.model)
    import ray

    begin = time.perf_counter()
    try:
        cpus = start_ray(settings)
        ray_start = time.perf_counter() - begin
        count, failed = write_output(build_dataset(files, model, cpus), settings.output)
    except ray.exceptions.RayError as error:  # a worker killed (out of memory, say), a node lost...
        raise BulkError(f"the Ray job failed ({first_line(error)}); {settings.output} was not written") from None
    finally:
        ray.shutdown()
    return Summary(count, failed, ray_start, time.perf_counter() - begin - ray_start)


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def model_name(model):
    """The model file as the actors find it: relative to this code's folder when inside it.

    Loaded here first, so that a bad file is one error line before any Ray starts.
    """
    path = Path(model).resolve()
    if path.suffix != ".tflite":
        raise BulkError(f"--model {model}: bulk.py runs LiteRT .tflite models")
    try:
        load_classifier(path)
    except ModelError as error:
        raise BulkError(str(error)) from None
    try:
        return str(path.relative_to(inference.HERE))
    except ValueError:
        return str(path)


def write_output(dataset, output):
    """Stream the dataset's rows, in order, into the output file; return (rows, rows with an error)."""
    count = failed = 0
    with atomic_output(output) as stream:
        writer = table_writer(output, stream)
        try:
            for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer.write_table(table.cast(output_schema()))
                count += table.num_rows
                failed += table.num_rows - table.column("error").null_count
        finally:
            writer.close()
    return count, failed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Classify the digit in every image of folders, globs or buckets, on Ray.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders and globs; local, or URIs pyarrow reads (s3://, gs://, file://)")
    parser.add_argument("-o", "--output", required=True,
                        help="the output file: .parquet or .csv, local or a URI")
    parser.add_argument("-r", "--recursive", action="store_true", help="also the images in subfolders")
    parser.add_argument("--address", help="a Ray cluster to join: auto, or ray://HOST:10001 (default: a local Ray)")
    parser.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: every core)")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="a .tflite model file")
    parser.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    args = parser.parse_args(argv)
    if args.cpus is not None and args.cpus < 1:
        parser.error("--cpus must be at least 1")
    if args.cpus is not None and args.address:
        parser.error("--cpus sets up a local Ray; a cluster joined with --address has its own")
    return Settings(args.inputs, args.output, args.recursive, args.address, args.cpus, args.model, args.overwrite)


def main(argv=None):
    settings = parse_args(argv)
    if not settings.address:
        # A local cluster gets an authentication token, as by Ray's default, but said here, before
        # Ray reads its configuration, so that it does not warn about it on every run.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit(INSTALL_RAY)
    if pa is None:
        sys.exit(INSTALL_RAY)
    decode.use_own_limits()
    try:
        summary = run(settings)
    except BulkError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # writing the output failed (disk full, say): the old file is untouched
        sys.exit(f"error: --output {settings.output}: cannot write it ({decode.describe(error)})")
    rate = summary.images / max(summary.seconds, 1e-9)
    print(f"{summary.images:,} images, {summary.errors:,} errors, {summary.seconds:.2f} s, {rate:,.0f} images/s "
          f"(Ray started in {summary.ray_start_s:.2f} s); wrote {settings.output}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ray is shut down and the temporary output gone by now
        # Exit at once: interrupted, Ray Data's executor thread can crash the interpreter's
        # teardown (a segfault after everything was cleaned up, about one exit in ten here).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)

"""Recognise handwritten digits in images with the trained model.

    python inference.py                                # every image in sample_test_image/
    python inference.py scans/ --recursive --format csv > digits.csv
    python inference.py --number photo.jpg             # photo.jpg: 472 (96.1%)

    from inference import predict, predict_each, read_number
    predict("digit.png")            # Prediction(digit=3, confidence=0.998, probabilities=(...), is_digit=True, ...)
    predict(["a.png", array])       # a list of Predictions; raises the first ImageError
    for outcome in predict_each(paths):   # any number of images, lazily: a bad one is an
        outcome.prediction or outcome.error #   Outcome with its error, the rest go on
    read_number("photo.jpg")        # NumberReading(text="472", digits=(DigitReading, ...), confidence)

One pipeline for every caller (this CLI, the web app, --explain): decode.py reads any
input into a small 8-bit picture, preprocess.py brings it to MNIST's form, parallel.py
spreads that over the cores for many inputs, and classifier.py runs the model in
batches on LiteRT, without TensorFlow. number.py splits an image of a whole number
into digits that go through the same steps. The default model is the int8-weight export
(mnist_cnn_int8.tflite); --model mnist_cnn.tflite runs the float one.
"""

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np

import decode
import explain
import number
import parallel
from classifier import DIGIT_THRESHOLD, KerasClassifier, ModelError, Prediction, cores, load_classifier, predictions_of
from cli import OneLineParser
from errors import ImageError, ImageTooLargeError, NoDigitError, UnreadableImageError
from number import DigitReading, NumberReading
from preprocess import Trace

__all__ = ["predict", "predict_each", "read_number", "read_numbers", "Prediction", "Outcome", "NumberReading",
           "DigitReading", "ImageError", "UnreadableImageError", "ImageTooLargeError", "NoDigitError", "ModelError",
           "DEFAULT_MODEL", "FLOAT_MODEL"]

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "mnist_cnn_int8.tflite"  # int8 weights: 2.5x faster, same test accuracy (README)
FLOAT_MODEL = HERE / "mnist_cnn.tflite"
DEFAULT_IMAGES = HERE / "sample_test_image"
# Below this the CLI flags a prediction as unsure. The probabilities are calibrated, so this is
# the chance of being right; chosen on realistic renderings of validation digits (bench.calibration):
# it flags 1.6% of them, and 0.6% of the rest are wrong (1.4% of all).
LOW_CONFIDENCE = 0.9
MAX_WORKERS = 256  # processes; more would only exhaust memory (each takes ~55 MB)
EXPLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what --explain can write


class Outcome(NamedTuple):
    """What became of one input of predict_each(): a prediction or an error."""

    source: object  # the input as given (a path, array, ...)
    prediction: Optional[Prediction]
    error: Optional[ImageError]  # an UnreadableImageError or a NoDigitError
    trace: Optional[Trace]  # the preprocessing steps, for the first `traces` inputs


def predict(images, model=None, digit_threshold=DIGIT_THRESHOLD):
    """Classify one image, or a list of images as batches across all cores.

    Args:
        images: a path, bytes, binary file, PIL image or NumPy array (HxW or HxWxC,
            any size and numeric dtype); or a list or tuple of these, or an
            N x 28 x 28 array (N images), which give a list.
        model: None for the shipped model, a model file (.tflite or .keras) or a keras.Model.
        digit_threshold: a digit score below this marks the image as not a digit (is_digit
            False): higher flags more non-digits and more digits too (README: Not a digit).
    Returns:
        a Prediction, or a list of them.
    Raises:
        UnreadableImageError or NoDigitError (both ImageError) for the first input that
        fails (predict_each() goes on past bad inputs); ModelError when the model cannot be loaded.
    """
    classifier = get_classifier(model)
    if not is_many(images):
        prepared = parallel.prepare(images)
        if prepared.error is not None:
            raise prepared.error
        return predictions_of(classifier, prepared.image[None], digit_threshold, [prepared.rivals])[0]
    predictions = []
    for batch, batch_predictions in classify(images, classifier, digit_threshold=digit_threshold):
        error = next((e for e in batch.errors if e is not None), None)
        if error is not None:
            raise error
        predictions += batch_predictions
    return predictions


def predict_each(images, model=None, workers=None, traces=0, digit_threshold=DIGIT_THRESHOLD) -> Iterator[Outcome]:
    """Classify any number of images lazily, in order: one Outcome per image.

    A bad image gives an Outcome with its error and no prediction; the rest go on.
    Preprocessing runs across `workers` processes (default: one per core) and the
    model in batches, so memory stays flat however many images there are.

    Args:
        images: an iterable (read lazily) of what predict() takes for one image, or an N x 28 x 28 array.
        model: as for predict().
        workers: processes for decoding and preprocessing (1: all in this process).
        traces: how many of the first images also get a Trace of their preprocessing steps.
        digit_threshold: as for predict().
    """
    for batch, predictions in classify(images, get_classifier(model), workers, traces, digit_threshold):
        predictions = iter(predictions)
        for source, error, trace in zip(batch.sources, batch.errors, batch.traces):
            yield Outcome(source, None if error else next(predictions), error, trace)


def read_number(image, model=None, name=None, max_pixels=decode.MAX_PIXELS, max_megabytes=decode.MAX_DECODE_MB,
                reserve=None):
    """Read a whole handwritten number (1 to about 12 digits on one line) in one image.

    The image is split into digits (number.py: connected pieces, broken digits joined,
    touching ones cut where the classifier reads the parts best), each brought to MNIST's
    form as predict() does and all classified in one batch. An image of one digit gives
    the digit predict() gives.

    Args:
        image: what predict() takes for one image (a path, bytes, file, PIL image or array).
        model: as for predict().
        name: how error messages name the image (default: its path, or "the image").
        max_pixels, max_megabytes, reserve: decode.decode()'s limits, for every decoding of the image.
    Returns:
        a NumberReading: `text` (the digits, leading zeros kept), `digits` (a DigitReading
        per digit: its Prediction and its `box`, (x0, y0, x1, y1) in the image's own pixels,
        upright after EXIF rotation) and `confidence`, the product of the digits' confidences.
    Raises:
        UnreadableImageError or NoDigitError (both ImageError); ModelError.
    """
    limits = dict(max_pixels=max_pixels, max_megabytes=max_megabytes, reserve=reserve)
    return number.read(image, get_classifier(model), name, limits)


def read_numbers(images, model=None):
    """read_number() for each image of a list or other iterable; raises the first image's error."""
    classifier = get_classifier(model)
    return [number.read(image, classifier) for image in images]


def classify(images, classifier, workers=None, traces=0, digit_threshold=DIGIT_THRESHOLD):
    """Yield (Batch, its Predictions in order, skipping failed inputs) for many images."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]  # N x 28 x 28 x 1, as Keras takes them
    quiet = getattr(classifier, "lock", contextlib.nullcontext())  # no batch runs while workers fork
    for batch in parallel.prefetched(parallel.prepare_many(images, workers, traces, quiet)):
        good = [i for i, error in enumerate(batch.errors) if error is None]
        whole = len(good) == len(batch.errors)
        images, rivals = (batch.images, batch.rivals) if whole else (batch.images[good], batch.rivals[good])
        yield batch, predictions_of(classifier, images, digit_threshold, rivals) if good else []


def is_many(images):
    # type() rather than isinstance(): a decoded Picture is a NamedTuple, and one image
    return isinstance(images, list) or type(images) is tuple or (
        isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.shape[1:3] == (28, 28)
        and (images.ndim == 3 or images.shape[3] == 1))


def get_classifier(model):
    """The classifier for predict()'s `model` argument (loaded once per file)."""
    if model is None:
        return load_classifier(DEFAULT_MODEL)
    if isinstance(model, (str, os.PathLike)):
        return load_classifier(os.path.abspath(model))
    if callable(model) and not hasattr(model, "predict"):  # already a classifier
        return model
    return KerasClassifier(model)


# ----------------------------------------------------------------------------- the command line

class FolderError(UnreadableImageError):
    """A folder given on the command line has no images or cannot be listed."""


def expand_paths(paths, recursive=False):
    """Yield image files, lazily: each file as given, each folder's images in name order.

    A folder without images, or one that cannot be listed, is yielded as a FolderError.
    """
    for path in map(Path, paths):
        if not path.is_dir():
            yield path
            continue
        found = False
        for item in folder_images(path, recursive):
            found = True
            yield item
        if not found:
            kind = "images" if not recursive else "images in it or below it"
            yield FolderError(f"{path}: no {kind} ({', '.join(sorted(decode.SUFFIXES))})")


def folder_images(folder, recursive):
    """A folder's image files in name order (subfolders after files, when recursive).

    Hidden files and folders (a leading dot: editors' backups, a training run's staging)
    are left out, as ls and most tools do.
    """
    try:
        with os.scandir(folder) as entries:
            names = sorted((entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries)
    except OSError as error:
        yield FolderError(f"{folder}: cannot list this folder ({error.strerror or error})")
        return
    names = [(name, is_dir) for name, is_dir in names if not name.startswith(".")]  # hidden: not the user's images
    for name, is_dir in names:
        if not is_dir and os.path.splitext(name)[1].lower() in decode.SUFFIXES:
            yield folder / name
    if recursive:  # symbolic links to folders are not followed: no loops
        for name, is_dir in names:
            if is_dir:
                yield from folder_images(folder / name, recursive)


def default_images():
    """sample_test_image/, named relative to the current folder when it lies inside it."""
    try:
        return [str(DEFAULT_IMAGES.relative_to(Path.cwd()))]
    except ValueError:
        return [str(DEFAULT_IMAGES)]


class Writer:
    """Writes one row per input to stdout as text, JSON lines or CSV; errors also go to stderr."""

    def __init__(self, form, out=sys.stdout):
        self.form, self.out = form, out
        self.csv = csv.writer(out, lineterminator="\n") if form == "csv" else None
        if self.csv:
            self.csv.writerow(["path", "digit", "confidence", *(f"p{d}" for d in range(10)), "is_digit",
                               "digit_score", "error"])

    def write(self, path, prediction, error):
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        if self.form == "text":
            if prediction is not None:
                self.out.write(f"{path}: {verdict(prediction)}\n")
        elif self.form == "jsonl":
            row = {"path": str(path)}
            if prediction is not None:
                row.update(digit=prediction.digit, confidence=round(prediction.confidence, 6),
                           probabilities=[round(p, 6) for p in prediction.probabilities],
                           is_digit=prediction.is_digit, digit_score=score_of(prediction))
            else:
                row["error"] = str(error)
            self.out.write(json.dumps(row) + "\n")
        elif prediction is not None:
            self.csv.writerow([path, prediction.digit, f"{prediction.confidence:.6f}",
                               *(f"{p:.6f}" for p in prediction.probabilities),
                               "" if prediction.is_digit is None else int(prediction.is_digit),
                               "" if prediction.is_digit is None else f"{prediction.digit_score:.6f}", ""])
        else:
            self.csv.writerow([path, "", "", *[""] * 10, "", "", str(error)])


def verdict(prediction):
    """The text line's reading: '7 (99.2%)', '7 (61.0%)  (low confidence)' or 'not a digit (best guess 4, 31.0%)'."""
    if prediction.is_digit is False:
        return f"not a digit (best guess {prediction.digit}, {prediction.confidence:.1%})"
    unsure = "  (low confidence)" if prediction.confidence < LOW_CONFIDENCE else ""
    return f"{prediction.digit} ({prediction.confidence:.1%}){unsure}"


def score_of(prediction):
    return None if prediction.digit_score is None else round(prediction.digit_score, 6)


class NumberWriter:
    """Writes one row per input for --number: text, JSON lines (with each digit) or CSV."""

    def __init__(self, form, out=sys.stdout):
        self.form, self.out = form, out
        self.csv = csv.writer(out, lineterminator="\n") if form == "csv" else None
        if self.csv:
            self.csv.writerow(["path", "number", "confidence", "error"])

    def write(self, path, reading, error):
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
        if self.form == "text":
            if reading is not None:
                unsure = "  (low confidence)" if is_unsure(reading) else ""
                self.out.write(f"{path}: {reading.text} ({reading.confidence:.1%}){unsure}\n")
        elif self.form == "jsonl":
            row = {"path": str(path)}
            if reading is not None:
                row.update(number=reading.text, confidence=round(reading.confidence, 6),
                           digits=[{"digit": d.prediction.digit, "confidence": round(d.prediction.confidence, 6),
                                    "box": list(d.box), "probabilities": [round(p, 6) for p in d.prediction.probabilities]}
                                   for d in reading.digits])
            else:
                row["error"] = str(error)
            self.out.write(json.dumps(row) + "\n")
        elif reading is not None:
            self.csv.writerow([path, reading.text, f"{reading.confidence:.6f}", ""])
        else:
            self.csv.writerow([path, "", "", str(error)])


def is_unsure(reading):
    """A number is unsure when one of its digits is (its own confidence is the product of all of them)."""
    return any(d.prediction.confidence < LOW_CONFIDENCE for d in reading.digits)


def number_outcomes(images, classifier, traces=0):
    """Yield (source, NumberReading or None, ImageError or None, NumberTrace or None) per image, in order."""
    for index, image in enumerate(images):
        trace = number.NumberTrace() if index < traces else None
        try:
            yield image, number.read(image, classifier, trace=trace), None, trace
        except ImageError as error:
            yield image, None, error, trace


def parse_args(argv=None):
    parser = OneLineParser(description="Recognise the handwritten digit in each image.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="*", help="image files and folders (default: sample_test_image/)")
    parser.add_argument("--format", choices=("text", "jsonl", "csv"), default="text",
                        help="output: 'path: digit (confidence)' lines, JSON lines or CSV, one row per image")
    parser.add_argument("--number", action="store_true",
                        help="read each image as a whole number of one or more digits ('path: 472 (confidence)'; "
                             "jsonl adds each digit with its box)")
    parser.add_argument("--json", action="store_const", const="jsonl", dest="format", help="the same as --format jsonl")
    parser.add_argument("-r", "--recursive", action="store_true", help="also classify the images in subfolders")
    parser.add_argument("--model", default=str(DEFAULT_MODEL),
                        help=f"a .tflite or .keras model file ({FLOAT_MODEL.name}: the float model)")
    parser.add_argument("--digit-threshold", type=float, default=DIGIT_THRESHOLD, metavar="T",
                        help="an image whose 'is this one digit?' score is below T is reported as not a digit "
                             "(0 turns the check off; higher flags more non-digits, and more digits)")
    parser.add_argument("--workers", type=int, default=cores(),
                        help="processes that decode and preprocess (1: no extra processes)")
    parser.add_argument("--explain", metavar="OUT.png",
                        help=f"also draw each preprocessing step and the probabilities, one row per image "
                             f"(the first {explain.MAX_ROWS}), into this picture (.png, .jpg, .pdf or .svg); "
                             "with --number: each digit's box and its 28x28 model input")
    args = parser.parse_args(argv)
    if not 0 <= args.digit_threshold <= 1:  # also refuses nan
        parser.error(f"--digit-threshold must be 0-1, not {args.digit_threshold}")
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1-{MAX_WORKERS}, not {args.workers}")
    if args.explain:
        folder = os.path.dirname(os.path.abspath(args.explain))
        if Path(args.explain).suffix.lower() not in EXPLAIN_SUFFIXES:
            parser.error(f"--explain {args.explain}: the picture's name must end in {', '.join(EXPLAIN_SUFFIXES)}")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"--explain {args.explain}: cannot write into {folder}")
    return args


def main(argv=None):
    args = parse_args(argv)
    decode.use_own_limits()
    try:
        classifier = get_classifier(args.model)
    except ModelError as error:
        sys.exit(f"error: {error}")
    start, count, failed = time.perf_counter(), 0, 0
    explained = []
    paths = expand_paths(args.paths or default_images(), args.recursive)
    folder_errors = []

    def images():  # folder errors are reported in place and not classified
        for item in paths:
            if isinstance(item, FolderError):
                folder_errors.append(item)
                print(f"error: {item}", file=sys.stderr)
            else:
                yield item

    traces = explain.MAX_ROWS if args.explain else 0
    if args.number:
        writer, outcomes = NumberWriter(args.format), number_outcomes(images(), classifier, traces)
    else:
        writer = Writer(args.format)
        outcomes = ((o.source, o.prediction, o.error, o.trace)
                    for o in predict_each(images(), classifier, args.workers, traces, args.digit_threshold))
    with progress_bar() as bar:
        try:
            for source, result, error, trace in outcomes:
                writer.write(source, result, error)
                count += 1
                failed += error is not None
                if count <= traces:
                    explained.append((source, result or error, trace))
                bar.update()
        except ModelError as error:  # the model loaded but gives no usable output
            sys.exit(f"error: {args.model}: {error}")
    sys.stdout.flush()
    seconds = time.perf_counter() - start
    failed += len(folder_errors)
    print(f"{count} images, {failed} errors, {seconds:.2f} s, {count / max(seconds, 1e-9):,.0f} images/s",
          file=sys.stderr)
    if args.explain:
        try:
            draw = explain.write_number_figure if args.number else explain.write_figure
            drawn = draw(explained, args.explain, LOW_CONFIDENCE)
        except ImportError:
            sys.exit("error: --explain needs matplotlib (pip install -r requirements-inference.txt)")
        except (OSError, ValueError) as error:
            sys.exit(f"error: cannot write {args.explain} ({error})")
        print(f"wrote {args.explain} ({drawn} of {count} images)", file=sys.stderr)
    sys.exit(1 if failed else 0)


def progress_bar():
    """A tqdm bar on stderr when it is a terminal and the job takes more than a second, else nothing."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext(NoBar())
    from tqdm import tqdm

    return tqdm(unit=" images", delay=1.0, file=sys.stderr, leave=False)


class NoBar:
    def update(self, n=1):
        pass


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)

"""The model as one object: a batch of 28x28 images in, ten probabilities per image out.

    classifier = load_classifier("mnist_cnn_int8.tflite")
    classifier(images)  # N x 28 x 28 (or N x 28 x 28 x 1), 0-255 -> N x 10 float32
    classifier.digit_scores(images)  # N "is this one digit?" scores, 0-1 (None without a detector)
    predictions_of(classifier, images)  # -> a Prediction each, with the detector's verdict

A .tflite file runs on LiteRT (no TensorFlow), with as many threads as this process
may use cores; a .keras file or a keras.Model runs on Keras (needs TensorFlow). The
"not a digit" detector (not_digit.tflite, fitted by detector.py and shipped with the code)
is loaded with any model and runs on LiteRT whichever the classifier is.
"""

import contextlib
import functools
import os
import sys
import threading
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

BATCH = 64  # images per LiteRT invoke: the fastest size measured for this network on 2 cores
SHIPPED = "shipped"  # Classifier.verifier: the segment verifier shipped with the code (segment_verifier())
# A digit scores at least this: detector.py folds the threshold chosen on validation digits into
# the detector's last bias, so that 0.5 flags about 1% of realistic digits (README: Not a digit).
DIGIT_THRESHOLD = 0.5
# More ink than this beside the digit, in pieces clear of the border that could each be a digit
# (as a share of the digit's own ink, pieces.py), is several digits or writing: not one digit.
MAX_RIVALS = 0.3


class Prediction(NamedTuple):
    """One image's classification."""

    digit: int  # the best guess, also when the image is not a digit
    confidence: float  # its probability (calibrated: of readings at 0.9, about 9 in 10 are right)
    probabilities: tuple  # ten floats, one per digit, summing to 1
    is_digit: Optional[bool] = None  # False: not a single handwritten digit; None: no detector
    digit_score: Optional[float] = None  # the detector's score, 0-1; is_digit is score >= the threshold


def to_predictions(probabilities, digit_scores=None, digit_threshold=DIGIT_THRESHOLD, rivals=None):
    """N x 10 probabilities (a classifier's output) -> N Predictions.

    With the detector's N digit scores, each gets is_digit(scores, rivals, digit_threshold).
    """
    digits, rows = probabilities.argmax(axis=1).tolist(), probabilities.tolist()
    if digit_scores is None:
        return [Prediction(digit, row[digit], tuple(row)) for digit, row in zip(digits, rows)]
    verdicts = is_digit(digit_scores, rivals, digit_threshold).tolist()
    return [Prediction(digit, row[digit], tuple(row), verdict, score)
            for digit, row, verdict, score in zip(digits, rows, verdicts, np.asarray(digit_scores, np.float64).tolist())]


def is_digit(digit_scores, rivals=None, digit_threshold=DIGIT_THRESHOLD):
    """N booleans: the score is at least `digit_threshold` and (given the preprocessing's N
    `rivals`) no more than MAX_RIVALS of ink lies beside the digit in digit-sized pieces."""
    verdicts = np.asarray(digit_scores) >= digit_threshold
    return verdicts if rivals is None else verdicts & (np.asarray(rivals) <= MAX_RIVALS)


def predictions_of(classifier, images, digit_threshold=DIGIT_THRESHOLD, rivals=None):
    """The Predictions of N 28x28 model inputs: `classifier`'s probabilities and, when it has a
    detector, its verdict (any callable giving N x 10 probabilities will do)."""
    scores = classifier.digit_scores(images) if hasattr(classifier, "digit_scores") else None
    return to_predictions(classifier(images), scores, digit_threshold, rivals)


class ModelError(RuntimeError):
    """The model file is missing or cannot be loaded."""


class Classifier:
    """A LiteRT interpreter for a .tflite model; call it on a batch of images.

    `width` is the values per image it gives: 10 probabilities (the classifier), 1 score (the detector).
    """

    detector = None  # a Classifier of width 1, set by load_classifier
    verifier = SHIPPED  # read_number()'s segment verifier: SHIPPED (verifier.py's file, loaded on first use) or None
    temperature = 1.0  # the calibration folded into it (set by load_classifier)

    def __init__(self, path, threads=None, width=10):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = threads or cores()
        self.make = lambda: Interpreter(model_path=str(path), num_threads=self.threads)
        probe = self.make()  # reads the file now, so that a bad one fails here
        inputs, outputs = probe.get_input_details(), probe.get_output_details()
        check_signature([tuple(d["shape"]) for d in inputs], [tuple(d["shape"]) for d in outputs], width)
        self.width = width
        self.input = inputs[0]["index"]
        self.output = outputs[0]["index"]
        # One interpreter per batch size, each allocated once when first needed: BATCH, and
        # powers of two for a last, partial batch (padded up), so any batch size costs at
        # most seven allocations in a process's life.
        self.interpreters = {1: probe}
        with native_stderr_silenced():  # LiteRT logs an INFO line on its first allocation
            self.resize(probe, 1)
        self.lock = threading.Lock()  # an interpreter runs one batch at a time

    def resize(self, interpreter, size):
        interpreter.resize_tensor_input(self.input, (size, 28, 28, 1))
        interpreter.allocate_tensors()

    def interpreter(self, size):
        if size not in self.interpreters:
            self.interpreters[size] = self.make()
            self.resize(self.interpreters[size], size)
        return self.interpreters[size]

    def __call__(self, images):
        images = np.asarray(images, np.float32).reshape(-1, 28, 28, 1)
        out = np.empty((len(images), self.width), np.float32)
        with self.lock:
            for start in range(0, len(images), BATCH):
                chunk = images[start:start + BATCH]
                size = min(BATCH, 1 << (len(chunk) - 1).bit_length())  # the power of two that holds it
                if size > len(chunk):
                    chunk = np.concatenate([chunk, np.zeros((size - len(chunk), 28, 28, 1), np.float32)])
                interpreter = self.interpreter(size)
                interpreter.set_tensor(self.input, chunk)
                interpreter.invoke()
                out[start:start + BATCH] = interpreter.get_tensor(self.output)[:len(images) - start]
        return finite(out)

    def digit_scores(self, images):
        """The detector's score of each image (N floats, 0-1), or None when there is no detector."""
        return None if self.detector is None else self.detector(images)[:, 0]

    def segment_scores(self, images):
        """The segment verifier's score of each candidate digit (N floats, 0-1), or None without one."""
        verifier = shipped_verifier() if self.verifier is SHIPPED else self.verifier
        if verifier is None:
            return None
        with getattr(self, "lock", contextlib.nullcontext()):  # "no batch while workers fork" covers it too
            return verifier(images)[:, 0]


class KerasClassifier:
    """A Keras model (object or .keras file); needs TensorFlow."""

    def __init__(self, model):
        if not hasattr(model, "predict"):
            from tflog import filter_native_logs

            filter_native_logs()  # TensorFlow's C++ start-up lines
            try:
                import keras
            except ImportError:
                raise ModelError(f"{model}: a .keras model needs TensorFlow (pip install -r requirements.txt); "
                                 "the .tflite models run without it") from None
            check_keras_archive(model)
            model = keras.saving.load_model(model, compile=False)
            check_signature([tuple(model.input_shape)], [tuple(model.output_shape)])
        self.model = model

    detector = None
    verifier = SHIPPED
    temperature = 1.0
    digit_scores = Classifier.digit_scores
    segment_scores = Classifier.segment_scores

    def __call__(self, images):
        images = np.asarray(images, np.float32).reshape(-1, 28, 28, 1)
        return finite(np.asarray(self.model.predict(images, verbose=0, batch_size=256)))


MAX_KERAS_MB = 200  # what a .keras archive may expand to (ours: 4 MB); more is a zip bomb, not a digit model


def check_keras_archive(path):
    """Refuse a .keras file that is no zip archive or that would expand to far more than a model."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            expanded = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise ModelError(f"not a .keras archive ({error})") from None
    if expanded > MAX_KERAS_MB * 2**20:
        raise ModelError(f"the archive would expand to {expanded / 2**20:,.0f} MB; a digit model takes a few")


def finite(probabilities):
    """The model's output, or ModelError when it holds NaN or infinity (a broken or diverged model)."""
    if not np.isfinite(probabilities).all():
        raise ModelError("the model gives non-finite probabilities (NaN or infinity): its weights are broken")
    return probabilities


def check_signature(input_shapes, output_shapes, width=10):
    """Raise ModelError unless the model takes one 28x28x1 batch and gives `width` values per image."""
    def fits(shapes, want):
        return len(shapes) == 1 and len(shapes[0]) == len(want) and all(
            w is None or d == w or d in (None, -1) for d, w in zip(shapes[0], want))

    if not fits(input_shapes, (None, 28, 28, 1)) or not fits(output_shapes, (None, width)):
        what = "ten probabilities" if width == 10 else "one score"
        raise ModelError(f"not a digit model: it takes {input_shapes} and gives {output_shapes}, "
                         f"not 28x28x1 images and {what}")


@functools.lru_cache(maxsize=4)
def load_classifier(path):
    """Load a .tflite (LiteRT) or .keras model file once per process, with the shipped "not a digit"
    detector when it is installed; raise ModelError if either cannot be loaded."""
    from outputs import complete_interrupted

    path = Path(path)
    complete_interrupted(path.parent)  # a training run killed while it replaced this model set
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (train one with: python train.py)")
    classifier = opened(path, KerasClassifier if path.suffix == ".keras" else Classifier)
    classifier.detector = shipped_detector()
    if classifier.detector is not None and hasattr(classifier, "lock"):
        classifier.detector.lock = classifier.lock  # "no batch while workers fork" covers both
    classifier.temperature = folded_temperature(path)
    return classifier


def shipped_detector(threads=None):
    """The "not a digit" detector shipped with the code (detector.py), as shipped_scorer() loads it."""
    from detector import DETECTOR_FILE

    return shipped_scorer(DETECTOR_FILE, threads)


def segment_verifier():
    """read_number()'s segment verifier shipped with the code (verifier.py), as shipped_scorer() loads it."""
    from verifier import VERIFIER_FILE

    return shipped_scorer(VERIFIER_FILE)


def shipped_scorer(path, threads=None):
    """A network shipped with the code that scores each 28x28 input 0-1 (a Classifier of width 1),
    or None when its file is missing; raise ModelError if it cannot be loaded."""
    return opened(path, functools.partial(Classifier, threads=threads, width=1)) if path.is_file() else None


# predict() never needs it: loaded when read_number() first does, once per process, for any model
shipped_verifier = functools.lru_cache(maxsize=1)(segment_verifier)


def folded_temperature(path):
    """The temperature train.py folded into this model, from the metrics.json of its set (1: none known).

    number.py's split scoring was fitted on the probabilities before calibration and undoes it.
    """
    import json

    try:
        metrics = json.loads((path.parent / "metrics.json").read_text())
        if path.name in metrics.get("files", {}):
            return float(metrics["calibration"]["temperature"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no set, or an older one: the probabilities are taken as they are
    return 1.0


def opened(path, make):
    """make(path), tried on one blank image: a model that gives NaN is refused now, not per image."""
    try:
        model = make(path)
        model(np.zeros((1, 28, 28), np.float32))
        return model
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from None
    except Exception as error:  # the runtimes raise many types for a bad file
        message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path}: cannot load the model ({message})") from None


def cores():
    """The cores this process may run on (all of them where the OS cannot say)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def native_stderr_silenced():
    """Discard what C++ code writes to stderr (file descriptor 2) inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

"""The model as one object: a batch of 28x28 images in, ten probabilities per image out.

    classifier = load_classifier("mnist_cnn_int8.tflite")
    classifier(images)  # N x 28 x 28 (or N x 28 x 28 x 1), 0-255 -> N x 10 float32
    to_predictions(classifier(images))  # -> a Prediction (digit, confidence, probabilities) each

A .tflite file runs on LiteRT (no TensorFlow), with as many threads as this process
may use cores; a .keras file or a keras.Model runs on Keras (needs TensorFlow).
"""

import contextlib
import functools
import os
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

BATCH = 64  # images per LiteRT invoke: the fastest size measured for this network on 2 cores


class Prediction(NamedTuple):
    """One image's classification."""

    digit: int
    confidence: float
    probabilities: tuple  # ten floats, one per digit, summing to 1


def to_predictions(probabilities):
    """N x 10 probabilities (a classifier's output) -> a list of N Predictions."""
    digits, rows = probabilities.argmax(axis=1).tolist(), probabilities.tolist()
    return [Prediction(digit, row[digit], tuple(row)) for digit, row in zip(digits, rows)]


class ModelError(RuntimeError):
    """The model file is missing or cannot be loaded."""


class Classifier:
    """A LiteRT interpreter for a .tflite model; call it on a batch of images."""

    def __init__(self, path, threads=None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        self.threads = threads or cores()
        self.make = lambda: Interpreter(model_path=str(path), num_threads=self.threads)
        probe = self.make()  # reads the file now, so that a bad one fails here
        inputs, outputs = probe.get_input_details(), probe.get_output_details()
        check_signature([tuple(d["shape"]) for d in inputs], [tuple(d["shape"]) for d in outputs])
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
        out = np.empty((len(images), 10), np.float32)
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


def check_signature(input_shapes, output_shapes):
    """Raise ModelError unless the model takes one 28x28x1 batch and gives ten values per image."""
    def fits(shapes, want):
        return len(shapes) == 1 and len(shapes[0]) == len(want) and all(
            w is None or d == w or d in (None, -1) for d, w in zip(shapes[0], want))

    if not fits(input_shapes, (None, 28, 28, 1)) or not fits(output_shapes, (None, 10)):
        raise ModelError(f"not a digit model: it takes {input_shapes} and gives {output_shapes}, "
                         "not 28x28x1 images and ten probabilities")


@functools.lru_cache(maxsize=4)
def load_classifier(path):
    """Load a .tflite (LiteRT) or .keras model file once per process; raise ModelError if it cannot be."""
    from outputs import complete_interrupted

    path = Path(path)
    complete_interrupted(path.parent)  # a training run killed while it replaced this model set
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (train one with: python train.py)")
    try:
        classifier = KerasClassifier(str(path)) if path.suffix == ".keras" else Classifier(path)
        classifier(np.zeros((1, 28, 28), np.float32))  # a model that gives NaN is refused now, not per image
        return classifier
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

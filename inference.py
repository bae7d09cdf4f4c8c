"""Recognise handwritten digits in images with the trained model.

    python inference.py                       # every image in sample_test_image/
    python inference.py digit.png more/ --json

    from inference import predict
    predict("digit.png")  # Prediction(digit=3, confidence=0.998, probabilities=(...))

Runs on the LiteRT export of the model, so classifying never imports TensorFlow.
"""

import argparse
import contextlib
import functools
import json
import os
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

import preprocess

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "mnist_cnn.tflite"
DEFAULT_IMAGES = HERE / "sample_test_image"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Below this the CLI flags a prediction as unsure. Label smoothing in training caps a clear
# digit's probability near 0.91, so 0.5 means that no digit has even half of the probability.
LOW_CONFIDENCE = 0.5


class Prediction(NamedTuple):
    digit: int
    confidence: float
    probabilities: tuple  # ten floats, one per digit, summing to 1


class ModelError(RuntimeError):
    """The model file is missing or cannot be loaded."""


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


class LiteRTModel:
    """A LiteRT interpreter that maps a batch of 28x28 images to probabilities."""

    def __init__(self, path):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.lock = threading.Lock()  # an interpreter runs one batch at a time
        with native_stderr_silenced():  # LiteRT logs an INFO line on its first allocation
            self.interpreter.allocate_tensors()

    def __call__(self, batch):
        with self.lock:
            self.interpreter.resize_tensor_input(self.input, batch.shape)
            self.interpreter.allocate_tensors()
            self.interpreter.set_tensor(self.input, batch)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.output).copy()


class KerasModel:
    """A Keras model (object or .keras file); needs TensorFlow."""

    def __init__(self, model):
        if not hasattr(model, "predict"):
            import keras

            model = keras.saving.load_model(model, compile=False)
        self.model = model

    def __call__(self, batch):
        return np.asarray(self.model.predict(batch, verbose=0))


@functools.lru_cache(maxsize=4)
def load_model(path=DEFAULT_MODEL):
    """Load a .tflite (LiteRT) or .keras model file once per process."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (train one with: python train.py)")
    try:
        return KerasModel(str(path)) if path.suffix == ".keras" else LiteRTModel(path)
    except Exception as error:  # the runtimes raise many types for a bad file
        raise ModelError(f"{path}: cannot load the model ({error})") from None


def predict(images, model=None):
    """Classify one image or a list of images.

    Args:
        images: a path, PIL image or NumPy array (HxW or HxWxC, any size and
            numeric dtype), or a list of these, which runs as one batch.
        model: None for the shipped model, a model file path (.tflite or .keras)
            or a loaded keras.Model.
    Returns:
        a Prediction, or a list of them for a list.
    Raises:
        preprocess.ImageError for an unreadable image or one with no digit;
        ModelError when the model cannot be loaded.
    """
    items = images if isinstance(images, list) else [images]
    batch = np.stack([preprocess.to_mnist(preprocess.load_image(item)) for item in items])
    probabilities = get_model(model)(batch[..., None].astype(np.float32))
    predictions = [to_prediction(p) for p in probabilities]
    return predictions if isinstance(images, list) else predictions[0]


def get_model(model):
    if model is None:
        return load_model()
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.path.abspath(model))
    return KerasModel(model)


def to_prediction(probabilities):
    probabilities = tuple(float(p) for p in probabilities)
    digit = int(np.argmax(probabilities))
    return Prediction(digit, probabilities[digit], probabilities)


def expand_paths(paths):
    """Yield image files: each file as given, each folder's images in name order.

    A folder with no images is yielded itself, for the caller to report.
    """
    for path in map(Path, paths):
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else []
        yield from images or [path]


def default_images():
    """sample_test_image/, named relative to the current folder when it lies inside it."""
    try:
        return [str(DEFAULT_IMAGES.relative_to(Path.cwd()))]
    except ValueError:
        return [str(DEFAULT_IMAGES)]


def format_prediction(path, prediction, as_json):
    if as_json:
        return json.dumps({"path": str(path), "digit": prediction.digit,
                           "confidence": round(prediction.confidence, 6),
                           "probabilities": [round(p, 6) for p in prediction.probabilities]})
    unsure = "  (low confidence)" if prediction.confidence < LOW_CONFIDENCE else ""
    return f"{path}: {prediction.digit} ({prediction.confidence:.1%}){unsure}"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Recognise the handwritten digit in each image.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="*", help="image files and folders (default: sample_test_image/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a .tflite or .keras model file")
    parser.add_argument("--explain", metavar="OUT.png",
                        help="also draw each preprocessing step and the probabilities, one row per image "
                             "(the first 12), into this PNG")
    args = parser.parse_args(argv)

    failed = False
    explained = []  # (path, Prediction or ImageError) for --explain
    for path in expand_paths(args.paths or default_images()):
        if path.is_dir():
            print(f"error: {path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder", file=sys.stderr)
            failed = True
            continue
        try:
            prediction = predict(path, model=args.model)
        except ModelError as error:
            sys.exit(f"error: {error}")
        except preprocess.ImageError as error:
            print(f"error: {error}", file=sys.stderr)
            explained.append((path, error))
            failed = True
            continue
        explained.append((path, prediction))
        print(format_prediction(path, prediction, args.json), flush=True)
    if args.explain:
        import explain  # matplotlib loads only when a picture is asked for

        drawn = explain.write_figure(explained, args.explain, LOW_CONFIDENCE)
        print(f"wrote {args.explain} ({drawn} of {len(explained)} images)", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)

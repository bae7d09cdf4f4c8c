"""Train the reference network on MNIST; write the model, its LiteRT export, metrics and history.png.

    python train.py                                   # the shipped model (downloads MNIST)
    python train.py --data ../shared/data/mnist.npz   # the same, offline

    from train import TrainConfig, train
    metrics = train(TrainConfig(data="mnist.npz", epochs=8, out_dir="runs/fast"))
"""

import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

import calibration
from cli import check_settings, parse_config, setting
from data import DataError, file_kind, load_mnist
from detector import DETECTOR_FILE, flagged_share, realistic_test_inputs
from export import export_litert, export_litert_int8, int8_metrics
from outputs import ModelSet, OutputError
from pipeline import STEPS_PER_EXECUTION, VAL_FRACTION, epoch_steps, make_train_dataset, split_validation
from plots import plot_history
from precision import Precision, choose_precision, global_policy
from tflog import filter_native_logs

# TensorFlow is imported inside the functions that use it: it takes seconds to start,
# and --help or a bad argument should answer at once.

MODEL_FILE = "mnist_cnn.keras"
LITERT_FILE = "mnist_cnn.tflite"
LITERT_INT8_FILE = "mnist_cnn_int8.tflite"  # what inference.py runs by default
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.png"
RELIABILITY_FILE = "reliability.png"
OUTPUT_FILES = (MODEL_FILE, LITERT_FILE, LITERT_INT8_FILE, METRICS_FILE, HISTORY_FILE, RELIABILITY_FILE)  # one set
BELOW_TARGET_STATUS = 3  # the exit status when the test accuracy lands below --target-accuracy


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run. The defaults reproduce the shipped model."""

    data: Optional[str] = setting(None, "a Keras-layout mnist.npz or a folder of the four IDX files; "
                                        "None downloads MNIST through Keras")
    out_dir: str = setting(".", "where the model set (model, LiteRT exports, metrics, plot) is written")
    epochs: int = setting(30, "passes over the training set: 30 fit in ~7 min on 2 cores", 1, 1000)
    batch_size: int = setting(128, "images per training step: 256 was barely faster per image", 1, 60_000)
    learning_rate: float = setting(2e-3, "peak of the warm-up + cosine schedule", 0, 1, low_open=True)
    weight_decay: float = setting(0.01, "AdamW's decoupled weight decay", 0, 1)
    label_smoothing: float = setting(0.1, "share of each target spread over the other classes", 0, 0.99)
    warmup_epochs: float = setting(1.0, "epochs of linear learning-rate warm-up", 0, 1000)
    val_fraction: float = setting(VAL_FRACTION, "share of the training set held out for validation "
                                       "(the test set is used once, at the end)", 0, 0.9, low_open=True)
    seed: int = setting(0, "seeds initialisation, the validation split, shuffling and augmentation", 0, 2**32 - 1)
    precision: str = setting("auto", "auto: whichever of float32 and mixed_bfloat16 runs a training step faster "
                                     "here, timed over a few steps at start (metrics.json records both)",
                             choices=("auto", "float32", "mixed_bfloat16"))
    augment: bool = setting(True, "augment every epoch (--no-augment: train on the digits as they are)")
    rotation: float = setting(10.0, "augmentation: max rotation, degrees", 0, 180)
    zoom: float = setting(0.1, "augmentation: max relative scale change", 0, 0.9)
    shear: float = setting(0.1, "augmentation: max shear factor", 0, 1)
    squeeze: float = setting(0.3, "augmentation: max share a digit is made narrower or flatter by (very narrow "
                                  "digits read 80 -> 90 in 100, very wide 90 -> 95, validation unchanged; 0.6 cost "
                                  "0.2 points of validation)", 0, 0.9)
    shift: float = setting(2.0, "augmentation: max translation, pixels", 0, 14)
    stroke: float = setting(0.5, "augmentation: max stroke thinning/thickening, 0-1", 0, 1)
    elastic: float = setting(0.0, "augmentation: elastic distortion's strength alpha, pixels (Simard et al. 2003, "
                                  "sigma 4); off, as 12 and 34 lowered validation (README: The recipe, and why)", 0, 100)
    realistic_renderings: int = setting(50, "realistic renderings of test digits per condition (16 conditions) that "
                                            "the calibration is measured on, never chosen on", 1, 10_000)
    target_accuracy: Optional[float] = setting(None, "a self-check, 0-1: a test accuracy below it still writes the "
                                                     f"model set, then exits with status {BELOW_TARGET_STATUS}", 0, 1)

    def __post_init__(self):
        check_settings(self)


def parse_args(argv=None):
    """The command line as a TrainConfig: one option per field, with its reason and default as help."""
    return parse_config(TrainConfig, argv, __doc__.splitlines()[0])


def epoch_timer(seconds):
    """A callback that appends the wall time of each epoch, validation included, to `seconds`."""
    import keras

    started = []
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: started.append(time.time()),
        on_epoch_end=lambda epoch, logs: seconds.append(round(time.time() - started[-1], 2)))


def compile_model(model, steps_per_epoch, config):
    import keras

    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10, decay_steps=total - warmup,
        warmup_target=config.learning_rate, warmup_steps=warmup)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        # The loss includes label smoothing; plain cross-entropy is what the test loss is.
        metrics=["accuracy", keras.metrics.CategoricalCrossentropy(name="cross_entropy")],
        steps_per_execution=min(STEPS_PER_EXECUTION, steps_per_epoch))


def evaluate(model, x, y):
    """Return test metrics: accuracy, loss, per-class accuracy and the confusion matrix."""
    probs = model.predict(x[..., None].astype("float32"), batch_size=1000, verbose=0)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (y, predicted), 1)
    loss = -np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)))
    return {
        "test_accuracy": float((predicted == y).mean()),
        "test_loss": float(loss),
        "per_class_accuracy": [float(confusion[d, d] / max(1, confusion[d].sum())) for d in range(10)],
        "confusion_matrix": confusion.tolist(),
    }


class Calibrated(NamedTuple):
    record: dict  # metrics.json's "calibration"
    curves: dict  # the reliability diagram's panels: {name: (probabilities, labels)}


def calibrate(model, x_val, y_val, x_test, y_test, realistic_test):
    """Fit a temperature T on the validation split and fold it into `model`'s last layer.

    Returns T with ECE and NLL before and after on validation, MNIST test and realistic
    renderings of test digits, and the reliability diagram's curves. The test sets are only measured.
    """
    sets = {"validation": (x_val, y_val), "mnist_test": (x_test, y_test),
            "realistic_test": realistic_test}
    found = {name: (logits(model, x), y) for name, (x, y) in sets.items()}
    temperature = calibration.fit_temperature(*found["validation"])
    fold_temperature(model, temperature)
    record = {"temperature": temperature, "bins": calibration.BINS, "fitted_on": "validation split"}
    for name, (z, y) in found.items():
        record[name] = calibration.calibration(z, y, temperature)._asdict()
    curves = {}
    for name, label in (("mnist_test", "MNIST test"), ("realistic_test", "realistic test")):
        z, y = found[name]
        curves[f"{label}, before (T = 1)"] = (calibration.softmax(z), y)
        curves[f"{label}, after (T = {temperature:.3f})"] = (calibration.softmax(z / temperature), y)
    return Calibrated(record, curves)


def logits(model, x):
    """The last Dense layer's input (the 512 penultimate features) @ W + b: the pre-softmax outputs."""
    import keras

    features = keras.Model(model.inputs, model.layers[-2].output)
    kernel, bias = model.layers[-1].get_weights()
    penultimate = features.predict(np.asarray(x, np.float32)[..., None], batch_size=1000, verbose=0)
    return penultimate.astype(np.float64) @ kernel + bias


def fold_temperature(model, temperature):
    """Divide the last Dense layer's weights and bias by `temperature`: softmax(logits / T), same layers."""
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel / np.float32(temperature), bias / np.float32(temperature)])


def detector_record(x_test, realistic_test):
    """What the shipped "not a digit" detector (detector.py) flags of this run's test digits
    and realistic renderings of them; None where it is not installed."""
    from classifier import ModelError, shipped_detector

    try:
        detector = shipped_detector()
    except ModelError as error:
        print(f"warning: {error}: metrics.json records no detector figures", file=sys.stderr)
        return None
    if detector is None:
        return None
    return {"file": DETECTOR_FILE.name, "test_digits_flagged": flagged_share(detector, x_test),
            "realistic_test_flagged": flagged_share(detector, realistic_test)}


def train(config: TrainConfig):
    """Train, evaluate on the test set once, and write the model set into config.out_dir.

    Returns the metrics (as written to metrics.json). The set's six files replace the
    old ones together, and only when everything succeeded: a run that fails, diverges or
    is killed leaves the folder's previous set as it was.
    Raises:
        OutputError, DataError (DownloadError), TrainingDiverged.
    """
    start = time.time()
    if config.data is not None:
        file_kind(config.data)  # a missing --data is reported before the output folder is touched
    with ModelSet(config.out_dir, OUTPUT_FILES) as staged:  # the folder is checked before any work
        (x_train, y_train), (x_test, y_test) = load_mnist(config.data)
        (x_train, y_train), (x_val, y_val) = split_validation(x_train, y_train, config.val_fraction, config.seed)
        config = dataclasses.replace(config, batch_size=min(config.batch_size, len(x_train)))
        realistic_test = realistic_test_inputs(x_test, y_test, config.seed, config.realistic_renderings)
        fitted = fit(config, x_train, y_train, x_val, y_val)
        final = saved_model(fitted.model)
        calibrated = calibrate(final, x_val, y_val, x_test, y_test, realistic_test)
        metrics = evaluate(final, x_test, y_test)
        metrics["calibration"] = calibrated.record
        metrics["detector"] = detector_record(x_test, realistic_test.images)
        final.save(staged.path(MODEL_FILE))
        export_litert(final, staged.path(LITERT_FILE))
        export_litert_int8(final, staged.path(LITERT_INT8_FILE))
        calibration.plot_reliability(calibrated.curves, staged.path(RELIABILITY_FILE))
        metrics.update(int8_metrics(staged.path(LITERT_INT8_FILE), staged.path(LITERT_FILE), x_test, y_test))
        plot_history(fitted.history, staged.path(HISTORY_FILE), metrics["test_accuracy"],
                     calibrated.record["mnist_test"]["nll_before"], config.label_smoothing)
        metrics.update(run_record(config, fitted, start, sizes=(len(x_train), len(x_val), len(x_test))))
        metrics["files"] = {name: sha256(staged.path(name)) for name in OUTPUT_FILES if name != METRICS_FILE}
        Path(staged.path(METRICS_FILE)).write_text(json.dumps(metrics, indent=1) + "\n")
        staged.commit()
    return metrics


class Fitted(NamedTuple):
    """What fit() returns: the trained network and how the training went."""

    model: object  # the keras.Model, with FusedBatchNormalization layers
    history: dict  # Keras's History.history: metric name -> one value per epoch
    epoch_seconds: list  # wall time of each epoch, validation included
    fit_seconds: float
    precision: Precision  # the dtype policy it trained in, and the timings it was chosen on


def fit(config, x_train, y_train, x_val, y_val):
    """Train the network on (x_train, y_train), validating on (x_val, y_val) each epoch; return Fitted.

    Raises TrainingDiverged when the loss or the weights stop being finite numbers.
    """
    import keras

    from fused_batch_norm import FusedBatchNormalization
    from model import build_model

    def compiled_model(steps_per_epoch):
        model = build_model(batch_norm=FusedBatchNormalization)
        compile_model(model, steps_per_epoch, config)
        return model

    batch = slice(0, config.batch_size)
    precision = choose_precision(config.precision, lambda: compiled_model(steps_per_epoch=1),
                                 x_train[batch, ..., None].astype("float32"), keras.utils.to_categorical(y_train[batch], 10))
    keras.utils.set_random_seed(config.seed)  # after the measurement, which draws random numbers of its own
    steps_per_epoch = epoch_steps(len(x_train), config.batch_size)
    val = (x_val[..., None].astype("float32"), keras.utils.to_categorical(y_val, 10))
    epoch_seconds = []
    with global_policy(precision.policy):
        model = compiled_model(steps_per_epoch)
        fit_start = time.time()
        history = model.fit(make_train_dataset(x_train, y_train, config), epochs=config.epochs,
                            steps_per_epoch=steps_per_epoch, validation_data=val,
                            callbacks=[epoch_timer(epoch_seconds), stop_on_divergence()],
                            shuffle=False,  # make_train_dataset shuffles each epoch itself
                            verbose=1 if sys.stdout.isatty() else 2)
        fit_seconds = time.time() - fit_start
        if not all(np.isfinite(w).all() for w in model.get_weights()):
            raise TrainingDiverged("training diverged: the weights are no longer finite numbers; "
                                   "try a lower --learning-rate")
    return Fitted(model, history.history, epoch_seconds, fit_seconds, precision)


def stop_on_divergence():
    """A Keras callback that raises TrainingDiverged as soon as the training loss is not a finite number."""
    import keras

    class StopOnDivergence(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise TrainingDiverged(f"training diverged in epoch {self.epoch + 1} (loss {float(loss)}); "
                                       "try a lower --learning-rate")

    return StopOnDivergence()


def saved_model(model):
    """A float32 copy with the stock BatchNormalization layers: it runs everywhere, and,
    never compiled, it carries no optimizer state."""
    from model import build_model

    final = build_model()
    final.set_weights(model.get_weights())
    return final


def run_record(config, fitted, start, sizes):
    """What metrics.json records about the run besides the test results."""
    import keras
    import tensorflow as tf

    train_size, val_size, test_size = sizes
    history, precision = fitted.history, fitted.precision
    return {
        "config": {**dataclasses.asdict(config), "precision": precision.policy},
        "precision": {"requested": config.precision, "chosen": precision.policy,
                      "step_seconds": precision.step_seconds},  # step_seconds: None unless measured (auto)
        "data": config.data or "keras download",
        "train_size": train_size, "val_size": val_size, "test_size": test_size,
        "val_accuracy": float(history["val_accuracy"][-1]),
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "fit_seconds": round(fitted.fit_seconds, 1),
        "epoch_seconds": fitted.epoch_seconds,
        "wall_seconds": round(time.time() - start, 1),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def sha256(path):
    """The file's SHA-256: metrics.json names the exact files it describes."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main(argv=None):
    config = parse_args(argv)
    filter_native_logs()
    try:
        metrics = train(config)
    except (DataError, OutputError, TrainingDiverged) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # the disk filled up, say: the previous set is untouched
        sys.exit(f"error: {config.out_dir}: cannot write the model set ({error.strerror or error})")
    except KeyboardInterrupt:
        sys.exit("interrupted: the folder's previous model set is untouched")
    print(f"test accuracy {metrics['test_accuracy']:.2%} (loss {metrics['test_loss']:.4f}), "
          f"wall time {metrics['wall_seconds']:.0f} s; wrote {', '.join(OUTPUT_FILES)} into {config.out_dir}")
    if config.target_accuracy is not None and metrics["test_accuracy"] < config.target_accuracy:
        print(f"below target: test accuracy {metrics['test_accuracy']:.2%} is under --target-accuracy "
              f"{config.target_accuracy:.2%}; the model set was written all the same", file=sys.stderr)
        sys.exit(BELOW_TARGET_STATUS)


if __name__ == "__main__":
    main()

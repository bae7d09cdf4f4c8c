"""Train the reference network on MNIST; write the model, its LiteRT export, metrics and history.png.

    python train.py                                   # the shipped model (downloads MNIST)
    python train.py --data ../shared/data/mnist.npz   # the same, offline

    from train import TrainConfig, train
    metrics = train(TrainConfig(data="mnist.npz", epochs=8, out_dir="runs/fast"))
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cli import OneLineParser
from data import DataError, file_kind, load_mnist
from outputs import ModelSet, OutputError
from tflog import filter_native_logs

# TensorFlow is imported inside the functions that use it: it takes seconds to start,
# and --help or a bad argument should answer at once.

MODEL_FILE = "mnist_cnn.keras"
LITERT_FILE = "mnist_cnn.tflite"
LITERT_INT8_FILE = "mnist_cnn_int8.tflite"  # what inference.py runs by default
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.png"
OUTPUT_FILES = (MODEL_FILE, LITERT_FILE, LITERT_INT8_FILE, METRICS_FILE, HISTORY_FILE)  # written as one set
STEPS_PER_EXECUTION = 16  # run 16 training steps per call into TensorFlow: less Python overhead per step


class ConfigError(ValueError):
    """A setting is out of its range."""


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite numbers."""


def setting(default, why, low=None, high=None, low_open=False, **extra):
    """A TrainConfig field: its default, the reason for it (the CLI's help) and its valid range."""
    return field(default=default, metadata={"help": why, "range": (low, high, low_open), **extra})


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
    val_fraction: float = setting(0.1, "share of the training set held out for validation "
                                       "(the test set is used once, at the end)", 0, 0.9, low_open=True)
    seed: int = setting(0, "seeds initialisation, the validation split, shuffling and augmentation", 0, 2**32 - 1)
    precision: str = setting("auto", "auto: mixed_bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), "
                                     "else float32", choices=("auto", "float32", "mixed_bfloat16"))
    augment: bool = setting(True, "augment every epoch (--no-augment: train on the digits as they are)")
    rotation: float = setting(10.0, "augmentation: max rotation, degrees", 0, 180)
    zoom: float = setting(0.1, "augmentation: max relative scale change", 0, 0.9)
    shear: float = setting(0.1, "augmentation: max shear factor", 0, 1)
    shift: float = setting(2.0, "augmentation: max translation, pixels", 0, 14)
    stroke: float = setting(0.5, "augmentation: max stroke thinning/thickening, 0-1", 0, 1)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_setting(f, getattr(self, f.name))


def check_setting(f, value):
    """Raise ConfigError unless `value` suits field `f` (its type, choices and range)."""
    option = "--" + f.name.replace("_", "-")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
    low, high, low_open = f.metadata["range"]
    if low is None:
        return
    kind = int if f.type is int else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ConfigError(f"{option} must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, not {value}")
    if value < low or value > high or (low_open and value == low):
        low_side = f"above {low}" if low_open else f"at least {low}"
        raise ConfigError(f"{option} must be {low_side} and at most {high}, not {value}")


def parse_args(argv=None):
    """The command line as a TrainConfig: one option per field, with its reason and default as help."""
    parser = OneLineParser(description=__doc__.splitlines()[0],
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        option = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                help=f.metadata["help"])
            continue
        parser.add_argument(option, type=f.type if f.type in (int, float) else str, default=f.default, help=f.metadata["help"],
                            choices=f.metadata.get("choices"))
    try:
        return TrainConfig(**vars(parser.parse_args(argv)))
    except ConfigError as error:
        parser.error(str(error))


def resolve_precision(precision):
    """Return the Keras dtype policy name for `precision` on this machine."""
    if precision != "auto":
        return precision
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def split_validation(x, y, fraction, seed):
    """Hold a random, seeded share of the training set out for validation."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def augment_batch(images, seed, config):
    """Randomly rotate, scale, shear, shift and thin/thicken a batch of 28x28x1 images.

    Stateless random ops keyed by `seed` keep a seeded run repeatable even though
    batches are augmented in parallel.
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(i, limit):
        return tf.random.stateless_uniform([n], seeds[i], -limit, limit)

    angle = uniform(0, math.radians(config.rotation))
    scale = 1.0 + uniform(1, config.zoom)
    shear = uniform(2, config.shear)
    shift_x, shift_y = uniform(3, config.shift), uniform(4, config.shift)
    # The transform maps output pixel coordinates to input ones, about the image centre.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos, -sin + shear * cos
    b0, b1 = sin, cos + shear * sin
    c = 13.5
    a2 = c - a0 * c - a1 * c - shift_x
    b2 = c - b0 * c - b1 * c - shift_y
    zeros = tf.zeros([n])
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    images = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[28, 28], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")
    # Stroke width: blend towards a 3x3 dilation (thicker) or erosion (thinner).
    amount = tf.reshape(uniform(5, config.stroke), [n, 1, 1, 1])
    thicker = tf.nn.max_pool2d(images, 3, 1, "SAME")
    thinner = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
    target = tf.where(amount > 0, thicker, thinner)
    return images + tf.abs(amount) * (target - images)


def epoch_steps(n_images, batch_size):
    """Training steps per epoch: whole batches, in whole runs of STEPS_PER_EXECUTION.

    Keras runs steps in groups of steps_per_execution; an epoch that is not a whole
    number of groups would eat into the next epoch's data. The few images left over
    differ from epoch to epoch, as each epoch is shuffled anew.
    """
    steps = n_images // batch_size
    return steps - steps % STEPS_PER_EXECUTION if steps >= STEPS_PER_EXECUTION else steps


def make_train_dataset(x, y, config):
    """A tf.data pipeline of config.epochs epochs of (pixels, one-hot labels) batches.

    Each epoch is shuffled and augmented in one vectorised step, so augmentation
    costs about a second an epoch instead of competing with training for the cores.
    """
    import tensorflow as tf

    images = tf.constant(x[..., None], dtype=tf.float32)
    labels = tf.one_hot(y, 10)

    def epoch(seed):
        shuffle_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        order = tf.random.experimental.stateless_shuffle(tf.range(len(x)), shuffle_seed)
        epoch_images = tf.gather(images, order)
        if config.augment:
            epoch_images = augment_batch(epoch_images, augment_seed, config)
        epoch_data = tf.data.Dataset.from_tensor_slices((epoch_images, tf.gather(labels, order)))
        return epoch_data.batch(config.batch_size, drop_remainder=True).take(epoch_steps(len(x), config.batch_size))

    # Exactly config.epochs epochs, and no autotuning: either an endless dataset or
    # tf.data's autotuner thread can hold fit() idle for ~15 s at the end while the
    # pipeline shuts down. The pipeline is fixed, so there is nothing to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    epoch_seeds = tf.data.Dataset.random(seed=config.seed).batch(2).take(config.epochs)
    return epoch_seeds.flat_map(epoch).prefetch(2).with_options(options)


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
        metrics=["accuracy"],
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


def export_litert(model, path):
    """Export `model` for the LiteRT interpreter, which inference.py uses instead of TensorFlow."""
    model.export(path, format="litert", verbose=False)


def export_litert_int8(model, path):
    """Export `model` for LiteRT with int8 weights (dynamic-range quantisation).

    Activations are quantised on the fly, so no calibration data is needed; on a CPU
    with VNNI the network runs about 2.5x faster than in float32 (README: Inference speed).
    The exported graph is inference_graph(model): the same function, fewer operations.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved:
        inference_graph(model).export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        Path(path).write_bytes(converter.convert())


def inference_graph(model):
    """The reference network rearranged for inference: the same function, a third fewer operations.

    Each convolutional block is Conv-ReLU-BatchNorm-MaxPool. At inference a batch norm is a
    per-channel a*x + b, and with a > 0 it commutes with the max-pool, so it runs on the
    pooled map (a quarter of the values). The second one then folds into the first Dense
    layer's weights. The converter folds the rest (the dense batch norms, the input scaling).
    Falls back to the network as it is when some a <= 0.
    """
    import keras
    from keras import layers

    rescale, conv1, norm1, _, _, conv2, norm2, _, _, flatten, dense1, *rest = model.layers
    scale1, shift1 = batch_norm_affine(norm1)
    scale2, shift2 = batch_norm_affine(norm2)
    if (scale1 <= 0).any() or (scale2 <= 0).any():
        return model
    kernel, bias = dense1.get_weights()
    cells = kernel.shape[0] // len(scale2)  # Flatten puts the channels last: 7 x 7 cells of 64
    folded = layers.Dense(dense1.units, activation=dense1.activation, name="dense_with_batch_norm")
    pixels = keras.Input(shape=model.input_shape[1:], name="pixels")
    x = layers.MaxPooling2D(2, name="pool_1")(conv1(rescale(pixels)))
    x = layers.Rescaling(scale1, shift1, name="pooled_batch_norm")(x)
    x = flatten(layers.MaxPooling2D(2, name="pool_2")(conv2(x)))
    x = folded(x)
    folded.set_weights([kernel * np.tile(scale2, cells)[:, None], bias + np.tile(shift2, cells) @ kernel])
    for layer in rest:
        x = layer(x)
    return keras.Model(pixels, x)


def batch_norm_affine(layer):
    """A BatchNormalization layer at inference as (a, b): x -> a * x + b per channel."""
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def int8_metrics(path, float_path, x, y):
    """Test accuracy of the int8 export and how often it agrees with the float one."""
    from classifier import Classifier

    int8 = Classifier(path)(x).argmax(axis=1)
    float32 = Classifier(float_path)(x).argmax(axis=1)
    return {"int8_test_accuracy": float(np.mean(int8 == y)), "int8_agreement_with_float": float(np.mean(int8 == float32))}


def plot_history(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(epochs, history[metric], "o-", label="training (augmented)")
        ax.plot(epochs, history[f"val_{metric}"], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(max(0.9, min(history["accuracy"] + history["val_accuracy"])), 1.0)
    fig.suptitle("MNIST CNN: training vs validation")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def train(config: TrainConfig):
    """Train, evaluate on the test set once, and write the model set into config.out_dir.

    Returns the metrics (as written to metrics.json). The set's five files replace the
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
        model, history, epoch_seconds, fit_seconds, policy = fit(config, x_train, y_train, x_val, y_val)
        final = saved_model(model)
        metrics = evaluate(final, x_test, y_test)
        final.save(staged.path(MODEL_FILE))
        export_litert(final, staged.path(LITERT_FILE))
        export_litert_int8(final, staged.path(LITERT_INT8_FILE))
        metrics.update(int8_metrics(staged.path(LITERT_INT8_FILE), staged.path(LITERT_FILE), x_test, y_test))
        plot_history(history, staged.path(HISTORY_FILE))
        metrics.update(run_record(config, policy, history, epoch_seconds, fit_seconds, start,
                                  sizes=(len(x_train), len(x_val), len(x_test))))
        metrics["files"] = {name: sha256(staged.path(name)) for name in OUTPUT_FILES if name != METRICS_FILE}
        Path(staged.path(METRICS_FILE)).write_text(json.dumps(metrics, indent=1) + "\n")
        staged.commit()
    return metrics


def fit(config, x_train, y_train, x_val, y_val):
    """Train the network; return (model, history dict, epoch seconds, fit seconds, dtype policy)."""
    import keras

    from fused_batch_norm import FusedBatchNormalization
    from model import build_model

    keras.utils.set_random_seed(config.seed)
    policy = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(policy)
    steps_per_epoch = epoch_steps(len(x_train), config.batch_size)
    model = build_model(batch_norm=FusedBatchNormalization)
    compile_model(model, steps_per_epoch, config)
    val = (x_val[..., None].astype("float32"), keras.utils.to_categorical(y_val, 10))
    epoch_seconds = []
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
    keras.mixed_precision.set_global_policy("float32")
    return model, history.history, epoch_seconds, fit_seconds, policy


def stop_on_divergence():
    """A callback that raises TrainingDiverged as soon as the training loss is not a finite number."""
    import keras

    def check(epoch, logs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1} (loss {float(loss)}); "
                                   "try a lower --learning-rate")

    return keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: check(check.epoch, logs),
        on_epoch_begin=lambda epoch, logs: setattr(check, "epoch", epoch))


def saved_model(model):
    """A float32 copy with the stock BatchNormalization layers: it runs everywhere, and,
    never compiled, it carries no optimizer state."""
    from model import build_model

    final = build_model()
    final.set_weights(model.get_weights())
    return final


def run_record(config, policy, history, epoch_seconds, fit_seconds, start, sizes):
    """What metrics.json records about the run besides the test results."""
    import keras
    import tensorflow as tf

    train_size, val_size, test_size = sizes
    return {
        "config": {**dataclasses.asdict(config), "precision": policy},
        "data": config.data or "keras download",
        "train_size": train_size, "val_size": val_size, "test_size": test_size,
        "val_accuracy": float(history["val_accuracy"][-1]),
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "fit_seconds": round(fit_seconds, 1),
        "epoch_seconds": epoch_seconds,
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


if __name__ == "__main__":
    main()

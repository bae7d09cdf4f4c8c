"""Train the reference network on MNIST; write the model, its LiteRT export, metrics and history.png.

    python train.py                                   # the shipped model (downloads MNIST)
    python train.py --data ../shared/data/mnist.npz   # the same, offline
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data import DataError, load_mnist

# TensorFlow is imported inside the functions that use it: it takes seconds to start,
# and --help or a bad --data path should answer at once.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODEL_FILE = "mnist_cnn.keras"
LITERT_FILE = "mnist_cnn.tflite"
LITERT_INT8_FILE = "mnist_cnn_int8.tflite"  # what inference.py runs by default
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.png"
STEPS_PER_EXECUTION = 16  # run 16 training steps per call into TensorFlow: less Python overhead per step


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="a Keras-layout mnist.npz or a folder of the four IDX files; "
                                  "None downloads MNIST through Keras")
    p.add_argument("--out-dir", default=".", help="where the model, metrics and plot are written")
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="peak of the warm-up + cosine schedule")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="share of each target spread over the other classes")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="epochs of linear learning-rate warm-up")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training set held out for validation (the test set is used once, at the end)")
    p.add_argument("--seed", type=int, default=0, help="seeds initialisation, the validation split, shuffling and augmentation")
    p.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], default="auto",
                   help="auto: mixed_bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), else float32")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train on the digits as they are; the default augments")
    p.add_argument("--rotation", type=float, default=10.0, help="augmentation: max rotation, degrees")
    p.add_argument("--zoom", type=float, default=0.1, help="augmentation: max relative scale change")
    p.add_argument("--shear", type=float, default=0.1, help="augmentation: max shear factor")
    p.add_argument("--shift", type=float, default=2.0, help="augmentation: max translation, pixels")
    p.add_argument("--stroke", type=float, default=0.5, help="augmentation: max stroke thinning/thickening, 0-1")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be at least 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must lie between 0 and 1")
    return args


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


def augment_batch(images, seed, args):
    """Randomly rotate, scale, shear, shift and thin/thicken a batch of 28x28x1 images.

    Stateless random ops keyed by `seed` keep a seeded run repeatable even though
    batches are augmented in parallel.
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(i, limit):
        return tf.random.stateless_uniform([n], seeds[i], -limit, limit)

    angle = uniform(0, math.radians(args.rotation))
    scale = 1.0 + uniform(1, args.zoom)
    shear = uniform(2, args.shear)
    shift_x, shift_y = uniform(3, args.shift), uniform(4, args.shift)
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
    amount = tf.reshape(uniform(5, args.stroke), [n, 1, 1, 1])
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


def make_train_dataset(x, y, args):
    """A tf.data pipeline of args.epochs epochs of (pixels, one-hot labels) batches.

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
        if args.augment:
            epoch_images = augment_batch(epoch_images, augment_seed, args)
        epoch_data = tf.data.Dataset.from_tensor_slices((epoch_images, tf.gather(labels, order)))
        return epoch_data.batch(args.batch_size, drop_remainder=True).take(epoch_steps(len(x), args.batch_size))

    # Exactly args.epochs epochs, and no autotuning: either an endless dataset or
    # tf.data's autotuner thread can hold fit() idle for ~15 s at the end while the
    # pipeline shuts down. The pipeline is fixed, so there is nothing to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    epoch_seeds = tf.data.Dataset.random(seed=args.seed).batch(2).take(args.epochs)
    return epoch_seeds.flat_map(epoch).prefetch(2).with_options(options)


def epoch_timer(seconds):
    """A callback that appends the wall time of each epoch, validation included, to `seconds`."""
    import keras

    started = []
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: started.append(time.time()),
        on_epoch_end=lambda epoch, logs: seconds.append(round(time.time() - started[-1], 2)))


def compile_model(model, steps_per_epoch, args):
    import keras

    total = args.epochs * steps_per_epoch
    warmup = min(int(args.warmup_epochs * steps_per_epoch), total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=args.learning_rate / 10, decay_steps=total - warmup,
        warmup_target=args.learning_rate, warmup_steps=warmup)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
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


def atomic_write(path, write):
    """Call write(tmp_path) for a temporary file beside `path`, then move it into place.

    An interrupted run so leaves the previous file untouched, never a half-written one.
    """
    folder, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=os.path.splitext(name)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_litert(model, path):
    """Export `model` for the LiteRT interpreter, which inference.py uses instead of TensorFlow."""
    def write(tmp):
        model.export(tmp, format="litert", verbose=False)
    atomic_write(path, write)


def export_litert_int8(model, path):
    """Export `model` for LiteRT with int8 weights (dynamic-range quantisation).

    Activations are quantised on the fly, so no calibration data is needed; on a CPU
    with VNNI the network runs about 2.5x faster than in float32 (README: Inference speed).
    The exported graph is inference_graph(model): the same function, fewer operations.
    """
    import tensorflow as tf

    def write(tmp):
        with tempfile.TemporaryDirectory() as saved:
            inference_graph(model).export(saved, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            Path(tmp).write_bytes(converter.convert())
    atomic_write(path, write)


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
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def train(args):
    """Train, evaluate on the test set once, and write the outputs. Returns the metrics."""
    start = time.time()
    (x_train, y_train), (x_test, y_test) = load_mnist(args.data)

    import keras
    import tensorflow as tf

    from model import build_model

    keras.utils.set_random_seed(args.seed)
    policy = resolve_precision(args.precision)
    keras.mixed_precision.set_global_policy(policy)
    (x_train, y_train), (x_val, y_val) = split_validation(x_train, y_train, args.val_fraction, args.seed)
    args.batch_size = min(args.batch_size, len(x_train))
    steps_per_epoch = epoch_steps(len(x_train), args.batch_size)

    model = build_model(fused_batch_norm=True)
    compile_model(model, steps_per_epoch, args)
    val = (x_val[..., None].astype("float32"), keras.utils.to_categorical(y_val, 10))
    epoch_seconds = []
    fit_start = time.time()
    history = model.fit(make_train_dataset(x_train, y_train, args), epochs=args.epochs,
                        steps_per_epoch=steps_per_epoch, validation_data=val, callbacks=[epoch_timer(epoch_seconds)],
                        shuffle=False,  # make_train_dataset shuffles each epoch itself
                        verbose=1 if sys.stdout.isatty() else 2)
    fit_seconds = time.time() - fit_start

    # Save a float32 copy with the stock BatchNormalization layers: it runs everywhere, and,
    # never compiled, it carries no optimizer state.
    keras.mixed_precision.set_global_policy("float32")
    final = build_model()
    final.set_weights(model.get_weights())
    metrics = evaluate(final, x_test, y_test)

    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write(os.path.join(args.out_dir, MODEL_FILE), final.save)
    export_litert(final, os.path.join(args.out_dir, LITERT_FILE))
    export_litert_int8(final, os.path.join(args.out_dir, LITERT_INT8_FILE))
    metrics.update(int8_metrics(os.path.join(args.out_dir, LITERT_INT8_FILE),
                                os.path.join(args.out_dir, LITERT_FILE), x_test, y_test))
    plot_history(history.history, os.path.join(args.out_dir, HISTORY_FILE))
    metrics.update({
        "config": {**vars(args), "precision": policy},
        "data": args.data or "keras download",
        "train_size": len(x_train), "val_size": len(x_val), "test_size": len(x_test),
        "val_accuracy": float(history.history["val_accuracy"][-1]),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "fit_seconds": round(fit_seconds, 1),
        "epoch_seconds": epoch_seconds,
        "wall_seconds": round(time.time() - start, 1),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    })
    atomic_write(os.path.join(args.out_dir, METRICS_FILE),
                 lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1) + "\n"))
    return metrics


def main(argv=None):
    args = parse_args(argv)
    try:
        metrics = train(args)
    except (DataError, OSError) as error:  # bad data, or an --out-dir that cannot be written
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: no output file is left half-written")
    print(f"test accuracy {metrics['test_accuracy']:.2%} (loss {metrics['test_loss']:.4f}), "
          f"wall time {metrics['wall_seconds']:.0f} s; wrote {args.out_dir}/{MODEL_FILE}, {LITERT_FILE}, {LITERT_INT8_FILE}, "
          f"{METRICS_FILE}, {HISTORY_FILE}")


if __name__ == "__main__":
    main()

"""The "not a digit" detector: a small CNN beside the classifier, fitted once and shipped with the code.

    python detector.py --data ../shared/data/mnist.npz    # fits it, replaces DETECTOR_FILE

    data = detector_data(((x_train, y_train), (x_val, y_val)), seed=0)
    detector, record = fit_detector(data, seed=0)  # keras model: 28x28 -> score 0-1

The classifier cannot say "none of these": trained on digits only, it maps a letter or a
doodle onto the nearest digit, often with a high probability, and its own features keep
only what tells digits apart. So a second network, a third of the classifier's arithmetic,
looks at the same 28x28 input (after predict()'s preprocessing) and learns single digits
(MNIST's training digits and realistic renderings of them) against generated non-digits
(synthetic/nondigits.py's "dev" part: letters and symbols, shapes and doodles, several
digits side by side, photo crops). Its threshold is chosen on validation digits only, so
that at most FLAG_MNIST of MNIST's validation digits and FLAG_REALISTIC of realistic
renderings of them are flagged, and folded into its last bias: a digit scores >= 0.5.
What the 28x28 crop cannot show, other digits or writing beside the one cropped, the
preprocessing measures as rival ink (pieces.py; classifier.MAX_RIVALS). Non-digits that
are flagged by that are left out of the detector's training: their crop may be one plain
digit. The held-out figures are bench.calibration's.

It sees only the image, never the classifier, so it is fitted here and not by every training
run (its data and fit took 3.7 of train.py's 14 minutes): any classifier predicts with it, as
read_number() reads with the segment verifier (verifier.py).
"""

import errno
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from classifier import DIGIT_THRESHOLD, MAX_RIVALS, cores
from cli import check_settings, parse_config, setting
from pipeline import VAL_FRACTION, split_validation

DETECTOR_FILE = Path(__file__).resolve().parent / "not_digit.tflite"

FLAG_MNIST = 0.002  # at most this share of MNIST validation digits is flagged...
FLAG_REALISTIC = 0.01  # ...and of realistic renderings of validation digits
NEGATIVES_PER_KIND = 3000  # generated non-digits of each kind to learn from: on unseen dev samples 1,000 flag 76%, 3,000 84%
RENDERINGS_PER_CONDITION = 100  # realistic renderings of training digits, per condition
MNIST_POSITIVES = 30_000  # training digits it sees (of 54,000: plenty)
EPOCHS = 20  # on unseen dev samples: 12 epochs flag 79%, 20 flag 83%, 32 flag 82% (README: Not a digit)
CHANNELS = (16, 32, 32)  # the three convolutions' channels: 1.5 M multiply-adds, a third of the classifier's
HIDDEN = 64  # the dense layer's units
CHUNK = 250  # non-digits per worker job


@dataclass(frozen=True)
class DetectorConfig:
    """Every setting of the detector's fit. The defaults reproduce the shipped DETECTOR_FILE."""

    data: Optional[str] = setting(None, "a Keras-layout mnist.npz or a folder of the four IDX files; "
                                        "None downloads MNIST through Keras")
    out: str = setting(str(DETECTOR_FILE), "the LiteRT file written (replaced only once the new one is whole)")
    seed: int = setting(0, "seeds the validation split (train.py's, at the same seed), the generated data and the fit",
                        0, 2**32 - 1)
    val_fraction: float = setting(VAL_FRACTION, "share of MNIST's training digits held out to set the threshold on "
                                       "(train.py's split)", 0, 0.9, low_open=True)
    negatives: int = setting(NEGATIVES_PER_KIND, "generated non-digits of each kind (letters, symbols, shapes, "
                                                 "several digits, photos) it learns from", 1, 100_000)
    renderings: int = setting(RENDERINGS_PER_CONDITION, "realistic renderings of training digits per condition it "
                                                        "learns from (half as many of validation digits set its "
                                                        "threshold)", 2, 10_000)
    epochs: int = setting(EPOCHS, "passes over its data", 1, 1000)

    def __post_init__(self):
        check_settings(self)


class DetectorData(NamedTuple):
    """The 28x28 inputs (after predict()'s preprocessing) the detector is fitted and set on."""

    negatives: np.ndarray  # N x 28 x 28 uint8: generated non-digits (dev part)
    negative_kinds: np.ndarray  # the kind of each
    digits: np.ndarray  # MNIST training digits and realistic renderings of them
    val_digits: np.ndarray  # MNIST validation digits: for the threshold only
    val_renderings: np.ndarray  # realistic renderings of validation digits: for the threshold only
    val_rendering_labels: np.ndarray


class Inputs(NamedTuple):
    """28x28 model inputs, as predict() makes them, and their labels (-1: not a digit)."""

    images: np.ndarray  # N x 28 x 28 uint8
    labels: np.ndarray


def detector_data(mnist, seed=0, negatives=NEGATIVES_PER_KIND, renderings=RENDERINGS_PER_CONDITION, workers=None):
    """Render and preprocess the detector's data across processes.

    Args:
        mnist: ((x_train, y_train), (x_val, y_val)), the split of MNIST's training digits.
        seed: everything made is deterministic given this.
        negatives: generated non-digits of each kind (dev part).
        renderings: realistic renderings per condition of training digits (half as many of
            validation digits).
        workers: processes (default: one per core).
    Kinds whose fonts or photos are not installed here are left out (the record says which were used).
    """
    from synthetic import nondigits

    (x_train, y_train), (x_val, y_val) = mnist
    jobs = [Job("nondigits", kind, first, min(CHUNK, negatives - first), seed)
            for kind in nondigits.available() for first in range(0, negatives, CHUNK)]
    jobs += rendering_jobs("train", renderings, seed) + rendering_jobs("val", renderings // 2, seed)
    made = run_jobs(jobs, {"train": (x_train, y_train), "val": (x_val, y_val)}, workers)
    kinds = [job.what for job, part in zip(jobs, made) if job.source == "nondigits" for _ in part.images]
    rng = np.random.default_rng(seed)
    mnist_digits = x_train[rng.choice(len(x_train), min(MNIST_POSITIVES, len(x_train)), replace=False)]
    return DetectorData(joined(jobs, made, "nondigits").images, np.array(kinds),
                        np.concatenate([mnist_digits, joined(jobs, made, "train").images]), x_val, *joined(jobs, made, "val"))


def realistic_test_inputs(x_test, y_test, seed, per_condition, workers=None):
    """Inputs of realistic renderings of MNIST test digits, `per_condition` of each condition, made
    as the detector's renderings are: train.py measures its calibration on them, never chooses on them."""
    jobs = rendering_jobs("test", per_condition, seed)
    return joined(jobs, run_jobs(jobs, {"test": (x_test, y_test)}, workers), "test")


def rendering_jobs(split, count, seed):
    """Jobs rendering `count` digits of `split` in each realistic condition; each condition draws
    its own digits, with its own seed."""
    from synthetic import realistic

    offset = {"train": 0, "val": 100, "test": 200}[split]
    return [Job(split, condition, k * count, count, 1000 * seed + offset + k)
            for k, condition in enumerate(realistic.CONDITIONS)]


def run_jobs(jobs, digits, workers=None):
    """Make each Job in a pool of processes that share `digits` ({split: (x, y)}); one Inputs per job."""
    # spawn, not fork: TensorFlow may be loaded already (a Keras download of MNIST)
    with ProcessPoolExecutor(workers or cores(), multiprocessing.get_context("spawn"), initializer=share_digits,
                             initargs=(digits,)) as pool:
        return list(pool.map(make, jobs))


def joined(jobs, made, source):
    """The Inputs that the jobs of one source ("nondigits", "train", "val", "test") made, as one."""
    parts = [part for job, part in zip(jobs, made) if job.source == source]
    return Inputs(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


class Job(NamedTuple):
    """A part of the detector's data, made in one worker process."""

    source: str  # "nondigits", or the MNIST split whose digits are rendered: "train", "val", "test"
    what: str  # the kind of non-digit, or the realistic condition
    first: int  # the first sample, or the first digit rendered
    count: int
    seed: int


SHARED = {}  # the MNIST arrays, in each worker process


def share_digits(arrays):
    SHARED.update(arrays)


def make(job):
    """The Inputs of one Job's images, as predict() makes them; those without a digit left out."""
    import parallel
    from synthetic import nondigits, realistic

    if job.source == "nondigits":
        samples = nondigits.generate(job.what, job.count, "dev", job.seed, SHARED["train"][0], job.first)
        pairs = ((s.image, -1) for s in samples)
    else:
        x, y = SHARED[job.source]
        part = slice(job.first % len(x), job.first % len(x) + job.count)
        pairs = ((s.image, s.label) for s in realistic.generate(x[part], y[part], conditions=[job.what], seed=job.seed))
    kept = [(prepared.image, label) for prepared, label in ((parallel.prepare(image), label) for image, label in pairs)
            # a non-digit with digit-sized ink beside its main piece is flagged by that (classifier.MAX_RIVALS),
            # and its 28x28 crop may show one plain digit: the network does not learn from it
            if prepared.error is None and (label >= 0 or prepared.rivals <= MAX_RIVALS)]
    return Inputs(np.array([image for image, _ in kept], np.uint8).reshape(-1, 28, 28),
                  np.array([label for _, label in kept], np.int64))


def build_detector():
    """The detector network: three small convolutions and a dense layer, one logit out."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Rescaling(1 / 255),
        layers.Conv2D(CHANNELS[0], 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(CHANNELS[1], 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(CHANNELS[2], 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(HIDDEN, activation="relu"),
        layers.Dropout(0.3),
        layers.Dense(1),
    ], name="not_digit")


def fit_balanced(x, y, seed, epochs, verbose=0):
    """build_detector() fitted to tell y == 1 from y == 0 (x: N x 28 x 28 x 1 float32, 0-255), each
    side counting as much as the other however many it has; return the network (one logit out).
    The detector and read_number()'s segment verifier (verifier.py) are both fitted so."""
    import keras

    positives = int(np.count_nonzero(y == 1))
    weight = np.where(y == 1, 0.5 / positives, 0.5 / (len(y) - positives)) * len(y)
    keras.utils.set_random_seed(seed)
    network = build_detector()
    network.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    network.fit(x, y, sample_weight=weight, epochs=epochs, batch_size=256, shuffle=True, verbose=verbose)
    return network


def fit_detector(data, seed=0, epochs=EPOCHS):
    """Fit the detector; return (keras model giving a 0-1 score, >= 0.5 for a digit; its record)."""
    import keras
    from keras import layers

    x = np.concatenate([data.digits, data.negatives])[..., None].astype(np.float32)
    y = np.concatenate([np.ones(len(data.digits)), np.zeros(len(data.negatives))]).astype(np.float32)
    network = fit_balanced(x, y, seed, epochs)

    def logits(images):
        return network.predict(np.asarray(images, np.float32)[..., None], batch_size=1000, verbose=0)[:, 0]

    val, val_renderings = logits(data.val_digits), logits(data.val_renderings)
    threshold = min(np.quantile(val, FLAG_MNIST), np.quantile(val_renderings, FLAG_REALISTIC))
    flagged = logits(data.negatives) < threshold  # before the threshold is folded into the bias below
    kernel, bias = network.layers[-1].get_weights()
    network.layers[-1].set_weights([kernel, bias - np.float32(threshold)])  # the threshold at 0 (score 0.5)
    scored = keras.Sequential([network, layers.Activation("sigmoid")], name="not_digit_score")
    kinds = list(dict.fromkeys(data.negative_kinds.tolist()))
    return scored, {
        "threshold_logit": float(threshold),
        "val_digits_flagged": float(np.mean(val < threshold)),
        "val_renderings_flagged": float(np.mean(val_renderings < threshold)),
        "val_renderings": len(val_renderings),
        "training_negatives": {kind: int(np.sum(data.negative_kinds == kind)) for kind in kinds},
        "training_negatives_flagged": {kind: float(np.mean(flagged[data.negative_kinds == kind])) for kind in kinds},
        "training_digits": len(data.digits),
    }


def flagged_share(detector, images):
    """The share of 28x28 inputs that `detector` (a classifier.Classifier of width 1) calls not a digit."""
    return float(np.mean(detector(np.asarray(images, np.float32))[:, 0] < DIGIT_THRESHOLD))


def fit_and_save(config: DetectorConfig):
    """Fit the detector on MNIST's training digits and generated non-digits; replace config.out with it.

    Returns fit_detector()'s record. Raises DataError (DownloadError) or OSError (cannot write).
    """
    from data import file_kind, load_mnist
    from export import export_litert_int8

    if config.data is not None:
        file_kind(config.data)  # a missing --data is reported before any work
    out = Path(config.out)
    if out.is_dir():
        raise IsADirectoryError(errno.EISDIR, "it is a folder, not a file")
    staged = out.with_name(f".{out.name}.new")
    staged.touch()  # an unwritable folder is reported before minutes of work, not after
    try:
        (x_train, y_train), _ = load_mnist(config.data)
        split = split_validation(x_train, y_train, config.val_fraction, config.seed)
        data = detector_data(split, config.seed, config.negatives, config.renderings)
        network, record = fit_detector(data, config.seed, config.epochs)
        export_litert_int8(network, staged, rearrange=False)  # 1.5x faster than float32, the same verdicts
        os.replace(staged, out)  # the old file stays whole until the new one is
    finally:
        staged.unlink(missing_ok=True)  # a failed or interrupted fit leaves nothing behind
    return record


def main(argv=None):
    from data import DataError
    from tflog import filter_native_logs

    config = parse_config(DetectorConfig, argv, __doc__.splitlines()[0])
    filter_native_logs()
    try:
        record = fit_and_save(config)
    except DataError as error:
        sys.exit(f"error: {error}")
    except OSError as error:
        sys.exit(f"error: {config.out}: cannot write the detector ({error.strerror or error})")
    except KeyboardInterrupt:
        sys.exit(f"interrupted: {config.out} is untouched")
    flagged = ", ".join(f"{kind} {share:.0%}" for kind, share in record["training_negatives_flagged"].items())
    print(f"fitted on {record['training_digits']:,} digits against {sum(record['training_negatives'].values()):,} "
          f"non-digits; it flags {flagged} of those non-digits")
    print(f"threshold logit {record['threshold_logit']:.3f}: flags {record['val_digits_flagged']:.2%} of validation "
          f"digits, {record['val_renderings_flagged']:.2%} of realistic renderings of them")
    print(f"wrote {config.out} ({Path(config.out).stat().st_size / 1000:.0f} KB)")


if __name__ == "__main__":
    main()

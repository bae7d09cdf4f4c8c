"""How far to trust the model's probabilities: temperature scaling and its measures (NumPy only).

    temperature = fit_temperature(val_logits, val_labels)   # Guo et al. 2017
    probabilities = softmax(logits / temperature)
    expected_calibration_error(probabilities, labels)       # 15 equal-width bins
    negative_log_likelihood(probabilities, labels)
    plot_reliability({"MNIST test": (probabilities, labels)}, "reliability.png")

A temperature T > 1 softens the probabilities, T < 1 sharpens them; the argmax never
changes. train.py fits T on the validation split and folds it into the last layer.
"""

from typing import NamedTuple

import numpy as np

BINS = 15  # Guo et al.'s choice: the usual figure to compare with
LOG_T_RANGE = (-3.0, 3.0)  # T between 0.05 and 20: far beyond any network's miscalibration


class Calibration(NamedTuple):
    """One data set's calibration: ECE and NLL, before and after temperature scaling."""

    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    accuracy: float
    count: int


def softmax(logits):
    """Row-wise softmax of an N x K array, computed stably in float64."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uncalibrated(probabilities, temperature):
    """softmax(logits) from calibrated softmax(logits / temperature): the probabilities before scaling."""
    return softmax(np.log(np.clip(np.asarray(probabilities, np.float64), 1e-30, 1)) * temperature)


def negative_log_likelihood(probabilities, labels):
    """Mean -log p(true label); probabilities are clipped at 1e-12 so a sure mistake stays finite."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(p, 1e-12, 1))))


def logits_nll(logits, labels, temperature):
    """The NLL of softmax(logits / temperature), from the logits (log-sum-exp, no rounding to 0)."""
    z = np.asarray(logits, np.float64) / temperature
    top = z.max(axis=1)
    log_total = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return float(np.mean(log_total - z[np.arange(len(labels)), labels]))


def fit_temperature(logits, labels, steps=60):
    """The temperature T that minimises the NLL of softmax(logits / T) on (logits, labels).

    The NLL is convex in 1/T, so a golden-section search on log T finds its one minimum;
    60 steps narrow the range to 1e-12 of its width.
    """
    low, high = LOG_T_RANGE
    ratio = (np.sqrt(5) - 1) / 2

    def loss(log_t):
        return logits_nll(logits, labels, np.exp(log_t))

    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(steps):
        if loss_a < loss_b:
            high, b, loss_b = b, a, loss_a
            a = low + (1 - ratio) * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return float(np.exp((low + high) / 2))


def reliability_bins(probabilities, labels, bins=BINS):
    """Per equal-width confidence bin: (count, mean confidence, accuracy), as three arrays.

    A bin with no predictions has count 0 and NaN for the other two.
    """
    p = np.asarray(probabilities, np.float64)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    right = predicted == np.asarray(labels)
    # bins are (lo, hi]; a confidence of exactly 0 cannot happen (max of ten that sum to 1)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, bins) / counts
        accuracy = np.bincount(index, right, bins) / counts
    return counts, mean_confidence, accuracy


def expected_calibration_error(probabilities, labels, bins=BINS):
    """ECE: the count-weighted mean gap between accuracy and confidence over equal-width bins."""
    counts, confidence, accuracy = reliability_bins(probabilities, labels, bins)
    filled = counts > 0
    return float(np.sum(counts[filled] * np.abs(accuracy[filled] - confidence[filled])) / counts.sum())


def calibration(logits, labels, temperature):
    """ECE and NLL of softmax(logits) and of softmax(logits / temperature) on one data set."""
    before, after = softmax(logits), softmax(np.asarray(logits, np.float64) / temperature)
    return Calibration(expected_calibration_error(before, labels), expected_calibration_error(after, labels),
                       negative_log_likelihood(before, labels), negative_log_likelihood(after, labels),
                       float(np.mean(before.argmax(axis=1) == labels)), len(labels))


def plot_reliability(curves, path, bins=BINS, title="Reliability: accuracy against confidence"):
    """Write a reliability diagram: for each named (probabilities, labels), accuracy per confidence bin.

    Args:
        curves: {name: (probabilities N x 10, labels N)}, one panel each.
        path: the PNG to write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: plotting is optional
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(curves), 5.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(curves), squeeze=False)[0]
    edges = np.linspace(0, 1, bins + 1)
    for ax, (name, (probabilities, labels)) in zip(axes, curves.items()):
        counts, confidence, accuracy = reliability_bins(probabilities, labels, bins)
        filled = counts > 0
        ax.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", color="tab:blue",
               edgecolor="white", label="accuracy in the bin")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.plot(confidence[filled], confidence[filled], "_", color="tab:red", markersize=12,
                label="mean confidence in the bin")
        for left, count, height in zip(edges[:-1][filled], counts[filled], accuracy[filled]):
            ax.text(left + 0.5 / bins, min(height, 0.93) + 0.015, f"{count:,}", ha="center", va="bottom",
                    fontsize=6.5, rotation=90)
        ece = expected_calibration_error(probabilities, labels, bins)
        ax.set_title(f"{name}: {len(labels):,} images, ECE {ece:.2%}", fontsize=10)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"{title} ({bins} bins; numbers: images per bin)", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, format="png")

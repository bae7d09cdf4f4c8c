"""history.png: a run's error rate and losses per epoch, training against validation, with the test result.

    plot_history(history, "history.png", test_accuracy=0.9966, test_loss=0.1027, label_smoothing=0.1)

`history` is Keras's History.history: accuracy, loss and cross_entropy per epoch, each also
with a val_ prefix.
"""

import numpy as np

# matplotlib is imported inside the functions that use it: importing this module does no work.

# An error rate of 0 has no place on a log scale: it is drawn at 0.01%, one digit in the
# 10,000 of the test set, below anything a run of this network reaches.
ERROR_FLOOR = 1e-4
# Log-scale ticks that read at a glance: 1-2-5 steps from 0.0001 to 50.
TICKS = [step * 10.0**power for power in range(-4, 2) for step in (1, 2, 5)]


def plot_history(history, path, test_accuracy, test_loss, label_smoothing):
    """Write the history figure (see history_figure) to `path` as a PNG.

    Args:
        history: per-epoch metrics, as Keras's History.history.
        path: where the PNG goes.
        test_accuracy, test_loss: the test set's result (loss: plain cross-entropy of the network as
            trained, before calibration, so that it compares with the epochs'), drawn across the panels.
        label_smoothing: the smoothing the training loss included, named in the legend.
    """
    import matplotlib.pyplot as plt

    fig = history_figure(history, test_accuracy, test_loss, label_smoothing)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def history_figure(history, test_accuracy, test_loss, label_smoothing):
    """Two panels: the error rate (log scale, so every epoch shows, the first as well as the last)
    and the losses: the loss trained on (with label smoothing) and the plain cross-entropy, which is
    what the test loss is."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (errors, losses) = plt.subplots(1, 2, figsize=(11, 4.2))

    train_error, val_error = (error_rate(history[key]) for key in ("accuracy", "val_accuracy"))
    test_error = error_rate([test_accuracy])[0]
    errors.plot(epochs, train_error, "o-", label="training (augmented)")
    errors.plot(epochs, val_error, "o-", label="validation")
    errors.axhline(test_error, color="black", linestyle=":",
                   label=f"test after the last epoch: {test_accuracy:.2%} accurate")
    errors.set_yscale("log")
    shown = np.concatenate([train_error, val_error, [test_error]])
    errors.set_ylim(shown.min() / 1.5, min(1.0, shown.max() * 1.5))
    errors.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value * 100:g}%"))
    errors.set_ylabel("error rate (100% - accuracy), log scale")

    smoothing = f"label smoothing {label_smoothing:g}"
    losses.plot(epochs, history["loss"], "o-", color="C0", label=f"training loss ({smoothing}, augmented)")
    losses.plot(epochs, history["val_loss"], "o-", color="C1", label=f"validation loss ({smoothing})")
    losses.plot(epochs, history["cross_entropy"], "o--", color="C0", label="training cross-entropy (augmented)")
    losses.plot(epochs, history["val_cross_entropy"], "o--", color="C1", label="validation cross-entropy")
    losses.axhline(test_loss, color="black", linestyle=":", label=f"test cross-entropy: {test_loss:.4f} (before calibration)")
    losses.set_yscale("log")
    losses.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    losses.set_ylabel("loss, log scale")

    for ax in (errors, losses):
        ax.yaxis.set_major_locator(FixedLocator(TICKS))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    fig.suptitle("MNIST CNN: training vs validation, and the test set once at the end")
    fig.tight_layout()
    return fig


def error_rate(accuracies):
    """1 - accuracy, raised to ERROR_FLOOR where it is 0."""
    return np.maximum(1 - np.asarray(accuracies, dtype=float), ERROR_FLOOR)

"""Draw the preprocessing pipeline step by step, one row per image (for `inference.py --explain`).

    python inference.py photo.jpg drawing.png --explain steps.png
    python inference.py --number photo.jpg --explain number.png    # write_number_figure

Each row shows the input as decoded (upright, transparency composited), the ink map
with the digit's bounding box (pieces dropped as specks or border junk in red), the
digit fitted into MNIST's 20x20 box, the 28x28 model input with its centre of mass,
and the ten probabilities. It draws the Trace that preprocessing recorded while it
ran: nothing is computed a second time. For a whole number, each row shows the image
with every digit's box and reading, and each digit's 28x28 model input (number.NumberTrace).
"""

import numpy as np

from preprocess import STROKE_RANGE, Trace

MAX_ROWS = 12  # a taller figure is unreadable; the CLI says when rows were left out


def write_figure(rows, out_path, low_confidence=0.0):
    """Write a PNG explaining each row.

    Args:
        rows: (source, outcome, trace) triples: source is what was classified (a
            path, PIL image or array), outcome its Prediction or the ImageError it
            raised, trace the preprocess.Trace recorded for it.
        out_path: where to write the PNG.
        low_confidence: predictions below this are labelled "low confidence".
    Returns:
        the number of rows drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: plotting is optional
    from matplotlib.figure import Figure

    rows = rows[:MAX_ROWS]
    figure = Figure(figsize=(11, 2.3 * max(len(rows), 1)), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(len(rows), 1), 5, squeeze=False)
    for row_axes, (source, outcome, trace) in zip(axes, rows):
        draw_row(row_axes, source, outcome, trace, low_confidence)
    figure.tight_layout()
    figure.savefig(out_path)
    return len(rows)


def draw_row(axes, source, outcome, trace, low_confidence=0.0):
    trace = trace or Trace()  # an input that failed before preprocessing began
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    name = "array" if hasattr(source, "shape") else str(getattr(source, "filename", "") or source)
    if trace.input is not None:
        height, width = trace.input.shape[:2]
        axes[0].imshow(trace.input, cmap="gray" if trace.input.ndim == 2 else None, vmin=0, vmax=255)
        axes[0].set_title(f"{short(name)}\n{width}x{height}", fontsize=8)
    if trace.ink is not None:
        axes[1].imshow(ink_picture(trace.ink, trace.keep))
        if trace.box is not None:
            top, bottom, left, right = trace.box
            axes[1].add_patch(rectangle(left, top, right - left, bottom - top))
        side = "dark ink on light paper" if trace.side < 0 else "light ink on dark background"
        axes[1].set_title(f"ink map ({side})\nkept white, dropped red", fontsize=8)
    if trace.fitted is not None:
        axes[2].imshow(trace.fitted, cmap="gray", vmin=0, vmax=255)
        low, high = STROKE_RANGE
        change = " -> thickened" if trace.stroke < low else " -> thinned" if trace.stroke > high else ""
        axes[2].set_title(f"fitted {trace.fitted.shape[1]}x{trace.fitted.shape[0]}\n"
                          f"stroke {trace.stroke:.0%} of the box{change}", fontsize=8)
    elif trace.mnist is not None:
        axes[2].set_title("already in MNIST's form:\nkept as it is", fontsize=8)
    if trace.mnist is not None:
        mnist = np.asarray(trace.mnist, np.float32)
        axes[3].imshow(mnist, cmap="gray", vmin=0, vmax=255)
        total = mnist.sum()
        cy, cx = (mnist.sum(1) @ np.arange(28)) / total, (mnist.sum(0) @ np.arange(28)) / total
        axes[3].plot([cx], [cy], "+", color="tab:orange", markersize=10)
        axes[3].set_title("28x28 model input\n+ centre of mass", fontsize=8)
    draw_outcome(axes[4], outcome, low_confidence)


def draw_outcome(ax, outcome, low_confidence):
    if isinstance(outcome, Exception):
        ax.text(0.5, 0.5, fill(str(outcome)), ha="center", va="center", fontsize=8, color="tab:red",
                transform=ax.transAxes)
        ax.set_title("error", fontsize=8)
        return
    colours = ["tab:blue" if d == outcome.digit else "lightgray" for d in range(10)]
    ax.bar(range(10), outcome.probabilities, color=colours)
    ax.set_ylim(0, 1)
    ax.set_xticks(range(10))
    ax.tick_params(labelsize=7)
    if outcome.is_digit is False:
        ax.set_title(f"not a digit (best guess {outcome.digit}, {outcome.confidence:.1%})", fontsize=9, color="tab:red")
        return
    unsure = ", low confidence" if outcome.confidence < low_confidence else ""
    ax.set_title(f"read as {outcome.digit} ({outcome.confidence:.1%}{unsure})", fontsize=9)


def ink_picture(ink, keep):
    """RGB: kept ink white, ink that was dropped (specks, edges, lines) red."""
    ink = ink / 255.0
    picture = np.repeat(ink[..., None], 3, axis=2)
    if keep is not None:
        dropped = ~keep & (ink > 0)
        picture[dropped] = np.stack([ink[dropped], 0.15 * ink[dropped], 0.15 * ink[dropped]], axis=1)
    return picture


def rectangle(x, y, width, height):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), width, height, fill=False, edgecolor="gold", linewidth=1)


def short(name, limit=28):
    name = name.encode("utf-8", "backslashreplace").decode()  # a file name need not be valid UTF-8
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def fill(text, width=30):
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def write_number_figure(rows, out_path, low_confidence=0.0):
    """Write a picture of each number read: the image with each digit's box, and the digits' 28x28 inputs.

    Args:
        rows: (source, outcome, trace) triples: outcome a NumberReading or the ImageError it
            raised, trace the number.NumberTrace recorded for it (None if decoding failed).
        out_path: where to write the picture.
        low_confidence: digits below this are drawn in red.
    Returns:
        the number of rows drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = rows[:MAX_ROWS]
    figure = Figure(figsize=(11, 2.4 * max(len(rows), 1)), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(len(rows), 1), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 2]})
    for (image_ax, digits_ax), (source, outcome, trace) in zip(axes, rows):
        for ax in (image_ax, digits_ax):
            ax.set_xticks([])
            ax.set_yticks([])
        draw_number(image_ax, digits_ax, source, outcome, trace, low_confidence)
    figure.tight_layout()
    figure.savefig(out_path)
    return len(rows)


def draw_number(image_ax, digits_ax, source, outcome, trace, low_confidence):
    name = "array" if hasattr(source, "shape") else str(getattr(source, "filename", "") or source)
    if trace is not None and trace.input is not None:
        image_ax.imshow(trace.input, cmap="gray" if trace.input.ndim == 2 else None, vmin=0, vmax=255)
    if isinstance(outcome, Exception):
        image_ax.set_title(short(name, 60), fontsize=8)
        draw_outcome(digits_ax, outcome, low_confidence)
        return
    scale_x, scale_y = trace.scale if trace is not None else (1.0, 1.0)
    for digit in outcome.digits:
        x0, y0, x1, y1 = digit.box
        colour = "tab:red" if digit.prediction.confidence < low_confidence else "gold"
        image_ax.add_patch(rectangle(x0 / scale_x, y0 / scale_y, (x1 - x0) / scale_x, (y1 - y0) / scale_y))
        image_ax.patches[-1].set_edgecolor(colour)
        image_ax.text(x0 / scale_x, y0 / scale_y - 2, str(digit.prediction.digit), color=colour, fontsize=9,
                      fontweight="bold", va="bottom")
    image_ax.set_title(f"{short(name, 40)}: read as {outcome.text} ({outcome.confidence:.1%})", fontsize=9)
    inputs = trace.digits if trace is not None else []
    if inputs:
        gap = np.zeros((28, 4), np.float32)
        strip = np.hstack([part for image in inputs for part in (np.asarray(image, np.float32), gap)][:-1])
        digits_ax.imshow(strip, cmap="gray", vmin=0, vmax=255)
        for index, digit in enumerate(outcome.digits):
            digits_ax.text(index * 32 + 14, 31, f"{digit.prediction.digit}\n{digit.prediction.confidence:.0%}",
                           ha="center", va="top", fontsize=7)
        digits_ax.set_title("each digit's 28x28 model input", fontsize=8)

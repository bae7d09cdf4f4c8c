"""Accuracy of predict() on real-looking renderings of MNIST test digits, per condition.

    python -m bench.realistic_accuracy --data ../shared/data/mnist.npz --count 500

Renders `count` different MNIST test digits under each condition of
synthetic/realistic.py (a photo, scan or drawing each), classifies them through
inference.predict() (the full preprocessing) and prints a Markdown table, with the
digits of hard shapes (SHAPES: stretched 16x16 rasters, very narrow, very wide) apart. Then
runs all 10,000 MNIST test images through predict() and, for comparison, the raw
arrays straight into the model, which is what the model's own test accuracy means.
"""

import argparse
import sys
import time
from itertools import islice

import numpy as np

import data
import decode
import inference
import preprocess
from synthetic.realistic import CONDITIONS, SHAPES, generate

BATCH = 256  # samples rendered, then classified together


def realistic_table(x, y, count, model, seed, conditions=tuple(CONDITIONS)):
    """Return {condition: [right, total, rejected]} for `count` digits per condition."""
    results = {name: [0, 0, 0] for name in conditions}
    samples = generate(x, y, per_condition=count, conditions=conditions, seed=seed)
    while True:
        chunk = list(islice(samples, BATCH))
        if not chunk:
            return results
        for sample, outcome in zip(chunk, inference.predict_each([s.image for s in chunk], model=model)):
            if outcome.error is not None:
                print(f"rejected: {sample.condition}, label {sample.label}: {outcome.error}", file=sys.stderr)
            results[sample.condition][0] += outcome.prediction is not None and outcome.prediction.digit == sample.label
            results[sample.condition][1] += 1
            results[sample.condition][2] += outcome.error is not None


def print_table(results, heading):
    """Print results as a Markdown table with an overall row; return the number of images."""
    print(f"| {heading} | accuracy |")
    print("|---|---:|")
    for name, (right, total, rejected) in results.items():
        note = f" ({rejected} rejected as blank)" if rejected else ""
        print(f"| {name} | {right / total:.1%}{note} |")
    right = sum(r[0] for r in results.values())
    total = sum(r[1] for r in results.values())
    print(f"| **overall** ({total} images) | **{right / total:.2%}** |")
    return total


def mnist_accuracy(x, y, model):
    """Return (through predict(), raw arrays into the model) accuracy on MNIST arrays."""
    through = np.array([p.digit for p in inference.predict(x, model=model)])
    raw = inference.get_classifier(model)(x).argmax(axis=1)
    return float(np.mean(through == y)), float(np.mean(raw == y))


def write_examples(x, y, path, seed):
    """Save one rendering per condition and hard shape, each with the 28x28 input predict() makes of it."""
    from PIL import Image, ImageDraw

    tile, label_h, columns = 120, 14, 8
    samples = list(generate(x, y, per_condition=1, conditions=list(CONDITIONS) + list(SHAPES), seed=seed))
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * (2 * tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        left, top = (i % columns) * tile, (i // columns) * (2 * tile + label_h)
        picture = sample.image.convert("RGBA")
        checker = Image.new("RGBA", picture.size, (200, 200, 200, 255))  # shows transparency
        shown = Image.alpha_composite(checker, picture).convert("RGB")
        shown.thumbnail((tile - 4, tile - 4))
        sheet.paste(shown, (left + (tile - shown.width) // 2, top + label_h + (tile - shown.height) // 2))
        mnist = np.asarray(preprocess.to_mnist(decode.decode(sample.image))).clip(0, 255).astype("uint8")
        sheet.paste(Image.fromarray(mnist).resize((tile - 8, tile - 8), Image.NEAREST).convert("RGB"),
                    (left + 4, top + label_h + tile + 4))
        draw.text((left + 3, top + 1), sample.condition[:20], fill="black")
    sheet.save(path, optimize=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: the Keras download)")
    parser.add_argument("--count", type=int, default=500, help="digits per condition")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="a .tflite or .keras model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the renderings")
    parser.add_argument("--examples", metavar="OUT.png",
                        help="only save one rendering per condition (above the 28x28 input it becomes)")
    args = parser.parse_args(argv)

    _, (x, y) = data.load_mnist(args.data)
    if args.examples:
        write_examples(x, y, args.examples, args.seed)
        return
    start = time.perf_counter()
    results = realistic_table(x, y, args.count, args.model, args.seed)
    seconds = time.perf_counter() - start
    total = print_table(results, f"condition ({args.count} MNIST test digits each, seed {args.seed})")
    print(f"\n{total} images in {seconds:.0f} s ({1000 * seconds / total:.0f} ms each, rendering included)\n")
    shapes = realistic_table(x, y, args.count, args.model, args.seed, tuple(SHAPES))
    print_table(shapes, f"digits of hard shapes ({args.count} MNIST test digits each, seed {args.seed})")

    through, raw = mnist_accuracy(x, y, args.model)
    print(f"\nMNIST test set ({len(x)} images): raw arrays into the model {raw:.2%}, "
          f"through predict() {through:.2%} ({100 * (through - raw):+.2f} points)")


if __name__ == "__main__":
    main()

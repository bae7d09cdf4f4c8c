"""How far the shipped model's probabilities can be trusted, and how well it says "not a digit".

    python -m bench.calibration --data ../shared/data/mnist.npz
    python -m bench.calibration --data ../shared/data/mnist.npz --examples docs/nondigit_examples.png

Prints four Markdown tables, all through inference.predict() with the default model:
  1. calibration: ECE (15 bins) and NLL before and after temperature scaling, on MNIST's
     validation split and test set and on realistic renderings (synthetic/realistic.py) of
     validation and of test digits ("before" undoes the folded temperature: softmax(log p * T));
  2. the "unsure" threshold: for each candidate, the share flagged and the error rate among
     the rest, on realistic renderings of *validation* digits (where LOW_CONFIDENCE was chosen);
  3. "not a digit": the share flagged of each kind of held-out generated non-digit
     (synthetic/nondigits.py; an image refused as blank counts as flagged), and of digits;
  4. the realistic test digits per condition: flagged, and accepted and right.
The test set is only measured here, never chosen on.
"""

import argparse
import json
import time
from itertools import islice

import numpy as np

import calibration
import data
import inference
from synthetic import nondigits, realistic
from train import METRICS_FILE, split_validation

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
BATCH = 256


def run(images, model):
    """(probabilities N x 10, is_digit N, refused N) of images through predict_each; refused rows are NaN/False."""
    outcomes = list(inference.predict_each(images, model=model))
    probabilities = np.array([o.prediction.probabilities if o.prediction else [np.nan] * 10 for o in outcomes])
    is_digit = np.array([bool(o.prediction and o.prediction.is_digit) for o in outcomes])
    return probabilities, is_digit, np.array([o.error is not None for o in outcomes])


def rendered(samples, model):
    """Run realistic or non-digit Samples through predict_each in chunks; return run()'s arrays and the samples."""
    parts, kept = [], []
    while True:
        chunk = list(islice(samples, BATCH))
        if not chunk:
            break
        parts.append(run([s.image for s in chunk], model))
        kept += chunk
    return tuple(np.concatenate(a) for a in zip(*parts)), kept


def calibration_row(name, probabilities, labels, temperature):
    good = ~np.isnan(probabilities[:, 0])
    p, y = probabilities[good], labels[good]
    before = calibration.uncalibrated(p, temperature)
    return (f"| {name} | {len(y):,} | {(p.argmax(1) == y).mean():.2%} | {calibration.expected_calibration_error(before, y):.2%} "
            f"| {calibration.expected_calibration_error(p, y):.2%} | {calibration.negative_log_likelihood(before, y):.4f} "
            f"| {calibration.negative_log_likelihood(p, y):.4f} |")


def threshold_rows(probabilities, labels):
    good = ~np.isnan(probabilities[:, 0])
    confidence, right = probabilities[good].max(1), probabilities[good].argmax(1) == labels[good]
    rows = [f"| none | 0.00% | {1 - right.mean():.2%} |"]
    for threshold in THRESHOLDS:
        keep = confidence >= threshold
        mark = " (LOW_CONFIDENCE)" if threshold == inference.LOW_CONFIDENCE else ""
        rows.append(f"| {threshold}{mark} | {1 - keep.mean():.2%} | {1 - right[keep].mean():.2%} |")
    return rows


def write_examples(samples, verdicts, path, per_kind=8):
    """A sheet of held-out non-digits, one row per kind, each with what predict() said."""
    from PIL import Image, ImageDraw

    tile, label = 110, 24
    kinds = list(dict.fromkeys(s.kind for s in samples))
    sheet = Image.new("RGB", (per_kind * tile, len(kinds) * (tile + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, kind in enumerate(kinds):
        chosen = [i for i, s in enumerate(samples) if s.kind == kind][:per_kind]
        for column, i in enumerate(chosen):
            picture = samples[i].image.convert("RGBA")
            shown = Image.alpha_composite(Image.new("RGBA", picture.size, (200, 200, 200, 255)), picture).convert("RGB")
            shown.thumbnail((tile - 6, tile - 6))
            left, top = column * tile, row * (tile + label)
            sheet.paste(shown, (left + (tile - shown.width) // 2, top + (tile - shown.height) // 2))
            draw.text((left + 3, top + tile), verdicts[i], fill="firebrick" if verdicts[i].startswith("read") else "black")
        draw.text((3, row * (tile + label) + 2), kind, fill="navy")
    sheet.save(path, optimize=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: the Keras download)")
    parser.add_argument("--count", type=int, default=100, help="realistic renderings per condition (test and validation)")
    parser.add_argument("--nondigits", type=int, default=300, help="held-out non-digits per kind")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="a .tflite model with the detector")
    parser.add_argument("--examples", metavar="OUT.png", help="also write a sheet of held-out non-digit examples")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    metrics = json.loads((inference.DEFAULT_MODEL.parent / METRICS_FILE).read_text())
    temperature = metrics["calibration"]["temperature"]
    (x_train, y_train), (x_test, y_test) = data.load_mnist(args.data)
    _, (x_val, y_val) = split_validation(x_train, y_train, metrics["config"]["val_fraction"], metrics["config"]["seed"])

    mnist_val, mnist_test = run(x_val, args.model), run(x_test, args.model)
    (real_val, val_samples) = rendered(realistic.generate(x_val, y_val, per_condition=args.count, seed=0), args.model)
    (real_test, test_samples) = rendered(realistic.generate(x_test, y_test, per_condition=args.count, seed=0),
                                         args.model)
    val_labels = np.array([s.label for s in val_samples])
    test_labels = np.array([s.label for s in test_samples])

    print(f"Temperature T = {temperature:.4f} (fitted on the validation split by train.py)\n")
    print("| data | images | accuracy | ECE before | ECE after | NLL before | NLL after |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(calibration_row("MNIST validation", mnist_val[0], y_val, temperature))
    print(calibration_row("MNIST test", mnist_test[0], y_test, temperature))
    print(calibration_row("realistic, validation digits", real_val[0], val_labels, temperature))
    print(calibration_row("realistic, test digits", real_test[0], test_labels, temperature))
    right = mnist_test[0].argmax(1) == y_test
    print(f"\nMNIST test digits read right: median confidence {np.median(mnist_test[0].max(1)[right]):.2%}, "
          f"{np.mean(mnist_test[0].max(1)[right] >= 0.99):.1%} of them at 99% or more")

    print(f"\n| threshold (realistic renderings of {len(val_labels):,} validation digits) | flagged unsure "
          f"| error rate among the rest |")
    print("|---|---:|---:|")
    print("\n".join(threshold_rows(real_val[0], val_labels)))

    samples, flags = [], []
    kinds = nondigits.available()
    for kind in kinds:
        (_, is_digit, refused), made = rendered(nondigits.generate(kind, args.nondigits, part="held-out",
                                                                   digits=x_test), args.model)
        samples += made
        flags.append((kind, ~is_digit, refused, made))
    print(f"\n| held-out generated non-digits ({args.nondigits} per kind) | flagged not a digit | of which refused "
          f"as blank |")
    print("|---|---:|---:|")
    total = []
    for kind, flagged, refused, made in flags:
        print(f"| {kind} | {flagged.mean():.1%} | {refused.mean():.1%} |")
        total.append(flagged)
    print(f"| **all non-digits** ({sum(len(f) for f in total):,}) | **{np.concatenate(total).mean():.1%}** | |")
    for name, (_, is_digit, refused) in (("MNIST validation digits", mnist_val), ("MNIST test digits", mnist_test),
                                         ("realistic, validation digits", real_val),
                                         ("realistic, test digits", real_test)):
        print(f"| {name} ({len(is_digit):,}) | {np.mean(~is_digit):.2%} | {refused.mean():.2%} |")

    print("\n| realistic condition (test digits) | flagged not a digit | accepted and right |")
    print("|---|---:|---:|")
    conditions = np.array([s.condition for s in test_samples])
    accepted_right = real_test[1] & (np.nan_to_num(real_test[0]).argmax(1) == test_labels)
    for name in realistic.CONDITIONS:
        here = conditions == name
        print(f"| {name} | {np.mean(~real_test[1][here]):.1%} | {accepted_right[here].mean():.1%} |")
    print(f"| **overall** ({len(test_labels):,}) | **{np.mean(~real_test[1]):.2%}** | **{accepted_right.mean():.2%}** |")
    print(f"\n{time.perf_counter() - start:.0f} s")

    if args.examples:
        predictions = list(inference.predict_each([s.image for s in samples], model=args.model))
        verdicts = ["refused: blank" if o.error else "not a digit" if not o.prediction.is_digit
                    else f"read as {o.prediction.digit}" for o in predictions]
        write_examples(samples, verdicts, args.examples)


if __name__ == "__main__":
    main()

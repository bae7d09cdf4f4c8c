"""What the "not a digit" detector costs predict(): the same arrays with and without it, side by side.

    python -m bench.detector_cost --data ../shared/data/mnist.npz

Classifies the 10,000 MNIST test arrays in one predict() call, alternating runs with the
shipped model set's detector and with it switched off, in one process, and times one 28x28
array with it. Prints the medians and every run.
"""

import argparse
import platform
import time

import numpy as np

import data
import inference
from classifier import load_classifier


def throughput(images, runs):
    """images/s of each of `runs` predict() calls on all of `images`."""
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        inference.predict(images)
        rates.append(len(images) / (time.perf_counter() - start))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: the Keras download)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each")
    args = parser.parse_args(argv)

    _, (x_test, _) = data.load_mnist(args.data)
    classifier = load_classifier(inference.DEFAULT_MODEL)
    detector = classifier.detector
    if detector is None:
        raise SystemExit("error: the shipped detector not_digit.tflite is absent (python detector.py)")
    inference.predict(x_test[:1000])  # allocations and worker start-up, not timed
    rates = {"with the detector": [], "without": []}
    try:
        for _ in range(args.runs):
            for name in rates:
                classifier.detector = detector if name == "with the detector" else None
                rates[name] += throughput(x_test, 1)
    finally:
        classifier.detector = detector
    single = []
    for image in np.resize(x_test, (2000, 28, 28)):
        start = time.perf_counter()
        inference.predict(image)
        single.append(time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, {len(x_test):,} MNIST test arrays in one predict()")
    for name, found in rates.items():
        print(f"  {name}: median {np.median(found):,.0f} images/s (runs: {', '.join(f'{r:,.0f}' for r in found)})")
    print(f"one 28x28 array with the detector: median {np.median(single) * 1000:.3f} ms over {len(single)} calls")


if __name__ == "__main__":
    main()

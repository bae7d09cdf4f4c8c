"""The segment verifier read_number() scores its candidate digits with: "is this crop one whole digit?"

    python -m bench.number_accuracy --data ../shared/data/mnist.npz --fit-verifier   # writes VERIFIER_FILE

Splitting a number, the classifier cannot tell a whole digit from a part of one or from two
touching digits: it reads a 3 with a 9 stuck to it as a 3, and the half of a 4 as a 1, with
the same confidence as a clean digit. So read_number() lists every candidate crop and this
small network, the detector's architecture (detector.py), scores each. It learns from the
candidates of numbers composed of MNIST *training* digits (synthetic/realistic_numbers.py,
never the test digits): those of the split that reads the number right are whole digits,
the others (fragments, merges, a digit with a piece of its neighbour) are not. Its score is
one term of number.Scoring, whose weights are chosen with it (--tune). It ships with the
code, as the scoring's weights do, not with a trained model set: any classifier reads with it.
"""

from pathlib import Path

import numpy as np

VERIFIER_FILE = Path(__file__).resolve().parent / "segment_verifier.tflite"
EPOCHS = 12  # on numbers of training digits: its loss still falls a little after 10


def fit_verifier(images, whole, seed=0, epochs=EPOCHS):
    """Fit the verifier on candidate crops (N x 28 x 28 uint8) and whether each is a whole digit
    (about one in ten; each side counts as much as the other); return a keras model giving a 0-1
    score (1: a whole digit)."""
    import keras
    from keras import layers

    from detector import fit_balanced

    network = fit_balanced(np.asarray(images, np.float32)[..., None], np.asarray(whole, np.float32), seed, epochs,
                           verbose=2)
    return keras.Sequential([network, layers.Activation("sigmoid")], name="segment_verifier")

"""Accuracy of read_number() on whole numbers composed of MNIST test digits, per condition.

    python -m bench.number_accuracy --data ../shared/data/mnist.npz
    python -m bench.number_accuracy --data ../shared/data/mnist.npz --fit-verifier  # then --tune
    python -m bench.number_accuracy --data ../shared/data/mnist.npz --tune     # choose the scoring
    python -m bench.number_accuracy --data ../shared/data/mnist.npz --examples docs/number_examples.png

Renders `count` numbers of 2-8 MNIST *test* digits under each condition of
synthetic/realistic_numbers.py (a third of them with one touching pair), reads each
from its file's bytes through inference.read_number() and prints a Markdown table:
whole-number accuracy for numbers with all digits apart and with a touching pair,
and per-digit accuracy (digits in the right place, by edit distance). Then the
single-digit check: read_number() against predict() on the single-digit realistic
set. Then the time read_number() takes for a 6-digit photo of about 1 MP (median of
several calls; a wall-clock time, as noisy as the machine).

--tune chooses number.Scoring on numbers composed of the last 10,000 MNIST
*training* digits (never the test digits): the candidates of each number are
classified once, then the weights are learnt by an averaged structured perceptron
(each number read wrong moves them towards the best split that reads it right).

--fit-verifier fits the segment verifier (verifier.py) on the candidates of other numbers
of those training digits, read without it: the digits of the split that reads a number right
(the most confidently read, if several do) are whole digits, its other candidates are not.
Then --tune chooses the weights with it.
"""

import argparse
import collections
import io
import os
import statistics
import sys
import time
from typing import NamedTuple

import numpy as np
from PIL import Image

import data
import inference
import number
import verifier
from synthetic.realistic import CONDITIONS, generate, photo_of_paper
from synthetic.realistic_numbers import NUMBER_CONDITIONS, compose_number, generate_numbers

TUNING_DIGITS = 10_000  # the last of the training set: what --tune and --fit-verifier compose numbers from
VERIFIER_NUMBERS = 150  # per condition, for --fit-verifier: about 85,000 candidates
CONFIDENCE_ONLY = number.Scoring(*[0.0] * len(number.SCORING))  # a split's score: its digits' log probabilities
TIMING_CALLS = 15
TIMING_PIXELS = 1_000_000


class Tally:
    """Counts for one condition."""

    def __init__(self):
        self.apart, self.apart_right, self.touching, self.touching_right = 0, 0, 0, 0
        self.digits, self.digits_right = 0, 0

    def add(self, truth, read, touching):
        if touching is None:
            self.apart += 1
            self.apart_right += read == truth
        else:
            self.touching += 1
            self.touching_right += read == truth
        self.digits += len(truth)
        self.digits_right += max(0, len(truth) - edit_distance(read, truth))

    def merge(self, other):
        for key, value in vars(other).items():
            setattr(self, key, getattr(self, key) + value)


def edit_distance(a, b):
    """Levenshtein distance: digits missing, extra or wrong."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def read_text(data_bytes, classifier):
    try:
        return number.read(data_bytes, classifier).text
    except inference.ImageError:
        return ""


def number_table(x, y, count, classifier, seed):
    """{condition: Tally} for `count` numbers per condition."""
    tallies = {name: Tally() for name in NUMBER_CONDITIONS}
    for sample in generate_numbers(x, y, count=count, seed=seed):
        tallies[sample.condition].add(sample.text, read_text(sample.file(), classifier), sample.touching)
    return tallies


def share(right, total):
    return f"{right / total:.1%}" if total else "-"


def print_table(tallies, count, seed):
    print(f"| condition ({count} numbers of 2-8 MNIST test digits each, seed {seed}) "
          "| all digits apart | one touching pair | per digit |")
    print("|---|---:|---:|---:|")
    total = Tally()
    for name, tally in tallies.items():
        total.merge(tally)
        print(f"| {name} | {share(tally.apart_right, tally.apart)} ({tally.apart}) "
              f"| {share(tally.touching_right, tally.touching)} ({tally.touching}) "
              f"| {share(tally.digits_right, tally.digits)} |")
    print(f"| **overall** ({total.apart + total.touching} numbers, {total.digits} digits) "
          f"| **{share(total.apart_right, total.apart)}** | **{share(total.touching_right, total.touching)}** "
          f"| **{share(total.digits_right, total.digits)}** |")


def single_digit_agreement(x, y, count, classifier, seed):
    """(agreeing, total, {condition: disagreements}): read_number() against predict() on single digits."""
    agree, total, differ = 0, 0, collections.Counter()
    for sample in generate(x, y, per_condition=count, seed=seed):
        source = sample.file()
        try:
            expected = str(inference.predict(source, model=classifier).digit)
        except inference.NoDigitError:
            expected = ""
        same = read_text(source, classifier) == expected
        agree += same
        total += 1
        differ[sample.condition] += not same
    return agree, total, differ


def timing_photo(x, y, seed):
    """A phone photo (JPEG) of a 6-digit number of about 1 MP, and its text."""
    rng = np.random.default_rng([seed, 6])
    shape, text = compose_number(x, y, rng, touching=False, length=6)
    shape.max_aspect = 4 / 3  # a photo of a sheet with the number written on it, not a crop of the number
    image = photo_of_paper(shape, rng)
    scale = (TIMING_PIXELS / (image.width * image.height)) ** 0.5
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), text, image.size


def time_reading(x, y, classifier, seed):
    photo, text, size = timing_photo(x, y, seed)
    read_text(photo, classifier)  # warm: the model's interpreters are made on first use
    seconds = []
    for _ in range(TIMING_CALLS):
        start = time.perf_counter()
        read = read_text(photo, classifier)
        seconds.append(time.perf_counter() - start)
    print(f"\nread_number() on a 6-digit photo, {size[0]}x{size[1]} JPEG ({size[0] * size[1] / 1e6:.2f} MP), "
          f"read as {read!r} (written {text!r}): median {1000 * statistics.median(seconds):.0f} ms, "
          f"min {1000 * min(seconds):.0f} ms over {TIMING_CALLS} calls (wall clock, this machine's noise included)")


def write_examples(x, y, path, classifier, seed):
    """One number per condition, each with the boxes and the reading read_number() gives it."""
    from PIL import ImageDraw, ImageOps

    tile_w, tile_h, label_h, columns = 300, 100, 14, 3
    samples = list(generate_numbers(x, y, count=1, seed=seed + 7, touching_share=0.4))
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * tile_w, rows * (tile_h + 2 * label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        left, top = (i % columns) * tile_w, (i // columns) * (tile_h + 2 * label_h)
        source = sample.file()  # before the pixels are touched: a JPEG keeps its own bytes
        picture = ImageOps.exif_transpose(sample.image).convert("RGBA")  # upright, as the boxes are
        checker = Image.new("RGBA", picture.size, (200, 200, 200, 255))  # shows transparency
        shown = Image.alpha_composite(checker, picture).convert("RGB")
        try:
            reading = number.read(source, classifier)
        except inference.ImageError:
            reading = None
        scale = min((tile_w - 6) / shown.width, tile_h / shown.height)
        small = shown.resize((max(1, round(shown.width * scale)), max(1, round(shown.height * scale))), Image.LANCZOS)
        x0, y0 = left + (tile_w - small.width) // 2, top + label_h
        sheet.paste(small, (x0, y0))
        for digit in (reading.digits if reading else ()):
            bx0, by0, bx1, by1 = (round(v * scale) for v in digit.box)
            draw.rectangle([x0 + bx0, y0 + by0, x0 + bx1, y0 + by1], outline=(31, 111, 235))
        draw.text((left + 3, top + 1), sample.condition[:44], fill="black")
        verdict = "right" if reading and reading.text == sample.text else "WRONG"
        touching = ", touching pair" if sample.touching is not None else ""
        draw.text((left + 3, top + label_h + tile_h), f"{sample.text}{touching}: read "
                  f"{reading.text if reading else '(nothing)'} ({verdict})", fill="black")
    sheet.save(path, optimize=True)


# ----------------------------------------------------------------------------- --tune

def cached_proposals(x, y, count, classifier, seed):
    """(text, touching, Proposal without pixels) per number: what the scoring chooses from."""
    cached = []
    for sample in generate_numbers(x, y, count=count, seed=seed):
        try:
            _, found, _ = number.locate(sample.file())
        except inference.ImageError:
            found = None
        proposal = number.propose(found, classifier) if found is not None else None
        if proposal is not None:
            proposal = proposal._replace(atoms=[a._replace(rows=None, cols=None) for a in proposal.atoms], images=None)
        cached.append((sample.text, sample.touching, proposal))
    return cached


def score(cached, scoring):
    """(apart right, touching right): shares of numbers read right with this scoring."""
    right, total = [0, 0], [0, 0]
    for text, touching, proposal in cached:
        read = ""
        if proposal is not None:
            read = "".join(str(proposal.probabilities[i].argmax()) for i in number.best_split(proposal, scoring))
        kind = touching is not None
        right[kind] += read == text
        total[kind] += 1
    return right[0] / max(total[0], 1), right[1] / max(total[1], 1)


class Split(NamedTuple):
    """A path through a proposal: its candidates, the sum of their terms, the atoms left out."""

    chosen: list
    terms: np.ndarray
    skipped: int


def split_terms(proposal, chosen):
    """The Split of these candidates: summed candidate_features, atoms left out."""
    terms = sum((number.candidate_features(proposal, i) for i in chosen), np.zeros(len(number.SCORING) - 1))
    covered = sum(proposal.candidates[i].stop - proposal.candidates[i].start for i in chosen)
    return Split(chosen, terms, len(proposal.atoms) - covered)


def best_right_split(proposal, text, scoring):
    """The best-scoring split whose digits read `text`, or None: the DP of number.best_split,
    its states (atoms covered, digits read) and only candidates read as the next digit."""
    atoms, candidates, probabilities = proposal.atoms, proposal.candidates, proposal.probabilities
    digits = probabilities.argmax(axis=1)
    ending = collections.defaultdict(list)
    for index, candidate in enumerate(candidates):
        ending[candidate.stop].append(index)
    best = {(0, 0): (0.0, None)}
    for stop in range(1, len(atoms) + 1):
        short = atoms[stop - 1].bottom - atoms[stop - 1].top < number.SHORT * proposal.height
        for read in range(len(text) + 1):
            options = []
            if short and (stop - 1, read) in best:
                options.append((best[(stop - 1, read)][0] - scoring.skip_cost, None))
            for index in ending[stop] if read else ():
                start = candidates[index].start
                if (start, read - 1) in best and str(digits[index]) == text[read - 1]:
                    value = number.candidate_score(proposal, index, scoring)
                    options.append((best[(start, read - 1)][0] + value, index))
            if options:
                best[(stop, read)] = max(options, key=lambda o: o[0])
    if (len(atoms), len(text)) not in best:
        return None
    chosen, state = [], (len(atoms), len(text))
    while state != (0, 0):
        index = best[state][1]
        if index is None:
            state = (state[0] - 1, state[1])
        else:
            chosen.append(index)
            state = (candidates[index].start, state[1] - 1)
    return chosen[::-1]


def tune(cached, start, epochs=6, rate=0.1, seed=0):
    """Choose the Scoring by an averaged structured perceptron: for each training number read
    wrong, move the weights towards the terms of the best split that reads it right and away
    from those of the split chosen. Each epoch's average of the weights is scored; the best
    (two thirds all-apart accuracy, one third touching) is kept, `start` if none is better."""
    weights = np.array(start, np.float64)
    total, steps = np.zeros_like(weights), 0
    usable = [(text, proposal) for text, _, proposal in cached if proposal is not None]
    order = np.random.default_rng(seed)
    best, best_shares = start, score(cached, start)
    print(f"start: apart {best_shares[0]:.1%}, touching {best_shares[1]:.1%}")
    for epoch in range(epochs):
        for index in order.permutation(len(usable)):
            text, proposal = usable[index]
            scoring = number.Scoring(*weights)
            chosen = number.best_split(proposal, scoring)
            if "".join(str(proposal.probabilities[i].argmax()) for i in chosen) != text:
                right = best_right_split(proposal, text, scoring)
                if right is not None:
                    gold, guess = split_terms(proposal, right), split_terms(proposal, chosen)
                    weights[:-1] += rate * (gold.terms - guess.terms)
                    weights[-1] += rate * (guess.skipped - gold.skipped)  # skipping costs skip_cost
            total += weights
            steps += 1
        average = number.Scoring(*(round(float(w), 3) for w in total / steps))
        shares = score(cached, average)
        print(f"epoch {epoch + 1}: apart {shares[0]:.1%}, touching {shares[1]:.1%}  {average}")
        if objective(shares) > objective(best_shares):
            best, best_shares = average, shares
    return best  # the start itself, when no epoch reads more numbers right


def verifier_data(x, y, count, classifier, seed):
    """(N x 28 x 28 candidate crops, N bools: a digit of the split that reads its number right)
    of numbers composed of (x, y); numbers no split reads right are left out.

    Of the splits that read a number right, the one whose digits are read most confidently
    (CONFIDENCE_ONLY): the labels do not depend on the weights --tune chooses afterwards.
    """
    images, whole = [], []
    for sample in generate_numbers(x, y, count=count, seed=seed):
        try:
            _, found, _ = number.locate(sample.file())
        except inference.ImageError:
            continue
        proposal = number.propose(found, classifier) if found is not None else None
        right = best_right_split(proposal, sample.text, CONFIDENCE_ONLY) if proposal is not None else None
        if right is not None:
            images.append(np.stack([image for image, _ in proposal.images]))
            whole.append(np.isin(np.arange(len(proposal.candidates)), right))
    return np.concatenate(images), np.concatenate(whole)


def fit_and_save_verifier(x, y, classifier, seed):
    """Fit the segment verifier on numbers of (x, y) read without one; replace verifier.VERIFIER_FILE."""
    from export import export_litert_int8
    from tflog import filter_native_logs

    filter_native_logs()  # TensorFlow's C++ start-up lines
    classifier.verifier = None  # the candidates as the scoring sees them without it
    images, whole = verifier_data(x, y, VERIFIER_NUMBERS, classifier, seed)
    print(f"{len(images):,} candidates of {VERIFIER_NUMBERS} numbers per condition, {whole.mean():.1%} whole digits")
    model = verifier.fit_verifier(images, whole, seed)
    staged = verifier.VERIFIER_FILE.with_name(f".{verifier.VERIFIER_FILE.name}.new")
    export_litert_int8(model, staged, rearrange=False)  # as the detector: int8 weights, the same verdicts
    os.replace(staged, verifier.VERIFIER_FILE)  # the old file stays whole until the new one is
    print(f"wrote {verifier.VERIFIER_FILE.name} ({verifier.VERIFIER_FILE.stat().st_size / 1000:.0f} KB)")


def objective(shares):
    apart, touching = shares
    return 2 / 3 * apart + 1 / 3 * touching  # two thirds of the numbers have all digits apart


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=None, help="MNIST .npz or IDX folder (default: the Keras download)")
    parser.add_argument("--count", type=int, default=100, help="numbers per condition")
    parser.add_argument("--single", type=int, default=100, help="single digits per condition for the agreement check")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL), help="a .tflite or .keras model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the renderings")
    parser.add_argument("--tune", action="store_true",
                        help=f"choose the scoring on numbers of the last {TUNING_DIGITS:,} training digits")
    parser.add_argument("--fit-verifier", action="store_true",
                        help=f"fit the segment verifier on numbers of the last {TUNING_DIGITS:,} training digits")
    parser.add_argument("--examples", metavar="OUT.png", help="only draw one number per condition with its reading")
    parser.add_argument("--no-timing", action="store_true", help="leave out the timing")
    args = parser.parse_args(argv)

    (x_train, y_train), (x, y) = data.load_mnist(args.data)
    classifier = inference.get_classifier(args.model)
    if args.fit_verifier:
        fit_and_save_verifier(x_train[-TUNING_DIGITS:], y_train[-TUNING_DIGITS:], classifier, args.seed + 2)
        return
    if args.tune:
        cached = cached_proposals(x_train[-TUNING_DIGITS:], y_train[-TUNING_DIGITS:], args.count, classifier,
                                  args.seed + 1)
        print(f"chosen: {tune(cached, number.SCORING)}")
        return
    if args.examples:
        write_examples(x, y, args.examples, classifier, args.seed)
        return
    start = time.perf_counter()
    tallies = number_table(x, y, args.count, classifier, args.seed)
    seconds = time.perf_counter() - start
    print_table(tallies, args.count, args.seed)
    total = sum(t.apart + t.touching for t in tallies.values())
    print(f"\n{total} numbers in {seconds:.0f} s ({1000 * seconds / total:.0f} ms each, rendering included)")
    agree, count, differ = single_digit_agreement(x, y, args.single, classifier, args.seed)
    worst = ", ".join(f"{name}: {n}" for name, n in differ.most_common(3) if n)
    print(f"\nsingle digits ({args.single} MNIST test digits x {len(CONDITIONS)} conditions): read_number() gives "
          f"predict()'s digit on {agree}/{count} = {agree / count:.2%}" + (f" (differ most: {worst})" if worst else ""))
    if not args.no_timing:
        time_reading(x, y, classifier, args.seed)
    sys.stdout.flush()


if __name__ == "__main__":
    main()

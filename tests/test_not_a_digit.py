"""The "not a digit" verdict: the detector's rule, the rival ink beside a digit, and the shipped
model's flag everywhere it shows (Python, CLI text/JSON/CSV, API).

Fast: the committed fixture's digits and a few generated non-digits. The figures on the full
held-out sets are bench.calibration's.
"""

import ast
import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import inference
import parallel
from classifier import MAX_RIVALS, load_classifier, to_predictions
from conftest import ROOT
from synthetic import nondigits, realistic


@pytest.fixture(scope="module")
def detector_model():
    if load_classifier(inference.DEFAULT_MODEL).detector is None:
        pytest.skip("the shipped detector not_digit.tflite is absent (python detector.py)")
    return inference.DEFAULT_MODEL


def flag_rate(images, **options):
    outcomes = list(inference.predict_each(images, **options))
    return np.mean([o.error is not None or o.prediction.is_digit is False for o in outcomes])


def test_the_verdict_needs_a_score_and_no_rival_ink():
    probabilities = np.full((4, 10), 0.01)
    probabilities[:, 3] = 0.91
    predictions = to_predictions(probabilities, [0.9, 0.2, 0.9, 0.9], 0.5, [0.0, 0.0, MAX_RIVALS + 0.01, MAX_RIVALS])
    assert [p.is_digit for p in predictions] == [True, False, False, True]
    assert all(p.digit == 3 for p in predictions) and predictions[1].digit_score == pytest.approx(0.2)
    assert to_predictions(probabilities)[0].is_digit is None  # no detector: not checked


def drawn(*boxes, size=(420, 200)):
    """A white picture with a black ring (a 0) in each (x0, y0, x1, y1) box."""
    image = Image.new("L", size, 255)
    for box in boxes:
        ImageDraw.Draw(image).ellipse(box, outline=0, width=9)
    return image


def test_rival_ink_beside_a_digit_is_measured():
    one = parallel.prepare(drawn((160, 40, 240, 160)))
    three = parallel.prepare(drawn((40, 40, 120, 160), (170, 40, 250, 160), (300, 40, 380, 160)))
    speck = drawn((160, 40, 240, 160))
    ImageDraw.Draw(speck).ellipse((330, 60, 336, 66), fill=0)  # a dot is no rival
    assert one.rivals == 0 and parallel.prepare(speck).rivals == 0
    assert three.rivals > MAX_RIVALS


def test_fixture_digits_are_digits(detector_model, small_mnist):
    predictions = inference.predict(small_mnist["x_test"])
    assert np.mean([p.is_digit for p in predictions]) >= 0.98
    assert all(isinstance(p.digit_score, float) and 0 <= p.digit_score <= 1 for p in predictions)
    clean = [p for p, label in zip(predictions, small_mnist["y_test"]) if p.digit == label and p.is_digit]
    assert np.median([p.confidence for p in clean]) >= 0.99  # calibrated: a clean digit reads as sure


# Each a margin below bench.calibration's figures on the full held-out sets: 40 samples vary.
@pytest.mark.parametrize("kind, share", [("shapes", 0.6), ("several digits", 0.5), ("photos", 0.5)])
def test_generated_non_digits_are_flagged(detector_model, kind, share):
    if kind not in nondigits.available():
        pytest.skip(f"{kind}: needs fonts or scikit-image (apt-get install {' '.join(nondigits.FONT_PACKAGES)})")
    images = [s.image for s in nondigits.generate(kind, 40, part="held-out")]
    assert flag_rate(images) >= share
    assert flag_rate(images, digit_threshold=0) <= flag_rate(images)  # 0: only rival ink flags


def test_symbols_are_no_digits_and_letters_no_digit_likes():
    if "symbols" not in nondigits.available():
        pytest.skip("needs Hershey-Fonts (pip install -r requirements.txt)")
    for part in nondigits.PARTS:
        symbols = [ast.literal_eval(s.name.split(" in ")[0]) for s in nondigits.generate("symbols", 120, part)]
        letters = [ast.literal_eval(s.name.split(" in ")[0]) for s in nondigits.generate("letters", 60, part)]
        assert not [c for c in symbols if c.isdigit()], part  # some symbol fonts draw digits as digits
        assert set(letters) <= set(nondigits.LETTERS), part


def test_a_wide_drawing_fits_its_scene(small_mnist):
    """Several digits, or any wide raster, are drawn whole: none runs off the picture's edge."""
    wide = np.zeros((50, 200), np.uint8)
    wide[:, :8] = wide[:, -8:] = wide[:8] = wide[-8:] = 255  # a box four times as wide as tall
    shapes = [nondigits.drawn(wide)] + [nondigits.several_digits(small_mnist["x_test"], np.random.default_rng(i))[1]
                                        for i in range(12)]
    for i, shape in enumerate(shapes):
        ink = np.asarray(realistic.dark_on_light(shape, np.random.default_rng(i)).convert("L")) < 128
        assert ink.any() and not (ink[:, 0].any() or ink[:, -1].any() or ink[0].any() or ink[-1].any()), i


def star_png():
    image = Image.new("L", (300, 300), 255)
    points = nondigits.regular(5, star=True)
    ImageDraw.Draw(image).line([(40 + 220 * x, 40 + 220 * y) for x, y in points], fill=0, width=12)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def run(*args):
    return subprocess.run([sys.executable, "inference.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_says_not_a_digit(detector_model, tmp_path):
    star = tmp_path / "star.png"
    star.write_bytes(star_png())
    four = ROOT / "sample_test_image" / "4.png"
    text = run(star, four)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"{star}: not a digit (best guess ") and lines[0].endswith("%)")
    assert lines[1].startswith(f"{four}: 4 (")
    row = json.loads(run("--format", "jsonl", star).stdout)
    assert row["is_digit"] is False and row["digit_score"] < 0.5 and 0 <= row["digit"] <= 9
    rows = list(csv.DictReader(io.StringIO(run("--format", "csv", star, four).stdout)))
    assert [r["is_digit"] for r in rows] == ["0", "1"] and float(rows[1]["digit_score"]) >= 0.5
    assert "not a digit" not in run("--digit-threshold", "0", star).stdout
    refused = run("--digit-threshold", "2", star)
    assert refused.returncode == 2 and "--digit-threshold must be 0-1" in refused.stderr


def test_api_says_not_a_digit(detector_model):
    import app as webapp

    client = webapp.create_app().test_client()
    body = client.post("/api/predict", data=star_png(), content_type="image/png").get_json()
    assert body["is_digit"] is False and 0 <= body["digit"] <= 9 and body["digit_score"] < 0.5
    seven = client.post("/api/predict", data=(ROOT / "sample_test_image" / "7.png").read_bytes(),
                        content_type="image/png").get_json()
    assert seven["is_digit"] is True and seven["digit"] == 7

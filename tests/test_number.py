"""read_number(): whole numbers split into digits, on the fixture's real MNIST digits and on drawn strokes."""

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import inference
import pieces
import preprocess
from conftest import APP_MODEL, ROOT
from errors import NoDigitError, UnreadableImageError
from inference import DigitReading, NumberReading, Prediction, read_number
from synthetic.realistic import generate, load_digits
from synthetic.realistic_numbers import compose_number, generate_numbers

X, Y = load_digits()  # the fixture's 100 MNIST test digits
SAMPLES = ROOT / "sample_test_image"


def readable(label, count=1):
    """Fixture digits of this label that predict() reads right: the tests are about splitting."""
    found = [i for i in np.flatnonzero(Y == label) if inference.predict(X[i]).digit == label]
    return found[:count]


def number_image(indices, gap=30, scale=3, margin=40, shift=0):
    """MNIST digits side by side, enlarged, dark on white, `gap` pixels between their boxes."""
    parts = []
    for i in indices:
        big = np.asarray(Image.fromarray(X[i]).resize((28 * scale, 28 * scale), Image.BICUBIC), np.float32)
        cols = np.flatnonzero(big.max(axis=0) > 0)
        parts.append(big[:, cols[0]:cols[-1] + 1])
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1) + 2 * margin
    canvas = np.zeros((28 * scale + 2 * margin, width), np.float32)
    left = margin
    for part in parts:
        window = canvas[margin:margin + part.shape[0], left:left + part.shape[1]]
        np.maximum(window, part, out=window)
        left += part.shape[1] + gap - shift
    return (255 - canvas.clip(0, 255)).astype(np.uint8)


def strokes_image(strokes, size=(900, 300), width=16, line=None):
    """Pen strokes (points in 0..1 of the width and height) drawn black on white; a ruled line at `line`."""
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    if line is not None:
        for y in line:
            draw.line([(0, y * size[1]), (size[0], y * size[1] + 4)], fill=150, width=3)
    for stroke in strokes:
        points = [(x * size[0], y * size[1]) for x, y in stroke]
        draw.line(points, fill=0, width=width, joint="curve")
        for x, y in points:
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=0)
    return image


def ring(cx, cy, rx, ry, steps=28):
    return [(cx + rx * math.sin(t / steps * 2 * math.pi), cy - ry * math.cos(t / steps * 2 * math.pi))
            for t in range(steps + 1)]


FOUR_IN_TWO_STROKES = [[(0.20, 0.15), (0.14, 0.62), (0.30, 0.62)], [(0.26, 0.35), (0.26, 0.88)]]
FIVE_WITH_ITS_BAR_APART = [[(0.45, 0.16), (0.55, 0.16)],
                           [(0.45, 0.24), (0.44, 0.45), (0.53, 0.43), (0.57, 0.60), (0.55, 0.78), (0.44, 0.86)]]
SEVEN = [[(0.70, 0.16), (0.86, 0.16), (0.76, 0.88)]]


def test_separated_digits_are_read_in_order():
    indices = [readable(3)[0], readable(8)[0], readable(1)[0], readable(6)[0]]
    reading = read_number(number_image(indices))
    assert reading.text == "3816"


def test_leading_zeros_are_kept():
    indices = readable(0, 2) + [readable(7)[0]]
    assert read_number(number_image(indices)).text == "007"


def test_a_digit_in_several_pieces_is_joined():
    # a 4 drawn in two strokes that do not meet, a 5 whose bar was written apart, a 7
    reading = read_number(strokes_image(FOUR_IN_TWO_STROKES + FIVE_WITH_ITS_BAR_APART + SEVEN))
    assert reading.text == "457"


def test_a_five_whose_bar_rises_above_it_and_runs_wide_is_one_digit():
    # the bar, apart and high, makes the 5 taller and wider than its body, which sets the digit height
    five = [[(0.40, 0.26), (0.60, 0.20), (0.80, 0.16)],
            [(0.25, 0.36), (0.24, 0.45), (0.55, 0.60), (0.58, 0.75), (0.50, 0.85), (0.10, 0.87)]]
    image = strokes_image(five, size=(400, 370), width=30)
    assert read_number(image).text == "5"


def test_a_line_drawn_far_thinner_than_the_digits_is_ignored():
    # the edge of a shadow or a form's cell: thin, digit-tall, beside the digits
    image = strokes_image([ring(0.3, 0.5, 0.06, 0.35)] + SEVEN, width=20)
    ImageDraw.Draw(image).line([(0.55 * 900, 0.2 * 300), (0.56 * 900, 0.8 * 300)], fill=60, width=2)
    ImageDraw.Draw(image).line([(0.95 * 900, 0.1 * 300), (0.95 * 900, 0.9 * 300)], fill=90, width=2)
    assert read_number(image).text == "07"


def test_two_touching_digits_are_split():
    indices = [readable(2)[0], readable(3)[0], readable(4)[0]]
    image = number_image(indices, gap=0, shift=6)  # the 2 and the 3, and the 3 and the 4, overlap a little
    strokes = image < 128
    assert pieces.label_components(strokes).max() < 3  # they really touch: fewer pieces than digits
    assert read_number(image).text == "234"


def test_the_segment_verifier_tells_whole_digits_from_halves_and_pairs():
    # the crops a split offers: a whole digit, a digit cut in two, two touching digits as one
    verifier = inference.get_classifier(None).segment_scores
    usable = [i for i in range(len(X)) if Y[i] != 1]  # a 1 cut down its middle is still a 1
    whole = [preprocess.crop_to_mnist(ink_box(X[i])) for i in usable]
    halves = [preprocess.crop_to_mnist(ink_box(half)) for i in usable for half in np.array_split(ink_box(X[i]), 2, axis=1)]
    pairs = [preprocess.crop_to_mnist(touching(ink_box(X[i]), ink_box(X[j]))) for i, j in zip(usable, usable[1:])]
    whole_scores, half_scores, pair_scores = (verifier(np.stack(crops)) for crops in (whole, halves, pairs))
    assert np.mean(whole_scores >= 0.5) >= 0.85  # the shipped file: 96%
    assert np.mean(half_scores < 0.5) >= 0.85 and np.mean(pair_scores < 0.5) >= 0.9  # 89%, 100%


def test_a_missing_verifier_is_none_and_a_broken_one_is_named(monkeypatch, tmp_path):
    import verifier
    from classifier import ModelError, segment_verifier

    monkeypatch.setattr(verifier, "VERIFIER_FILE", tmp_path / "missing.tflite")
    assert segment_verifier() is None  # read_number() then scores without it
    broken = tmp_path / "segment_verifier.tflite"
    broken.write_bytes(b"not a model")
    monkeypatch.setattr(verifier, "VERIFIER_FILE", broken)
    with pytest.raises(ModelError, match="segment_verifier.tflite"):
        segment_verifier()


def touching(left, right):
    """Two ink boxes side by side, their boxes touching, on a common baseline."""
    height = max(left.shape[0], right.shape[0])
    pair = np.zeros((height, left.shape[1] + right.shape[1]), np.float32)
    pair[height - left.shape[0]:, :left.shape[1]] = left
    pair[height - right.shape[0]:, left.shape[1]:] = right
    return pair


def ink_box(image):
    """The image cropped to its ink (float, 0-255)."""
    rows, cols = np.flatnonzero(image.max(axis=1) > 0), np.flatnonzero(image.max(axis=0) > 0)
    return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)


def test_a_ruled_line_under_and_through_the_number_is_ignored():
    strokes = FOUR_IN_TWO_STROKES + [ring(0.46, 0.52, 0.05, 0.36)] + SEVEN
    reading = read_number(strokes_image(strokes, line=(0.88, 0.30)))
    assert reading.text == "407"


def test_specks_are_ignored():
    image = np.asarray(strokes_image([ring(0.3, 0.5, 0.06, 0.35)] + SEVEN)).copy()
    rng = np.random.default_rng(0)
    for y, x in zip(rng.integers(0, 300, 60), rng.integers(0, 900, 60)):
        image[y:y + 2, x:x + 2] = 0
    assert read_number(image).text == "07"


def test_types_boxes_and_confidence():
    indices = [readable(5)[0], readable(2)[0], readable(9)[0]]
    image = number_image(indices)
    reading = read_number(image)
    assert isinstance(reading, NumberReading) and isinstance(reading.text, str)
    assert all(isinstance(d, DigitReading) and isinstance(d.prediction, Prediction) for d in reading.digits)
    assert reading.text == "".join(str(d.prediction.digit) for d in reading.digits)
    assert reading.confidence == pytest.approx(math.prod(d.prediction.confidence for d in reading.digits))
    height, width = image.shape
    lefts = [d.box[0] for d in reading.digits]
    assert lefts == sorted(lefts)
    for x0, y0, x1, y1 in (d.box for d in reading.digits):
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert np.any(image[y0:y1, x0:x1] < 128)  # each box holds ink
    # boxes are in the image's own pixels, however much it was reduced to be read
    big = np.asarray(Image.fromarray(image).resize((width * 4, height * 4), Image.BICUBIC))
    big_boxes = [d.box for d in read_number(big).digits]
    for small, large in zip((d.box for d in reading.digits), big_boxes):
        assert all(abs(4 * a - b) <= 24 for a, b in zip(small, large))


def test_boxes_are_upright_after_exif_rotation(tmp_path):
    image = Image.fromarray(number_image([readable(4)[0], readable(1)[0]]))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored turned the other way
    path = tmp_path / "phone.jpg"
    image.transpose(Image.ROTATE_90).save(path, quality=95, exif=exif)
    reading = read_number(path)
    assert reading.text == "41"
    for x0, y0, x1, y1 in (d.box for d in reading.digits):
        assert x1 <= image.width and y1 <= image.height and x1 - x0 < y1 - y0  # upright digits, tall boxes


def test_errors(tmp_path):
    with pytest.raises(NoDigitError):
        read_number(np.full((200, 600), 255, np.uint8))
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(UnreadableImageError, match="notes.png"):
        read_number(notes)
    with pytest.raises(UnreadableImageError):
        read_number("missing.png")


def test_one_digit_reads_as_predict_does():
    for digit in range(10):  # the shipped samples, MNIST arrays and real-looking renderings
        path = SAMPLES / f"{digit}.png"
        assert read_number(path).digits[0].prediction == inference.predict(path)
    for image in X[:30]:
        assert read_number(image).digits[0].prediction == inference.predict(image)
    samples = list(generate(X, Y, per_condition=3))
    agree = 0
    for sample in samples:
        source = sample.file()
        try:
            expected = str(inference.predict(source).digit)
        except NoDigitError:
            expected = "none"
        try:
            agree += read_number(source).text == expected
        except NoDigitError:
            agree += expected == "none"
    assert agree >= 0.95 * len(samples)


def test_generated_numbers_are_reproducible_and_touch_where_they_should():
    first = list(generate_numbers(X, Y, count=3, conditions=["thick brush strokes"], seed=4, touching_share=0.5))
    again = list(generate_numbers(X, Y, count=3, conditions=["thick brush strokes"], seed=4, touching_share=0.5))
    assert [s.file() for s in first] == [s.file() for s in again]
    assert all(2 <= len(s.text) <= 8 for s in first)
    for seed in range(12):
        number, text = compose_number(X, Y, np.random.default_rng([seed, 9]), touching=seed % 2 == 0)
        layers = [layer > 0.5 for layer in number.digit_layers(60, 5)]
        together = pieces.label_components(np.any(layers, axis=0)).max()
        alone = sum(pieces.label_components(layer).max() for layer in layers)
        if number.touching is not None and number.touched:
            pair = layers[number.touching] | layers[number.touching + 1]
            assert pieces.label_components(pair).max() < (pieces.label_components(layers[number.touching]).max()
                                                         + pieces.label_components(layers[number.touching + 1]).max())
            assert together < alone  # the pair shares a piece of ink
        else:
            assert together == alone  # every digit's ink stays its own


def cli(*args):
    return subprocess.run([sys.executable, "inference.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_number_formats(tmp_path):
    path = tmp_path / "number.png"
    Image.fromarray(number_image([readable(7)[0], readable(2)[0]])).save(path)
    text = cli("--number", path)
    assert text.returncode == 0 and text.stdout.startswith(f"{path}: 72 (") and text.stdout.endswith("%)\n")
    row = json.loads(cli("--number", "--format", "jsonl", path).stdout)
    assert row["path"] == str(path) and row["number"] == "72"
    assert [d["digit"] for d in row["digits"]] == [7, 2]
    assert all(len(d["box"]) == 4 and len(d["probabilities"]) == 10 for d in row["digits"])
    assert row["confidence"] == pytest.approx(math.prod(d["confidence"] for d in row["digits"]), abs=1e-5)
    failed = cli("--number", "--format", "csv", path, tmp_path / "missing.png")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[0] == "path,number,confidence,error" and lines[1].startswith(f"{path},72,")
    assert lines[2].endswith("no such file") and "Traceback" not in failed.stderr


def test_cli_number_explain(tmp_path):
    path, out = tmp_path / "number.png", tmp_path / "explained.png"
    Image.fromarray(number_image([readable(1)[0], readable(0)[0]])).save(path)
    result = cli("--number", path, "--explain", out)
    assert result.returncode == 0 and f"wrote {out}" in result.stderr
    with Image.open(out) as image:
        assert image.width > 500 and np.asarray(image.convert("L")).std() > 10


@pytest.mark.skipif(not APP_MODEL.is_file(), reason=f"no model file at {APP_MODEL}")
def test_api_read_number(app_server):
    import http.client

    host, port = app_server
    buffer = io.BytesIO()
    Image.fromarray(number_image([readable(9)[0], readable(0)[0], readable(4)[0]])).save(buffer, "PNG")

    def post(body):
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", "/api/read-number", body=body, headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        answer = (response.status, response.getheader("Content-Type"), json.loads(response.read()))
        connection.close()
        return answer

    status, kind, body = post(buffer.getvalue())
    assert status == 200 and kind == "application/json"
    assert list(body) == ["number", "confidence", "digits"] and body["number"] == "904"
    assert [list(d) for d in body["digits"]] == [["digit", "confidence", "box", "probabilities"]] * 3
    assert [d["digit"] for d in body["digits"]] == [9, 0, 4]
    status, _, body = post(b"not an image")
    assert status == 400 and "not an image" in body["error"]
    blank = io.BytesIO()
    Image.new("L", (300, 100), 255).save(blank, "PNG")
    status, _, body = post(blank.getvalue())
    assert status == 422 and "no digit found" in body["error"]
    status, _, body = post(b"")
    assert status == 400 and "no image" in body["error"]

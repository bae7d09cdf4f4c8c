"""predict() on every input type, the shipped model on the samples, LiteRT vs Keras, and the CLI."""

import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import inference
from conftest import ROOT, SHIPPED_KERAS
from inference import Prediction, predict

SAMPLES = ROOT / "sample_test_image"


def check_prediction(prediction):
    assert isinstance(prediction, Prediction)
    assert isinstance(prediction.digit, int) and 0 <= prediction.digit <= 9
    assert isinstance(prediction.confidence, float) and 0 <= prediction.confidence <= 1
    assert len(prediction.probabilities) == 10 and all(isinstance(p, float) for p in prediction.probabilities)
    assert sum(prediction.probabilities) == pytest.approx(1, abs=1e-4)
    assert prediction.confidence == max(prediction.probabilities)


def test_every_sample_is_right(shipped_model):
    for digit in range(10):
        prediction = predict(str(SAMPLES / f"{digit}.png"))
        check_prediction(prediction)
        assert prediction.digit == digit


def test_input_types(shipped_model, small_mnist):
    path = SAMPLES / "7.png"
    pixels = np.asarray(Image.open(path))
    inputs = {
        "str": str(path),
        "PathLike": path,
        "PIL L": Image.open(path),
        "PIL RGB": Image.open(path).convert("RGB"),
        "uint8 HxW": pixels,
        "float 0-1 HxW": pixels / 255.0,
        "uint16 HxWx1": (pixels.astype(np.uint16) * 257)[..., None],
        "float64 HxWx3": np.repeat(pixels[..., None], 3, axis=2).astype(np.float64),
        "int64 56x56": np.kron(pixels, np.ones((2, 2))).astype(np.int64),
    }
    for name, image in inputs.items():
        prediction = predict(image)
        check_prediction(prediction)
        assert prediction.digit == 7, name


def test_a_list_runs_in_batches(shipped_model, small_mnist):
    classifier = inference.get_classifier(None)
    batches = []

    def counting(images):
        batches.append(len(images))
        return classifier(images)

    images = list(small_mnist["x_test"][:20])
    predictions = predict(images, model=counting)
    assert batches == [20]
    assert [p.digit for p in predictions] == [p.digit for p in map(predict, images)]
    accuracy = np.mean([p.digit == y for p, y in zip(predictions, small_mnist["y_test"][:20])])
    assert accuracy >= 0.95


def test_an_array_of_images_is_a_batch(shipped_model, small_mnist):
    x = small_mnist["x_test"]
    as_array = predict(x)
    assert [p.digit for p in as_array] == [p.digit for p in predict(list(x))]
    assert [p.digit for p in predict(x[..., None])] == [p.digit for p in as_array]  # N x 28 x 28 x 1
    raw = inference.get_classifier(None)(x).argmax(axis=1)
    assert [p.digit for p in as_array] == raw.tolist()  # MNIST digits pass through unchanged
    assert predict([]) == [] and predict(x[:0]) == []


def test_predict_each_goes_on_past_bad_images(shipped_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    blank = np.full((50, 50), 255, np.uint8)
    sources = [SAMPLES / "1.png", bad, blank, SAMPLES / "7.png", np.zeros((3, 3, 9))]
    outcomes = list(inference.predict_each(iter(sources)))  # any iterable, read lazily
    assert [o.source for o in outcomes[:2]] == sources[:2]
    assert [o.prediction.digit if o.prediction else type(o.error) for o in outcomes] == [
        1, inference.UnreadableImageError, inference.NoDigitError, 7, inference.UnreadableImageError]
    with pytest.raises(inference.UnreadableImageError, match="bad.png"):
        predict(sources)  # predict() raises the first error


def test_many_files_in_worker_processes_match_one_process(shipped_model, tmp_path):
    for i in range(120):  # enough to start the worker processes
        digit = i % 10
        (tmp_path / f"{i:03d}_{digit}.png").write_bytes((SAMPLES / f"{digit}.png").read_bytes())
    paths = sorted(tmp_path.iterdir())
    parallel = [o.prediction for o in inference.predict_each(paths, workers=2)]
    alone = [o.prediction for o in inference.predict_each(paths, workers=1)]
    assert parallel == alone
    assert [p.digit for p in parallel] == [int(path.stem[-1]) for path in paths]


def test_float_model_is_one_argument_away(shipped_model, small_mnist):
    x = small_mnist["x_test"]
    int8 = np.array([p.probabilities for p in predict(x)])
    float32 = np.array([p.probabilities for p in predict(x, model=inference.FLOAT_MODEL)])
    assert np.mean(int8.argmax(1) == float32.argmax(1)) >= 0.99
    assert np.abs(int8 - float32).max() < 0.25


def test_litert_agrees_with_keras(shipped_model, small_mnist):
    import keras

    keras_model = keras.saving.load_model(SHIPPED_KERAS, compile=False)
    images = small_mnist["x_test"][..., None].astype(np.float32)
    expected = keras_model.predict(images, verbose=0)
    litert = inference.get_classifier(inference.FLOAT_MODEL)(images)
    assert np.abs(litert - expected).max() < 1e-5
    # The same through predict() with either model file: MNIST digits pass through preprocessing untouched.
    via_keras = predict(list(small_mnist["x_test"][:10]), model=SHIPPED_KERAS)
    via_litert = predict(list(small_mnist["x_test"][:10]), model=inference.FLOAT_MODEL)
    assert np.abs(np.array([p.probabilities for p in via_keras]) - [p.probabilities for p in via_litert]).max() < 1e-5


def test_inference_does_not_import_tensorflow(shipped_model):
    code = "import sys, inference; inference.predict('sample_test_image/3.png'); assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def run_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "inference.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_cli_text_on_the_sample_folder(shipped_model):
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("10 images, 0 errors, ") and result.stderr.endswith(" images/s\n")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 10
    for digit, line in enumerate(lines):
        assert line.startswith(f"sample_test_image/{digit}.png: {digit} (")


def test_cli_json(shipped_model):
    result = run_cli("--json", SAMPLES / "4.png", SAMPLES / "9.png")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [(row["path"], row["digit"]) for row in rows] == [(str(SAMPLES / "4.png"), 4), (str(SAMPLES / "9.png"), 9)]
    assert all(len(row["probabilities"]) == 10 for row in rows)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_cli_errors_name_the_file_and_go_on(shipped_model, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    missing = tmp_path / "missing.png"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = run_cli(missing, not_an_image, fifo, SAMPLES / "2.png")
    assert result.returncode == 1
    assert result.stdout.strip() == f"{SAMPLES / '2.png'}: 2 ({predict(SAMPLES / '2.png').confidence:.1%})"
    errors = error_lines(result.stderr)
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert str(missing) in errors[0] and str(not_an_image) in errors[1] and str(fifo) in errors[2]
    assert result.stderr.strip().splitlines()[-1].startswith("4 images, 3 errors, ")


def test_cli_formats(shipped_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    files = [SAMPLES / "4.png", bad]
    csv_out = run_cli("--format", "csv", *files)
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert [row["path"] for row in rows] == [str(f) for f in files]
    assert rows[0]["digit"] == "4" and rows[0]["error"] == "" and len([k for k in rows[0] if k.startswith("p")]) == 11
    assert rows[1]["digit"] == "" and "bad.png" in rows[1]["error"]
    jsonl = [json.loads(line) for line in run_cli("--format", "jsonl", *files).stdout.splitlines()]
    assert jsonl[0]["digit"] == 4 and "error" in jsonl[1]


def test_cli_recursive(shipped_model, tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for folder, digit in [(tmp_path, 1), (tmp_path / "a", 5), (tmp_path / "a" / "b", 8)]:
        (folder / f"{digit}.png").write_bytes((SAMPLES / f"{digit}.png").read_bytes())
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)  # never followed
    flat = run_cli(tmp_path)
    assert flat.returncode == 0 and flat.stdout.count("\n") == 1
    deep = run_cli("--recursive", tmp_path)
    assert deep.returncode == 0, deep.stderr
    assert [line.split(": ")[1][0] for line in deep.stdout.splitlines()] == ["1", "5", "8"]


def test_cli_folder_without_images(shipped_model, tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path}: no images (")


def test_cli_missing_model(tmp_path):
    result = run_cli("--model", tmp_path / "none.tflite", SAMPLES / "2.png")
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {tmp_path / 'none.tflite'}: no such model file (train one with: python train.py)"


def test_stopping_early_leaves_nothing_running(shipped_model, small_mnist):
    import threading

    blank = np.zeros((28, 28), np.uint8)
    many = [blank] + list(small_mnist["x_test"]) * 6  # three chunks: the consumer leaves after the first
    raised = []

    def first_error():
        try:
            predict(many)
        except inference.NoDigitError as error:
            raised.append(error)

    caller = threading.Thread(target=first_error, daemon=True)
    caller.start()
    caller.join(timeout=60)  # it once hung here: the preparing thread waited on a full queue forever
    assert not caller.is_alive() and len(raised) == 1
    outcomes = inference.predict_each(many)
    next(outcomes)
    outcomes.close()
    assert [t for t in threading.enumerate() if t.name == "prepare"] == []


def test_any_batch_size_gives_the_same_probabilities(shipped_model, small_mnist):
    classifier = inference.get_classifier(None)
    x = small_mnist["x_test"][:70]
    alone = np.concatenate([classifier(x[i:i + 1]) for i in range(len(x))])
    for size in (2, 3, 17, 64, 65, 70):  # padded up to a power of two, or split into batches
        assert np.abs(classifier(x[:size]) - alone[:size]).max() < 1e-5


def test_cli_explain_needs_a_writable_picture_name(tmp_path):
    for target in (tmp_path / "missing" / "steps.png", tmp_path / "steps.txt"):
        result = run_cli(SAMPLES / "3.png", "--explain", target)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"--explain {target}" in result.stderr.splitlines()[-1]


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    """Model files that must each be refused with one line: (path, what the line says)."""
    import keras

    folder = tmp_path_factory.mktemp("models")
    shipped = (ROOT / "mnist_cnn_int8.tflite").read_bytes()
    cases = {"empty.tflite": b"", "truncated.tflite": shipped[:5000], "random.tflite": os.urandom(4096),
             "text.keras": b"not a zip", "zip.keras": zip_of({"config.json": b"{not json"})}
    for name, data in cases.items():
        (folder / name).write_bytes(data)
    (folder / "folder.tflite").mkdir()
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.export(str(folder / "other.tflite"), format="litert", verbose=False)
    broken = keras.saving.load_model(ROOT / "mnist_cnn.keras", compile=False)
    weights = broken.get_weights()
    weights[-1] = weights[-1] * np.nan  # the last layer's bias: every output NaN
    broken.set_weights(weights)
    broken.export(str(folder / "nan.tflite"), format="litert", verbose=False)
    return folder


@pytest.mark.parametrize("name, message", [
    ("empty.tflite", "cannot load the model"), ("truncated.tflite", "cannot load the model"),
    ("random.tflite", "cannot load the model"), ("text.keras", "not a .keras archive"),
    ("zip.keras", "cannot load the model"), ("folder.tflite", "no such model file"),
    ("other.tflite", "not a digit model"), ("nan.tflite", "non-finite probabilities"),
])
def test_bad_model_files_get_one_line(bad_models, name, message):
    result = subprocess.run([sys.executable, "inference.py", "--model", str(bad_models / name),
                             str(ROOT / "sample_test_image" / "3.png")], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad_models / name}") and message in lines[0], result.stderr


def zip_of(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_hidden_files_in_a_folder_are_not_images(tmp_path):
    """Editors' backups and a training run's staging folder (dot names) are left out, as ls does."""
    (tmp_path / "3.png").write_bytes((ROOT / "sample_test_image" / "3.png").read_bytes())
    (tmp_path / ".history.png.x1").write_bytes(b"")
    (tmp_path / ".~lock.png").write_bytes(b"")
    (tmp_path / ".staging-abc").mkdir()
    (tmp_path / ".staging-abc" / "history.png").write_bytes(b"")
    assert [p.name for p in inference.expand_paths([tmp_path], recursive=True)] == ["3.png"]


def test_keras_model_runs_without_tensorflow_log_lines():
    result = subprocess.run([sys.executable, "inference.py", "--model", str(ROOT / "mnist_cnn.keras"),
                             str(ROOT / "sample_test_image" / "3.png")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(str(ROOT / "sample_test_image" / "3.png") + ": 3")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"^1 images, 0 errors", lines[0]), result.stderr

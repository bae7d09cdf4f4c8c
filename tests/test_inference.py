"""predict() on every input type, the shipped model on the samples, LiteRT vs Keras, and the CLI."""

import json
import subprocess
import sys

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


def test_a_list_runs_as_one_batch(shipped_model, small_mnist, monkeypatch):
    runner = inference.load_model()
    batches = []
    monkeypatch.setattr(inference, "load_model", lambda: lambda batch: batches.append(len(batch)) or runner(batch))
    images = list(small_mnist["x_test"][:20])
    predictions = predict(images)
    assert batches == [20]
    assert [p.digit for p in predictions] == [p.digit for p in map(predict, images)]
    accuracy = np.mean([p.digit == y for p, y in zip(predictions, small_mnist["y_test"][:20])])
    assert accuracy >= 0.95


def test_litert_agrees_with_keras(shipped_model, small_mnist):
    import keras

    keras_model = keras.saving.load_model(SHIPPED_KERAS, compile=False)
    images = small_mnist["x_test"][..., None].astype(np.float32)
    expected = keras_model.predict(images, verbose=0)
    litert = inference.load_model()(images)
    assert np.abs(litert - expected).max() < 1e-5
    # The same through predict() with either model file: MNIST digits pass through preprocessing untouched.
    via_keras = predict(list(small_mnist["x_test"][:10]), model=SHIPPED_KERAS)
    via_litert = predict(list(small_mnist["x_test"][:10]))
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


def test_cli_errors_name_the_file_and_go_on(shipped_model, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    missing = tmp_path / "missing.png"
    result = run_cli(missing, not_an_image, SAMPLES / "2.png")
    assert result.returncode == 1
    assert result.stdout.strip() == f"{SAMPLES / '2.png'}: 2 ({predict(SAMPLES / '2.png').confidence:.1%})"
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert str(missing) in errors[0] and str(not_an_image) in errors[1]


def test_cli_folder_without_images(shipped_model, tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path}: no images (")


def test_cli_missing_model(tmp_path):
    result = run_cli("--model", tmp_path / "none.tflite", SAMPLES / "2.png")
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {tmp_path / 'none.tflite'}: no such model file (train one with: python train.py)"

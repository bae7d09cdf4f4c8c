"""Shared fixtures: paths, the small committed MNIST fixture, and one tiny training run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mnist_small.npz"
SHIPPED_LITERT = ROOT / "mnist_cnn.tflite"
SHIPPED_KERAS = ROOT / "mnist_cnn.keras"
# calibration measured on a few renderings, for the runs that check training rather than the model
FEW_RENDERINGS = {"realistic_renderings": 1}
APP_MODEL = Path(os.environ.get("DIGIT_APP_TEST_MODEL") or SHIPPED_LITERT)  # what the app tests serve

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def small_mnist():
    """400 real MNIST digits: 300 for training, 100 from the official test set."""
    with np.load(FIXTURE) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="session")
def shipped_model():
    if not SHIPPED_LITERT.is_file() or not SHIPPED_KERAS.is_file():
        pytest.skip("the shipped model is absent (run python train.py)")
    return SHIPPED_LITERT


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One tiny training run on the fixture: the output folder and its metrics."""
    import train

    out = tmp_path_factory.mktemp("smoke")
    metrics = train.train(train.TrainConfig(**FEW_RENDERINGS, data=str(FIXTURE), epochs=2, batch_size=32, out_dir=str(out), seed=1))
    return out, metrics


@pytest.fixture(scope="session")
def app_server():
    """`python app.py --port 0` as the README starts it, serving APP_MODEL; yields (host, port)."""
    process = subprocess.Popen([sys.executable, "app.py", "--port", "0", "--model", str(APP_MODEL)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        assert match, f"app.py printed {line!r}"
        yield match.group(1), int(match.group(2))
    finally:
        process.terminate()
        process.wait(timeout=20)

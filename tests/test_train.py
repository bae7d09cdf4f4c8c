"""A training smoke run on the fixture writes a loadable model, plot and metrics; files are replaced atomically."""

import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

import export
import pipeline
import train
from cli import ConfigError
from conftest import FEW_RENDERINGS, FIXTURE, ROOT


def test_smoke_run_writes_outputs(smoke_run):
    out, metrics = smoke_run
    import keras

    model = keras.saving.load_model(out / train.MODEL_FILE, compile=False)
    assert model.count_params() == 954_752
    assert getattr(model, "optimizer", None) is None
    with zipfile.ZipFile(out / train.MODEL_FILE) as archive:
        assert "optimizer" not in archive.read("config.json").decode()
    assert (out / train.LITERT_FILE).stat().st_size > 3_000_000
    assert (out / train.LITERT_INT8_FILE).stat().st_size < 1_500_000  # int8 weights: a quarter of the size

    with Image.open(out / train.HISTORY_FILE) as plot:
        assert plot.format == "PNG" and plot.width > 500

    saved = json.loads((out / train.METRICS_FILE).read_text())
    assert saved["config"]["epochs"] == 2 and saved["config"]["seed"] == 1
    assert 0 <= saved["test_accuracy"] <= 1
    assert len(saved["per_class_accuracy"]) == 10
    assert np.array(saved["confusion_matrix"]).sum() == saved["test_size"] == 100
    assert saved["train_size"] + saved["val_size"] == 300
    assert len(saved["epoch_seconds"]) == 2 and saved["wall_seconds"] > 0
    assert 0 <= saved["int8_test_accuracy"] <= 1 and 0 <= saved["int8_agreement_with_float"] <= 1
    assert set(saved["history"]) == {"accuracy", "loss", "cross_entropy",
                                     "val_accuracy", "val_loss", "val_cross_entropy"}
    assert saved["detector"]["file"] == "not_digit.tflite"  # the shipped detector, measured on this run's digits
    assert 0 <= saved["detector"]["test_digits_flagged"] <= 1 and 0 <= saved["detector"]["realistic_test_flagged"] <= 1
    assert not (out / "not_digit.tflite").exists()  # not the training run's: detector.py fits it
    assert saved == metrics


def test_precision_auto_times_both_and_records_the_faster(smoke_run):
    _, metrics = smoke_run  # the smoke run leaves --precision at its default, auto
    record = metrics["precision"]
    assert record["requested"] == "auto"
    assert set(record["step_seconds"]) == {"float32", "mixed_bfloat16"}
    assert all(0 < seconds < 10 for seconds in record["step_seconds"].values())
    assert record["chosen"] == min(record["step_seconds"], key=record["step_seconds"].get)
    assert metrics["config"]["precision"] == record["chosen"]


def test_seed_makes_a_run_repeatable(smoke_run, tmp_path, monkeypatch):
    """The same seed and precision give the same run; auto's timing steps, on a throwaway model, change nothing.

    On the way, fit() is checked to return a Fitted that describes the run.
    """
    out, metrics = smoke_run
    precision = metrics["config"]["precision"]
    fit, fits = train.fit, []
    monkeypatch.setattr(train, "fit", lambda *args: fits.append(fit(*args)) or fits[-1])
    again = train.train(train.TrainConfig(**FEW_RENDERINGS, data=metrics["data"], epochs=2, batch_size=32, out_dir=str(tmp_path), seed=1,
                                          precision=precision))
    assert again["precision"]["step_seconds"] is None  # given, so not measured
    assert again["history"] == metrics["history"]
    assert again["confusion_matrix"] == metrics["confusion_matrix"]

    [fitted] = fits
    assert isinstance(fitted, train.Fitted) and fitted.precision == (precision, None)
    assert fitted.history == again["history"] and len(fitted.epoch_seconds) == 2
    assert fitted.fit_seconds >= sum(fitted.epoch_seconds) * 0.9 and fitted.model.count_params() == 954_752


def test_below_target_accuracy_writes_the_set_and_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "filter_native_logs", lambda: None)  # keep pytest's stderr capture
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        train.main(["--data", str(FIXTURE), "--epochs", "1", "--realistic-renderings", "1", "--batch-size", "32", "--precision", "float32",
                    "--target-accuracy", "1", "--out-dir", str(out)])
    assert exit_.value.code == train.BELOW_TARGET_STATUS == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(train.OUTPUT_FILES)
    metrics = json.loads((out / train.METRICS_FILE).read_text())
    assert metrics["test_accuracy"] < 1 and metrics["config"]["target_accuracy"] == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("below target: ") and "written all the same" in lines[0], lines


def test_history_plot_shows_every_epoch_and_the_test_result():
    """The first epochs, far below the last, stay inside the axes (the old plot cut the y axis at 90%)."""
    from plots import ERROR_FLOOR, history_figure

    history = {"accuracy": [0.81, 0.96, 0.985], "val_accuracy": [0.853, 0.9877, 1.0],
               "loss": [1.09, 0.66, 0.56], "val_loss": [0.89, 0.58, 0.53],
               "cross_entropy": [0.7, 0.15, 0.05], "val_cross_entropy": [0.45, 0.05, 0.02]}
    figure = history_figure(history, test_accuracy=0.9953, test_loss=0.1027, label_smoothing=0.1)
    errors, losses = figure.axes
    low, high = errors.get_ylim()
    assert 0 < low <= ERROR_FLOOR and 1 - 0.81 <= high <= 1  # every error, 0 (drawn at the floor) to 19%
    assert errors.get_yscale() == "log"
    for ax in (errors, losses):
        assert ax.get_xlim()[0] < 1 and ax.get_xlim()[1] > 3
        for line in ax.get_lines():
            data = line.get_ydata()
            assert ax.get_ylim()[0] <= min(data) and max(data) <= ax.get_ylim()[1], line.get_label()
    labels = [line.get_label() for line in errors.get_lines()] + [line.get_label() for line in losses.get_lines()]
    assert any("99.53%" in label for label in labels) and any("0.1027" in label for label in labels)
    assert any("label smoothing 0.1" in label for label in labels)
    assert sum("cross-entropy" in label for label in labels) == 3  # training, validation, test
    dashed = [line for line in losses.get_lines() if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in dashed] == [history["cross_entropy"], history["val_cross_entropy"]]


def test_validation_is_held_out_of_training(small_mnist):
    x, y = small_mnist["x_train"], small_mnist["y_train"]
    (x_train, _), (x_val, _) = pipeline.split_validation(x, y, 0.1, seed=0)
    assert len(x_val) == 30 and len(x_train) == 270
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_val)


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--seed", "--learning-rate", "--out-dir", "--precision"):
        assert option in text
    assert text.count("(default:") >= 15


def test_inference_graph_is_the_same_function(small_mnist):
    """The int8 export's graph (batch norms moved past the pools, one folded into a Dense) computes the same."""
    import keras

    from model import build_model

    keras.utils.set_random_seed(3)
    model = build_model()
    for layer in model.layers:  # trained-looking batch norms: positive scales, nonzero statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            rng = np.random.default_rng(len(gamma))
            layer.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2, variance.shape)])
    images = small_mnist["x_test"][..., None].astype("float32")
    rearranged = export.inference_graph(model)
    assert rearranged is not model
    assert np.abs(rearranged.predict(images, verbose=0) - model.predict(images, verbose=0)).max() < 1e-5


@pytest.mark.parametrize("options, message", [
    (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--val-fraction", "1"], "--val-fraction must be"),
    (["--batch-size", "x"], "invalid int value"),
    (["--precision", "fp8"], "invalid choice"),
    (["--target-accuracy", "99.5"], "--target-accuracy must be at least 0 and at most 1"),
    (["--out-dir", "README.md"], "README.md: not a folder"),
    (["--out-dir", "README.md/models"], "cannot create the output folder"),
    (["--data", "nowhere.npz"], "nowhere.npz: no such file"),
])
def test_bad_arguments_are_refused_at_once_in_one_line(options, message, tmp_path):
    before = sorted(ROOT.iterdir())
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "train.py", "--out-dir", str(tmp_path / "out"), *options], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and time.perf_counter() - start < 10  # before TensorFlow starts
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert sorted(ROOT.iterdir()) == before


def test_offline_without_data_says_how_to_pass_it(tmp_path):
    """No cached download and no network: one line that names --data (and no TensorFlow log lines)."""
    env = {**os.environ, "HOME": str(tmp_path), "KERAS_HOME": str(tmp_path / ".keras"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "train.py", "--out-dir", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: could not download MNIST") and "--data" in lines[0]
    assert not (tmp_path / "out" / train.MODEL_FILE).exists()


def test_config_is_checked_when_built():
    with pytest.raises(ConfigError, match="--zoom"):
        train.TrainConfig(zoom=2.0)
    assert train.parse_args([]) == train.TrainConfig()
    assert train.parse_args([]).target_accuracy is None
    assert train.parse_args(["--target-accuracy", "0.995"]).target_accuracy == 0.995


def test_native_log_lines_are_dropped_and_the_rest_kept():
    import tflog

    assert tflog.is_native_log(b"I0000 00:00:1796223147.370338    6751 port.cc:153] oneDNN custom operations are on.")
    assert tflog.is_native_log(b"E0000 00:00:1796223150.993457    6751 cuda_platform.cc:52] failed call to cuInit")
    assert tflog.is_native_log(b"W1202 14:52:36.716523  6751 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.")
    assert not tflog.is_native_log(b"F0000 00:00:1796223150.993457    6751 x.cc:1] Check failed: a fatal error")
    assert not tflog.is_native_log(b"train.py:10: UserWarning: a real warning")
    assert not tflog.is_native_log(b"Traceback (most recent call last):")

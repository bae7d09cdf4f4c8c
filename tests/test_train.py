"""A training smoke run on the fixture writes a loadable model, plot and metrics; files are replaced atomically."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

import train


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
    assert saved == metrics


def test_seed_makes_a_run_repeatable(smoke_run, tmp_path):
    out, metrics = smoke_run
    again = train.train(train.parse_args(
        ["--data", metrics["data"], "--epochs", "2", "--batch-size", "32", "--out-dir", str(tmp_path), "--seed", "1"]))
    assert again["history"] == metrics["history"]
    assert again["confusion_matrix"] == metrics["confusion_matrix"]


def test_validation_is_held_out_of_training(small_mnist):
    x, y = small_mnist["x_train"], small_mnist["y_train"]
    (x_train, _), (x_val, _) = train.split_validation(x, y, 0.1, seed=0)
    assert len(x_val) == 30 and len(x_train) == 270
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_val)


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "mnist_cnn.keras"
    target.write_bytes(b"the good model")

    def interrupted(tmp):
        open(tmp, "wb").write(b"half a mod")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.atomic_write(str(target), interrupted)
    assert target.read_bytes() == b"the good model"
    assert [p.name for p in tmp_path.iterdir()] == ["mnist_cnn.keras"]  # no temporary file left behind


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
    rearranged = train.inference_graph(model)
    assert rearranged is not model
    assert np.abs(rearranged.predict(images, verbose=0) - model.predict(images, verbose=0)).max() < 1e-5

"""Temperature scaling and its measures (calibration.py), and folding T into the network (train.py)."""

import numpy as np
import pytest

import calibration


def synthetic(temperature, count=20_000, seed=0):
    """Logits whose labels are drawn from softmax(logits / temperature): T is what fits them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (count, 10))
    p = calibration.softmax(logits / temperature)
    labels = (p.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fitting_recovers_a_known_temperature(temperature):
    logits, labels = synthetic(temperature)
    assert calibration.fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_the_fitted_temperature_minimises_the_nll():
    logits, labels = synthetic(1.7, count=3000, seed=1)
    best = calibration.fit_temperature(logits, labels)
    nll = calibration.logits_nll(logits, labels, best)
    assert all(calibration.logits_nll(logits, labels, best * f) > nll for f in (0.9, 0.97, 1.03, 1.1))
    assert nll == pytest.approx(calibration.negative_log_likelihood(calibration.softmax(logits / best), labels))


def test_ece_of_a_known_case():
    # 10 predictions at confidence 0.9 of which 6 right (gap 0.3), 10 at 0.55 of which 5 right (gap 0.05)
    high = np.full((10, 10), 0.1 / 9)
    high[:, 0] = 0.9
    low = np.full((10, 10), 0.45 / 9)
    low[:, 1] = 0.55
    probabilities = np.concatenate([high, low])
    labels = np.array([0] * 6 + [5] * 4 + [1] * 5 + [5] * 5)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx((10 * 0.3 + 10 * 0.05) / 20)
    counts, confidence, accuracy = calibration.reliability_bins(probabilities, labels)
    assert counts.sum() == 20 and counts[13] == 10 and counts[8] == 10  # (13/15, 14/15] and (8/15, 9/15]
    assert accuracy[13] == pytest.approx(0.6) and confidence[8] == pytest.approx(0.55)


def test_a_perfectly_calibrated_model_has_a_small_ece():
    logits, labels = synthetic(1.0, count=50_000, seed=2)
    assert calibration.expected_calibration_error(calibration.softmax(logits), labels) < 0.01
    assert calibration.expected_calibration_error(calibration.softmax(logits / 0.5), labels) > 0.05


def test_folding_the_temperature_into_the_last_layer(small_mnist):
    """The folded network gives softmax(logits / T), with the same argmax and the same layers."""
    import keras

    import train
    from model import build_model

    keras.utils.set_random_seed(4)
    model = build_model()
    images = small_mnist["x_test"][:64]
    logits = train.logits(model, images)
    before = model.predict(images[..., None].astype("float32"), verbose=0)
    assert np.abs(calibration.softmax(logits) - before).max() < 1e-5
    shapes = [w.shape for w in model.get_weights()]
    train.fold_temperature(model, 0.4)
    after = model.predict(images[..., None].astype("float32"), verbose=0)
    assert np.abs(calibration.softmax(logits / 0.4) - after).max() < 1e-5
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()
    assert [w.shape for w in model.get_weights()] == shapes and model.count_params() == 954_752


def test_reliability_diagram_is_written(tmp_path):
    from PIL import Image

    logits, labels = synthetic(1.0, count=2000, seed=3)
    calibration.plot_reliability({"a": (calibration.softmax(logits), labels),
                                  "b": (calibration.softmax(logits / 2), labels)}, tmp_path / "r.png")
    with Image.open(tmp_path / "r.png") as image:
        assert image.format == "PNG" and image.width > 800

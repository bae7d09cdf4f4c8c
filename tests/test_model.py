"""The network is exactly the reference table of DEVELOPERS.md."""

from model import build_model

# (layer class, output shape without the batch axis, parameter count), in order.
REFERENCE = [
    ("Rescaling", (28, 28, 1), 0),
    ("Conv2D", (28, 28, 32), 320),
    ("BatchNormalization", (28, 28, 32), 128),
    ("MaxPooling2D", (14, 14, 32), 0),
    ("Dropout", (14, 14, 32), 0),
    ("Conv2D", (14, 14, 64), 18_496),
    ("BatchNormalization", (14, 14, 64), 256),
    ("MaxPooling2D", (7, 7, 64), 0),
    ("Dropout", (7, 7, 64), 0),
    ("Flatten", (3136,), 0),
    ("Dense", (254,), 796_798),
    ("BatchNormalization", (254,), 1_016),
    ("Dense", (512,), 130_560),
    ("BatchNormalization", (512,), 2_048),
    ("Dropout", (512,), 0),
    ("Dense", (10,), 5_130),
]


def test_layers_in_order_with_reference_shapes_and_parameters():
    model = build_model()
    actual = [(type(layer).__name__, tuple(layer.output.shape[1:]), layer.count_params()) for layer in model.layers]
    assert actual == REFERENCE


def test_parameter_totals():
    model = build_model()
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    assert model.count_params() == 954_752
    assert non_trainable == 1_724


def test_takes_raw_pixels_and_returns_probabilities():
    import numpy as np

    model = build_model()
    assert model.layers[0].scale == 1 / 255  # raw 0-255 pixels in, scaled by the model itself
    assert model.layers[-1].activation.__name__ == "softmax"
    probabilities = model(np.full((2, 28, 28, 1), 255.0, np.float32), training=False).numpy()
    assert probabilities.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

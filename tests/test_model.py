"""The network is exactly the reference table of DEVELOPERS.md."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fused_batch_norm import FusedBatchNormalization
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
    model = build_model()
    assert model.layers[0].scale == 1 / 255  # raw 0-255 pixels in, scaled by the model itself
    assert model.layers[-1].activation.__name__ == "softmax"
    probabilities = model(np.full((2, 28, 28, 1), 255.0, np.float32), training=False).numpy()
    assert probabilities.shape == (2, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 14, 14, 8), (32, 254)])
def test_fused_batch_norm_trains_like_the_stock_layer(shape):
    """The faster training-time layer gives the stock layer's outputs, gradients and statistics."""
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(2.0, 3.0, shape), tf.float32)
    upstream = tf.constant(rng.normal(size=shape), tf.float32)  # an arbitrary gradient from above
    gamma, beta = rng.uniform(0.5, 1.5, shape[-1]), rng.normal(size=shape[-1])
    results = []
    for layer in (keras.layers.BatchNormalization(), FusedBatchNormalization()):
        layer.build(shape)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, training=True) * upstream)
        gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
        results.append([layer(inputs, training=True), *gradients, layer.moving_mean, layer.moving_variance,
                        layer(inputs, training=False)])
    for stock, fused in zip(*results):
        np.testing.assert_allclose(np.asarray(fused), np.asarray(stock), rtol=1e-4, atol=1e-5)


def test_fused_model_shares_the_stock_weights():
    stock, fused = build_model(), build_model(batch_norm=FusedBatchNormalization)
    assert [type(layer).__name__ for layer in fused.layers].count("FusedBatchNormalization") == 4
    assert [w.shape for w in fused.weights] == [w.shape for w in stock.weights]
    fused.set_weights(stock.get_weights())
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(fused(pixels, training=False).numpy(), stock(pixels, training=False).numpy(), atol=1e-6)

"""The LiteRT exports of a trained model: float32, and int8 weights on a graph rearranged for inference.

    export_litert(model, "mnist_cnn.tflite")
    export_litert_int8(model, "mnist_cnn_int8.tflite")
    int8_metrics("mnist_cnn_int8.tflite", "mnist_cnn.tflite", x_test, y_test)
"""

import tempfile
from pathlib import Path

import numpy as np

# TensorFlow and Keras are imported inside the functions that use them: importing this module does no work.


def export_litert(model, path):
    """Export `model` for the LiteRT interpreter, which inference.py uses instead of TensorFlow."""
    model.export(path, format="litert", verbose=False)


def export_litert_int8(model, path, rearrange=True):
    """Export `model` for LiteRT with int8 weights (dynamic-range quantisation).

    Activations are quantised on the fly, so no calibration data is needed; on a CPU
    with VNNI the network runs about 2.5x faster than in float32 (README: Inference speed).
    The exported graph is inference_graph(model), the same function with fewer operations,
    or (rearrange=False, for a network other than the reference one) the model as it is.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as saved:
        (inference_graph(model) if rearrange else model).export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        Path(path).write_bytes(converter.convert())


def inference_graph(model):
    """The reference network rearranged for inference: the same function, a third fewer operations.

    Each convolutional block is Conv-ReLU-BatchNorm-MaxPool. At inference a batch norm is a
    per-channel a*x + b, and with a > 0 it commutes with the max-pool, so it runs on the
    pooled map (a quarter of the values). The second one then folds into the first Dense
    layer's weights. The converter folds the rest (the dense batch norms, the input scaling).
    Falls back to the network as it is when some a <= 0.
    """
    import keras
    from keras import layers

    rescale, conv1, norm1, _, _, conv2, norm2, _, _, flatten, dense1, *rest = model.layers
    scale1, shift1 = batch_norm_affine(norm1)
    scale2, shift2 = batch_norm_affine(norm2)
    if (scale1 <= 0).any() or (scale2 <= 0).any():
        return model
    kernel, bias = dense1.get_weights()
    cells = kernel.shape[0] // len(scale2)  # Flatten puts the channels last: 7 x 7 cells of 64
    folded = layers.Dense(dense1.units, activation=dense1.activation, name="dense_with_batch_norm")
    pixels = keras.Input(shape=model.input_shape[1:], name="pixels")
    x = layers.MaxPooling2D(2, name="pool_1")(conv1(rescale(pixels)))
    x = layers.Rescaling(scale1, shift1, name="pooled_batch_norm")(x)
    x = flatten(layers.MaxPooling2D(2, name="pool_2")(conv2(x)))
    x = folded(x)
    folded.set_weights([kernel * np.tile(scale2, cells)[:, None], bias + np.tile(shift2, cells) @ kernel])
    for layer in rest:
        x = layer(x)
    return keras.Model(pixels, x)


def batch_norm_affine(layer):
    """A BatchNormalization layer at inference as (a, b): x -> a * x + b per channel."""
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in layer.get_weights())
    scale = gamma / np.sqrt(variance + layer.epsilon)
    return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)


def int8_metrics(path, float_path, x, y):
    """Test accuracy of the int8 export and how often it agrees with the float one."""
    from classifier import Classifier

    int8 = Classifier(path)(x).argmax(axis=1)
    float32 = Classifier(float_path)(x).argmax(axis=1)
    return {"int8_test_accuracy": float(np.mean(int8 == y)), "int8_agreement_with_float": float(np.mean(int8 == float32))}

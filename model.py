"""The reference network: a small Conv-BN-Pool-Dropout CNN for 28x28 MNIST digits."""

import keras
import tensorflow as tf
from keras import layers

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class FusedBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose training step runs TensorFlow's fused kernel.

    Keras 3 normalises a training batch with a chain of separate float32 ops (moments,
    casts, scale and shift, and their gradients): on a 2-core CPU that is a third of
    the whole training step. The fused kernel does the same in one pass, which makes
    an epoch 1.3-1.7x faster. Same weights and the same maths, so train.py trains
    with this layer and saves the stock one; outside training it is the stock code.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.axis not in (-1, len(inputs.shape) - 1):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        images = tf.reshape(inputs, [-1, 1, 1, channels]) if len(inputs.shape) == 2 else inputs
        normalised, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
            images, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
        # The kernel returns the unbiased batch variance; Keras averages the biased one.
        count = tf.cast(tf.size(images) // channels, variance.dtype)
        variance = variance * (count - 1) / count
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum + batch * (1 - self.momentum))
        return tf.reshape(normalised, tf.shape(inputs))


def build_model(conv_dropout=0.25, dense_dropout=0.5, fused_batch_norm=False):
    """Return the reference network (954,752 parameters, 1,724 non-trainable).

    It takes raw pixels in MNIST polarity (light digit on dark, 0-255) and scales
    them itself, so the saved .keras file is usable without our preprocessing.

    Args:
        conv_dropout: dropout rate after each convolutional block.
        dense_dropout: dropout rate before the classifier.
        fused_batch_norm: train faster with FusedBatchNormalization; the weights
            carry over to the stock model, which is the one to save.
    """
    batch_norm = FusedBatchNormalization if fused_batch_norm else layers.BatchNormalization
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="pixels"),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            batch_norm(),
            layers.MaxPooling2D(2),
            layers.Dropout(conv_dropout),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            batch_norm(),
            layers.MaxPooling2D(2),
            layers.Dropout(conv_dropout),
            layers.Flatten(),
            layers.Dense(254, activation="relu"),
            batch_norm(),
            layers.Dense(512, activation="relu"),
            batch_norm(),
            layers.Dropout(dense_dropout),
            layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32"),
        ],
        name="mnist_cnn",
    )

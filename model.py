"""The reference network: a small Conv-BN-Pool-Dropout CNN for 28x28 MNIST digits."""

import keras
from keras import layers

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


def build_model(conv_dropout=0.25, dense_dropout=0.5, batch_norm=layers.BatchNormalization):
    """Return the reference network (954,752 parameters, 1,724 non-trainable).

    It takes raw pixels in MNIST polarity (light digit on dark, 0-255) and scales
    them itself, so the saved .keras file is usable without our preprocessing.

    Args:
        conv_dropout: dropout rate after each convolutional block.
        dense_dropout: dropout rate before the classifier.
        batch_norm: the batch normalisation layer class. train.py trains with
            fused_batch_norm.FusedBatchNormalization (faster, the same weights)
            and saves the model with the stock layer.
    """
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

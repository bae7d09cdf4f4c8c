"""Training augmentation keeps digits recognisable, is repeatable, and never touches evaluation or inference."""

import numpy as np
import tensorflow as tf

import pipeline
import train
from inference import predict


def augmented(images, seed, **overrides):
    config = train.TrainConfig(**overrides)
    batch = tf.constant(images[..., None], tf.float32)
    return pipeline.augment_batch(batch, tf.constant([seed, 0], tf.int64), config).numpy()[..., 0]


def test_augmented_digits_are_still_recognised(shipped_model, small_mnist):
    x, y = small_mnist["x_test"], small_mnist["y_test"]
    clean = np.mean([p.digit == label for p, label in zip(predict(list(x)), y)])
    for seed in range(3):
        images = augmented(x, seed)
        assert np.abs(images - x).mean() > 5  # the digits really were changed
        accuracy = np.mean([p.digit == label for p, label in zip(predict(list(images)), y)])
        assert accuracy >= clean - 0.03, f"seed {seed}: {accuracy:.0%} vs {clean:.0%} unaugmented"


def test_augmentation_is_repeatable_and_seeded(small_mnist):
    x = small_mnist["x_test"][:16]
    assert np.array_equal(augmented(x, 5), augmented(x, 5))
    assert not np.array_equal(augmented(x, 5), augmented(x, 6))
    assert np.array_equal(augmented(x, 5, rotation=0, zoom=0, shear=0, squeeze=0, shift=0, stroke=0), x.astype(np.float32))


def test_no_augmentation_at_evaluation_or_inference(small_mnist):
    from model import build_model

    model = build_model()
    assert not [layer for layer in model.layers if layer.__class__.__name__.startswith("Random")]
    image = small_mnist["x_test"][:1, ..., None].astype(np.float32)
    assert np.array_equal(model.predict(image, verbose=0), model.predict(image, verbose=0))
    # --no-augment yields the training digits exactly as they are, only reordered.
    config = train.TrainConfig(augment=False, batch_size=50, epochs=1)
    x, y = small_mnist["x_train"], small_mnist["y_train"]
    images = np.concatenate([batch[0].numpy()[..., 0] for batch in pipeline.make_train_dataset(x, y, config)])
    assert sorted(map(bytes, images.astype(np.uint8))) == sorted(map(bytes, x))


def ink_extent(image):
    """(height, width) of the pixels above half strength."""
    rows, cols = np.nonzero(image > 127)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def test_squeeze_makes_digits_narrower_or_flatter_only(small_mnist):
    x = small_mnist["x_test"][:64]
    still = dict(rotation=0, zoom=0, shear=0, shift=0, stroke=0)
    squeezed = augmented(x, 3, squeeze=0.5, **still)
    narrower = flatter = 0
    for before, after in zip(x, squeezed):
        (h0, w0), (h1, w1) = ink_extent(before), ink_extent(after)
        assert h1 <= h0 + 1 and w1 <= w0 + 1  # never larger
        narrower += w1 < w0 - 1 and h1 >= h0 - 1
        flatter += h1 < h0 - 1 and w1 >= w0 - 1
    assert narrower >= 10 and flatter >= 10  # both ways, about a third of them each by a visible amount
    assert np.array_equal(augmented(x, 3, squeeze=0, **still), x.astype(np.float32))


def test_elastic_distortion_bends_strokes_without_losing_them(shipped_model, small_mnist):
    x, y = small_mnist["x_test"][:64], small_mnist["y_test"][:64]
    still = dict(rotation=0, zoom=0, shear=0, squeeze=0, shift=0, stroke=0)
    warped = augmented(x, 4, elastic=12.0, **still)
    assert np.array_equal(warped, augmented(x, 4, elastic=12.0, **still))
    assert not np.array_equal(warped, augmented(x, 5, elastic=12.0, **still))
    assert np.abs(warped - x).mean() > 3  # the strokes moved...
    ink = warped.sum(axis=(1, 2)) / x.sum(axis=(1, 2))
    # ...but were bent, not erased or smeared: a stroke squeezed here is stretched there
    assert 0.95 < ink.mean() < 1.05 and ink.min() > 0.7
    accuracy = np.mean([p.digit == label for p, label in zip(predict(list(warped)), y)])
    assert accuracy >= 0.9


def test_elastic_distortion_resamples_once_with_the_affine_map(small_mnist):
    # with a vanishing field the combined sampler gives what the affine transform alone gives
    x = small_mnist["x_test"][:64]
    assert np.abs(augmented(x, 3, elastic=1e-6) - augmented(x, 3)).max() < 0.01

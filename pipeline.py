"""The training input: the validation split, augmentation, and the tf.data pipeline of epochs.

    (x_train, y_train), (x_val, y_val) = split_validation(x, y, config.val_fraction, config.seed)
    dataset = make_train_dataset(x_train, y_train, config)   # config.epochs epochs of batches

`config` is a train.TrainConfig (the augmentation ranges, batch size, epochs and seed).
"""

import math

import numpy as np

# TensorFlow is imported inside the functions that use it: importing this module does no work.

VAL_FRACTION = 0.1  # share of MNIST's training digits held out: 6,000, enough to tell 0.05 points apart
STEPS_PER_EXECUTION = 16  # run 16 training steps per call into TensorFlow: less Python overhead per step
ELASTIC_SIGMA = 4.0  # pixels: the smoothness of elastic distortion's displacement field (Simard et al. 2003)


def split_validation(x, y, fraction, seed):
    """Hold a random, seeded share of the training set out for validation."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, round(len(x) * fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def augment_batch(images, seed, config):
    """Randomly rotate, scale, squeeze, shear, shift, elastically distort (when asked) and
    thin/thicken a batch of 28x28x1 images.

    Stateless random ops keyed by `seed` keep a seeded run repeatable even though
    batches are augmented in parallel.
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 6)

    def uniform(i, limit):
        return tf.random.stateless_uniform([n], seeds[i], -limit, limit)

    def uniform_apart(i, limit):  # a stream of its own: the six above draw what they drew before it
        return tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(seed, i), -limit, limit)

    angle = uniform(0, math.radians(config.rotation))
    scale = 1.0 + uniform(1, config.zoom)
    shear = uniform(2, config.shear)
    shift_x, shift_y = uniform(3, config.shift), uniform(4, config.shift)
    # Squeeze: below 0 narrower (a narrow digit in MNIST form), above 0 flatter (a wide one,
    # fitted to its width).
    squeeze = uniform_apart(6, config.squeeze)
    narrower, flatter = 1 - tf.maximum(-squeeze, 0), 1 - tf.maximum(squeeze, 0)
    # The transform maps output pixel coordinates to input ones, about the image centre.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    a0, a1 = cos / narrower, (-sin + shear * cos) / narrower
    b0, b1 = sin / flatter, (cos + shear * sin) / flatter
    c = 13.5
    a2 = c - a0 * c - a1 * c - shift_x
    b2 = c - b0 * c - b1 * c - shift_y
    if config.elastic > 0:
        # The elastic field moves where each output pixel reads from, on top of the affine map:
        # one resampling for both, as a second one would blur every stroke again.
        field = elastic_field(n, tf.random.experimental.stateless_fold_in(seed, 7), config.elastic)
        rows, cols = tf.meshgrid(tf.range(28.0), tf.range(28.0), indexing="ij")

        def affine(p0, p1, p2):
            return p0[:, None, None] * cols + p1[:, None, None] * rows + p2[:, None, None]

        images = sample_bilinear(images, affine(b0, b1, b2) + field[..., 0], affine(a0, a1, a2) + field[..., 1])
    else:
        zeros = tf.zeros([n])
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[28, 28], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")
    # Stroke width: blend towards a 3x3 dilation (thicker) or erosion (thinner).
    amount = tf.reshape(uniform(5, config.stroke), [n, 1, 1, 1])
    thicker = tf.nn.max_pool2d(images, 3, 1, "SAME")
    thinner = -tf.nn.max_pool2d(-images, 3, 1, "SAME")
    target = tf.where(amount > 0, thicker, thinner)
    return images + tf.abs(amount) * (target - images)


def elastic_field(n, seed, alpha):
    """A smooth random displacement per pixel, [n, 28, 28, (rows, cols)]: uniform noise,
    Gaussian-blurred, times `alpha` (Simard et al. 2003's elastic distortion)."""
    import tensorflow as tf

    noise = tf.random.stateless_uniform([n, 28, 28, 2], seed, -1.0, 1.0)
    radius = int(3 * ELASTIC_SIGMA)
    taps = tf.exp(-tf.range(-radius, radius + 1, dtype=tf.float32) ** 2 / (2 * ELASTIC_SIGMA**2))
    taps = tf.tile((taps / tf.reduce_sum(taps))[:, None, None], [1, 2, 1])  # one kernel per field channel
    field = tf.nn.depthwise_conv2d(noise, taps[None], [1, 1, 1, 1], "SAME")  # blur along x...
    return alpha * tf.nn.depthwise_conv2d(field, taps[:, None], [1, 1, 1, 1], "SAME")  # ...then y


def sample_bilinear(images, rows, cols):
    """images [n, 28, 28, 1] read at fractional positions rows, cols [n, 28, 28]; 0 outside."""
    import tensorflow as tf

    n = tf.shape(images)[0]
    pixels = tf.reshape(images, [n, 28 * 28])

    def at(row, col):
        inside = (row >= 0) & (row <= 27) & (col >= 0) & (col <= 27)
        index = tf.cast(tf.clip_by_value(row, 0, 27) * 28 + tf.clip_by_value(col, 0, 27), tf.int32)
        values = tf.gather(pixels, tf.reshape(index, [n, -1]), batch_dims=1)
        return tf.where(inside, tf.reshape(values, [n, 28, 28]), 0.0)

    row0, col0 = tf.floor(rows), tf.floor(cols)
    wr, wc = rows - row0, cols - col0
    top = (1 - wc) * at(row0, col0) + wc * at(row0, col0 + 1)
    bottom = (1 - wc) * at(row0 + 1, col0) + wc * at(row0 + 1, col0 + 1)
    return ((1 - wr) * top + wr * bottom)[..., None]


def epoch_steps(n_images, batch_size):
    """Training steps per epoch: whole batches, in whole runs of STEPS_PER_EXECUTION.

    Keras runs steps in groups of steps_per_execution; an epoch that is not a whole
    number of groups would eat into the next epoch's data. The few images left over
    differ from epoch to epoch, as each epoch is shuffled anew.
    """
    steps = n_images // batch_size
    return steps - steps % STEPS_PER_EXECUTION if steps >= STEPS_PER_EXECUTION else steps


def make_train_dataset(x, y, config):
    """A tf.data pipeline of config.epochs epochs of (pixels, one-hot labels) batches.

    Each epoch is shuffled and augmented in one vectorised step, so augmentation
    costs about a second an epoch instead of competing with training for the cores.
    """
    import tensorflow as tf

    images = tf.constant(x[..., None], dtype=tf.float32)
    labels = tf.one_hot(y, 10)

    def epoch(seed):
        shuffle_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        order = tf.random.experimental.stateless_shuffle(tf.range(len(x)), shuffle_seed)
        epoch_images = tf.gather(images, order)
        if config.augment:
            epoch_images = augment_batch(epoch_images, augment_seed, config)
        epoch_data = tf.data.Dataset.from_tensor_slices((epoch_images, tf.gather(labels, order)))
        return epoch_data.batch(config.batch_size, drop_remainder=True).take(epoch_steps(len(x), config.batch_size))

    # Exactly config.epochs epochs, and no autotuning: either an endless dataset or
    # tf.data's autotuner thread can hold fit() idle for ~15 s at the end while the
    # pipeline shuts down. The pipeline is fixed, so there is nothing to tune.
    options = tf.data.Options()
    options.autotune.enabled = False
    epoch_seeds = tf.data.Dataset.random(seed=config.seed).batch(2).take(config.epochs)
    return epoch_seeds.flat_map(epoch).prefetch(2).with_options(options)

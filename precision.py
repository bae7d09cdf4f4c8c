"""The dtype policy to train in: the one that runs this network's training step fastest here, measured.

    precision = choose_precision("auto", make_model, images, labels)
    precision.policy         # "float32" or "mixed_bfloat16"
    precision.step_seconds   # {"float32": 0.041, "mixed_bfloat16": 0.033}, or None when not measured

Which is faster depends on more than a CPU flag: mixed bfloat16 was 1.2-1.7x faster on an
AMD EPYC with AVX-512 BF16 and 1.3x slower on an Intel Xeon with the same flag. So a few
real training steps decide.
"""

import time
from contextlib import contextmanager
from typing import NamedTuple, Optional

POLICIES = ("float32", "mixed_bfloat16")
TIMED_STEPS = 3  # after one untimed step, which traces the graph


class Precision(NamedTuple):
    """The policy chosen, and the seconds per training step it was chosen on (None: given, not measured)."""

    policy: str
    step_seconds: Optional[dict]


def choose_precision(requested, make_model, images, labels):
    """Return the Precision to train in.

    Args:
        requested: "auto" to measure, or a policy name, which is returned as it is.
        make_model: builds and compiles a throwaway copy of the network to time; it is
            called once per policy, under that policy.
        images, labels: one real training batch.
    The global dtype policy is float32 again afterwards. The measurement draws random
    numbers (initial weights, dropout): seed the real run after it.
    """
    if requested != "auto":
        return Precision(requested, None)
    seconds = {policy: step_seconds(policy, make_model, images, labels) for policy in POLICIES}
    return Precision(min(seconds, key=seconds.get), seconds)


def step_seconds(policy, make_model, images, labels):
    """The fastest of TIMED_STEPS training steps of a fresh model under `policy`, in seconds."""
    with global_policy(policy):
        model = make_model()
        model.train_on_batch(images, labels)
        times = []
        for _ in range(TIMED_STEPS):
            start = time.perf_counter()
            model.train_on_batch(images, labels)  # returns numbers, so the step has finished
            times.append(time.perf_counter() - start)
    return round(min(times), 4)


@contextmanager
def global_policy(policy):
    """Build and train layers under Keras's dtype `policy`; float32, the default, again afterwards,
    also when training fails (a later model would otherwise be built in bfloat16)."""
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")

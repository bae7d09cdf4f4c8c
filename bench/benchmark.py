"""Benchmark training: throughput against the arithmetic floor, and accuracy over seeds.

    python -m bench.benchmark throughput --data ../shared/data/mnist.npz
    python -m bench.benchmark accuracy --data ../shared/data/mnist.npz --seeds 0 1 2 [--target-accuracy 0.997]
                                       [-- TRAIN.PY OPTIONS]

With --target-accuracy, each run checks itself (train.py --target-accuracy); every seed still
runs, and the benchmark exits with train.py's status 3 if any seed landed below the target.

Benchmarks measure; they are not tests and the test suite never runs them.
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def forward_macs(model):
    """Multiply-adds of one forward pass, counted from the convolution and dense layers."""
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            h, w, out_channels = layer.output.shape[1:]
            kh, kw, in_channels, _ = layer.kernel.shape
            macs += h * w * out_channels * kh * kw * in_channels
        elif kind == "Dense":
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return macs


def matmul_gflops(tf, dtype, n=2048, repeats=10):
    """Measured matrix-multiply speed of this CPU, the practical peak for this network's work."""
    a = tf.random.normal([n, n], dtype=tf.float32)
    a = tf.cast(a, dtype)
    tf.matmul(a, a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.matmul(a, a).numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def throughput(args):
    import keras
    import tensorflow as tf

    from keras import layers

    import train
    from data import load_mnist
    from fused_batch_norm import FusedBatchNormalization
    from model import build_model
    from pipeline import epoch_steps, make_train_dataset

    (x, y), _ = load_mnist(args.data)
    x, y = x[:54_000], y[:54_000]
    flops_per_image = 3 * 2 * forward_macs(build_model())  # forward + backward ~ 3x forward
    peak = matmul_gflops(tf, tf.float32)
    floor = flops_per_image * 60_000 / (peak * 1e9)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; TensorFlow {tf.__version__}")
    print(f"work: {flops_per_image / 1e6:.1f} MFLOP per training image, {flops_per_image * 60_000 / 1e12:.2f} TFLOP "
          f"per 60,000-image epoch")
    print(f"float32 matmul: {peak:.0f} GFLOP/s measured -> floor {floor:.1f} s per epoch\n")
    print("| precision | batch norm | augmentation | batch | images/s | s per epoch | x floor |")
    print("|---|---|---|---|---|---|---|")
    for precision, fused, augment in itertools.product(args.precisions, (True, False), (False, True)):
        keras.mixed_precision.set_global_policy(precision)
        run = train.TrainConfig(epochs=1, batch_size=args.batch_size, augment=augment)
        steps = epoch_steps(len(x), args.batch_size)
        model = build_model(batch_norm=FusedBatchNormalization if fused else layers.BatchNormalization)
        train.compile_model(model, steps, run)
        stamps = []  # (step, time) at the end of each group of steps_per_execution steps
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda step, logs: stamps.append((step, time.perf_counter())))
        model.fit(make_train_dataset(x, y, run), steps_per_epoch=steps, epochs=1,
                  callbacks=[record], shuffle=False, verbose=0)
        (first_step, start), (last_step, end) = stamps[1], stamps[-1]  # the first group traces
        rate = (last_step - first_step) * args.batch_size / (end - start)
        print(f"| {precision} | {'fused' if fused else 'Keras'} | {'on' if augment else 'off'} | {args.batch_size} | "
              f"{rate:,.0f} | {60_000 / rate:.1f} | {60_000 / rate / floor:.1f} |", flush=True)


def accuracy(args, train_options):
    """Train once per seed with train.py; print a table. Returns train.py's below-target status if a seed missed."""
    from train import BELOW_TARGET_STATUS

    rows, missed = [], []
    for seed in args.seeds:
        out = ROOT / "runs" / "bench" / f"seed{seed}"
        command = [sys.executable, str(ROOT / "train.py"), "--seed", str(seed), "--out-dir", str(out), *train_options]
        if args.data:
            command += ["--data", args.data]
        if args.target_accuracy is not None:
            command += ["--target-accuracy", str(args.target_accuracy)]
        start = time.perf_counter()
        status = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
        wall = time.perf_counter() - start
        if status not in (0, BELOW_TARGET_STATUS):
            sys.exit(f"error: train.py failed for seed {seed} (exit status {status})")
        metrics = json.loads((out / "metrics.json").read_text())
        rows.append((seed, metrics, wall))
        if status == BELOW_TARGET_STATUS:
            missed.append(seed)
        print(f"seed {seed}: test {metrics['test_accuracy']:.2%}, val {metrics['val_accuracy']:.2%}, "
              f"{wall:.0f} s{', below the target' if status else ''}", flush=True)
    config = rows[0][1]["config"]
    print(f"\ntrain.py {' '.join(train_options) or '(defaults)'}: {config['epochs']} epochs, batch {config['batch_size']}, "
          f"{config['precision']}; {rows[0][1]['hardware']}\n")
    print("| seed | test accuracy | validation accuracy | wall time | s per epoch (median) |")
    print("|---|---|---|---|---|")
    for seed, metrics, wall in rows:
        print(f"| {seed} | {metrics['test_accuracy']:.2%} | {metrics['val_accuracy']:.2%} | {wall / 60:.1f} min | "
              f"{statistics.median(metrics['epoch_seconds']):.1f} |")
    tests = [m["test_accuracy"] * 100 for _, m, _ in rows]
    spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
    print(f"| mean ± sd | {statistics.mean(tests):.2f} ± {spread:.2f}% | | "
          f"{statistics.mean(w for *_, w in rows) / 60:.1f} min | |")
    if missed:
        print(f"\nbelow --target-accuracy {args.target_accuracy:.2%}: seed {', '.join(map(str, missed))}")
        return BELOW_TARGET_STATUS
    return 0


def main():
    argv = sys.argv[1:]
    train_options = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    speed = commands.add_parser("throughput", help="training images per second against the floor")
    speed.add_argument("--data", help="mnist.npz or IDX folder (default: Keras download)")
    speed.add_argument("--batch-size", type=int, default=128)
    speed.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    seeds = commands.add_parser("accuracy", help="full training runs over seeds")
    seeds.add_argument("--data", help="mnist.npz or IDX folder (default: Keras download)")
    seeds.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    seeds.add_argument("--target-accuracy", type=float,
                       help="passed to each train.py run: a test accuracy (0-1) below it fails the benchmark")
    args = parser.parse_args(argv)
    if getattr(args, "target_accuracy", None) is not None and not 0 <= args.target_accuracy <= 1:
        parser.error(f"--target-accuracy must be between 0 and 1 (0.997 for 99.7%), not {args.target_accuracy}")
    if args.command == "throughput":
        throughput(args)
    else:
        sys.exit(accuracy(args, train_options))


if __name__ == "__main__":
    main()

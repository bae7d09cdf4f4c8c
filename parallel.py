"""Decode and preprocess many inputs across cores, in order, with memory that stays flat.

    for batch in prepare_many(sources):
        batch.sources  # up to CHUNK inputs, as given
        batch.images   # their 28x28 model inputs, one row each (zeros where one failed)
        batch.errors   # per input: None, or the ImageError that stopped it

Inputs already in memory (arrays, PIL images) are decoded here, and those already in
MNIST's form are kept as they are, checked for a whole chunk at once (an N x 28 x 28
uint8 array never takes a Python step per image). Everything else (files, bytes,
pictures that need the full pipeline) goes to worker processes in small tasks, a few
chunks ahead of the consumer, so a million files never sit in memory at once.
"""

import contextlib
import os
import queue
import threading
from collections import deque
from concurrent.futures import BrokenExecutor
from itertools import islice
from typing import List, NamedTuple, Optional

import numpy as np

from classifier import cores
from decode import Picture, decode
from errors import ImageError
from preprocess import SIZE, Trace, mnist_form, to_mnist

CHUNK = 256  # inputs read and classified together
STACK_CHUNK = 512  # rows of an N x 28 x 28 array checked and classified together
TASK = 32  # inputs per task sent to a worker: enough to hide the cost of sending it
AHEAD = 2  # chunks in flight while the consumer classifies: keeps the workers busy, memory bounded
PARALLEL_MIN = 32  # until this many inputs needed real work, they are done in this process (no start-up)


class Prepared(NamedTuple):
    """One input after preprocessing: its model input or its error, and its steps if asked for."""

    image: Optional[np.ndarray]  # 28x28, light digit on dark, 0-255
    error: Optional[ImageError]
    trace: Optional[Trace]
    rivals: float = 0.0  # ink of digit-sized pieces left out beside the digit, as a share of its own


class Batch(NamedTuple):
    """A chunk of inputs after preprocessing."""

    sources: list  # the inputs as given (rows of an array)
    images: np.ndarray  # N x 28 x 28 float32 model inputs; zeros where an input failed
    errors: List[Optional[ImageError]]
    traces: List[Optional[Trace]]  # a Trace for the first `traces` inputs, else None
    rivals: np.ndarray  # N floats: each input's Prepared.rivals (0 where it failed)


def prepare_many(sources, workers=None, traces=0, quiet=contextlib.nullcontext()):
    """Yield Batches of at most CHUNK inputs, in order.

    Args:
        sources: an iterable of anything decode.decode() takes, read lazily; or an
            N x 28 x 28 uint8 array.
        workers: processes for decoding and preprocessing (default: one per core).
        traces: how many of the first inputs also get a Trace of their steps.
        quiet: a lock (the model's) held while worker processes are forked.
    """
    workers = cores() if workers is None else workers
    if is_stack(sources):
        chunks = (sources[i:i + STACK_CHUNK] for i in range(0, len(sources), STACK_CHUNK))
    else:
        sources = iter(sources)
        chunks = iter(lambda: list(islice(sources, CHUNK)), [])
    pool, pending, position, heavy_seen = None, deque(), 0, 0
    try:
        for chunk in chunks:
            wanted = max(0, min(len(chunk), traces - position))
            position += len(chunk)
            batch, heavy = prepare_in_memory(chunk, wanted)
            heavy_seen += len(heavy)
            if heavy and pool is None and workers > 1 and heavy_seen >= PARALLEL_MIN:
                pool = start_pool(workers, quiet)
            tasks = []
            if heavy and pool is not None:
                try:
                    tasks = [pool.submit(prepare_list, *unzip(heavy[i:i + TASK], wanted))
                             for i in range(0, len(heavy), TASK)]
                except BrokenExecutor:  # see finish(): the rest is done here
                    tasks = []
            pending.append((batch, heavy, wanted, tasks))
            while len(pending) > (AHEAD if pool else 0):
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def is_stack(sources):
    """An N x 28 x 28 uint8 array: N images that need no decoding."""
    return isinstance(sources, np.ndarray) and sources.dtype == np.uint8 and sources.shape[1:] == (SIZE, SIZE)


def prepare_in_memory(chunk, traces):
    """Do the cheap part here: decode in-memory inputs, keep those already in MNIST's form.

    Returns (batch, heavy): the Batch so far, and (index, source or Picture) for each
    input still to prepare (files and bytes undecoded).
    """
    count = len(chunk)
    batch = Batch(list(chunk), np.zeros((count, SIZE, SIZE), np.float32), [None] * count,
                  [Trace() if i < traces else None for i in range(count)], np.zeros(count, np.float32))
    if is_stack(chunk):  # one vectorised check, no Python step per image
        ready = np.zeros(count, bool)
        ready[traces:] = mnist_form(chunk[traces:])
        batch.images[:] = chunk
        batch.images[~ready] = 0
        return batch, [(i, Picture(chunk[i], "the image")) for i in np.flatnonzero(~ready).tolist()]
    pictures, heavy = {}, []
    for i, source in enumerate(chunk):
        if isinstance(source, (str, os.PathLike, bytes, bytearray)):
            heavy.append(i)  # decoding reads a file or parses bytes: a worker's job
            continue
        try:
            pictures[i] = decode(source)
        except ImageError as error:
            batch.errors[i] = error
    ready = in_mnist_form({i: p for i, p in pictures.items() if i >= traces})
    for i in ready:
        batch.images[i] = pictures[i].pixels
    heavy += [i for i in pictures if i not in ready]
    return batch, [(i, pictures.get(i, chunk[i])) for i in sorted(heavy)]


def in_mnist_form(pictures):
    """The keys of those {key: Picture} that are 28x28 and already in MNIST's form, checked in one go."""
    small = [key for key, picture in pictures.items() if picture.pixels.shape == (SIZE, SIZE)]
    if not small:
        return set()
    ready = mnist_form(np.stack([pictures[key].pixels for key in small]))
    return {key for key, keep in zip(small, ready.tolist()) if keep}


def finish(batch, heavy, wanted, tasks):
    """Fill in a chunk's heavy inputs, from its tasks (or here, if a worker died), and return it."""
    try:
        done = [prepared for task in tasks for prepared in task.result()] if tasks else None
    except BrokenExecutor:  # a worker was killed (out of memory, say): do its inputs here
        done = None
    if done is None:
        done = prepare_list(*unzip(heavy, wanted))
    for (i, _), prepared in zip(heavy, done):
        if prepared.error is None:
            batch.images[i] = prepared.image
            batch.rivals[i] = prepared.rivals
        batch.errors[i] = prepared.error
        if prepared.trace is not None:
            batch.traces[i] = prepared.trace
    return batch


def unzip(heavy, wanted):
    """(index, source) pairs -> (sources, whether each wants a trace)."""
    return [s for _, s in heavy], [i < wanted for i, _ in heavy]


def start_pool(workers, quiet):
    """Start the worker processes, all of them now, while `quiet` is held.

    fork: a worker starts in a millisecond with everything imported, and never re-runs the
    caller's script (as spawn would, breaking scripts without a __main__ guard). A fork copies
    the locks other threads hold at that moment, so the caller passes the lock its model
    runs under: no LiteRT batch is in flight while the workers are made.
    """
    import multiprocessing  # here, not at the top: one image never needs them (a faster cold start)
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=ignore_interrupts)
    with quiet:
        pool.submit(int).result()  # with fork, the first task starts every worker at once
    return pool


def ignore_interrupts():
    """In a worker: Ctrl+C is the parent's to handle (it shuts the pool down)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prepare_list(sources, want_traces):
    """Decode and preprocess each source (a worker's task); errors are returned, not raised.

    Decoded digits already in MNIST's form (pictures given decoded too) are checked
    together, not one by one.
    """
    results, pictures = {}, {}
    for i, (source, want) in enumerate(zip(sources, want_traces)):
        if want:
            results[i] = prepare(source, want)
            continue
        try:
            pictures[i] = decode(source)
        except ImageError as error:
            results[i] = Prepared(None, error, None)
    ready = in_mnist_form(pictures)
    for i, picture in pictures.items():
        results[i] = Prepared(picture.pixels, None, None) if i in ready else prepare(picture)
    return [results[i] for i in range(len(sources))]


def prepare(source, want_trace=False):
    """Return one source's Prepared: its 28x28 model input, or the ImageError it raised."""
    trace = Trace()  # kept only when wanted: it holds the big ink map
    try:
        picture = source if isinstance(source, Picture) else decode(source)
        image = to_mnist(picture, trace)
        return Prepared(image, None, trace if want_trace else None, trace.rivals)
    except ImageError as error:
        return Prepared(None, error, trace if want_trace else None)


def prefetched(iterable, depth=2):
    """Yield from `iterable`, run in a background thread up to `depth` items ahead.

    The model's batches run in native code that lets go of the GIL, so preparing the
    next chunk in this thread overlaps with classifying the current one. A consumer
    that stops early (an error, a closed pipe, Ctrl+C) stops the thread and closes
    `iterable`, which shuts its worker processes down.
    """
    items, stop, done = queue.Queue(depth), threading.Event(), object()

    def offer(entry):  # wait for room, but never past the consumer's leaving
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in iterable:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            offer((done, error))
        finally:
            if stop.is_set() and hasattr(iterable, "close"):
                iterable.close()

    thread = threading.Thread(target=produce, name="prepare", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()

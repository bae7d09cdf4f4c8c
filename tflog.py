"""Keep TensorFlow's C++ log lines off the terminal, and let everything else through.

    tflog.filter_native_logs()   # once, before TensorFlow is imported

TensorFlow 2.21 logs from C++ before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL no
longer hides its start-up lines ("oneDNN custom operations are on", "Could not find cuda
drivers", and on machines without a GPU "failed call to cuInit: INTERNAL: CUDA error",
which reads like a failure and is none). They all go to file descriptor 2. This points that
descriptor at a pipe whose reader drops C++ log lines (I, W and E lines in absl's format)
and passes everything else on: Python's warnings and tracebacks, and fatal (F) lines.
"""

import atexit
import os
import re
import sys
import threading

# absl's format: a severity letter, MMDD, a time, a thread id, file:line] message
# (before absl is set up its "seconds" count from 1970: 00:00:1796223147.370338).
LOG_LINE = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\]]+\] ")
# The one log message that runs onto a second line (cpu_feature_guard.cc)
CONTINUATION = b"To enable the following instructions:"
ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"

_installed = False
_lock = threading.Lock()


def is_native_log(line: bytes) -> bool:
    """True for a line of TensorFlow's C++ logging that a user need not see."""
    return bool(LOG_LINE.match(line)) or line.startswith((ABSL_NOTICE, CONTINUATION))


def filter_native_logs():
    """From now on, drop C++ log lines written to this process's stderr (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        sys.stderr.flush()
        real_stderr = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        thread = threading.Thread(target=_pass_on, args=(read_end, real_stderr), daemon=True,
                                  name="tflog")
        thread.start()
        atexit.register(_restore, real_stderr, thread)


def _pass_on(read_end, real_stderr):
    """Copy lines from the pipe to the real stderr, less the log lines."""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_native_log(line))
            if kept:
                os.write(real_stderr, kept)
        if pending and not is_native_log(pending):
            os.write(real_stderr, pending)


def _restore(real_stderr, thread):
    """At exit: give the real stderr back, and let the reader pass on what is left."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(real_stderr, 2)  # the pipe's last writer is gone, so the reader sees its end
    thread.join(timeout=2)

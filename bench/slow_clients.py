"""Can the web app be starved? Idle and trickling connections, and floods of heavy images.

    python -m bench.slow_clients                  # starts `python app.py --port 0` itself

1. Opens --idle idle connections and as many that send a request one header byte at a
   time, then times /health and a small /api/predict on fresh connections.
2. Sends waves of 8 concurrent 4096x4096 16-bit PNGs (50 KB each, ~100 MB each to decode),
   timing a small /api/predict during each wave, and reads the server's peak memory.
A benchmark, not a test (tests/test_server_limits.py checks the same bounds). Loopback only.
"""

import argparse
import io
import re
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def request(port, method, path, body=b"", timeout=30):
    """(status, seconds) of one HTTP/1.0 request on a fresh loopback connection."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"{method} {path} HTTP/1.0\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split()[1]), time.perf_counter() - start


def png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def peak_mb(pid):
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def summary(seconds):
    return f"median {statistics.median(seconds) * 1000:.1f} ms, max {max(seconds) * 1000:.1f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=150, help="idle connections; as many again trickle")
    parser.add_argument("--waves", type=int, default=5, help="waves of 8 concurrent heavy images")
    args = parser.parse_args(argv)

    server = subprocess.Popen([sys.executable, "app.py", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", server.stdout.readline()).group(1))
        small = png(np.pad(np.full((20, 6), 255, np.uint8), 4))
        heavy = np.zeros((4096, 4096), np.uint16)
        heavy[1000:3000, 1800:2300] = 60000
        heavy = png(heavy)
        print(f"server pid {server.pid}, memory at start {peak_mb(server.pid):.0f} MB")

        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(args.idle)]
        for _ in range(args.idle):
            sockets.append(socket.create_connection(("127.0.0.1", port)))
            sockets[-1].sendall(b"GET /health HTTP/1.1\r\nHo")
        time.sleep(1)
        health = [request(port, "GET", "/health") for _ in range(20)]
        predicts = [request(port, "POST", "/api/predict", small) for _ in range(20)]
        print(f"{len(sockets)} connections open ({args.idle} idle, {args.idle} sending one header byte at a time):")
        print(f"  /health: statuses {sorted({s for s, _ in health})}, {summary([t for _, t in health])}")
        print(f"  /api/predict (a 28x28 PNG): statuses {sorted({s for s, _ in predicts})}, "
              f"{summary([t for _, t in predicts])}")
        for s in sockets:
            s.close()

        statuses, during = [], []
        with ThreadPoolExecutor(9) as pool:
            for _ in range(args.waves):
                flood = [pool.submit(request, port, "POST", "/api/predict", heavy) for _ in range(8)]
                time.sleep(0.05)
                during.append(request(port, "POST", "/api/predict", small))
                statuses += [f.result()[0] for f in flood]
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        print(f"{args.waves} waves of 8 concurrent 4096x4096 16-bit PNGs ({len(heavy) / 1000:.0f} KB each): "
              f"statuses {counts}")
        print(f"  a 28x28 PNG meanwhile: statuses {sorted({s for s, _ in during})}, {summary([t for _, t in during])}")
        print(f"  server peak memory (VmHWM) {peak_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()

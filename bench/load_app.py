"""Load check for the web app: many concurrent, mixed valid and invalid requests on loopback.

    python -m bench.load_app                      # starts `python app.py --port 0` itself
    python -m bench.load_app --requests 2000 --clients 8 --model mnist_cnn.tflite
    python -m bench.load_app --url http://127.0.0.1:8000/ --pid 12345   # a server already running

Reports the status counts, any 5xx or connection failure, latency and the server
process's resident memory (RSS) at start, after a warm-up and after each quarter
of the run. Exits 1 on any 5xx or failed request. A benchmark, not a test.
Loopback only: it refuses any other host.
"""

import argparse
import collections
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def png(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def drawing(points, size=280):
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line([(x * size, y * size) for x, y in points], fill="black",
                               width=size // 14, joint="curve")
    return png(image)


def multipart(data, field="image", filename="digit.png"):
    boundary = "loadcheckboundary7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request_mix():
    """(name, method, path, body, headers, expected statuses) cycled through by the clients."""
    samples = [p.read_bytes() for p in sorted((ROOT / "sample_test_image").glob("*.png"))]
    seven = drawing([(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])
    one = drawing([(0.45, 0.22), (0.55, 0.15), (0.55, 0.85)])
    form, form_type = multipart(one)
    empty_form, _ = multipart(b"")
    blank = png(Image.new("RGB", (280, 280), "white"))
    mix = [("drawing-raw", "POST", "/api/predict", seven, {"Content-Type": "image/png"}, {200}),
           ("drawing-multipart", "POST", "/api/predict", form, {"Content-Type": form_type}, {200}),
           ("jpeg", "POST", "/api/predict", png(Image.open(io.BytesIO(seven)), "JPEG"),
            {"Content-Type": "image/jpeg"}, {200})]
    mix += [(f"sample-{i}", "POST", "/api/predict", data, {"Content-Type": "image/png"}, {200})
            for i, data in enumerate(samples[:4])]
    mix += [("health", "GET", "/health", None, {}, {200}),
            ("page", "GET", "/", None, {}, {200}),
            ("no-image", "POST", "/api/predict", b"", {}, {400}),
            ("empty-multipart", "POST", "/api/predict", empty_form, {"Content-Type": form_type}, {400}),
            ("not-an-image", "POST", "/api/predict", b"hello, this is text", {"Content-Type": "image/png"}, {400}),
            ("truncated-png", "POST", "/api/predict", seven[:200], {}, {400}),
            ("blank-canvas", "POST", "/api/predict", blank, {"Content-Type": "image/png"}, {422}),
            ("too-many-pixels", "POST", "/api/predict", png(Image.new("1", (5000, 4000), 1)), {}, {413}),
            ("photo-size-jpeg", "POST", "/api/predict",
             png(Image.open(io.BytesIO(seven)).resize((1600, 1600)), "JPEG"), {}, {200}),
            ("not-found", "GET", "/nowhere", None, {}, {404}),
            ("wrong-method", "GET", "/api/predict", None, {}, {405})]
    return mix


OVERSIZED = ("oversized-announced", "POST", "/api/predict", None,
             {"Content-Type": "image/png", "Content-Length": str(64 << 20)}, {413})


def send(host, port, item, timeout=60):
    name, method, path, body, headers, expected = item
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if name == OVERSIZED[0]:  # announce 64 MiB, send only the headers: answered at once
            connection.putrequest(method, path)
            for key, value in headers.items():
                connection.putheader(key, value)
            connection.endheaders()
        else:
            connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status >= 400:
            json.loads(data)  # every error answer is JSON
        return response.status
    finally:
        connection.close()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))
    except (OSError, AttributeError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a server already running on loopback (default: start one)")
    parser.add_argument("--pid", type=int, help="that server's process id, to report its memory")
    parser.add_argument("--model", default=str(ROOT / "mnist_cnn.tflite"), help="model for the server started here")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200,
                        help="concurrent requests before the baseline memory reading")
    args = parser.parse_args()

    process = None
    if args.url:
        parts = urlsplit(args.url)
        host, port, pid = parts.hostname, parts.port or 80, args.pid
        if host not in LOOPBACK:
            sys.exit(f"error: loopback only, not {host}")
    else:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", "0", "--model", args.model],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = process.stdout.readline()
        match = re.search(r"http://(127\.0\.0\.1):(\d+)/", line)
        if not match:
            process.kill()
            sys.exit(f"error: the server did not start: {line!r}")
        host, port, pid = match.group(1), int(match.group(2)), process.pid
        print(line.strip())

    mix = request_mix()
    items = [mix[i % len(mix)] for i in range(args.requests)]
    for i in range(37, args.requests, 100):  # a few bodies over the size limit, announced up front
        items[i] = OVERSIZED
    memory = [("at start", rss_kib(pid))]
    try:
        warm = [threading.Thread(target=lambda n=n: [send(host, port, mix[i % len(mix)])
                                                     for i in range(n, args.warmup, args.clients)])
                for n in range(args.clients)]  # as concurrent as the run, so the baseline is fair
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join()
        memory.append((f"after a {args.warmup}-request warm-up", rss_kib(pid)))

        statuses = collections.Counter()
        by_case = collections.defaultdict(collections.Counter)
        failures, latencies = [], []
        lock = threading.Lock()
        quarter = max(1, args.requests // 4)
        done = [0]
        cursor = iter(range(len(items)))

        def client():
            while True:
                with lock:
                    index = next(cursor, None)
                if index is None:
                    return
                item = items[index]
                start = time.perf_counter()
                try:
                    status = send(host, port, item)
                    failure = None if status in item[5] else f"{item[0]}: {status}, expected {sorted(item[5])}"
                except Exception as error:
                    status, failure = "failed", f"{item[0]}: {type(error).__name__}: {error}"
                elapsed = time.perf_counter() - start
                with lock:
                    statuses[status] += 1
                    by_case[item[0]][status] += 1
                    latencies.append(elapsed)
                    if failure:
                        failures.append(failure)
                    done[0] += 1
                    if done[0] % quarter == 0:
                        memory.append((f"after {done[0]} requests", rss_kib(pid)))

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        if process:
            process.terminate()
            process.wait(timeout=20)

    server_errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    print(f"{sum(statuses.values())} requests from {args.clients} concurrent clients in {wall:.1f} s "
          f"({sum(statuses.values()) / wall:.0f}/s); latency p50 {statistics.median(latencies) * 1000:.0f} ms, "
          f"p95 {statistics.quantiles(latencies, n=20)[-1] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
    print("status counts:", dict(sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    for name, counts in sorted(by_case.items()):
        print(f"  {name:22} {dict(counts)}")
    print(f"5xx: {server_errors}   unexpected statuses or failed requests: {len(failures)}")
    for failure in failures[:10]:
        print("  ", failure)
    print("server RSS:", ", ".join(f"{label} {kib / 1024:.1f} MiB" if kib else f"{label} ?"
                                    for label, kib in memory))
    sys.exit(1 if server_errors or failures else 0)


if __name__ == "__main__":
    main()

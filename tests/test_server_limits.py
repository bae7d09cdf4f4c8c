"""The web app cannot be starved: idle and trickling connections, heavy images, odd URLs."""

import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app as webapp
from conftest import APP_MODEL, ROOT

IDLE_CLIENTS = 300


def get(host, port, path, timeout=5.0, method="GET", body=b"", headers=""):
    """One HTTP/1.0 request on a fresh connection: (status, headers text, body bytes, seconds)."""
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
                     .encode() + body)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, head.decode("latin1"), payload, time.perf_counter() - start


def open_idle(host, port, count, first_bytes=b""):
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=5)
        if first_bytes:
            s.sendall(first_bytes)
        sockets.append(s)
    return sockets


def test_health_answers_with_300_idle_and_trickling_connections(app_server):
    host, port = app_server
    idle = open_idle(host, port, IDLE_CLIENTS // 2)
    trickling = open_idle(host, port, IDLE_CLIENTS // 2, first_bytes=b"GET /health HTTP/1.1\r\nHo")
    try:
        time.sleep(0.5)
        for s in trickling[:50]:  # a header byte now and then, as a slow-loris client sends
            s.sendall(b"s")
        latencies = []
        for _ in range(5):
            status, _, body, seconds = get(host, port, "/health", timeout=3)
            assert status == 200 and json.loads(body)["status"] == "ok"
            latencies.append(seconds)
        assert max(latencies) < 1.0, latencies
    finally:
        for s in idle + trickling:
            s.close()


def test_connections_past_the_limit_make_way(app_server, monkeypatch):
    """More idle connections than the server keeps: the longest-idle ones are closed, /health still answers."""
    host, port = app_server
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(webapp.MAX_CONNECTIONS + 100, soft - 100)
    if count <= webapp.MAX_CONNECTIONS:
        pytest.skip(f"this process may open only {soft} files")
    idle = open_idle(host, port, count)
    try:
        time.sleep(0.5)
        status, _, _, seconds = get(host, port, "/health", timeout=5)
        assert status == 200 and seconds < 2.0
        closed = sum(1 for s in idle[:100] if is_closed(s))
        assert closed > 0, "no idle connection was closed to make room"
    finally:
        for s in idle:
            s.close()


def is_closed(s):
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_trickling_request_is_cut_off(monkeypatch):
    """A request whose headers never finish is closed REQUEST_SECONDS after its first byte."""
    monkeypatch.setattr(webapp, "REQUEST_SECONDS", 1)
    monkeypatch.setattr(webapp, "IDLE_SECONDS", 60)
    server = webapp.make_server(webapp.create_app(), port=0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        host, port = server.effective_host, server.effective_port
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\n")
        start = time.perf_counter()
        while time.perf_counter() - start < 6:
            try:
                s.sendall(b"X")  # activity, so only the request deadline can end it
            except OSError:
                break
            s.settimeout(0.3)
            try:
                if s.recv(1) == b"":
                    break
            except socket.timeout:
                pass
        assert time.perf_counter() - start < 5, "the trickling request was never cut off"
        s.close()
    finally:
        server.close()


def heavy_png():
    """A 4096x4096 16-bit PNG: 50 KB on the wire, ~100 MB to decode."""
    pixels = np.zeros((4096, 4096), np.uint16)
    pixels[1000:3000, 1800:2300] = 60000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def own_server():
    """app.py in its own process, to read its peak memory: yields (host, port, pid)."""
    process = subprocess.Popen([sys.executable, "app.py", "--port", "0", "--model", str(APP_MODEL)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = re.search(r"http://(127\.0\.0\.1):(\d+)/", process.stdout.readline())
        assert match
        yield match.group(1), int(match.group(2)), process.pid
    finally:
        process.terminate()
        process.wait(timeout=20)


def peak_rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_heavy_images_neither_take_the_memory_nor_hold_others(own_server):
    host, port, pid = own_server
    heavy = heavy_png()
    small = io.BytesIO()
    Image.fromarray(np.pad(np.full((20, 6), 255, np.uint8), 4)).save(small, "PNG")  # a "1"
    with ThreadPoolExecutor(16) as pool:
        for _ in range(3):  # three waves of eight concurrent heavy uploads
            floods = [pool.submit(get, host, port, "/api/predict", 30, "POST", heavy,
                                  "Content-Type: image/png\r\n") for _ in range(8)]
            time.sleep(0.05)
            status, _, body, seconds = get(host, port, "/api/predict", 5, "POST", small.getvalue(),
                                           "Content-Type: image/png\r\n")
            assert status == 200 and seconds < 1.0, (status, body, seconds)
            statuses = [f.result()[0] for f in floods]
            assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    assert peak_rss_mb(pid) < 500


@pytest.mark.parametrize("path", ["/static//etc/passwd", "/static/../app.py", "//health", "/health/",
                                  "/api/predict/", "/static/", "/nope", "/static/%2e%2e/app.py"])
def test_odd_urls_answer_json_never_html_or_redirects(app_server, path):
    host, port = app_server
    status, head, body, _ = get(host, port, path)
    assert 200 <= status < 300 or status in (400, 404, 405), (path, status)
    assert "text/html" not in head.lower() or path in ("/",), (path, head)
    if status >= 400:
        assert json.loads(body)["error"]


def test_options_answers_no_html(app_server):
    host, port = app_server
    status, head, body, _ = get(host, port, "/api/predict", method="OPTIONS")
    assert status == 204 and "text/html" not in head.lower() and body == b""
    assert "POST" in re.search(r"(?im)^allow: (.*)$", head).group(1)

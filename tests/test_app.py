"""The web app's JSON API (app.py): every success and error case, with Flask's
test client, plus a few checks against the real waitress server started the way
the README says (python app.py).

The model is inference.DEFAULT_MODEL, or the file named by $DIGIT_APP_TEST_MODEL.
"""

import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading

import pytest
from PIL import Image, ImageDraw

import app as webapp
import inference
from conftest import APP_MODEL as MODEL
from conftest import ROOT

LIMIT = webapp.MAX_BODY_BYTES

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"no model file at {MODEL} (python train.py)")


def png_bytes(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def drawing(strokes, size=280, background="white", ink="black", mode="RGB"):
    """A canvas-like drawing: thick round strokes (lists of points in 0..1) on a plain background."""
    image = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(image)
    width = size // 14
    for stroke in strokes:
        points = [(x * size, y * size) for x, y in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
        for x, y in points:
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=ink)
    return image


ONE = [[(0.45, 0.2), (0.55, 0.12), (0.55, 0.88)]]
SEVEN = [[(0.25, 0.18), (0.75, 0.18), (0.42, 0.88)]]


@pytest.fixture(scope="module")
def client():
    return webapp.create_app(MODEL).test_client()


def assert_prediction(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["digit", "confidence", "probabilities", "is_digit", "digit_score"]
    probabilities = body["probabilities"]
    assert len(probabilities) == 10 and all(0 <= p <= 1 for p in probabilities)
    assert sum(probabilities) == pytest.approx(1, abs=1e-3)
    assert body["digit"] == probabilities.index(max(probabilities))
    assert body["confidence"] == max(probabilities)
    return body


def assert_error(response, status, *words):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    message = response.get_json()["error"]
    assert isinstance(message, str) and "Traceback" not in message and "<" not in message
    for word in words:
        assert word in message.lower()
    return message


# ---- success ----

def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "model": MODEL.name}


def test_page_and_its_files_load_nothing_external(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for needed in ['<meta name="viewport"', 'id="pad"', 'role="img"', 'id="clear"', 'type="file"',
                   'aria-live="polite"', "/static/app.js", "/static/app.css"]:
        assert needed in html
    for path in ["/static/app.js", "/static/app.css"]:
        response = client.get(path)
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path
        response.close()
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_raw_png_body_gives_the_cli_prediction(client):
    """The API and the CLI's predict() classify a file the same way."""
    path = ROOT / "sample_test_image" / "7.png"
    body = assert_prediction(client.post("/api/predict", data=path.read_bytes(),
                                         content_type="image/png"))
    expected = inference.predict(path, model=str(MODEL))
    assert body["digit"] == expected.digit
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


@pytest.mark.parametrize("field", ["image", "file"])
def test_multipart_upload(client, field):
    data = {field: (io.BytesIO(png_bytes(drawing(ONE))), "one.png", "image/png"), "note": "x"}
    assert_prediction(client.post("/api/predict", data=data, content_type="multipart/form-data"))


def test_drawings_in_every_canvas_form(client):
    """Dark ink on white, as the page sends it; a transparent PNG; a JPEG; no content type."""
    cases = [
        (png_bytes(drawing(SEVEN)), "image/png"),
        (png_bytes(drawing(SEVEN, background=(0, 0, 0, 0), ink=(0, 0, 0, 255), mode="RGBA")), "image/png"),
        (png_bytes(drawing(SEVEN), "JPEG"), "image/jpeg"),
        (png_bytes(drawing(SEVEN)), None),
    ]
    for data, content_type in cases:
        assert_prediction(client.post("/api/predict", data=data, content_type=content_type))


def test_a_chunked_body_without_content_length(client):
    data = png_bytes(drawing(ONE))
    response = client.post("/api/predict", input_stream=io.BytesIO(data),
                           environ_overrides={"wsgi.input_terminated": True})
    assert assert_prediction(response)


# ---- errors ----

def test_no_image(client):
    assert_error(client.post("/api/predict"), 400, "no image")
    assert_error(client.post("/api/predict", data=b"", content_type="image/png"), 400, "no image")
    assert_error(client.post("/api/predict", data={"note": "hi"}, content_type="multipart/form-data"),
                 400, "no image")
    empty_file = {"image": (io.BytesIO(b""), "empty.png")}
    assert_error(client.post("/api/predict", data=empty_file, content_type="multipart/form-data"),
                 400, "no image")


def test_not_an_image(client):
    assert_error(client.post("/api/predict", data=b"hello, world", content_type="image/png"),
                 400, "not an image")
    upload = {"image": (io.BytesIO(b"%PDF-1.4 not really"), "digit.png")}
    assert_error(client.post("/api/predict", data=upload, content_type="multipart/form-data"),
                 400, "not an image")
    truncated = png_bytes(drawing(ONE))[:300]
    assert_error(client.post("/api/predict", data=truncated), 400, "image")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # never handed to Ghostscript
    assert_error(client.post("/api/predict", data=eps), 400, "not an image")


@pytest.mark.parametrize("background", ["white", "black", (0, 0, 0, 0)])
def test_empty_canvas_has_no_digit(client, background):
    mode = "RGBA" if isinstance(background, tuple) else "RGB"
    blank = png_bytes(Image.new(mode, (280, 280), background))
    assert_error(client.post("/api/predict", data=blank, content_type="image/png"), 422, "no digit")


def test_body_over_the_limit_is_refused_unread(client):
    class Stream(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            chunk = super().read(size)
            self.read_bytes += len(chunk)
            return chunk

        def readline(self, size=-1):
            return self.read(min(size, 1) if size >= 0 else 1)

    for content_type in ["image/png", "multipart/form-data; boundary=x"]:
        stream = Stream(b"\0" * (LIMIT + 1))
        response = client.post("/api/predict", input_stream=stream, content_type=content_type)
        message = assert_error(response, 413, "too large")
        assert str(LIMIT) in message
        assert stream.read_bytes == 0


def test_body_at_the_limit_is_read(client):
    data = png_bytes(drawing(ONE))
    data += b"\0" * (LIMIT - len(data))  # PNG readers ignore trailing bytes
    assert_prediction(client.post("/api/predict", data=data, content_type="image/png"))
    assert_error(client.post("/api/predict", data=data + b"\0", content_type="image/png"), 413)


def test_chunked_body_over_the_limit_is_read_no_further(client):
    stream = io.BytesIO(b"\0" * (LIMIT * 3))
    response = client.post("/api/predict", input_stream=stream,
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413, "too large")
    assert stream.tell() <= LIMIT + 1 + 65536


def test_image_over_the_pixel_limit(client):
    huge = png_bytes(Image.new("1", (5000, 4000), 1))  # a few KiB of PNG, 20 megapixels
    assert len(huge) < LIMIT
    assert_error(client.post("/api/predict", data=huge), 413, "pixels")


def test_unknown_paths_and_methods_are_json(client):
    assert_error(client.get("/nowhere"), 404, "not found")
    response = client.get("/api/predict")
    assert_error(response, 405, "method not allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/health"), 405)
    assert_error(client.get("/static/missing.js"), 404)


def test_an_unexpected_failure_is_a_json_500(client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(inference, "predict", broken)
    message = assert_error(client.post("/api/predict", data=png_bytes(drawing(ONE))), 500)
    assert "secret" not in message


def test_a_missing_model_fails_at_start(tmp_path):
    with pytest.raises(inference.ModelError):
        webapp.create_app(tmp_path / "missing.tflite")


def test_the_app_never_imports_tensorflow():
    code = ("import sys, app; app.create_app(sys.argv[1]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(MODEL)], cwd=ROOT, check=True, timeout=60)


# ---- the real server: python app.py, on waitress ----

@pytest.fixture(scope="module")
def server(app_server):
    return app_server


def request(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(*server, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def test_server_answers_health_page_and_predictions(server):
    status, content_type, body = request(server, "GET", "/health")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["status"] == "ok"
    status, content_type, _ = request(server, "GET", "/")
    assert status == 200 and content_type.startswith("text/html")
    status, _, body = request(server, "POST", "/api/predict", png_bytes(drawing(SEVEN)),
                              {"Content-Type": "image/png"})
    assert status == 200 and len(json.loads(body)["probabilities"]) == 10


def raw_exchange(server, head, body=b""):
    """Send raw bytes; return the status line and the JSON body of the answer."""
    with socket.create_connection(server, timeout=20) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                headers, _, rest = data.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", headers, re.I)
                if length and len(rest) >= int(length.group(1)):
                    break
    headers, _, rest = data.partition(b"\r\n\r\n")
    assert re.search(rb"content-type: *application/json", headers, re.I), headers
    return headers.split(b"\r\n")[0].decode(), json.loads(rest)


def test_server_refuses_a_large_body_after_its_headers(server):
    """The 413 comes back, as JSON, without the server waiting for the body."""
    head = (b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n" % (1 << 30))
    status, body = raw_exchange(server, head)  # a gigabyte announced, none sent
    assert status.startswith("HTTP/1.1 413") and "too large" in body["error"]


def test_server_refuses_a_chunked_body_past_the_limit(server):
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
    with socket.create_connection(server, timeout=20) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent < 4 * LIMIT:  # the server stops listening a little past the limit
                sock.sendall(chunk)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"too large" in data


def test_server_errors_are_json(server):
    for method, path, body in [("POST", "/api/predict", b""), ("POST", "/api/predict", b"junk"),
                               ("GET", "/nowhere", None), ("PUT", "/api/predict", b"x")]:
        status, content_type, data = request(server, method, path, body)
        assert 400 <= status < 500 and content_type == "application/json"
        assert "error" in json.loads(data)
    status, body = raw_exchange(server, b"GARBAGE\r\n\r\n")
    assert " 400 " in status and "error" in body


def test_server_under_concurrent_mixed_requests(server):
    bodies = [png_bytes(drawing(ONE)), png_bytes(drawing(SEVEN)), b"junk", b"",
              png_bytes(Image.new("RGB", (64, 64), "white"))]
    statuses = []

    def client(n):
        for i in range(8):
            statuses.append(request(server, "POST", "/api/predict", bodies[(n + i) % len(bodies)])[0])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(statuses) == 64 and all(s < 500 for s in statuses), statuses
    assert statuses.count(200) >= 20


@pytest.mark.parametrize("options, message", [
    (["--port", "99999"], "--port must be 0-65535"),
    (["--port", "-1"], "--port must be 0-65535"),
    (["--threads", "0"], "--threads must be 1-256"),
    (["--host", "no such host.invalid"], "--host"),
    (["--host", "256.1.1.1"], "--host"),
    (["--model", "README.md"], "README.md"),
])
def test_bad_options_get_one_line(options, message):
    result = subprocess.run([sys.executable, "app.py", *options], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr

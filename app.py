"""Draw a digit in the browser: a small web app on the same predict() as the CLI.

    python app.py                          # http://127.0.0.1:8000/
    python app.py --host 0.0.0.0 --port 8080 --model mnist_cnn.tflite

The page (static/) lets you draw a digit with mouse, pen or finger, or drop an
image file, and shows the predicted digit with all ten probabilities. The same
server answers a JSON API:

    POST /api/predict   an image as a multipart file field ("image") or as the raw
                        body -> {"digit": 7, "confidence": 0.99, "probabilities": [...],
                        "is_digit": true, "digit_score": 0.98} (is_digit false: not one digit;
                        digit is then the best guess)
    POST /api/read-number  the same upload, read as a whole number -> {"number": "472",
                        "confidence": 0.75, "digits": [{"digit": 4, "confidence": 0.91,
                        "box": [x0, y0, x1, y1], "probabilities": [...]}, ...]}
    GET  /health        {"status": "ok", "model": "..."} once the model is loaded

Errors are JSON too ({"error": "..."}): 400 no image / not an image, 422 no digit
found, 413 a body over MAX_BODY_BYTES (2 MiB) or an image over MAX_PIXELS, 503 when
the decoding budget is taken by other large images, 404/405. Nothing answers in HTML.
It serves with waitress (a production WSGI server), loads the model once at start,
and never imports TensorFlow.

It cannot be starved: idle connections are closed after IDLE_SECONDS, a request must
arrive whole within REQUEST_SECONDS of its first byte, and when MAX_CONNECTIONS are
open the longest-idle one makes way for a new one. Decoding shares DECODE_BUDGET_MB
among all requests, so concurrent large images cannot take the memory or the threads.
"""

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from cli import OneLineParser
from errors import BusyError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
MAX_BODY_BYTES = 2 * 1024 * 1024  # a request body over this is refused with 413, unread
MAX_PIXELS = 4096 * 4096  # a decoded image over this many pixels is refused with 413
# Decoding memory, estimated from each image's header before any pixel is decoded (decode.PEAK_BYTES).
MAX_DECODE_MB = 100  # one upload: a 4096x4096 16-bit PNG (96 MB) still fits
DECODE_BUDGET_MB = 250  # all uploads at once: with the server itself, the process stays under ~500 MB
LARGE_MB = 16  # an upload estimated above this is large: only LARGE_WAITING of them wait for budget
LARGE_WAITING = 2  # the rest get a 503 at once, so waiting large uploads hold 2 threads at most
WAIT_SECONDS = 3.0  # how long an upload may wait for budget before a 503
THREADS = 8  # request threads: with 2 decoding and 2 waiting large uploads, 4 stay for everyone else
# Connections: enough for many real clients, bounded against idle and trickling ones.
MAX_CONNECTIONS = 500  # past this the longest-idle connection is closed to let a new one in
IDLE_SECONDS = 30  # a connection with no request in progress is closed after this
REQUEST_SECONDS = 20  # a request's headers and body must arrive within this of its first byte
NO_IMAGE = ("no image: send one as a multipart file field named 'image' "
            "or as the raw request body")

log = logging.getLogger("digit-app")


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(model_path=None, max_body_bytes=MAX_BODY_BYTES):
    """Return the Flask app, with the model loaded (inference.ModelError if it can't be)."""
    from flask import Flask, jsonify, request, send_from_directory
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    import decode
    import inference

    # predict() caches models by these exact arguments, so load through the same door.
    model_arg = None if model_path is None else os.path.abspath(model_path)
    model_name = Path(model_arg or inference.DEFAULT_MODEL).name
    inference.get_classifier(model_arg)  # load once, now; raises ModelError

    app = Flask(__name__, static_folder=str(STATIC), static_url_path="/static")
    # No redirects (they answer in HTML): /static//x and /health/ are plain 404s.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.json.sort_keys = False

    def error(status, message):
        response = jsonify(error=message)
        response.status_code = status
        return response

    def too_large():
        return ApiError(413, f"request body too large: the limit is {max_body_bytes} bytes")

    def read_upload():
        """Return the uploaded image's bytes: a multipart file, else the raw body."""
        length = request.content_length
        if length is not None and length > max_body_bytes:
            raise too_large()  # before reading a byte of it
        if request.mimetype == "multipart/form-data":
            files = request.files
            upload = files.get("image") or next(iter(files.values()), None)
            return upload.read() if upload is not None else b""
        # Without a Content-Length (chunked), read at most one byte past the limit.
        chunks, size = [], 0
        while size <= max_body_bytes:
            chunk = request.stream.read(max_body_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_body_bytes:
            raise too_large()
        return b"".join(chunks)

    budget = DecodeBudget(DECODE_BUDGET_MB)
    limits = dict(max_pixels=MAX_PIXELS, max_megabytes=MAX_DECODE_MB, reserve=budget.reserve)

    @contextlib.contextmanager
    def upload_errors(no_digit):
        """Image errors inside as API errors: 413 too large, 400 unreadable, 422 `no_digit`, 503 busy."""
        try:
            yield
        except inference.ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except inference.UnreadableImageError as exc:
            raise ApiError(400, str(exc)) from None
        except inference.NoDigitError:
            raise ApiError(422, no_digit) from None
        except BusyError as exc:
            raise ApiError(503, str(exc)) from None

    def decode_upload(data):
        if not data:
            raise ApiError(400, NO_IMAGE)
        with upload_errors("no digit found: draw or upload a single digit"):
            return decode.decode(data, name="the upload", **limits)

    @app.get("/")
    def index():
        return send_from_directory(STATIC, "index.html")

    @app.get("/health")
    def health():
        try:
            inference.get_classifier(model_arg)  # cached: answers at once when loaded
        except inference.ModelError as exc:
            return error(503, str(exc))
        return jsonify(status="ok", model=model_name)

    @app.post("/api/predict")
    def api_predict():
        picture = decode_upload(read_upload())  # a small picture now: the rest costs little
        with upload_errors("no digit found: draw or upload a single digit"):
            prediction = inference.predict(picture, model=model_arg)
        return jsonify(digit=prediction.digit,
                       confidence=round(prediction.confidence, 6),
                       probabilities=[round(p, 6) for p in prediction.probabilities],
                       is_digit=prediction.is_digit,
                       digit_score=None if prediction.digit_score is None else round(prediction.digit_score, 6))

    @app.post("/api/read-number")
    def api_read_number():
        data = read_upload()
        if not data:
            raise ApiError(400, NO_IMAGE)
        with upload_errors("no digit found: write or upload a number"):
            # the bytes, not a decoded picture: a small number is decoded again, larger
            reading = inference.read_number(data, model_arg, name="the upload", **limits)
        return jsonify(number=reading.text, confidence=round(reading.confidence, 6),
                       digits=[{"digit": d.prediction.digit, "confidence": round(d.prediction.confidence, 6),
                                "box": list(d.box), "probabilities": [round(p, 6) for p in d.prediction.probabilities]}
                               for d in reading.digits])

    @app.after_request
    def security_headers(response):
        if request.method == "OPTIONS":  # Flask's automatic answer is an empty text/html page
            response.status_code = 204
            response.set_data(b"")
            del response.headers["Content-Type"]
        # Everything comes from this server: no CDN, no fonts, nothing external.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.errorhandler(ApiError)
    def api_error(exc):
        response = error(exc.status, exc.message)
        if exc.status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def request_too_large(exc):
        return error(413, too_large().message)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        response = error(exc.code or 500, f"{exc.name}: {exc.description}")
        for name, value in exc.get_headers():
            if name.lower() != "content-type":  # keep e.g. a 405's Allow
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error(500, "internal server error")

    return app


class DecodeBudget:
    """Megabytes of decoding shared by every request: large images cannot take the memory.

    An image waits up to WAIT_SECONDS for its share, then gets a BusyError (HTTP 503).
    Large ones (over LARGE_MB) may wait only while fewer than LARGE_WAITING others do, so
    a flood of them holds a few of the server's threads at most, never all of them.
    """

    def __init__(self, megabytes):
        self.free = megabytes
        self.large_waiting = 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, megabytes):
        need = max(megabytes, 0.01)
        large = need > LARGE_MB
        with self.changed:
            if self.free < need and large and self.large_waiting >= LARGE_WAITING:
                raise BusyError("the server is decoding other large images: try again in a moment")
            self.large_waiting += large
            try:
                if not self.changed.wait_for(lambda: self.free >= need, timeout=WAIT_SECONDS):
                    raise BusyError("the server is decoding other large images: try again in a moment")
            finally:
                self.large_waiting -= large
            self.free -= need
        try:
            yield
        finally:
            if large:
                give_back_memory()
            with self.changed:
                self.free += need
                self.changed.notify_all()


def give_back_memory():
    """Return freed memory to the OS. glibc keeps an arena per thread, so each request thread
    would otherwise hold on to the peak of the largest image it ever decoded."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def make_server(app, host="127.0.0.1", port=8000, threads=THREADS, max_body_bytes=MAX_BODY_BYTES):
    """Return a waitress server for `app` whose own error answers are JSON, and that cannot be starved.

    waitress refuses a body over the limit while reading the headers (or, when
    chunked, as soon as it passes the limit), so such a body is never read whole.
    Its own bound on connections stops accepting new ones when reached, which lets
    idle clients lock everyone out; here the longest-idle one is closed instead.
    """
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer, create_server
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            e = self.request.error
            message = f"{e.reason}: {e.body}"
            if e.code == 413:
                message = f"request body too large: the limit is {max_body_bytes} bytes"
            body = (json.dumps({"error": message}, separators=(",", ":")) + "\n").encode()
            self.status = f"{e.code} {e.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask
        request_started = None  # when the first byte of the request being read arrived

        def received(self, data):
            if self.request is None and data:
                self.request_started = time.monotonic()
            return super().received(data)

    # waitress refuses a body whose length is >= max_request_body_size.
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_body_size=max_body_bytes + 1,
                           connection_limit=MAX_CONNECTIONS + 10,  # ours acts first, at MAX_CONNECTIONS
                           channel_timeout=IDLE_SECONDS, cleanup_interval=1,
                           asyncore_use_poll=True,  # select() cannot watch more than 1024 sockets
                           ident="digit-app")
    # One listener, or a MultiSocketServer over several (a host name with IPv4 and IPv6).
    listeners = getattr(server, "map", None) or getattr(server, "_map", {})
    for listener in [server, *listeners.values()]:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = JsonErrorChannel
            guard_connections(listener)
    return server


def guard_connections(listener):
    """Close trickling requests and, at MAX_CONNECTIONS, the longest-idle connection."""
    maintenance, readable = listener.maintenance, listener.readable

    def channels():
        return [c for c in listener.active_channels.values() if not c.requests]  # none being answered

    def close_slow(now):
        maintenance(now)  # waitress's own: idle past IDLE_SECONDS
        deadline = time.monotonic() - REQUEST_SECONDS
        for channel in channels():
            started = getattr(channel, "request_started", None)
            if channel.request is not None and started is not None and started < deadline:
                channel.will_close = True

    def make_room():
        # Marked, not closed here: the event loop is building its list of sockets to poll, and
        # closes a marked channel on its next turn.
        open_channels = [c for c in listener.active_channels.values() if not c.will_close]
        if len(open_channels) >= MAX_CONNECTIONS:
            waiting = sorted((c for c in channels() if not c.will_close), key=lambda c: c.last_activity)
            for channel in waiting[:len(open_channels) - MAX_CONNECTIONS + 1]:
                channel.will_close = True
        return readable()

    listener.maintenance, listener.readable = close_slow, make_room


def server_urls(server):
    """The URL of each address the server listens on, with a local one for "every interface"."""
    listen = getattr(server, "effective_listen", None) or [
        (server.effective_host, server.effective_port)]
    urls = []
    for host, port in listen:
        bracketed = f"[{host}]" if ":" in host else host
        url = f"http://{bracketed}:{port}/"
        if host in ("0.0.0.0", "::"):
            local = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
            url += f" (every interface; on this machine http://{local}:{port}/)"
        urls.append(url)
    return urls


def valid_host(host):
    """True for an IP address, or a host name that resolves on this machine."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        return bool(host) and bool(socket.getaddrinfo(host, None))
    except (OSError, UnicodeError, ValueError):
        return False


def main(argv=None):
    import decode
    import inference

    parser = OneLineParser(
        description="Serve a page to draw a digit and have it recognised, and a JSON API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL),
                        help="a .tflite (or .keras, needs TensorFlow) model file")
    parser.add_argument("--threads", type=int, default=THREADS, help="request threads (1-256)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0-65535, not {args.port}")
    if not 1 <= args.threads <= 256:
        parser.error(f"--threads must be 1-256, not {args.threads}")
    if not valid_host(args.host):
        parser.error(f"--host {args.host!r}: not an IP address or a host name that resolves here")

    decode.use_own_limits()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # More clients than threads just wait their turn: no warning for each queued request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    try:
        app = create_app(args.model)
    except inference.ModelError as exc:
        sys.exit(f"error: {exc}")
    try:
        server = make_server(app, args.host, args.port, threads=args.threads)
    except (OSError, ValueError) as exc:
        sys.exit(f"error: cannot listen on {args.host}:{args.port} ({getattr(exc, 'strerror', None) or exc})")
    for url in server_urls(server):
        print(f"Serving the digit app on {url}  (Ctrl+C to stop)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()

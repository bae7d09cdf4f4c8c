"""Draw a digit in the browser: a small web app on the same predict() as the CLI.

    python app.py                          # http://127.0.0.1:8000/
    python app.py --host 0.0.0.0 --port 8080 --model mnist_cnn.tflite

The page (static/) lets you draw a digit with mouse, pen or finger, or drop an
image file, and shows the predicted digit with all ten probabilities. The same
server answers a JSON API:

    POST /api/predict   an image as a multipart file field ("image") or as the raw
                        body -> {"digit": 7, "confidence": 0.99, "probabilities": [...]}
    POST /api/read-number  the same upload, read as a whole number -> {"number": "472",
                        "confidence": 0.75, "digits": [{"digit": 4, "confidence": 0.91,
                        "box": [x0, y0, x1, y1], "probabilities": [...]}, ...]}
    GET  /health        {"status": "ok", "model": "..."} once the model is loaded

Errors are JSON too ({"error": "..."}): 400 no image / not an image, 422 no digit
found, 413 a body over MAX_BODY_BYTES (2 MiB) or an image over MAX_PIXELS, 404/405.
It serves with waitress (a production WSGI server), loads the model once at start,
and never imports TensorFlow.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
MAX_BODY_BYTES = 2 * 1024 * 1024  # a request body over this is refused with 413, unread
MAX_PIXELS = 4096 * 4096  # a decoded image over this many pixels is refused with 413
PREDICT_SLOTS = 2  # images decoded and classified at once; other requests wait their turn
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

    @contextlib.contextmanager
    def upload_errors(no_digit):
        """Image errors inside as API errors: 413 too large, 400 unreadable, 422 `no_digit`."""
        try:
            yield
        except inference.ImageTooLargeError as exc:
            raise ApiError(413, str(exc)) from None
        except inference.UnreadableImageError as exc:
            raise ApiError(400, str(exc)) from None
        except inference.NoDigitError:
            raise ApiError(422, no_digit) from None

    def decode_upload(data):
        if not data:
            raise ApiError(400, NO_IMAGE)
        with upload_errors("no digit found: draw or upload a single digit"):
            return decode.decode(data, name="the upload", max_pixels=MAX_PIXELS)

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

    # Decoding and preprocessing a big image takes memory: a few at a time keeps the peak bounded.
    busy = threading.BoundedSemaphore(PREDICT_SLOTS)

    @app.post("/api/predict")
    def api_predict():
        data = read_upload()
        with busy:
            picture = decode_upload(data)
            with upload_errors("no digit found: draw or upload a single digit"):
                prediction = inference.predict(picture, model=model_arg)
        return jsonify(digit=prediction.digit,
                       confidence=round(prediction.confidence, 6),
                       probabilities=[round(p, 6) for p in prediction.probabilities])

    @app.post("/api/read-number")
    def api_read_number():
        data = read_upload()
        if not data:
            raise ApiError(400, NO_IMAGE)
        with busy, upload_errors("no digit found: write or upload a number"):
            # the bytes, not a decoded picture: a small number is decoded again, larger
            reading = inference.read_number(data, model_arg, name="the upload", max_pixels=MAX_PIXELS)
        return jsonify(number=reading.text, confidence=round(reading.confidence, 6),
                       digits=[{"digit": d.prediction.digit, "confidence": round(d.prediction.confidence, 6),
                                "box": list(d.box), "probabilities": [round(p, 6) for p in d.prediction.probabilities]}
                               for d in reading.digits])

    @app.after_request
    def security_headers(response):
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
        return error(exc.status, exc.message)

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


def make_server(app, host="127.0.0.1", port=8000, threads=4, max_body_bytes=MAX_BODY_BYTES):
    """Return a waitress server for `app` whose own error answers are JSON.

    waitress refuses a body over the limit while reading the headers (or, when
    chunked, as soon as it passes the limit), so such a body is never read whole.
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

    # waitress refuses a body whose length is >= max_request_body_size.
    server = create_server(app, host=host, port=port, threads=threads,
                           max_request_body_size=max_body_bytes + 1,
                           ident="digit-app")
    # One listener, or a MultiSocketServer over several (a host name with IPv4 and IPv6).
    listeners = getattr(server, "map", None) or getattr(server, "_map", {})
    for listener in [server, *listeners.values()]:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = JsonErrorChannel
    return server


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


def main(argv=None):
    import decode
    import inference

    parser = argparse.ArgumentParser(
        description="Serve a page to draw a digit and have it recognised, and a JSON API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    parser.add_argument("--model", default=str(inference.DEFAULT_MODEL),
                        help="a .tflite (or .keras, needs TensorFlow) model file")
    parser.add_argument("--threads", type=int, default=4, help="worker threads")
    args = parser.parse_args(argv)

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
    except OSError as exc:
        sys.exit(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror or exc})")
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

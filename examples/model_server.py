"""A small HTTP model server to run as a Tessera service (stdlib only):

    tessera serve custom NAME --readiness-path /ready ... -- python examples/model_server.py

It listens on $HOST (default 127.0.0.1) and $PORT (required; Tessera sets it), "loads a model" for
$LOAD_SECONDS (default 2.0) and then answers:

    GET  /healthz                 200 while the process runs (liveness)
    GET  /ready  (and GET /)      503 while loading or draining, then 200 (readiness)
    POST /predict[?work_ms=N]     {"inputs": [[4 numbers], ...]} -> {"outputs": [[3 numbers], ...],
                                  "revision": ..., "replica": ...}; sleeps N ms first (default
                                  $WORK_MS, 0) so that concurrency is easy to observe
    GET  /stream?chunks=N&delay_ms=D  N newline-delimited JSON chunks, D ms apart, chunked encoding
    POST /echo                    the request body back, chunked (Content-Length or chunked uploads)

"revision" is $TESSERA_SERVICE_REVISION (or $VERSION), "replica" is $TESSERA_REPLICA_ID, if set.
Requests run concurrently (one thread each). On SIGTERM (or SIGINT) it stops accepting connections,
answers /ready with 503, lets in-flight requests finish (up to 10 s) and exits 0.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

INPUT_DIM, OUTPUT_DIM = 4, 3
MAX_ROWS = 1024
MAX_JSON_BYTES = 16 << 20
MAX_ECHO_BYTES = 1 << 30
IO_CHUNK = 64 << 10
DRAIN_SECONDS = 10.0


class BadRequest(Exception):
    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field, self.status = field, status


class Model:
    """A tiny deterministic 'model': ``tanh(x @ W + b)`` with fixed, seeded weights."""

    def __init__(self) -> None:
        rng = random.Random(20240601)
        self.weights = [[rng.gauss(0, 1) for _ in range(OUTPUT_DIM)] for _ in range(INPUT_DIM)]
        self.bias = [rng.gauss(0, 1) for _ in range(OUTPUT_DIM)]

    def predict(self, rows: list[list[float]]) -> list[list[float]]:
        return [
            [
                round(math.tanh(sum(x * self.weights[i][k] for i, x in enumerate(row)) + self.bias[k]), 6)
                for k in range(OUTPUT_DIM)
            ]
            for row in rows
        ]


class State:
    def __init__(self) -> None:
        self.model: Model | None = None
        self.draining = False
        self.in_flight = 0
        self.idle = threading.Condition()
        self.revision = os.environ.get("TESSERA_SERVICE_REVISION") or os.environ.get("VERSION")
        self.replica = os.environ.get("TESSERA_REPLICA_ID")
        self.work_ms = float(os.environ.get("WORK_MS", "0"))

    def load(self, seconds: float) -> None:
        time.sleep(seconds)
        self.model = Model()
        log(f"model loaded after {seconds:g}s; ready")


STATE = State()


def log(message: str) -> None:
    print(f"model_server: {message}", file=sys.stderr, flush=True)


def parse_rows(doc: Any) -> list[list[float]]:
    if not isinstance(doc, dict):
        raise BadRequest("body", 'the body is a JSON object like {"inputs": [[1, 2, 3, 4]]}')
    rows = doc.get("inputs")
    if not isinstance(rows, list) or not rows:
        raise BadRequest("inputs", f"inputs is a non-empty list of rows of {INPUT_DIM} numbers")
    if len(rows) > MAX_ROWS:
        raise BadRequest("inputs", f"at most {MAX_ROWS} rows, got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != INPUT_DIM:
            raise BadRequest(f"inputs[{i}]", f"inputs[{i}] is a list of {INPUT_DIM} numbers")
        for j, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"inputs[{i}][{j}]", f"inputs[{i}][{j}] is a number, got {value!r}")
    return [[float(v) for v in row] for row in rows]


def query_number(query: dict[str, list[str]], name: str, default: float, low: float, high: float) -> float:
    if name not in query:
        return default
    try:
        value = float(query[name][-1])
    except ValueError:
        raise BadRequest(name, f"{name} is a number, got {query[name][-1]!r}") from None
    if not low <= value <= high:
        raise BadRequest(name, f"{name} is between {low:g} and {high:g}, got {value:g}")
    return value


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tessera-example-model-server/1"
    # headers and body go out in separate writes: with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (~40 ms on Linux) on every keep-alive request
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # one line at start is enough
        pass

    # plumbing -------------------------------------------------------------------------------

    def send_json(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        if STATE.draining:  # no more requests on this connection
            self.close_connection = True
            self.send_header("Connection", "close")
        super().end_headers()

    def start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def body_chunks(self, limit: int) -> Iterator[bytes]:
        """The request body, piece by piece, whether sent with Content-Length or chunked."""
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest("body", "malformed chunked encoding") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                total += size
                if total > limit:
                    raise BadRequest("body", f"the body is over {limit} bytes", 413)
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(remaining, IO_CHUNK))
                    if not piece:
                        raise BadRequest("body", "the body ended early")
                    remaining -= len(piece)
                    yield piece
                self.rfile.readline(16)  # the CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise BadRequest("body", f"the body is over {limit} bytes", 413)
        while length:
            piece = self.rfile.read(min(length, IO_CHUNK))
            if not piece:
                raise BadRequest("body", "the body ended early")
            length -= len(piece)
            yield piece

    def dispatch(self, routes: dict[str, Any]) -> None:
        url = urlsplit(self.path)
        route = routes.get(url.path)
        with STATE.idle:
            STATE.in_flight += 1
        try:
            if route is None:
                raise BadRequest("path", f"no {self.command} {url.path}; see GET /", 404)
            route(parse_qs(url.query))
        except BadRequest as e:
            self.close_connection = True  # the body may be unread
            self.send_json(e.status, {"error": str(e), "field": e.field})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with STATE.idle:
                STATE.in_flight -= 1
                STATE.idle.notify_all()

    def do_GET(self) -> None:
        self.dispatch(
            {"/healthz": self.healthz, "/ready": self.ready, "/": self.ready, "/stream": self.stream}
        )

    def do_POST(self) -> None:
        self.dispatch({"/predict": self.predict, "/echo": self.echo})

    # endpoints ------------------------------------------------------------------------------

    def healthz(self, query: dict[str, list[str]]) -> None:
        self.send_json(200, {"status": "alive"})

    def ready(self, query: dict[str, list[str]]) -> None:
        status = "draining" if STATE.draining else "ready" if STATE.model else "loading"
        doc: dict[str, Any] = {"status": status, "revision": STATE.revision, "replica": STATE.replica}
        if self.path == "/" or self.path.startswith("/?"):
            doc["endpoints"] = ["GET /healthz", "GET /ready", "POST /predict", "GET /stream", "POST /echo"]
        self.send_json(200 if status == "ready" else 503, doc)

    def predict(self, query: dict[str, list[str]]) -> None:
        work_ms = query_number(query, "work_ms", STATE.work_ms, 0, 600_000)
        raw = b"".join(self.body_chunks(MAX_JSON_BYTES))
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise BadRequest("body", f"the body is not JSON: {e}") from None
        rows = parse_rows(doc)
        model = STATE.model
        if model is None:
            raise BadRequest("model", "the model is still loading", 503)
        time.sleep(work_ms / 1000)
        self.send_json(
            200, {"outputs": model.predict(rows), "revision": STATE.revision, "replica": STATE.replica}
        )

    def stream(self, query: dict[str, list[str]]) -> None:
        chunks = int(query_number(query, "chunks", 5, 0, 100_000))
        delay_ms = query_number(query, "delay_ms", 100, 0, 60_000)
        self.start_chunked("application/x-ndjson")
        for i in range(chunks):
            if i:
                time.sleep(delay_ms / 1000)
            line = {"chunk": i, "of": chunks, "revision": STATE.revision, "replica": STATE.replica}
            self.write_chunk(json.dumps(line).encode() + b"\n")
        self.end_chunked()

    def echo(self, query: dict[str, list[str]]) -> None:
        # Read it all first (spooled to disk past 8 MiB), then stream it back: clients that send
        # the whole request before reading the response cannot deadlock against us.
        with tempfile.SpooledTemporaryFile(max_size=8 << 20) as spool:
            for piece in self.body_chunks(MAX_ECHO_BYTES):
                spool.write(piece)
            spool.seek(0)
            self.start_chunked(self.headers.get("Content-Type", "application/octet-stream"))
            while piece := spool.read(IO_CHUNK):
                self.write_chunk(piece)
            self.end_chunked()


def main() -> int:
    port_text = os.environ.get("PORT")
    if not port_text or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        log(f"set PORT to the port to listen on (1-65535), got {port_text!r}")
        return 2
    host = os.environ.get("HOST", "127.0.0.1")
    load_seconds = float(os.environ.get("LOAD_SECONDS", "2.0"))
    server = ThreadingHTTPServer((host, int(port_text)), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128

    def stop(signum: int, frame: object) -> None:
        if not STATE.draining:
            STATE.draining = True
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=STATE.load, args=(load_seconds,), daemon=True).start()
    log(
        f"listening on http://{host}:{port_text} (revision {STATE.revision or '-'}, replica "
        f"{STATE.replica or '-'}); loading the model for {load_seconds:g}s"
    )
    server.serve_forever(poll_interval=0.2)
    server.server_close()  # stop accepting
    deadline = time.monotonic() + DRAIN_SECONDS
    with STATE.idle:
        while STATE.in_flight and (left := deadline - time.monotonic()) > 0:
            STATE.idle.wait(left)
        unfinished = STATE.in_flight
    log(f"stopped; {unfinished} request(s) unfinished" if unfinished else "stopped after draining")
    return 0


if __name__ == "__main__":
    sys.exit(main())

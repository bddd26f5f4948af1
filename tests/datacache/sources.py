"""Dataset sources on loopback for the tests: an S3-compatible server (moto) and an HTTP server."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tests.pg import free_port

S3_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port, empty; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets in process-wide state that outlives a server: start each one empty,
    # or a bucket another test on this worker filled shows through
    import httpx

    httpx.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def put_objects(endpoint: str, bucket: str, files: dict[str, bytes]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **S3_KEYS)
    client.create_bucket(Bucket=bucket)
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


class _Handler(http.server.SimpleHTTPRequestHandler):
    token: str | None = None

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _authorized(self) -> bool:
        if self.token is None or self.headers.get("Authorization") == f"Bearer {self.token}":
            return True
        self.send_error(401, "bad or missing token")
        return False

    def do_GET(self) -> None:
        if self._authorized():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._authorized():
            super().do_HEAD()


@contextmanager
def http_server(root: Path, token: str | None = None) -> Iterator[str]:
    """A threaded HTTP file server over ``root`` (directory listings on); yields its base URL."""
    handler = type("Handler", (_Handler,), {"token": token})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=os.fspath(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

"""A throwaway PostgreSQL server from Debian's package, on a free loopback port.

Run as root (CI), the cluster is owned by and started as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql; "
            "run scripts/install-test-deps (make test does)"
        )
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    port: int
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    bindir = _bin_dir()
    root = Path(tempfile.mkdtemp(prefix="tessera-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    # as root, run initdb and the server as ``postgres`` directly (no runuser wrapper), so
    # the Popen's pid is the postmaster's and stopping it cannot orphan the server
    user: str | None = None
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        user = "postgres"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"]
    subprocess.run(
        [*initdb, "-E", "UTF8"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=root,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
    }
    options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    log = open(root / "postgres.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets), *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        user=user,
        group=user,
        extra_groups=[] if user else None,
    )
    server = PostgresServer(port=port, root=root, process=process)
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(server.admin_dsn, connect_timeout=2):
                return server
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = (root / "postgres.log").read_text(errors="replace")[-2000:]
                server.stop()
                raise RuntimeError(f"PostgreSQL did not start:\n{output}") from None
            time.sleep(0.2)

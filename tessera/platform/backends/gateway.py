"""The local backend's plumbing for `tessera up`: this machine's detached serving gateway.

Like the node agent, the gateway is started through a short-lived intermediate, so it is not the
control plane's child and survives it; the next `tessera up` reuses it when it was started for the
same control-plane URL and token, and `tessera down` stops it. Its URL (a free port unless
``TESSERA_GATEWAY_PORT`` is set) is in ``<home>/gateway/url`` once it listens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tessera.api.identity import Scope
from tessera.node.procs import is_alive, proc_start_time
from tessera.platform.auth import hash_secret
from tessera.platform.backends.local import ensure_token_file
from tessera.platform.settings import Settings
from tessera.platform.store.db import Database

GATEWAY_USER = "gateway"


def gateway_dir(settings: Settings) -> Path:
    return settings.home / "gateway"


def ensure_gateway_token(db: Database, settings: Settings) -> Path:
    """A gateway-scope token, kept in ``<home>/gateway/token`` (0600)."""
    return ensure_token_file(
        db, gateway_dir(settings) / "token", GATEWAY_USER, "gateway-local", Scope.GATEWAY
    )


def _facts(url: str, token_file: Path, port: int) -> dict[str, object]:
    return {"control_url": url, "token": hash_secret(token_file.read_text().strip()), "port": port}


def running(settings: Settings) -> tuple[int, dict[str, object]] | None:
    """The running gateway's pid and launch facts, if one runs."""
    try:
        doc = json.loads((gateway_dir(settings) / "gateway.json").read_text())
        pid, start = int(doc["pid"]), int(doc["start_time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, doc) if is_alive(pid, start) else None


def url(settings: Settings) -> str | None:
    try:
        return (gateway_dir(settings) / "url").read_text().strip() or None
    except OSError:
        return None


def stop(settings: Settings, wait: float = 15) -> int | None:
    """SIGTERM the gateway (it finishes its requests) and wait for it; returns its pid if it ran."""
    found = running(settings)
    if found is None:
        return None
    pid = found[0]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and running(settings) is not None:
        time.sleep(0.1)
    if running(settings) is not None:
        os.kill(pid, signal.SIGKILL)
    (gateway_dir(settings) / "url").unlink(missing_ok=True)
    return pid


def ensure(db: Database, settings: Settings, control_url: str, wait: float = 20) -> str | None:
    """Reuse the running gateway if it serves this control plane with this token, else start one;
    returns its URL once it listens (None if it did not come up in time)."""
    token_file = ensure_gateway_token(db, settings)
    facts = _facts(control_url, token_file, settings.gateway_port)
    found = running(settings)
    if found is not None:
        if {k: found[1].get(k) for k in facts} == facts and url(settings):
            return url(settings)
        stop(settings)
    directory = gateway_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    ready = directory / "url"
    ready.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "tessera.gateway",
        "--control-url",
        control_url,
        "--host",
        "127.0.0.1" if settings.host in ("127.0.0.1", "localhost") else settings.host,
        "--port",
        str(settings.gateway_port),
        "--ready-file",
        str(ready),
    ]
    launcher = (
        "import os, subprocess, sys\n"
        "log = open(sys.argv[1], 'ab')\n"
        "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,"
        " start_new_session=True, close_fds=True)\n"
        "print(p.pid)\n"
    )
    env = {**os.environ, "TESSERA_GATEWAY_TOKEN": token_file.read_text().strip()}
    done = subprocess.run(
        [sys.executable, "-c", launcher, str(directory / "gateway.log"), *argv],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
        env=env,
    )
    pid = int(done.stdout.strip())
    start = proc_start_time(pid)
    (directory / "gateway.json").write_text(json.dumps({"pid": pid, "start_time": start, **facts}))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if url(settings):
            return url(settings)
        if start is None or not is_alive(pid, start):
            break
        time.sleep(0.1)
    return None

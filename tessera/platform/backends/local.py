"""The local backend's plumbing for `tessera up`: this machine's detached node agent.

The agent is started through a short-lived intermediate process, so it is not
the control plane's child: it survives `tessera up` exiting (or being killed)
and the next `tessera up` finds it through its lock file and reuses it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from tessera.api.identity import Scope
from tessera.platform.auth import authenticate, hash_secret, new_secret
from tessera.platform.problems import Unauthorized
from tessera.platform.settings import Settings
from tessera.platform.store.db import Database
from tessera.platform.store.rows import TokenRow, UserRow

AGENT_USER = "node-agent"


def node_name(settings: Settings) -> str:
    """This machine's node name: the setting, else the hostname as a DNS label."""
    if settings.node_name:
        return settings.node_name
    label = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:63].strip("-")
    return label if label and label[0].isalpha() else f"node-{label or 'local'}"[:63]


def agent_dir(settings: Settings) -> Path:
    return settings.home / "node"


def lock_path(settings: Settings) -> Path:
    return agent_dir(settings) / f"agent-{node_name(settings)}.lock"


def agent_pid(settings: Settings) -> int | None:
    """The running local agent's pid (it holds its lock file), else None."""
    path = lock_path(settings)
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def ensure_node_token(db: Database, settings: Settings) -> Path:
    """A node-scope token for the local agent, kept in ``<home>/node/token`` (0600)."""
    return ensure_token_file(
        db, agent_dir(settings) / "token", AGENT_USER, f"agent-{node_name(settings)}", Scope.NODE
    )


def ensure_token_file(db: Database, path: Path, user_name: str, token_name: str, scope: Scope) -> Path:
    """A token of ``scope`` for a local service user, kept in ``path`` (0600); reused while valid."""
    if path.exists():
        try:
            authenticate(db, path.read_text().strip())
            return path
        except Unauthorized:
            pass
    with db.write() as tx:
        user = tx.session.execute(select(UserRow).where(UserRow.name == user_name)).scalar_one_or_none()
        if user is None:
            user = UserRow(name=user_name)
            tx.session.add(user)
            tx.session.flush()
        secret = new_secret()
        tx.session.add(
            TokenRow(
                name=token_name,
                user_id=user.id,
                secret_hash=hash_secret(secret),
                prefix=secret[:10],
                scopes=[scope.value],
                revision=tx.revision,
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return path


def _launch_facts(url: str, token_file: Path) -> dict[str, str]:
    return {"url": url, "token": hash_secret(token_file.read_text().strip())}


def agent_matches(settings: Settings, url: str, token_file: Path) -> bool:
    """Whether the running agent was started for this URL and token."""
    try:
        recorded = json.loads((agent_dir(settings) / "agent.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded == _launch_facts(url, token_file))


def stop_agent(settings: Settings, pid: int, wait: float = 20) -> None:
    """SIGTERM the agent and wait until it has released its lock (its tasks keep running)."""
    if pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + wait
    while agent_pid(settings) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def start_agent(settings: Settings, url: str, token_file: Path) -> None:
    """Start the detached agent (via an intermediate that exits at once)."""
    directory = agent_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agent.json").write_text(json.dumps(_launch_facts(url, token_file)))
    argv = [
        sys.executable,
        "-m",
        "tessera.cli.main",
        "node",
        "--name",
        node_name(settings),
        "--state-dir",
        str(directory),
        "--url",
        url,
        "--token-file",
        str(token_file),
        # a few beats per timeout, so a short timeout never marks a live node NotReady
        "--heartbeat",
        f"{min(5.0, settings.node_heartbeat_timeout / 4):g}",
    ]
    if settings.simulate_gpus:
        argv += ["--simulate-gpus", settings.simulate_gpus]
    launcher = (
        "import subprocess, sys\n"
        "log = open(sys.argv[1], 'ab')\n"
        "subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,"
        " start_new_session=True, close_fds=True)\n"
    )
    subprocess.run(
        [sys.executable, "-c", launcher, str(directory / "agent.log"), *argv], check=True, timeout=30
    )


def write_up_file(settings: Settings, url: str) -> None:
    """Record this control plane (pid, url) for `tessera down`."""
    from tessera.node.procs import proc_start_time

    doc = {"pid": os.getpid(), "start_time": proc_start_time(os.getpid()), "url": url}
    (settings.home / "up.json").write_text(json.dumps(doc))

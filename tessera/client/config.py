"""Where the CLI and SDK find the control plane: flags, then environment, then credentials."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8470"


@dataclass(frozen=True)
class ClientConfig:
    url: str
    token: str | None
    source: str


def home() -> Path:
    return Path(os.environ.get("TESSERA_HOME") or Path.home() / ".tessera")


def resolve(url: str | None = None, token: str | None = None) -> ClientConfig:
    """Explicit values win, then TESSERA_URL/TESSERA_TOKEN, then $TESSERA_HOME/credentials.json."""
    url = url or os.environ.get("TESSERA_URL")
    token = token or os.environ.get("TESSERA_TOKEN")
    source = "environment"
    creds_path = home() / "credentials.json"
    if (url is None or token is None) and creds_path.exists():
        try:
            creds = json.loads(creds_path.read_text())
        except (OSError, ValueError):
            creds = {}
        url = url or creds.get("url")
        token = token or creds.get("token")
        source = str(creds_path)
    return ClientConfig(url=(url or DEFAULT_URL).rstrip("/"), token=token, source=source)

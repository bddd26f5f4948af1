"""The ``tessera gateway`` process: ``run()`` serves until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

from tessera.gateway.app import Gateway


def run(
    control_url: str,
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    name: str = "gateway",
    advertise_url: str | None = None,
    interval: float = 1.0,
    ready_file: str | None = None,
) -> None:
    """Run a gateway in this thread until SIGTERM/SIGINT (then in-flight requests get up to 10 s).

    ``port`` 0 picks a free port; ``ready_file`` receives the gateway's URL once it listens."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("uvicorn", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    gateway = Gateway(
        control_url,
        token,
        host=host,
        port=port,
        name=name,
        advertise_url=advertise_url,
        interval=interval,
    )
    try:
        gateway.bind()
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    gateway.run(ready_file=ready_file)

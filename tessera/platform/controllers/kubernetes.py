"""The Kubernetes backend's loops in the control plane: pods for bound tasks, node inventory from
Node objects, the secondary scheduler for others' pods, and the token Secrets the in-cluster node
agents and gateways read."""

from __future__ import annotations

import asyncio
import base64
import logging
import time

from fastapi.concurrency import run_in_threadpool

from tessera.api.identity import Scope
from tessera.kube.backend import KubeBackend
from tessera.kube.client import Kube, KubeConfig, KubeError
from tessera.platform.auth import authenticate
from tessera.platform.problems import Unauthorized
from tessera.platform.settings import Settings
from tessera.platform.store.db import Database

log = logging.getLogger(__name__)
SLOW_PASS_S = 1.0


def connect(settings: Settings) -> Kube:
    return Kube(KubeConfig.load(settings.kubeconfig))


def namespace(settings: Settings, kube: Kube) -> str:
    return settings.kube_namespace or kube.namespace


async def run(db: Database, settings: Settings) -> None:
    """Connect (retrying until the API server answers), then run the backend until cancelled."""
    delay = 1.0
    while True:
        try:
            kube = await run_in_threadpool(connect, settings)
            await run_in_threadpool(kube.get, "/version")
            break
        except Exception as exc:  # no kubeconfig yet, API server down: say so, and try again
            log.error("cannot reach the Kubernetes API server (retrying in %.0fs): %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    await _serve(db, settings, kube)


async def _serve(db: Database, settings: Settings, kube: Kube) -> None:
    """One pass per interval, sooner when a watched object changed."""
    ns = namespace(settings, kube)
    backend = KubeBackend(
        db,
        kube,
        ns,
        image=settings.kube_image,
        cache_dir=settings.kube_cache_dir,
        heartbeat_every=max(1.0, settings.node_heartbeat_timeout / 4),
    ).start()
    secondary = None
    if settings.kube_secondary_scheduler:
        from tessera.kube.secondary import SecondaryScheduler

        secondary = SecondaryScheduler(db, kube, backend.changed).start()
    try:
        await run_in_threadpool(publish_tokens, db, settings, kube, ns)
    except Exception:  # the agents and gateways wait for their tokens; jobs need not
        log.exception("cannot publish the node and gateway tokens")
    log.info("Kubernetes backend: pods in namespace %s at %s", ns, kube.config.server)
    try:
        while True:
            try:
                began = time.monotonic()
                await run_in_threadpool(backend.step)
                mid = time.monotonic()
                if secondary is not None:
                    await run_in_threadpool(secondary.step)
                if time.monotonic() - began > SLOW_PASS_S:
                    phases = " ".join(
                        f"{k}={v:.2f}" for k, v in (secondary.timings if secondary else {}).items()
                    )
                    log.info(
                        "slow Kubernetes pass: pods %.2fs, secondary scheduler %.2fs (%s)",
                        mid - began,
                        time.monotonic() - mid,
                        phases,
                    )
            except Exception:
                log.exception("Kubernetes backend pass failed")
            await asyncio.get_running_loop().run_in_executor(
                None, backend.changed.wait, settings.kube_interval
            )
    finally:
        backend.stop()
        if secondary is not None:
            secondary.stop()
        kube.close()


def publish_tokens(db: Database, settings: Settings, kube: Kube, ns: str) -> None:
    """Fill the chart's token Secrets, so the DaemonSet's agents and the gateways can authenticate."""
    from tessera.platform.backends.local import ensure_token_file

    wanted = (
        (settings.kube_node_token_secret, "node-agent", "kube-node-agents", Scope.NODE),
        (settings.kube_gateway_token_secret, "gateway", "kube-gateways", Scope.GATEWAY),
    )
    for secret, user, token_name, scope in wanted:
        if not secret:
            continue
        try:  # a token already there that still authenticates stays (several replicas share it)
            current = kube.get(f"/api/v1/namespaces/{ns}/secrets/{secret}").get("data") or {}
            if current.get("token"):
                authenticate(db, base64.b64decode(current["token"]).decode().strip())
                continue
        except (KubeError, Unauthorized, ValueError):
            pass
        path = ensure_token_file(db, settings.home / "kube" / f"{secret}.token", user, token_name, scope)
        data = {"token": base64.b64encode(path.read_text().strip().encode()).decode()}
        try:
            kube.merge_patch(f"/api/v1/namespaces/{ns}/secrets/{secret}", {"data": data})
            log.info("wrote the %s token into Secret %s/%s", scope.value, ns, secret)
        except KubeError as exc:
            log.error("cannot write Secret %s/%s: %s", ns, secret, exc)

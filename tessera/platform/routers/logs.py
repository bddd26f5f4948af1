"""/api/v1/jobs/{ref}/logs: streamed from the node agent that ran the task."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Annotated

import httpx
from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from tessera.api.common import Duration
from tessera.api.jobs import MAX_REPLICAS
from tessera.kube.client import Kube, KubeConfig, KubeError
from tessera.platform.auth import UserPrincipal
from tessera.platform.deps import DbDep, SettingsDep
from tessera.platform.problems import ApiError, Unavailable
from tessera.platform.routers.responses import COMMON
from tessera.platform.services.logs import PodLogTarget, log_target
from tessera.platform.settings import Settings

router = APIRouter(tags=["jobs"], responses=COMMON)


@router.get(
    "/jobs/{ref}/logs", response_class=StreamingResponse, responses={200: {"content": {"text/plain": {}}}}
)
async def job_logs(
    ref: str,
    db: DbDep,
    settings: SettingsDep,
    caller: UserPrincipal,
    project: str = "default",
    group: str | None = None,
    index: Annotated[int, Query(ge=0, lt=MAX_REPLICAS, description="Task index within the group (-i).")] = 0,
    follow: bool = False,
    tail: Annotated[int | None, Query(ge=0, le=1_000_000, description="Last N lines.")] = None,
    since: Annotated[Duration | None, Query(description="Only output newer than this, e.g. 10m.")] = None,
) -> StreamingResponse:
    """A task's output (stdout and stderr together), optionally followed live."""
    pods = settings.backend == "kubernetes"
    target = await run_in_threadpool(log_target, db, caller, ref, project, group, index, pods)
    if isinstance(target, PodLogTarget):
        return await _pod_logs(settings, target, follow, tail, since)
    params: dict[str, str] = {"follow": str(follow).lower()}
    if tail is not None:
        params["tail"] = str(tail)
    if since is not None:
        params["since"] = str(since.total_seconds())
    client = httpx.AsyncClient(
        base_url=target.agent_url,
        timeout=httpx.Timeout(30, read=None),
        headers={"Authorization": f"Bearer {target.agent_secret}"},
    )

    def refused(status: int, body: str) -> ApiError:
        error = ApiError(f"node agent answered {status}: {body}")
        error.status = 404 if status == 404 else 502
        error.title = "Not Found" if status == 404 else "Bad Gateway"
        return error

    return await _relay(client, target.path, params, f"the node agent at {target.agent_url}", refused)


async def _relay(
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    where: str,
    refused: Callable[[int, str], ApiError],
) -> StreamingResponse:
    """Stream ``path`` from ``client`` (a node agent or the API server) to the caller, closing both
    when the caller goes; an upstream refusal becomes ``refused(status, body)``."""
    try:
        upstream = await client.send(client.build_request("GET", path, params=params), stream=True)
    except httpx.TransportError as exc:
        await client.aclose()
        raise Unavailable(f"{where} is unreachable: {exc}") from None
    if upstream.status_code != 200:
        body = (await upstream.aread()).decode(errors="replace")[:500]
        await upstream.aclose()
        await client.aclose()
        raise refused(upstream.status_code, body)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    return StreamingResponse(relay(), media_type="text/plain; charset=utf-8")


_KUBE_CONFIGS: dict[str | None, KubeConfig] = {}


def _kube_config(settings: Settings) -> KubeConfig:
    """One parsed kubeconfig per path for the process (embedded keys are written out once)."""
    config = _KUBE_CONFIGS.get(settings.kubeconfig)
    if config is None:
        config = _KUBE_CONFIGS[settings.kubeconfig] = KubeConfig.load(settings.kubeconfig)
    return config


async def _pod_logs(
    settings: Settings, target: PodLogTarget, follow: bool, tail: int | None, since: timedelta | None
) -> StreamingResponse:
    """A task's pod log through the API server (the kubelet serves it there), streamed without
    holding a worker thread while the pod is quiet."""
    config = _kube_config(settings)
    kube = Kube(config)
    selector = f"tessera.io/task={target.task_id},tessera.io/attempt={target.attempt}"
    namespace = settings.kube_namespace or kube.namespace
    try:
        found = await run_in_threadpool(kube.list, f"/api/v1/namespaces/{namespace}/pods", selector)
        items = found.get("items") or []
        if not items:  # a pod others created, which Tessera scheduled (secondary scheduler)
            items = (await run_in_threadpool(kube.list, "/api/v1/pods", selector)).get("items") or []
    except (KubeError, httpx.HTTPError) as exc:
        raise Unavailable(f"the Kubernetes API server refused the pod lookup: {exc}") from None
    finally:
        kube.close()
    if not items:
        error = ApiError(f"the pod of task {target.task_id} (attempt {target.attempt}) is gone")
        error.status, error.title = 404, "Not Found"
        raise error
    meta = items[0]["metadata"]
    params: dict[str, str] = {"container": items[0]["spec"]["containers"][0]["name"]}
    if follow:
        params["follow"] = "true"
    if tail is not None:
        params["tailLines"] = str(tail)
    if since is not None:
        params["sinceSeconds"] = str(max(1, int(since.total_seconds())))
    token = config.bearer()
    client = httpx.AsyncClient(
        base_url=config.server,
        verify=config.ssl_context(),
        timeout=httpx.Timeout(30, read=None),
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log"

    def refused(status: int, body: str) -> ApiError:
        return Unavailable(f"the pod log API answered {status}: {body}")

    return await _relay(client, path, params, "the Kubernetes API server", refused)

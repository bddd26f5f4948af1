"""The SDK for asyncio: the same typed models and behaviour as :class:`tessera.client.Client`
(idempotent submit with retries, wait, logs as they arrive, cancel), over ``httpx.AsyncClient``.

    async with AsyncClient() as tessera:
        job = await tessera.submit_job({"name": "t", "groups": [{"command": ["python", "train.py"]}]})
        async for chunk in tessera.logs(job.name, follow=True):
            print(chunk.decode(), end="")
        job = await tessera.wait(job.name)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from tessera.api.common import Page
from tessera.api.events import Event
from tessera.api.jobs import Job, JobState, SubmitJobRequest
from tessera.api.serving import Service
from tessera.client.client import (
    API,
    RATE_LIMIT_RETRIES,
    ApiError,
    Unreachable,
    _problem,
    backoff,
    refused_wait,
    retry_after,
    submission,
)
from tessera.client.config import ClientConfig, resolve

M = TypeVar("M", bound=BaseModel)


class AsyncClient:
    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit_retries: int = RATE_LIMIT_RETRIES,
    ) -> None:
        self.config = config or resolve()
        self.rate_limit_retries = rate_limit_retries
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self._http = httpx.AsyncClient(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach the control plane at {self.config.url}: {exc}") from None
            wait = refused_wait(response, attempt, self.rate_limit_retries)
            if wait is None:
                break
            await asyncio.sleep(wait)  # a 429 of an idempotent request: wait out its Retry-After
            attempt += 1
        if response.status_code >= 400:
            raise ApiError(_problem(response))
        return response

    async def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate((await self.request("GET", path, **kwargs)).json())

    # jobs ------------------------------------------------------------------------------------

    async def submit_job(
        self, req: SubmitJobRequest | dict[str, Any], idempotency_key: str | None = None, retries: int = 3
    ) -> Job:
        """Submit with one idempotency key on every try (see ``Client.submit_job``)."""
        body, headers = submission(req, idempotency_key)
        for attempt in range(retries + 1):
            try:
                response = await self.request("POST", f"{API}/jobs", json=body, headers=headers)
                return Job.model_validate(response.json())
            except (Unreachable, ApiError) as exc:
                if not retry_after(exc, attempt, retries):
                    raise
                await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def get_job(self, ref: str, project: str = "default") -> Job:
        return await self._get(Job, f"{API}/jobs/{ref}", params={"project": project})

    async def list_jobs(self, **filters: Any) -> Page[Job]:
        params = {("q" if k == "search" else k): v for k, v in filters.items() if v is not None}
        if "states" in params:
            params["state"] = [JobState(s).value for s in params.pop("states")]
        response = await self.request("GET", f"{API}/jobs", params=params)
        return Page[Job].model_validate(response.json())

    async def job_events(self, ref: str, project: str = "default") -> list[Event]:
        response = await self.request("GET", f"{API}/jobs/{ref}/events", params={"project": project})
        return TypeAdapter(list[Event]).validate_python(response.json())

    async def cancel_job(self, ref: str, project: str = "default", message: str = "") -> Job:
        response = await self.request(
            "POST", f"{API}/jobs/{ref}/cancel", params={"project": project}, json={"message": message}
        )
        return Job.model_validate(response.json())

    async def delete_job(self, ref: str, project: str = "default") -> None:
        await self.request("DELETE", f"{API}/jobs/{ref}", params={"project": project})

    async def wait(
        self,
        ref: str,
        project: str = "default",
        *,
        states: Collection[JobState] | None = None,
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> Job:
        """The job once it reaches one of ``states`` (default: any terminal state)."""
        wanted = set(states) if states else {s for s in JobState if s.terminal}

        async def until() -> Job:
            while True:
                job = await self.get_job(ref, project)
                if job.status.state in wanted:
                    return job
                await asyncio.sleep(poll)

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise TimeoutError(f"job {ref} did not reach {sorted(wanted)} within {timeout:g}s") from None

    async def logs(
        self,
        ref: str,
        project: str = "default",
        *,
        index: int = 0,
        follow: bool = False,
        tail: int | None = None,
        since: str | None = None,
    ) -> AsyncIterator[bytes]:
        """A task's output as it arrives (``follow`` keeps streaming until the task ends)."""
        params: dict[str, Any] = {"project": project, "index": index, "follow": follow}
        for key, value in (("tail", tail), ("since", since)):
            if value is not None:
                params[key] = value
        try:
            async with self._http.stream(
                "GET", f"{API}/jobs/{ref}/logs", params=params, timeout=httpx.Timeout(30, read=None)
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise ApiError(_problem(response))
                async for chunk in response.aiter_raw():
                    yield chunk
        except httpx.TransportError as exc:
            raise Unreachable(f"log stream from {self.config.url} broke: {exc}") from None

    # services --------------------------------------------------------------------------------

    async def get_service(self, name: str) -> Service:
        return await self._get(Service, f"{API}/services/{name}")

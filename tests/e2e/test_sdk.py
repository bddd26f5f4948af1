"""The Python SDK against a real control plane: idempotent submit (also across a lost answer),
wait, logs, cancel; the same with asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tessera.api.jobs import JobState
from tessera.client import AsyncClient, Client, ClientConfig
from tests.e2e.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(home=Path(tmp_path_factory.mktemp("sdk")) / "home").start()
    yield c
    c.stop()


def body(name: str, *argv: str) -> dict[str, Any]:
    command = list(argv) or ["python", "examples/hello_train.py"]
    return {"name": name, "groups": [{"command": command, "resources": {"gpu_memory": "4Gi"}}]}


class LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers the first POST to the server, then drops its answer (as a network cut would)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and self.lost == 0:
            self.lost += 1
            response.read()
            raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response


def test_sync_submit_survives_a_lost_answer_then_wait_logs_cancel(cluster: LocalCluster) -> None:
    config = ClientConfig(url=cluster.url, token=cluster.token, source="test")
    transport = LoseFirstAnswer()
    with Client(config, transport=transport) as client:
        job = client.submit_job(body("sdk-hello"))  # retried with the same key: one job
        assert transport.lost == 1
        names = [j.name for j in client.list_jobs(search="sdk-hello").items]
        assert names == ["sdk-hello"]
        done = client.wait(str(job.id), timeout=120)
        assert done.status.state is JobState.SUCCEEDED
        assert b"done" in b"".join(client.logs("sdk-hello"))
        slow = client.submit_job(body("sdk-slow", "sleep", "60"))
        running = client.wait(slow.name, states=[JobState.RUNNING], timeout=60)
        assert running.status.state is JobState.RUNNING
        with pytest.raises(TimeoutError):
            client.wait(slow.name, timeout=0.5, poll=0.1)
        assert client.cancel_job(slow.name).status.state is JobState.CANCELLED


def test_async_submit_is_idempotent_and_streams_logs(cluster: LocalCluster) -> None:
    config = ClientConfig(url=cluster.url, token=cluster.token, source="test")

    async def scenario() -> None:
        async with AsyncClient(config) as client:
            first = await client.submit_job(body("sdk-async"), idempotency_key="same-key")
            second = await client.submit_job(body("sdk-async"), idempotency_key="same-key")
            assert first.id == second.id
            started = {JobState.RUNNING, *(s for s in JobState if s.terminal)}
            await client.wait("sdk-async", states=started, timeout=60, poll=0.2)
            chunks = [c async for c in client.logs("sdk-async", follow=True)]
            assert b"done" in b"".join(chunks)
            job = await client.wait("sdk-async", timeout=60)
            assert job.status.state is JobState.SUCCEEDED
            events = [e.reason for e in await client.job_events("sdk-async")]
            assert events[0] == "Submitted" and events[-1] == "Completed"
            page = await client.list_jobs(states=[JobState.SUCCEEDED], search="sdk-async")
            assert [j.name for j in page.items] == ["sdk-async"]

    asyncio.run(scenario())

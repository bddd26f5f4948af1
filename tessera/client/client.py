"""A small typed client for the Tessera REST API."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection, Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from tessera.api.admin import CheckReport
from tessera.api.cluster import Node
from tessera.api.common import Page
from tessera.api.datasets import CreateDatasetRequest, DataLoad, Dataset, Secret
from tessera.api.events import Event
from tessera.api.identity import CreatedToken, CreateTokenRequest, Project, Token, User
from tessera.api.jobs import Job, JobState, SubmitJobRequest
from tessera.api.problems import Problem
from tessera.api.queues import CreateQueueRequest, Queue
from tessera.api.serving import Service, ServiceCreated, ServiceSpec, ServiceUpdate
from tessera.api.usage import JobUsage, NodeUsage
from tessera.client.config import ClientConfig, resolve

M = TypeVar("M", bound=BaseModel)
API = "/api/v1"
# worth another try with the same idempotency key; a 429 is waited out in request() (Retry-After)
RETRIABLE = frozenset({502, 503, 504})
RATE_LIMIT_RETRIES = 3  # 429s an idempotent request waits out before the caller sees one
MAX_RETRY_AFTER = 30.0


class ApiError(Exception):
    """The server refused a request; ``problem`` holds its explanation."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.status = problem.status
        super().__init__(problem.detail or problem.title)

    def describe(self) -> str:
        """One message naming every offending field."""
        if self.problem.errors:
            return "; ".join(f"{e.field}: {e.message}" for e in self.problem.errors)
        return self.problem.detail or self.problem.title


class Unreachable(Exception):
    """The control plane could not be reached."""


class Client:
    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        rate_limit_retries: int = RATE_LIMIT_RETRIES,
    ) -> None:
        self.config = config or resolve()
        self.rate_limit_retries = rate_limit_retries
        headers = {"Authorization": f"Bearer {self.config.token}"} if self.config.token else {}
        self._http = httpx.Client(
            base_url=self.config.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # plumbing ----------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(
                    f"cannot reach the control plane at {self.config.url}: {exc} "
                    "(is `tessera up` running? set TESSERA_URL to point elsewhere)"
                ) from None
            wait = refused_wait(response, attempt, self.rate_limit_retries)
            if wait is None:
                break
            time.sleep(wait)
            attempt += 1
        if response.status_code >= 400:
            raise ApiError(_problem(response))
        return response

    def _get(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate(self.request("GET", path, **kwargs).json())

    def _list(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        return TypeAdapter(list[model]).validate_python(  # type: ignore[valid-type]
            self.request("GET", path, **kwargs).json()
        )

    # jobs --------------------------------------------------------------------------------

    def submit_job(
        self, req: SubmitJobRequest | dict[str, Any], idempotency_key: str | None = None, retries: int = 3
    ) -> Job:
        """Submit, idempotently: one key (``idempotency_key``, else a new one) is sent on every try, so
        a retry after a lost answer or a restart returns the first job instead of a second. A dict
        is sent as is, so the server does (and explains) all validation."""
        body, headers = submission(req, idempotency_key)
        for attempt in range(retries + 1):
            try:
                response = self.request("POST", f"{API}/jobs", json=body, headers=headers)
                return Job.model_validate(response.json())
            except (Unreachable, ApiError) as exc:
                if not retry_after(exc, attempt, retries):
                    raise
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def wait(
        self,
        ref: str,
        project: str = "default",
        *,
        states: Collection[JobState] | None = None,
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> Job:
        """The job once it reaches one of ``states`` (default: any terminal state); TimeoutError after
        ``timeout`` seconds."""
        wanted = set(states) if states else {s for s in JobState if s.terminal}
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(ref, project)
            if job.status.state in wanted:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {ref} is {job.status.state} after {timeout:g}s")
            time.sleep(poll)

    def list_jobs(
        self,
        *,
        project: str | None = None,
        queue: str | None = None,
        states: list[JobState] | None = None,
        owner: str | None = None,
        search: str | None = None,
        limit: int = 50,
        continue_: str | None = None,
        services: bool = False,
    ) -> Page[Job]:
        params: dict[str, Any] = {"limit": limit}
        if services:
            params["services"] = "true"  # also service replicas' workloads
        for key, value in (
            ("project", project),
            ("queue", queue),
            ("owner", owner),
            ("q", search),
            ("continue", continue_),
        ):
            if value:
                params[key] = value
        if states:
            params["state"] = [s.value for s in states]
        return Page[Job].model_validate(self.request("GET", f"{API}/jobs", params=params).json())

    def iter_jobs(self, **filters: Any) -> Iterator[Job]:
        cursor = None
        while True:
            page = self.list_jobs(continue_=cursor, **filters)
            yield from page.items
            if not page.continue_:
                return
            cursor = page.continue_

    def get_job(self, ref: str, project: str = "default") -> Job:
        return self._get(Job, f"{API}/jobs/{ref}", params={"project": project})

    def job_events(self, ref: str, project: str = "default") -> list[Event]:
        return self._list(Event, f"{API}/jobs/{ref}/events", params={"project": project})

    def cancel_job(self, ref: str, project: str = "default", message: str = "") -> Job:
        return Job.model_validate(
            self.request(
                "POST", f"{API}/jobs/{ref}/cancel", params={"project": project}, json={"message": message}
            ).json()
        )

    def delete_job(self, ref: str, project: str = "default") -> None:
        self.request("DELETE", f"{API}/jobs/{ref}", params={"project": project})

    def logs(
        self,
        ref: str,
        project: str = "default",
        *,
        group: str | None = None,
        index: int = 0,
        follow: bool = False,
        tail: int | None = None,
        since: str | None = None,
    ) -> Iterator[bytes]:
        """A task's output as it arrives (``follow`` keeps streaming until the task ends)."""
        params: dict[str, Any] = {"project": project, "index": index, "follow": follow}
        for key, value in (("group", group), ("tail", tail), ("since", since)):
            if value is not None:
                params[key] = value
        try:
            with self._http.stream(
                "GET", f"{API}/jobs/{ref}/logs", params=params, timeout=httpx.Timeout(30, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(_problem(response))
                yield from response.iter_raw()
        except httpx.TransportError as exc:
            raise Unreachable(f"log stream from {self.config.url} broke: {exc}") from None

    # services ------------------------------------------------------------------------------

    def create_service(self, req: ServiceSpec | dict[str, Any]) -> ServiceCreated:
        body = req.model_dump(mode="json") if isinstance(req, BaseModel) else req
        return ServiceCreated.model_validate(self.request("POST", f"{API}/services", json=body).json())

    def list_services(self, project: str | None = None) -> list[Service]:
        return self._list(Service, f"{API}/services", params={"project": project} if project else {})

    def get_service(self, name: str) -> Service:
        return self._get(Service, f"{API}/services/{name}")

    def update_service(self, name: str, update: ServiceUpdate | dict[str, Any]) -> ServiceCreated:
        """A new revision (or a service-level change); ``token`` is set if it made the service private."""
        body = update.model_dump(mode="json", exclude_unset=True) if isinstance(update, BaseModel) else update
        return ServiceCreated.model_validate(
            self.request("PATCH", f"{API}/services/{name}", json=body).json()
        )

    def set_traffic(self, name: str, split: dict[int, int]) -> Service:
        body = {"targets": [{"revision": n, "percent": p} for n, p in split.items()]}
        return Service.model_validate(self.request("PUT", f"{API}/services/{name}/traffic", json=body).json())

    def promote_service(self, name: str, revision: int | None = None) -> Service:
        params = {"revision": revision} if revision else {}
        return Service.model_validate(
            self.request("POST", f"{API}/services/{name}/promote", params=params).json()
        )

    def rollback_service(self, name: str, revision: int | None = None) -> Service:
        params = {"revision": revision} if revision else {}
        return Service.model_validate(
            self.request("POST", f"{API}/services/{name}/rollback", params=params).json()
        )

    def rotate_service_token(self, name: str) -> ServiceCreated:
        return ServiceCreated.model_validate(self.request("POST", f"{API}/services/{name}/token").json())

    def delete_service(self, name: str) -> None:
        self.request("DELETE", f"{API}/services/{name}")

    # cluster and tenancy -----------------------------------------------------------------

    def list_queues(self) -> list[Queue]:
        return self._list(Queue, f"{API}/queues")

    def create_queue(self, req: CreateQueueRequest) -> Queue:
        return Queue.model_validate(
            self.request("POST", f"{API}/queues", json=req.model_dump(mode="json")).json()
        )

    # datasets and secrets ---------------------------------------------------------------------

    def create_dataset(self, req: CreateDatasetRequest | dict[str, Any]) -> Dataset:
        body = req.model_dump(mode="json") if isinstance(req, BaseModel) else req
        return Dataset.model_validate(self.request("POST", f"{API}/datasets", json=body).json())

    def list_datasets(self, project: str | None = None) -> list[Dataset]:
        return self._list(Dataset, f"{API}/datasets", params={"project": project} if project else {})

    def get_dataset(self, name: str, project: str = "default") -> Dataset:
        return self._get(Dataset, f"{API}/datasets/{name}", params={"project": project})

    def delete_dataset(self, name: str, project: str = "default") -> None:
        self.request("DELETE", f"{API}/datasets/{name}", params={"project": project})

    def load_dataset(
        self,
        name: str,
        project: str = "default",
        nodes: list[str] | None = None,
        include: list[str] | None = None,
    ) -> DataLoad:
        body = {"nodes": nodes or [], "include": include or []}
        r = self.request("POST", f"{API}/datasets/{name}/loads", params={"project": project}, json=body)
        return DataLoad.model_validate(r.json())

    def list_loads(self, name: str, project: str = "default") -> list[DataLoad]:
        return self._list(DataLoad, f"{API}/datasets/{name}/loads", params={"project": project})

    def create_secret(self, name: str, data: dict[str, str], project: str = "default") -> Secret:
        body = {"name": name, "project": project, "data": data}
        return Secret.model_validate(self.request("POST", f"{API}/secrets", json=body).json())

    def list_secrets(self, project: str = "default") -> list[Secret]:
        return self._list(Secret, f"{API}/secrets", params={"project": project})

    def delete_secret(self, name: str, project: str = "default") -> None:
        self.request("DELETE", f"{API}/secrets/{name}", params={"project": project})

    def list_projects(self) -> list[Project]:
        return self._list(Project, f"{API}/projects")

    def admin_check(self) -> CheckReport:
        """The store's invariants (admin token): over-commit, orphans, inconsistent states."""
        return self._get(CheckReport, "/api/v1/admin/check")

    def list_nodes(self) -> list[Node]:
        return self._list(Node, f"{API}/nodes")

    def node_usage(self, name: str) -> NodeUsage:
        """What the node last measured: allocation beside real use per GPU and slice."""
        return self._get(NodeUsage, f"{API}/nodes/{name}/usage")

    def job_usage(self, ref: str, project: str = "default") -> JobUsage:
        return self._get(JobUsage, f"{API}/jobs/{ref}/usage", params={"project": project})

    def whoami(self) -> User:
        return self._get(User, f"{API}/users/me")

    def create_token(self, req: CreateTokenRequest) -> CreatedToken:
        return CreatedToken.model_validate(
            self.request("POST", f"{API}/tokens", json=req.model_dump(mode="json")).json()
        )

    def list_tokens(self, user: str | None = None) -> list[Token]:
        return self._list(Token, f"{API}/tokens", params={"user": user} if user else None)

    def revoke_token(self, token_id: uuid.UUID) -> Token:
        return Token.model_validate(self.request("POST", f"{API}/tokens/{token_id}/revoke").json())

    def version(self) -> dict[str, Any]:
        info: dict[str, Any] = self.request("GET", "/openapi.json").json()["info"]
        return info

    # change feed ---------------------------------------------------------------------------

    def watch(
        self, since: int = 0, kinds: list[str] | None = None, timeout: float = 60
    ) -> Iterator[dict[str, Any]]:
        """Yield change and bookmark lines from the change feed, oldest first."""
        params: dict[str, Any] = {"since": since, "timeout": timeout}
        if kinds:
            params["kind"] = kinds
        try:
            with self._http.stream(
                "GET", f"{API}/watch", params=params, timeout=httpx.Timeout(timeout + 30)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(_problem(response))
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TransportError as exc:
            raise Unreachable(f"watch stream from {self.config.url} broke: {exc}") from None


def _problem(response: httpx.Response) -> Problem:
    try:
        return Problem.model_validate(response.json())
    except (ValueError, TypeError):
        return Problem(
            title=response.reason_phrase or "Error", status=response.status_code, detail=response.text[:500]
        )


def submission(req: SubmitJobRequest | dict[str, Any], key: str | None) -> tuple[Any, dict[str, str]]:
    """The body and headers of a submit: one idempotency key for every try."""
    body = req.model_dump(mode="json", exclude_unset=True) if isinstance(req, BaseModel) else req
    return body, {"Idempotency-Key": key or new_idempotency_key()}


def retry_after(exc: Exception, attempt: int, retries: int) -> bool:
    """Whether a failed submit is worth another try (the same key makes it safe)."""
    retriable = isinstance(exc, Unreachable) or (isinstance(exc, ApiError) and exc.status in RETRIABLE)
    return retriable and attempt < retries


def refused_wait(response: httpx.Response, attempt: int, retries: int) -> float | None:
    """Seconds to wait before sending a refused (429) request again, as its Retry-After says
    (capped); None when another try is not due: another status, the retries are spent, or the
    request is not idempotent (only GET and HEAD are, and writes that carry an Idempotency-Key)."""
    if response.status_code != 429 or attempt >= retries:
        return None
    request = response.request
    if request.method not in ("GET", "HEAD") and "idempotency-key" not in request.headers:
        return None
    try:
        seconds = float(response.headers.get("retry-after", "1"))
    except ValueError:  # the HTTP-date form, which Tessera does not send
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    return min(0.2 * 2**attempt, 2.0)


def new_idempotency_key() -> str:
    return str(uuid.uuid4())

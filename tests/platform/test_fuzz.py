"""Fuzzing the API from its own OpenAPI schema (schemathesis): no 5xx, no response that breaks the schema.

Every operation gets schema-valid and schema-breaking requests, as a cluster admin and as a project
member; a state machine then drives jobs through submit, read, cancel and delete. The budget is
bounded and the examples derandomized, so CI runs the same cases each time;
``TESSERA_FUZZ_EXAMPLES`` raises it for a longer local hunt.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tessera.api.jobs import JobState
from tessera.platform.app import create_app
from tessera.platform.settings import Settings

pytestmark = pytest.mark.xdist_group("fuzz")

EXAMPLES = int(os.environ.get("TESSERA_FUZZ_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# a request that hangs is a failure too, not a stuck CI job
REQUEST_TIMEOUT = 20.0
# /watch streams until its `timeout`: valid values are cut to this so a case takes a blink, not an hour
WATCH_SECONDS = "0.05"


@dataclass
class Fuzzed:
    """The app under test, reached in-process over ASGI, and the tokens to call it with."""

    schema: schemathesis.BaseSchema
    admin: str
    member: str = ""

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        case = self.schema[path][method].Case(**kwargs)
        return case.call(headers={"Authorization": f"Bearer {token or self.admin}"}, timeout=REQUEST_TIMEOUT)


@pytest.fixture
def fuzzed(tmp_path: Path, db_url: str) -> Iterator[Fuzzed]:
    """A fresh app per test, on each database: what one test's fuzzing stored (nodes with odd
    inventories, say) must not decide what another's requests get."""
    # fairness off: a rate limit's 429s would make which cases reach the handlers depend on timing
    settings_ = Settings(
        home=tmp_path / "home",
        database_url=db_url,
        simulate_gpus="2xA100-80GB",
        start_agent=False,
        api_fairness=False,
    )
    app = create_app(settings_, run_controllers=False)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the app's lifespan
    api = Fuzzed(schema=schema, admin=app.state.bootstrap_secret)
    api.call("POST", "/api/v1/users", body={"name": "fuzz-member"})
    api.call(
        "PUT",
        "/api/v1/projects/{name}/members/{user}",
        path_parameters={"name": "default", "user": "fuzz-member"},
        body={"role": "member"},
    )
    r = api.call("POST", "/api/v1/tokens", body={"name": "fuzz", "user": "fuzz-member", "scopes": ["user"]})
    assert r.status_code == 201, r.text
    api.member = r.json()["secret"]
    try:
        yield api
    finally:
        asgi.shutdown_lifespans()


def _bounded(case: Case) -> None:
    """Keep streams short: /watch waits at most WATCH_SECONDS (its default is a minute); logs never
    follow. ``follow=true`` streams until the task ends, and no task here ever runs (there is no
    node), so it is not fuzzed: the fuzz would only measure the request timeout."""
    if case.query is None:
        case.query = {}
    if not isinstance(case.query, dict):
        return
    if case.operation.path == "/api/v1/watch":
        try:
            seconds = float(case.query.get("timeout", WATCH_SECONDS))
        except (TypeError, ValueError):
            return  # not a number: a 422 at once
        if 0 < seconds <= 3600:
            case.query["timeout"] = WATCH_SECONDS
    if case.operation.path.endswith("/logs"):
        case.query["follow"] = "false"


@dataclass
class Tally:
    """What ran: cases and statuses per operation, and each distinct failure."""

    cases: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    failures: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            f"{label:<52} {n:>4} {self.seconds[label]:5.1f}s  {dict(sorted(self.statuses[label].items()))}"
            for label, n in sorted(self.cases.items())
        ]
        return "\n".join([*rows, f"{sum(self.cases.values())} cases over {len(self.cases)} operations"])


def fuzz_all(api: Fuzzed, token: str, examples: int) -> Tally:
    """Each operation, positive then negative, ``examples`` cases each (plus the schema's examples)."""
    tally = Tally()
    for result in api.schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot read: {result}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_one(result.ok(), mode, token, examples, tally)
    return tally


def checks_for(operation: APIOperation) -> list[Any]:
    """All checks, except one known gap: GET /metrics (routers/health.py, outside this change) does
    not document its 401 and 403 yet. The waiver ends by itself once the schema lists them."""
    documented = operation.definition.raw.get("responses", {})
    if operation.path == "/metrics" and not {"401", "403"} <= set(documented):
        return [check for check in CHECKS if check is not status_code_conformance]
    return CHECKS


def fuzz_one(operation: APIOperation, mode: GenerationMode, token: str, examples: int, tally: Tally) -> None:
    """One operation in one mode; a failure is shrunk to a minimal request and recorded."""
    label = f"{operation.method.upper()} {operation.path}"
    auth = {"Authorization": f"Bearer {token}"}
    checks = checks_for(operation)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        _bounded(case)
        response = case.call(headers=auth, timeout=REQUEST_TIMEOUT)
        tally.cases[label] += 1
        tally.statuses[label][response.status_code] += 1
        case.validate_response(response, checks=checks, headers=auth)

    started = time.monotonic()
    try:
        one()
    except Unsatisfiable:
        pass  # an operation without inputs (GET /healthz) has no schema-breaking request
    except (Exception, BaseExceptionGroup) as exc:  # every failure is reported, not only the first
        notes = "\n".join(getattr(exc, "__notes__", []))
        tally.failures.append(f"{label} ({mode.value}): {type(exc).__name__}: {exc}\n{notes}")
    finally:
        tally.seconds[label] += time.monotonic() - started


def _assert_clean(tally: Tally, minimum_operations: int) -> None:
    print(tally.table())  # noqa: T201 - the report of what ran (pytest -s or -rA shows it)
    assert not tally.failures, "\n\n".join(tally.failures)
    assert len(tally.cases) >= minimum_operations, tally.table()


def test_every_operation_as_cluster_admin(fuzzed: Fuzzed) -> None:
    operations = len(list(fuzzed.schema.get_all_operations()))
    tally = fuzz_all(fuzzed, fuzzed.admin, EXAMPLES)
    _assert_clean(tally, operations)
    assert tally.cases.total() >= operations * EXAMPLES  # the budget was spent, not skipped


def test_every_operation_as_project_member(fuzzed: Fuzzed) -> None:
    """A member's token reaches the 403 paths (admin routes, node and gateway routes)."""
    tally = fuzz_all(fuzzed, fuzzed.member, max(5, EXAMPLES // 3))
    _assert_clean(tally, len(list(fuzzed.schema.get_all_operations())))
    assert any(403 in statuses for statuses in tally.statuses.values()), tally.table()


# --- stateful: jobs through submit, read, list, cancel and delete, checked against a model ---

NAMES = st.sampled_from(["a", "b", "train", "eval"])  # few names, so live-name clashes happen
JOB_BODIES = st.fixed_dictionaries(
    {
        "name": NAMES,
        "groups": st.lists(
            st.fixed_dictionaries(
                {
                    "command": st.just(["python", "-c", "print(1)"]),
                    "resources": st.fixed_dictionaries(
                        {"gpu_memory": st.sampled_from(["512Mi", "4Gi", "80Gi"])}
                    ),
                },
                optional={"replicas": st.integers(1, 3)},
            ),
            min_size=1,
            max_size=1,
        ),
    },
    optional={
        "priority": st.sampled_from(["low", "normal", "high"]) | st.integers(-1_000_000, 1_000_000),
        "labels": st.dictionaries(st.sampled_from(["team", "run"]), st.sampled_from(["x", "y1"]), max_size=2),
    },
)


@dataclass
class ModelJob:
    id: str
    name: str
    live: bool = True


class JobMachine(RuleBasedStateMachine):
    """Each step is one request, validated like the fuzz above (status, content type, schema),
    then checked against what the model says the job store holds."""

    api: Fuzzed  # set by the test
    steps = 0  # requests made, over all runs

    jobs = Bundle("jobs")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelJob] = {}
        self.calls = 0
        # from an empty store: earlier fuzzing, or a run that failed midway, may have left jobs
        for job in self.call("GET", "/api/v1/jobs", query={"limit": 500}).json()["items"]:
            self.call("DELETE", "/api/v1/jobs/{ref}", path_parameters={"ref": job["id"]})

    def call(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        case = self.api.schema[path][method].Case(headers=headers, **kwargs)
        auth = {"Authorization": f"Bearer {self.api.admin}"}
        response = case.call(headers=auth, timeout=REQUEST_TIMEOUT)
        case.validate_response(response, checks=CHECKS, headers=auth)
        self.calls += 1
        return response

    def teardown(self) -> None:
        JobMachine.steps += self.calls

    @rule(target=jobs, body=JOB_BODIES)
    def submit(self, body: dict[str, Any]) -> Any:
        r = self.call("POST", "/api/v1/jobs", body=body)
        clash = any(j.live and j.name == body["name"] for j in self.model.values())
        if clash:
            assert r.status_code == 409, r.text
            return multiple()
        assert r.status_code == 201, r.text
        job = ModelJob(id=r.json()["id"], name=body["name"])
        assert r.headers["location"] == [f"/api/v1/jobs/{job.id}"], r.headers
        self.model[job.id] = job
        return job

    @rule(job=jobs)
    def read(self, job: ModelJob) -> None:
        r = self.call("GET", "/api/v1/jobs/{ref}", path_parameters={"ref": job.id})
        if job.id not in self.model:
            assert r.status_code == 404, r.text
            return
        assert r.status_code == 200 and r.json()["id"] == job.id and r.json()["name"] == job.name, r.text
        assert state_of(r.json()).terminal != job.live, r.text
        for sub in ("events", "explain", "usage"):
            r = self.call("GET", f"/api/v1/jobs/{{ref}}/{sub}", path_parameters={"ref": job.id})
            assert r.status_code == 200, r.text

    @rule(job=jobs)
    def read_by_name(self, job: ModelJob) -> None:
        r = self.call(
            "GET", "/api/v1/jobs/{ref}", path_parameters={"ref": job.name}, query={"project": "default"}
        )
        named = {j.id for j in self.model.values() if j.name == job.name}
        if not named:
            assert r.status_code == 404, r.text
        else:
            assert r.status_code == 200 and r.json()["id"] in named, r.text

    @rule(job=jobs, stale=st.booleans())
    def cancel(self, job: ModelJob, stale: bool) -> None:
        version = 0
        if job.id in self.model:
            version = self.call("GET", "/api/v1/jobs/{ref}", path_parameters={"ref": job.id}).json()[
                "version"
            ]
        headers = {"If-Match": str(version + 1 if stale else version)}
        r = self.call("POST", "/api/v1/jobs/{ref}/cancel", path_parameters={"ref": job.id}, headers=headers)
        if job.id not in self.model:
            assert r.status_code == 404, r.text
        elif stale:
            assert r.status_code == 412 and r.json()["errors"][0]["field"] == "If-Match", r.text
        elif not job.live:
            assert r.status_code == 409, r.text
        else:
            assert r.status_code == 200 and state_of(r.json()).terminal, r.text
            job.live = False

    @rule(job=jobs)  # not consumed: later steps read, cancel and delete it again and get 404
    def delete(self, job: ModelJob) -> None:
        r = self.call("DELETE", "/api/v1/jobs/{ref}", path_parameters={"ref": job.id})
        assert r.status_code == (204 if self.model.pop(job.id, None) else 404), r.text

    @rule(limit=st.integers(1, 3))
    def list_in_pages(self, limit: int) -> None:
        """Paging by ``continue`` yields each job once, newest first."""
        seen: list[str] = []
        cursor: str | None = None
        while True:
            query: dict[str, Any] = {"limit": limit, **({"continue": cursor} if cursor else {})}
            page = self.call("GET", "/api/v1/jobs", query=query)
            assert page.status_code == 200, page.text
            seen += [item["id"] for item in page.json()["items"]]
            cursor = page.json().get("continue")
            if not cursor:
                break
        assert sorted(seen) == sorted(self.model) and len(seen) == len(set(seen)), (seen, self.model)

    @invariant()
    def live_names_are_unique(self) -> None:
        live = [j.name for j in self.model.values() if j.live]
        assert len(live) == len(set(live))


def state_of(job: dict[str, Any]) -> JobState:
    return JobState(job["status"]["state"])


def test_jobs_stateful(fuzzed: Fuzzed) -> None:
    JobMachine.api = fuzzed
    JobMachine.steps = 0
    run_state_machine_as_test(
        JobMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(f"stateful: {JobMachine.steps} requests")  # noqa: T201 - the report of what ran
    assert JobMachine.steps >= EXAMPLES * 10

"""/api/v1/jobs"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.concurrency import run_in_threadpool

from tessera.api.common import Page
from tessera.api.events import Event
from tessera.api.jobs import CancelJobRequest, Explanation, Job, JobState, SubmitJobRequest
from tessera.api.usage import JobUsage
from tessera.platform.auth import UserPrincipal
from tessera.platform.deps import DbDep, SettingsDep
from tessera.platform.routers.responses import COMMON, CONFLICT, problems
from tessera.platform.services import events as event_service
from tessera.platform.services import jobs as service
from tessera.platform.services import usage as usage_service

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=COMMON)

ProjectQuery = Annotated[str, Query(description="Project of a job addressed by name.")]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Job, responses=CONFLICT)
async def submit_job(
    req: SubmitJobRequest,
    db: DbDep,
    settings: SettingsDep,
    caller: UserPrincipal,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Job:
    """Submit a job. Retrying with the same ``Idempotency-Key`` returns the first job (200)."""
    job, created = await run_in_threadpool(
        service.submit_job,
        db,
        caller,
        req,
        idempotency_key,
        settings.checkpoint_root,
        settings.checkpoints is None,
        settings.backend == "kubernetes",
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return job


@router.get("", response_model=Page[Job])
async def list_jobs(
    db: DbDep,
    caller: UserPrincipal,
    project: str | None = None,
    queue: str | None = None,
    state: Annotated[list[JobState] | None, Query()] = None,
    owner: str | None = None,
    q: Annotated[str | None, Query(max_length=63, description="Name contains.")] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    continue_: Annotated[str | None, Query(alias="continue")] = None,
    services: Annotated[bool, Query(description="Also service replicas' workloads.")] = False,
) -> Page[Job]:
    """Jobs newest first; pass ``continue`` from the previous page for the next."""
    flt = service.JobFilter(
        project=project, queue=queue, states=tuple(state or ()), owner=owner, search=q, services=services
    )
    jobs, cursor, revision = await run_in_threadpool(service.list_jobs, db, caller, flt, limit, continue_)
    return Page[Job](items=jobs, continue_=cursor, revision=revision)


@router.get("/{ref}", response_model=Job)
async def get_job(ref: str, db: DbDep, caller: UserPrincipal, project: ProjectQuery = "default") -> Job:
    """A job by UUID, or by name within ``project``."""
    return await run_in_threadpool(service.get_job, db, caller, ref, project)


@router.get("/{ref}/events", response_model=list[Event])
async def job_events(
    ref: str, db: DbDep, caller: UserPrincipal, project: ProjectQuery = "default"
) -> list[Event]:
    job = await run_in_threadpool(service.get_job, db, caller, ref, project)
    return await run_in_threadpool(
        lambda: event_service.list_events(db, caller, kind="job", object_id=job.id, limit=1000)
    )


@router.get("/{ref}/explain", response_model=Explanation)
async def explain_job(
    ref: str, db: DbDep, caller: UserPrincipal, project: ProjectQuery = "default"
) -> Explanation:
    """Why a job is pending: its reason and every node's filter results."""
    from tessera.platform.services.explain import explain_job as explain

    return await run_in_threadpool(explain, db, caller, ref, project)


@router.get("/{ref}/usage", response_model=JobUsage)
async def job_usage(
    ref: str, db: DbDep, caller: UserPrincipal, project: ProjectQuery = "default"
) -> JobUsage:
    """The job's slices, allocation beside what their nodes measure (`tessera top job`)."""
    return await run_in_threadpool(usage_service.job_usage, db, caller, ref, project)


@router.post("/{ref}/cancel", response_model=Job, responses={**CONFLICT, **problems(412)})
async def cancel_job(
    ref: str,
    db: DbDep,
    caller: UserPrincipal,
    req: CancelJobRequest | None = None,
    project: ProjectQuery = "default",
    if_match: Annotated[int | None, Header(alias="If-Match")] = None,
) -> Job:
    """Cancel a live job; ``If-Match: <version>`` makes it conditional."""
    message = req.message if req else ""
    return await run_in_threadpool(
        lambda: service.cancel_job(db, caller, ref, project, message=message, if_version=if_match)
    )


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT)
async def delete_job(
    ref: str, db: DbDep, caller: UserPrincipal, project: ProjectQuery = "default"
) -> Response:
    """Delete a job; a live one is cancelled first."""
    await run_in_threadpool(service.delete_job, db, caller, ref, project)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

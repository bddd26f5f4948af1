"""The KFP steps. ``tessera_job`` is a plain function (kfp runs its source in the step's container),
so every import is inside it.

Re-attach: the job is submitted with an idempotency key made of the pipeline run's id and the
step's name, so a retried (or restarted) step gets the job its first try submitted instead of a
second one, and follows it. The job's id is written to the ``job_id`` output and printed before the
step waits. Cancel: SIGTERM or SIGINT (the step is terminated) cancels the job first.
"""

from typing import Any

from kfp import dsl

DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_PACKAGES = ["tessera[kfp]"]


def tessera_job(
    job_spec: dict,  # kfp reads the annotation: a bare dict is a Struct
    run_id: str,
    step: str,
    job_id: dsl.OutputPath(str),  # type: ignore[valid-type]  # the step writes the job's id there
    url: str = "",
    token: str = "",
    poll_seconds: float = 2.0,
    follow_logs: bool = True,
) -> str:
    """Submit ``job_spec`` (the API's job submission) to Tessera, follow it to its end and return its
    final state; fail the step unless it SUCCEEDED. ``url``/``token`` default to TESSERA_URL and
    TESSERA_TOKEN in the step's environment."""
    import os
    import signal
    import sys
    import time

    from tessera.api.jobs import JobState
    from tessera.client import ApiError, Client, ClientConfig

    config = ClientConfig(
        url=url or os.environ.get("TESSERA_URL", "http://127.0.0.1:8470"),
        token=token or os.environ.get("TESSERA_TOKEN"),
        source="kfp step",
    )
    key = f"kfp-{run_id}-{step}"[:255]
    with Client(config) as client:
        job = client.submit_job(job_spec, idempotency_key=key)
        project = job.project
        with open(job_id, "w") as out:
            out.write(str(job.id))
        print(f"tessera job {project}/{job.name} id {job.id} (key {key})", flush=True)

        def cancel(signum: int, _frame: object) -> None:
            try:
                client.cancel_job(str(job.id), project, message=f"its KFP step got signal {signum}")
                print(f"cancelled tessera job {job.name}", flush=True)
            except ApiError as exc:
                print(f"could not cancel tessera job {job.name}: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, cancel)
        signal.signal(signal.SIGINT, cancel)
        started = {JobState.RUNNING, *(s for s in JobState if s.terminal)}
        job = client.wait(str(job.id), project, states=started, poll=poll_seconds)
        if follow_logs and job.status.state is not JobState.CANCELLED:
            for attempt in range(3):  # a log stream can end early (a restart): pick it up again
                try:
                    for chunk in client.logs(str(job.id), project, follow=True):
                        sys.stdout.write(chunk.decode(errors="replace"))
                        sys.stdout.flush()
                    break
                except ApiError as exc:
                    print(f"log stream: {exc}", file=sys.stderr, flush=True)
                    time.sleep(poll_seconds * (attempt + 1))
        job = client.wait(str(job.id), project, poll=poll_seconds)
    state = job.status.state.value
    print(f"tessera job {job.name}: {state} ({job.status.message})", flush=True)
    if job.status.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"tessera job {job.name} ended {state}: {job.status.message}")
    return state


def job_component(base_image: str = DEFAULT_IMAGE, packages: list[str] | None = None) -> Any:
    """``tessera_job`` as a KFP Python component (``packages`` are pip-installed in the step's
    container; None: tessera[kfp]; [] for an image that has Tessera already)."""
    return dsl.component(
        base_image=base_image,
        packages_to_install=DEFAULT_PACKAGES if packages is None else packages,
    )(tessera_job)


def cli_component(image: str = "tessera:latest") -> Any:
    """A container component running ``tessera submit train``: the image needs the tessera CLI, and
    TESSERA_URL/TESSERA_TOKEN set (e.g. from a Kubernetes secret)."""

    @dsl.container_component
    def tessera_submit(name: str, command: str, gpu_memory: str, gpu_compute: int) -> dsl.ContainerSpec:
        return dsl.ContainerSpec(
            image=image,
            command=["tessera", "submit", "train"],
            args=[
                "--name", name, "--gpu-memory", gpu_memory, "--gpu-compute", gpu_compute, "--",
                "sh", "-c", command,
            ],
        )  # fmt: skip

    return tessera_submit

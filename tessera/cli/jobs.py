"""Job verbs: submit train, list, get, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.api.jobs import Job, JobState
from tessera.api.quantities import QuantityError, format_mib, parse_duration
from tessera.cli.output import Format, age, dump, out, server_errors, table
from tessera.client import Client

submit_app = typer.Typer(help="Submit a job (Arena's verbs: train, ...).", no_args_is_help=True)

OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, wide, json or yaml.")]
ProjectOpt = Annotated[
    str, typer.Option("-p", "--project", envvar="TESSERA_PROJECT", help="Project of jobs addressed by name.")
]
# submit verbs: -p is Arena's --priority there
SubmitProjectOpt = Annotated[
    str, typer.Option("--project", envvar="TESSERA_PROJECT", help="Project to submit to.")
]


def _gib(gpu_memory: str | None, gpumemory: int | None) -> str | None:
    """--gpu-memory 8Gi, or Arena's --gpumemory 8 (GiB)."""
    if gpu_memory is not None and gpumemory is not None:
        raise typer.BadParameter(
            "give --gpu-memory or Arena's --gpumemory, not both", param_hint="--gpumemory"
        )
    return f"{gpumemory}Gi" if gpumemory is not None else gpu_memory


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=flag)
        pairs[key] = val
    return pairs


DATA_OPTIONS = {"required", "preferred", "stream", "mount"}


def data_mounts(values: list[str]) -> list[dict[str, str]]:
    """``--data NAME:/path[:required]`` (Arena's spelling) as the API's data mounts."""
    mounts = []
    for value in values:
        name, _, rest = value.partition(":")
        path, _, options = rest.partition(":")
        words = [w for w in options.split(",") if w]
        if not name or (rest and not path.startswith("/")) or not set(words) <= DATA_OPTIONS:
            form = "NAME:/path, optionally :required and/or :stream (NAME:/path:required,stream)"
            raise typer.BadParameter(f"{value!r} is not {form}", param_hint="--data")
        mount = {"dataset": name, "path": path or "/data"}
        if "required" in words:
            mount["locality"] = "required"
        if "stream" in words:
            mount["mode"] = "stream"
        mounts.append(mount)
    return mounts


def _duration(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    try:
        parse_duration(value)
    except QuantityError as exc:
        raise typer.BadParameter(str(exc), param_hint=flag) from None
    return value


@submit_app.command("train", context_settings={"allow_interspersed_args": False})
def submit_train(
    ctx: typer.Context,
    command: Annotated[list[str], typer.Argument(help="The program and its arguments, after --.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Job name (DNS label); generated if unset.")
    ] = None,
    project: SubmitProjectOpt = "default",
    queue: Annotated[
        str | None, typer.Option("-q", "--queue", help="Defaults to the project's queue.")
    ] = None,
    gpus: Annotated[float | None, typer.Option(help="Whole GPUs (1, 2, ...) or a fraction like 0.5.")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="Slice memory, e.g. 4Gi.")] = None,
    gpu_compute: Annotated[
        int | None, typer.Option("--gpu-compute", "--gpucore", help="Slice compute percent, 1..100.")
    ] = None,
    gpumemory: Annotated[
        int | None, typer.Option("--gpumemory", min=1, help="Arena's spelling: slice memory in GiB.")
    ] = None,
    mig: Annotated[str | None, typer.Option(help="MIG profile, e.g. 1g.10gb.")] = None,
    gpu_model: Annotated[list[str] | None, typer.Option(help="Allowed GPU model (repeatable).")] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU per task: 2, 0.5 or 500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Host memory per task, e.g. 8Gi.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Tasks in the gang; rank 0 is the master.")] = 1,
    min_available: Annotated[int | None, typer.Option(min=1, help="Gang size if below workers.")] = None,
    priority: Annotated[
        str | None, typer.Option("-p", "--priority", help="low, normal, high or an integer.")
    ] = None,
    preemptible: Annotated[bool, typer.Option(help="May be evicted for higher-priority work.")] = False,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (repeatable).")] = None,
    selector: Annotated[
        list[str] | None,
        typer.Option("--selector", help="KEY=VALUE: run only on nodes with this label (repeatable)."),
    ] = None,
    label: Annotated[list[str] | None, typer.Option("-l", "--label", help="KEY=VALUE.")] = None,
    deadline: Annotated[
        str | None, typer.Option(help="Fail if not done within, e.g. 90s, 30m, 2h, 1d.")
    ] = None,
    expected_runtime: Annotated[
        str | None,
        typer.Option(
            help="How long it should run, e.g. 45m: lets it backfill into room held for a waiting gang."
        ),
    ] = None,
    retries: Annotated[
        int, typer.Option("--retries", "--retry", min=0, help="Times to retry after a failure.")
    ] = 0,
    workdir: Annotated[str | None, typer.Option(help="Working directory of each task.")] = None,
    image: Annotated[str | None, typer.Option(help="Container image (container backends only).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe submission key.")] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="NAME:/path: a dataset cached on the node before start, seen at $TESSERA_DATA_<NAME>; "
            "NAME:/path:required to run only where it is all cached, :stream to read it through a "
            "block cache with tessera.datacache.open() (repeatable).",
        ),
    ] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Submit a training job: tessera submit train|pytorchjob --name N --workers 2 --gpus 1 -- python train.py

    Every worker gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    (rank 0 is the master); the workers start together and one failure ends or retries them all.
    """
    kind = ctx.info_name or "train"  # the verb it was called by: train or pytorchjob
    resources: dict[str, Any] = {}
    for key, value in (
        ("gpus", gpus),
        ("gpu_memory", _gib(gpu_memory, gpumemory)),
        ("gpu_compute", gpu_compute),
        ("mig_profile", mig),
        ("cpu", cpu),
        ("memory", memory),
    ):
        if value is not None:
            resources[key] = value
    if gpu_model:
        resources["gpu_models"] = gpu_model
    group: dict[str, Any] = {
        "name": "worker",
        "replicas": workers,
        "command": command,
        "resources": resources,
        "env": _pairs(env or [], "--env"),
    }
    if min_available is not None:
        group["min_available"] = min_available
    if workdir:
        group["working_dir"] = workdir
    if image:
        group["image"] = image
    body: dict[str, Any] = {
        "project": project,
        "kind": kind,
        "data": data_mounts(data or []),
        "groups": [group],
        "preemptible": preemptible,
        "retry": {"max_retries": retries},
        "labels": _pairs(label or [], "--label"),
        "node_selector": _pairs(selector or [], "--selector"),
    }
    body["expected_runtime"] = _duration(expected_runtime, "--expected-runtime")
    send_job(body, name, queue, priority, deadline, idempotency_key, output, "job")


def send_job(
    body: dict[str, Any],
    name: str | None,
    queue: str | None,
    priority: str | None,
    deadline: str | None,
    idempotency_key: str | None,
    output: Format,
    what: str,
) -> None:
    """Submit a job body with the options every submit verb shares, and say what became of it."""
    for key, value in (
        ("name", name),
        ("queue", queue),
        ("priority", priority),
        ("deadline", _duration(deadline, "--deadline")),
    ):
        body[key] = value
    body = {k: v for k, v in body.items() if v is not None}
    with server_errors(), Client() as client:
        job = client.submit_job(body, idempotency_key=idempotency_key)
    if output in (Format.JSON, Format.YAML):
        dump(job, output)
    else:
        out.print(
            f"{what} [bold]{job.name}[/bold] submitted to queue {job.queue} "
            f"({job.status.state}): tessera get {job.name}",
            highlight=False,
        )


def _gpu_summary(job: Job) -> str:
    r = job.spec.groups[0].resources
    if r.mig_profile:
        return r.mig_profile
    if r.gpu_memory is not None or r.gpu_compute is not None:
        parts = [
            format_mib(r.gpu_memory) if r.gpu_memory is not None else "",
            f"{r.gpu_compute}%" if r.gpu_compute is not None else "",
        ]
        return "/".join(p for p in parts if p)
    return f"{r.gpus:g}" if r.gpus else "-"


def _status(job: Job) -> str:
    if job.status.state is JobState.PENDING and job.status.pending_reason:
        return f"PENDING ({job.status.pending_reason.code})"
    if job.status.reason and job.status.state is JobState.FAILED:
        return f"FAILED ({job.status.reason})"
    return job.status.state.value


def list_jobs(
    project: Annotated[str | None, typer.Option("-p", "--project", help="Only this project.")] = None,
    queue: Annotated[str | None, typer.Option("-q", "--queue")] = None,
    state: Annotated[list[JobState] | None, typer.Option("--state", case_sensitive=False)] = None,
    search: Annotated[str | None, typer.Option("--search", help="Name contains.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", "-A", help="Every project you can see, every page (not only the first).")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    output: OutputOpt = Format.TABLE,
) -> None:
    """List jobs, newest first."""
    with server_errors(), Client() as client:
        filters: dict[str, Any] = dict(project=project, queue=queue, states=state, search=search)
        if all_:
            jobs = list(client.iter_jobs(limit=limit, **filters))
            more = None
        else:
            page = client.list_jobs(limit=limit, **filters)
            jobs, more = page.items, page.continue_
    if output in (Format.JSON, Format.YAML):
        dump(jobs, output)
        return
    wide = output is Format.WIDE
    columns = ["NAME", "STATUS", "QUEUE", "TASKS", "GPU", "AGE"]
    if wide:
        columns += ["PROJECT", "OWNER", "PRIORITY", "ATTEMPT", "ID"]
    rows = []
    for job in jobs:
        row = [
            job.name,
            _status(job),
            job.queue,
            str(job.spec.task_count),
            _gpu_summary(job),
            age(job.created_at),
        ]
        if wide:
            row += [job.project, job.owner, str(job.spec.priority), str(job.status.attempt), str(job.id)]
        rows.append(row)
    table(columns, rows)
    if more:
        out.print("(more jobs: use --all or --limit)", style="dim")


def get_job(
    name: Annotated[str, typer.Argument(help="Job name or id.")],
    project: ProjectOpt = "default",
    events: Annotated[bool, typer.Option("-e", "--events", help="Show the job's events.")] = True,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Show a job, its pending reason and its events."""
    with server_errors(), Client() as client:
        job = client.get_job(name, project)
        job_events = client.job_events(str(job.id), project) if events else []
    if output in (Format.JSON, Format.YAML):
        dump(job, output)
        return
    status = job.status
    lines = [
        ("Name", job.name),
        ("Id", str(job.id)),
        ("Project", job.project),
        ("Queue", job.queue),
        ("Owner", job.owner),
        ("State", status.state.value),
        ("Priority", str(job.spec.priority)),
        ("Attempt", str(status.attempt)),
        ("Submitted", status.submitted_at.isoformat(timespec="seconds")),
    ]
    if status.pending_reason:
        lines.append(("Pending", f"{status.pending_reason.code}: {status.pending_reason.message}"))
    if status.reason:
        lines.append(("Reason", f"{status.reason}{': ' + status.message if status.message else ''}"))
    for group in job.spec.groups:
        lines.append(
            (
                f"Group {group.name}",
                f"{group.replicas} x {' '.join(group.command)} (gang {group.gang_size}, "
                f"gpu {_gpu_summary(job)})",
            )
        )
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.print(f"[bold]{key.ljust(width)}[/bold]  {value}", highlight=False)
    if job.tasks:
        out.print()
        table(
            ["TASK", "STATE", "NODE", "EXIT"],
            [
                [
                    f"{t.group}-{t.index}",
                    t.state.value,
                    t.node or "-",
                    "-" if t.exit_code is None else str(t.exit_code),
                ]
                for t in job.tasks
            ],
        )
    if job_events:
        out.print()
        table(
            ["AGE", "TYPE", "REASON", "MESSAGE"],
            [[age(e.at), e.type.value, e.reason, e.message] for e in job_events],
        )


def cancel_job(
    names: Annotated[list[str], typer.Argument(help="Job names or ids.")],
    project: ProjectOpt = "default",
) -> None:
    """Cancel running or pending jobs (their records stay)."""
    with server_errors(), Client() as client:
        for name in names:
            job = client.cancel_job(name, project)
            out.print(f"job {job.name} {job.status.state}", highlight=False)


def delete_job(
    names: Annotated[list[str], typer.Argument(help="Job names or ids.")],
    project: ProjectOpt = "default",
) -> None:
    """Delete jobs (a live job is cancelled first)."""
    with server_errors(), Client() as client:
        for name in names:
            client.delete_job(name, project)
            out.print(f"job {name} deleted", highlight=False)


def logs(
    name: Annotated[str, typer.Argument(help="Job name or id.")],
    project: ProjectOpt = "default",
    follow: Annotated[
        bool, typer.Option("-f", "--follow", help="Keep streaming until the task ends.")
    ] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=0, help="Only the last N lines.")] = None,
    since: Annotated[str | None, typer.Option(help="Only output newer than, e.g. 10m, 1h.")] = None,
    index: Annotated[int, typer.Option("-i", "--index", min=0, help="Task index (rank) in the group.")] = 0,
    group: Annotated[str | None, typer.Option(help="Task group (default: the job's first).")] = None,
) -> None:
    """Print a task's output (stdout and stderr)."""
    if since is not None:
        try:
            parse_duration(since)
        except QuantityError as exc:
            raise typer.BadParameter(str(exc), param_hint="--since") from None
    import sys

    with server_errors(), Client() as client:
        for chunk in client.logs(
            name, project, group=group, index=index, follow=follow, tail=tail, since=since
        ):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


def explain(
    name: Annotated[str, typer.Argument(help="Job name or id.")],
    project: ProjectOpt = "default",
    output: OutputOpt = Format.TABLE,
) -> None:
    """Why a job is pending: its reason and each node's filter results."""
    from tessera.api.jobs import Explanation

    with server_errors(), Client() as client:
        result = Explanation.model_validate(
            client.request("GET", f"/api/v1/jobs/{name}/explain", params={"project": project}).json()
        )
    if output in (Format.JSON, Format.YAML):
        dump(result, output)
        return
    out.print(
        f"[bold]{result.job}[/bold]  {result.state}  ({result.tasks} task(s), gang {result.gang_size})",
        highlight=False,
    )
    if result.pending_reason:
        out.print(f"{result.pending_reason.code}: {result.pending_reason.message}", highlight=False)
    if result.nodes:
        table(
            ["NODE", "READY", "TASKS THAT FIT", "WHY NOT"],
            [
                [n.node, "yes" if n.ready else "no", str(n.tasks_that_fit), "; ".join(n.reasons) or "-"]
                for n in result.nodes
            ],
        )
    elif result.state is JobState.PENDING:
        out.print("no node has joined yet", highlight=False)


def prune(
    since: Annotated[str, typer.Option("--since", help="Ended longer ago than this, e.g. 24h, 7d.")],
    project: Annotated[str | None, typer.Option("--project", help="Only this project.")] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would be deleted.")] = False,
) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) that ended longer ago than --since."""
    from datetime import UTC, datetime

    cutoff = datetime.now(UTC) - parse_duration(_duration(since, "--since") or since)
    ended = [s for s in JobState if s.terminal]
    with server_errors(), Client() as client:
        old = [
            j
            for j in client.iter_jobs(states=ended, project=project, limit=500)
            if (j.status.finished_at or j.updated_at) < cutoff
        ]
        for job in old:
            if not dry_run:
                client.delete_job(str(job.id), job.project)
            out.print(f"{'would delete' if dry_run else 'deleted'} {job.project}/{job.name}", highlight=False)
    out.print(f"{len(old)} job(s) {'to prune' if dry_run else 'pruned'}", highlight=False)


def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.")] = "bash",
) -> None:
    """Print the shell completion script: eval "$(tessera completion bash)"."""
    from typer._completion_shared import get_completion_script

    if shell not in ("bash", "zsh", "fish"):
        raise typer.BadParameter(f"{shell!r} is not bash, zsh or fish", param_hint="SHELL")
    script = get_completion_script(prog_name="tessera", complete_var="_TESSERA_COMPLETE", shell=shell)
    print(script)  # noqa: T201


# Arena's `submit pytorchjob` is the same command with kind pytorchjob (the name it was called by)
submit_app.command("pytorchjob", context_settings={"allow_interspersed_args": False})(submit_train)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
    app.command("prune")(prune)
    app.command("completion")(completion)
    app.command("logs")(logs)
    app.add_typer(submit_app, name="submit")
    app.command("list")(list_jobs)
    app.command("get")(get_job)
    app.command("cancel")(cancel_job)
    app.command("delete")(delete_job)

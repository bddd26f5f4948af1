"""`tessera serve`: inference services (Arena's `serve custom`, list, get, logs, delete, update) with
traffic, promote, rollback and token."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from tessera.api.quantities import format_mib
from tessera.api.serving import ReplicaState, Service
from tessera.cli.jobs import OutputOpt, _duration, _gib, _pairs
from tessera.cli.output import Format, age, dump, fail, out, server_errors, table
from tessera.client import Client

serve_app = typer.Typer(help="Inference services on GPU slices, behind the gateway.", no_args_is_help=True)

GpusOpt = Annotated[float | None, typer.Option(help="Whole GPUs (1, 2, ...) or a fraction like 0.5.")]
GpuMemoryOpt = Annotated[str | None, typer.Option("--gpu-memory", help="Slice memory per replica, e.g. 8Gi.")]
ArenaGpuMemoryOpt = Annotated[
    int | None, typer.Option("--gpumemory", min=1, help="Arena's: GiB per replica.")
]
GpuComputeOpt = Annotated[
    int | None, typer.Option("--gpu-compute", "--gpucore", min=1, max=100, help="Compute percent.")
]
EnvOpt = Annotated[list[str] | None, typer.Option("-e", "--env", help="KEY=VALUE (repeatable).")]


def _resources(
    gpus: float | None,
    gpu_memory: str | None,
    gpumemory: int | None,
    gpu_compute: int | None,
    cpu: str | None,
    memory: str | None,
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for key, value in (
        ("gpus", gpus),
        ("gpu_memory", _gib(gpu_memory, gpumemory)),
        ("gpu_compute", gpu_compute),
        ("cpu", cpu),
        ("memory", memory),
    ):
        if value is not None:
            resources[key] = value
    return resources


@serve_app.command("custom", context_settings={"allow_interspersed_args": False})
def serve_custom(
    command: Annotated[list[str], typer.Argument(help="The model server and its arguments, after --.")],
    name: Annotated[str, typer.Option("--name", help="Service name: its path at the gateway.")],
    project: Annotated[str, typer.Option("--project", envvar="TESSERA_PROJECT")] = "default",
    queue: Annotated[str | None, typer.Option("-q", "--queue")] = None,
    version: Annotated[
        str | None, typer.Option(help="A label for this revision (Arena's --version).")
    ] = None,
    gpus: GpusOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    gpumemory: ArenaGpuMemoryOpt = None,
    gpu_compute: GpuComputeOpt = None,
    cpu: Annotated[str | None, typer.Option(help="CPU per replica: 2, 0.5 or 500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Host memory per replica, e.g. 4Gi.")] = None,
    replicas: Annotated[int | None, typer.Option(min=0, help="A fixed count (min = max).")] = None,
    min_replicas: Annotated[int | None, typer.Option(min=0, help="0 allows scale to zero.")] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1)] = None,
    port: Annotated[
        int, typer.Option("--port", "--restful-port", min=1, max=65535, help="Container port (Kubernetes).")
    ] = 8000,
    readiness_path: Annotated[str, typer.Option(help="GET here is 2xx once the model is loaded.")] = "/",
    target_concurrency: Annotated[
        float | None, typer.Option("--target-concurrency", "--concurrency", help="In-flight per replica.")
    ] = None,
    stable_window: Annotated[str | None, typer.Option(help="Autoscaler's stable window (60s).")] = None,
    panic_window: Annotated[str | None, typer.Option(help="Autoscaler's panic window (6s).")] = None,
    scale_to_zero_grace: Annotated[
        str | None, typer.Option(help="Idle time before the last goes (30s).")
    ] = None,
    hold_timeout: Annotated[
        str | None, typer.Option(help="How long the gateway holds a request (2m).")
    ] = None,
    public: Annotated[bool, typer.Option(help="No token needed at the gateway.")] = False,
    priority: Annotated[str | None, typer.Option(help="low, normal, high or an integer.")] = None,
    env: EnvOpt = None,
    workdir: Annotated[str | None, typer.Option(help="Working directory of each replica.")] = None,
    image: Annotated[str | None, typer.Option(help="Container image (Kubernetes only).")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Run a model server: tessera serve custom --name m --gpu-memory 8Gi --min-replicas 0 -- python srv.py

    Each replica listens on $PORT; the gateway routes /serve/NAME/ to ready replicas.
    """
    if replicas is not None and (min_replicas is not None or max_replicas is not None):
        raise typer.BadParameter("give --replicas or --min/--max-replicas, not both", param_hint="--replicas")
    body: dict[str, Any] = {
        "name": name,
        "project": project,
        "queue": queue,
        "command": command,
        "env": _pairs(env or [], "--env"),
        "working_dir": workdir,
        "image": image,
        "port": port,
        "resources": _resources(gpus, gpu_memory, gpumemory, gpu_compute, cpu, memory),
        "readiness_path": readiness_path,
        "public": public,
        "priority": priority,
        "version": version,
        "min_replicas": replicas if replicas is not None else min_replicas,
        "max_replicas": max(replicas, 1) if replicas is not None else max_replicas,
        "target_concurrency": target_concurrency,
        "stable_window": _duration(stable_window, "--stable-window"),
        "panic_window": _duration(panic_window, "--panic-window"),
        "scale_to_zero_grace": _duration(scale_to_zero_grace, "--scale-to-zero-grace"),
        "hold_timeout": _duration(hold_timeout, "--hold-timeout"),
    }
    body = {k: v for k, v in body.items() if v is not None}
    if body.get("max_replicas") is None and body.get("min_replicas", 1) > 1:
        body["max_replicas"] = body["min_replicas"]
    with server_errors(), Client() as client:
        created = client.create_service(body)
    if output in (Format.JSON, Format.YAML):
        dump(created, output)
        return
    url = created.status.url or "(no gateway has reported yet: tessera serve get " + name + ")"
    out.print(f"service [bold]{created.name}[/bold] created (revision 1) at {url}", highlight=False)
    if created.token:
        out.print(
            f"its token, shown only now (rotate with `tessera serve token {name}`):\n  {created.token}\n"
            f"call it with: curl -H 'Authorization: Bearer {created.token}' {created.status.url or ''}",
            highlight=False,
        )


def _traffic(svc: Service) -> str:
    return ", ".join(f"r{t.revision}:{t.percent}%" for t in svc.status.traffic) or "-"


@serve_app.command("list")
def serve_list(
    project: Annotated[str | None, typer.Option("--project", help="Only this project's.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Services: traffic, ready/desired replicas, url."""
    with server_errors(), Client() as client:
        services = client.list_services(project)
    if output in (Format.JSON, Format.YAML):
        dump(services, output)
        return
    columns = ["NAME", "PROJECT", "REVISION", "TRAFFIC", "READY", "URL", "AGE"]
    rows = [
        [
            s.name,
            s.project,
            str(s.status.latest_revision),
            _traffic(s),
            f"{s.status.ready_replicas}/{s.status.desired_replicas}",
            s.status.url or "-",
            age(s.created_at),
        ]
        for s in services
    ]
    table(columns, rows)


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else "-"


@serve_app.command("get")
def serve_get(
    name: Annotated[str, typer.Argument(help="Service name or id.")], output: OutputOpt = Format.TABLE
) -> None:
    """A service: its revisions (traffic, scale, RPS, p50/p99 latency, errors) and replicas."""
    with server_errors(), Client() as client:
        svc = client.get_service(name)
    if output in (Format.JSON, Format.YAML):
        dump(svc, output)
        return
    r = svc.spec.resources
    size = format_mib(r.gpu_memory) if r.gpu_memory else (f"{r.gpus:g} GPU" if r.gpus else "no GPU")
    out.print(
        f"[bold]{svc.name}[/bold]  project {svc.project}  queue {svc.queue}  "
        f"{'public' if svc.spec.public else 'token'}  {size}/replica\n"
        f"url: {svc.status.url or '-'}\ntraffic: {_traffic(svc)}",
        highlight=False,
    )
    table(
        ["REV", "VERSION", "TRAFFIC", "DESIRED", "READY", "RPS", "P50 MS", "P99 MS", "ERRORS", "COLD START"],
        [
            [
                str(v.number),
                v.spec.version or "-",
                f"{v.traffic_percent}%",
                str(v.desired_replicas) + (" (panic)" if v.panic else ""),
                str(v.ready_replicas),
                f"{v.metrics.rps:g}",
                _ms(v.metrics.p50_ms),
                _ms(v.metrics.p99_ms),
                str(v.metrics.errors),
                f"{v.cold_start_s:.1f}s" if v.cold_start_s is not None else "-",
            ]
            for v in svc.revisions or []
        ],
    )
    replicas = svc.replicas or []
    if replicas:
        table(
            ["REPLICA", "REV", "STATE", "NODE", "ENDPOINT", "AGE", "MESSAGE"],
            [
                [
                    str(p.id)[:8],
                    str(p.revision_number),
                    p.state.value,
                    p.node or "-",
                    p.endpoint or "-",
                    age(p.created_at),
                    p.message,
                ]
                for p in replicas
            ],
        )


@serve_app.command("logs")
def serve_logs(
    name: Annotated[str, typer.Argument(help="Service name or id.")],
    replica: Annotated[str | None, typer.Option("--replica", "-r", help="Replica id (a prefix).")] = None,
    index: Annotated[int, typer.Option("-i", "--index", min=0, help="N-th live replica.")] = 0,
    follow: Annotated[bool, typer.Option("-f", "--follow")] = False,
    tail: Annotated[int | None, typer.Option("--tail", min=0)] = None,
    since: Annotated[str | None, typer.Option(help="Only output newer than, e.g. 10m.")] = None,
) -> None:
    """A replica's output (default: the first live one)."""
    _duration(since, "--since")
    with server_errors(), Client() as client:
        svc = client.get_service(name)
        replicas = svc.replicas or []
        if replica is not None:
            chosen = [p for p in replicas if str(p.id).startswith(replica)]
            if not chosen:
                fail(f"service {name!r} has no replica {replica!r}; see tessera serve get {name}", code=1)
        else:
            live = (ReplicaState.READY, ReplicaState.STARTING, ReplicaState.TERMINATING)
            chosen = sorted((p for p in replicas if p.state in live), key=lambda p: p.created_at)
            chosen = chosen[index : index + 1] or sorted(replicas, key=lambda p: p.created_at)[-1:]
            if not chosen:
                fail(f"service {name!r} has no replica yet", code=1)
        pick = chosen[0]
        if pick.job_id is None:
            fail(f"replica {str(pick.id)[:8]} has not started", code=1)
        for chunk in client.logs(str(pick.job_id), svc.project, follow=follow, tail=tail, since=since):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


@serve_app.command("update")
def serve_update(
    name: Annotated[str, typer.Argument(help="Service name.")],
    command: Annotated[list[str] | None, typer.Argument(help="A new command, after --.")] = None,
    canary: Annotated[
        int | None, typer.Option(min=0, max=100, help="Percent for the new revision (default 100).")
    ] = None,
    version: Annotated[str | None, typer.Option()] = None,
    image: Annotated[str | None, typer.Option()] = None,
    gpus: GpusOpt = None,
    gpu_memory: GpuMemoryOpt = None,
    gpumemory: ArenaGpuMemoryOpt = None,
    gpu_compute: GpuComputeOpt = None,
    cpu: Annotated[str | None, typer.Option()] = None,
    memory: Annotated[str | None, typer.Option()] = None,
    replicas: Annotated[int | None, typer.Option(min=0)] = None,
    min_replicas: Annotated[int | None, typer.Option(min=0)] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1)] = None,
    target_concurrency: Annotated[float | None, typer.Option("--target-concurrency", "--concurrency")] = None,
    readiness_path: Annotated[str | None, typer.Option()] = None,
    public: Annotated[bool | None, typer.Option("--public/--private")] = None,
    priority: Annotated[str | None, typer.Option()] = None,
    env: EnvOpt = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """A new revision: tessera serve update m --canary 20 -e MODEL=v2 (then promote or rollback).

    -e merges into the revision's env (-e NAME= sets it empty); other flags replace their field."""
    body: dict[str, Any] = {
        "command": command or None,
        "canary": canary,
        "version": version,
        "image": image,
        "min_replicas": replicas if replicas is not None else min_replicas,
        "max_replicas": max(replicas, 1) if replicas is not None else max_replicas,
        "target_concurrency": target_concurrency,
        "readiness_path": readiness_path,
        "public": public,
        "priority": priority,
        "env": _pairs(env, "--env") if env else None,
    }
    resources = _resources(gpus, gpu_memory, gpumemory, gpu_compute, cpu, memory)
    with server_errors(), Client() as client:
        if resources:
            body["resources"] = {
                **client.get_service(name).spec.resources.model_dump(mode="json"),
                **resources,
            }
        svc = client.update_service(name, {k: v for k, v in body.items() if v is not None})
    _said(svc, output, f"service {svc.name} updated: revision {svc.status.latest_revision}")
    if svc.token and output not in (Format.JSON, Format.YAML):
        out.print(f"it is private now; its token, shown only now:\n  {svc.token}", highlight=False)


def _said(svc: Service, output: Format, message: str) -> None:
    if output in (Format.JSON, Format.YAML):
        dump(svc, output)
    else:
        out.print(f"{message}; traffic {_traffic(svc)}", highlight=False)


@serve_app.command("traffic")
def serve_traffic(
    name: Annotated[str, typer.Argument()],
    split: Annotated[list[str], typer.Argument(help="REVISION=PERCENT ..., adding up to 100.")],
    output: OutputOpt = Format.TABLE,
) -> None:
    """Split traffic: tessera serve traffic m 1=80 2=20"""
    targets: dict[int, int] = {}
    for item in split:
        rev, sep, pct = item.partition("=")
        if not sep or not rev.isdigit() or not pct.isdigit():
            raise typer.BadParameter(f"{item!r} is not REVISION=PERCENT, like 2=20", param_hint="SPLIT")
        targets[int(rev)] = int(pct)
    with server_errors(), Client() as client:
        svc = client.set_traffic(name, targets)
    _said(svc, output, f"service {svc.name}")


@serve_app.command("promote")
def serve_promote(
    name: Annotated[str, typer.Argument()],
    revision: Annotated[int | None, typer.Option(help="Default: the latest.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """All traffic to the latest revision (or --revision)."""
    with server_errors(), Client() as client:
        svc = client.promote_service(name, revision)
    _said(svc, output, f"service {svc.name} promoted")


@serve_app.command("rollback")
def serve_rollback(
    name: Annotated[str, typer.Argument()],
    revision: Annotated[int | None, typer.Option(help="Default: the newest before the latest.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """All traffic back to the previous revision (or --revision)."""
    with server_errors(), Client() as client:
        svc = client.rollback_service(name, revision)
    _said(svc, output, f"service {svc.name} rolled back")


@serve_app.command("token")
def serve_token(name: Annotated[str, typer.Argument()]) -> None:
    """A new token for the service (the old one stops working)."""
    with server_errors(), Client() as client:
        created = client.rotate_service_token(name)
    out.print(created.token or "", highlight=False)


@serve_app.command("delete")
def serve_delete(names: Annotated[list[str], typer.Argument(help="Service names.")]) -> None:
    """Delete services; their replicas stop."""
    with server_errors(), Client() as client:
        for name in names:
            client.delete_service(name)
            out.print(f"service {name} deleted", highlight=False)

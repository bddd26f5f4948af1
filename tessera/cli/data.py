"""`tessera data ...` (datasets and their loads) and `tessera secret ...` (credentials they read with)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from tessera.api.datasets import DataLoad, Dataset, LoadState
from tessera.cli.jobs import OutputOpt, ProjectOpt, _pairs
from tessera.cli.output import Format, age, dump, fail, out, server_errors, table
from tessera.client import Client

data_app = typer.Typer(
    help="Datasets cached next to compute (Fluid's Dataset and DataLoad).", no_args_is_help=True
)
secret_app = typer.Typer(
    help="Credentials datasets read their sources with (values never shown).", no_args_is_help=True
)


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


@data_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Dataset name (DNS label).")],
    source: Annotated[
        str, typer.Option(help="s3://bucket/prefix, https://host/path/, gs://..., file:///data")
    ],
    project: ProjectOpt = "default",
    include: Annotated[list[str] | None, typer.Option(help="Glob of files to take (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob of files to skip (repeatable).")] = None,
    credentials: Annotated[str | None, typer.Option(help="A secret of the project (tessera secret).")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint, e.g. http://minio:9000.")
    ] = None,
    capacity: Annotated[str | None, typer.Option(help="Most it may take on one node, e.g. 50Gi.")] = None,
    memory_tier: Annotated[str | None, typer.Option(help="Memory tier quota, e.g. 4Gi.")] = None,
    disk_tier: Annotated[str | None, typer.Option(help="Disk tier quota, e.g. 100Gi.")] = None,
    high_watermark: Annotated[float, typer.Option(help="Evict above this share of capacity...")] = 0.95,
    low_watermark: Annotated[float, typer.Option(help="...down to this share.")] = 0.7,
    replicas: Annotated[int, typer.Option(min=1, help="Nodes that keep a full copy.")] = 1,
    schedule: Annotated[str | None, typer.Option(help="Reload on a cron schedule, e.g. '0 3 * * *'.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Create a dataset: tessera data create imagenet --source s3://bucket/imagenet --endpoint-url URL"""
    cache: dict[str, Any] = {
        "high_watermark": high_watermark,
        "low_watermark": low_watermark,
        "replicas": replicas,
    }
    if capacity:
        cache["capacity_per_node"] = capacity
    tiers = [{"medium": m, "quota": q} for m, q in (("memory", memory_tier), ("disk", disk_tier)) if q]
    if tiers:
        cache["tiers"] = tiers
    body: dict[str, Any] = {"name": name, "project": project, "source": source, "cache": cache}
    for key, value in (
        ("include", include),
        ("exclude", exclude),
        ("credentials", credentials),
        ("endpoint_url", endpoint_url),
        ("load_schedule", schedule),
    ):
        if value:
            body[key] = value
    with server_errors(), Client() as client:
        dataset = client.create_dataset(body)
    if output in (Format.JSON, Format.YAML):
        dump(dataset, output)
    else:
        out.print(f"dataset [bold]{name}[/bold] created; its source is being listed: tessera data get {name}")


def _row(d: Dataset, wide: bool) -> list[str]:
    s = d.status
    row = [
        d.name,
        s.phase.value,
        _size(s.total_bytes),
        str(s.total_files) if s.total_files is not None else "-",
        f"{s.cached_percent:.0f}%",
        f"{s.hit_ratio:.0%}" if s.hit_ratio is not None else "-",
        age(d.created_at),
    ]
    if wide:
        row += [d.project, d.spec.source]
    return row


@data_app.command("list")
def list_(
    project: Annotated[str | None, typer.Option("-p", "--project", help="Only this project.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """List datasets you can see."""
    with server_errors(), Client() as client:
        found = client.list_datasets(project)
    if output in (Format.JSON, Format.YAML):
        dump(found, output)
        return
    wide = output is Format.WIDE
    columns = ["NAME", "PHASE", "SIZE", "FILES", "CACHED", "HITS", "AGE"] + (
        ["PROJECT", "SOURCE"] if wide else []
    )
    table(columns, [_row(d, wide) for d in found])


@data_app.command("get")
def get(name: str, project: ProjectOpt = "default", output: OutputOpt = Format.TABLE) -> None:
    """A dataset's status: phase, cached bytes and percent overall and per node, hit ratio, loads."""
    with server_errors(), Client() as client:
        dataset = client.get_dataset(name, project)
        loads = client.list_loads(name, project)
    if output in (Format.JSON, Format.YAML):
        dump(dataset, output)
        return
    s = dataset.status
    out.print(
        f"[bold]{dataset.name}[/bold] ({dataset.project}) {s.phase.value}: {s.message}", highlight=False
    )
    out.print(
        f"source {dataset.spec.source}; {_size(s.total_bytes)} in {s.total_files or 0} files", highlight=False
    )
    hits = f"{s.hit_ratio:.1%}" if s.hit_ratio is not None else "-"
    out.print(
        f"cached {_size(s.cached_bytes)} ({s.cached_percent:.1f}%) on the fullest node; hit ratio {hits}"
    )
    if s.nodes:
        table(
            ["NODE", "CACHED", "PERCENT", "LOCAL HITS", "PEER HITS", "SOURCE READS"],
            [
                [
                    n.node,
                    _size(n.cached_bytes),
                    f"{n.cached_percent:.1f}%",
                    str(n.local_hits),
                    str(n.peer_hits),
                    str(n.source_reads),
                ]
                for n in s.nodes
            ],
        )
    if loads:
        table(["LOAD", "TRIGGER", "STATE", "PROGRESS", "AGE"], [_load_row(x) for x in loads[:10]])


def _load_row(load: DataLoad) -> list[str]:
    progress = f"{load.percent:.0f}% ({_size(load.bytes_done)}/{_size(load.bytes_total)})"
    if load.eta_seconds is not None:
        progress += f" eta {load.eta_seconds:.0f}s"
    return [str(load.number), load.trigger.value, load.state.value, progress, age(load.created_at)]


@data_app.command("load")
def load(
    name: str,
    project: ProjectOpt = "default",
    node: Annotated[list[str] | None, typer.Option(help="Load on this node (repeatable).")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="Load only files matching this glob: a subset (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow its progress until it ends.")] = False,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Prewarm node caches now (Fluid's DataLoad); --wait follows the progress."""
    with server_errors(), Client() as client:
        started = client.load_dataset(name, project, node, include)
        current = started
        while wait and current.state in (LoadState.PENDING, LoadState.RUNNING):
            time.sleep(1)
            current = next(x for x in client.list_loads(name, project) if x.id == started.id)
            out.print(" ".join(_load_row(current)), highlight=False)
    if output in (Format.JSON, Format.YAML):
        dump(current, output)
    elif not wait:
        out.print(f"load {started.number} of {name}: {started.state.value}", highlight=False)
    if current.state is LoadState.FAILED:
        fail(f"load {current.number} failed: {current.message}")


@data_app.command("delete")
def delete(name: str, project: ProjectOpt = "default") -> None:
    """Delete a dataset (node caches drop it)."""
    with server_errors(), Client() as client:
        client.delete_dataset(name, project)
    out.print(f"dataset {name} deleted")


@secret_app.command("create")
def create_secret(
    name: str,
    from_literal: Annotated[list[str], typer.Option("--from-literal", help="KEY=VALUE (repeatable).")],
    project: ProjectOpt = "default",
) -> None:
    """Store credentials: tessera secret create s3 --from-literal aws_access_key_id=KEY (never shown)."""
    with server_errors(), Client() as client:
        secret = client.create_secret(name, _pairs(from_literal, "--from-literal"), project)
    out.print(f"secret {secret.name} created with keys {', '.join(secret.keys)}", highlight=False)


@secret_app.command("list")
def list_secrets(project: ProjectOpt = "default", output: OutputOpt = Format.TABLE) -> None:
    with server_errors(), Client() as client:
        found = client.list_secrets(project)
    if output in (Format.JSON, Format.YAML):
        dump(found, output)
        return
    table(["NAME", "KEYS", "AGE"], [[s.name, ",".join(s.keys), age(s.created_at)] for s in found])


@secret_app.command("delete")
def delete_secret(name: str, project: ProjectOpt = "default") -> None:
    with server_errors(), Client() as client:
        client.delete_secret(name, project)
    out.print(f"secret {name} deleted")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(secret_app, name="secret")

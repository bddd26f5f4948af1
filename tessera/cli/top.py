"""tessera top node|job: allocation beside real use, per GPU and per slice, as the nodes measure it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from tessera.api.quantities import format_mib
from tessera.api.usage import GpuUsage, JobUsage, NodeUsage, SliceUsage
from tessera.cli.output import Format, age, dump, out, server_errors, table
from tessera.client import ApiError, Client

top_app = typer.Typer(
    help="Allocation beside real use: GPU memory, compute share, enforcement tier.", no_args_is_help=True
)
OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, wide, json or yaml.")]


def _mib(value: int | None) -> str:
    return "?" if value is None else format_mib(value)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}%"


def _gpu_row(g: GpuUsage, wide: bool) -> list[str]:
    row = [
        f"{g.index} {g.uuid}",
        g.model,
        g.tier + (" (lost)" if g.lost else ""),
        f"{_mib(g.used_memory_mib)} / {_mib(g.allocated_memory_mib)} / {format_mib(g.memory_mib)}",
        f"{_pct(g.utilization_pct)} / {g.allocated_compute_pct:g}%",
        str(len(g.unattributed)),
    ]
    return [*row, ",".join(g.tiers)] if wide else row


def _slice_row(s: SliceUsage, wide: bool, with_job: bool) -> list[str]:
    row = [f"{s.project}/{s.job}"] if with_job else []
    row += [
        s.task,
        s.mig_instance or s.gpu_uuid,
        s.tier,
        f"{_mib(s.used_memory_mib)} / {format_mib(s.memory_mib)}",
        f"{_pct(s.share_pct)} / {s.compute_pct:g}%",
        f"{s.throttled_pct:.0f}%",
        s.state,
    ]
    if wide:
        row += [f"{s.policy.memory}/{s.policy.compute}", s.compute_tier, "yes" if s.cooperative else "no"]
    return row


_SLICE_COLUMNS = ["TASK", "GPU", "TIER", "MEMORY USED / ALLOC", "COMPUTE SHARE / ALLOC", "THROTTLED", "STATE"]
_WIDE_SLICE = ["POLICY MEM/COMPUTE", "COMPUTE TIER", "COOPERATIVE"]


def _show_node(usage: NodeUsage, wide: bool) -> None:
    measured = age(usage.at, lambda: datetime.now(UTC))
    error = f"; device error: {usage.device_error}" if usage.device_error else ""
    out.print(
        f"[bold]node {usage.node}[/bold]: {usage.device} device, measured {measured} ago, "
        f"poll {usage.poll_seconds * 1000:g} ms, share over {usage.window_seconds:g} s{error}",
        highlight=False,
    )
    columns = ["GPU", "MODEL", "TIER", "MEMORY USED / ALLOC / TOTAL", "BUSY / COMPUTE ALLOC", "STRAYS"]
    table(columns + (["TIERS"] if wide else []), [_gpu_row(g, wide) for g in usage.gpus])
    if usage.slices:
        out.print("")
        columns = ["JOB", *_SLICE_COLUMNS] + (_WIDE_SLICE if wide else [])
        table(columns, [_slice_row(s, wide, True) for s in usage.slices])
    for g in usage.gpus:
        for p in g.unattributed:
            out.print(
                f"unattributed: pid {p.pid} on {g.uuid}, {_mib(p.used_memory_mib)} ({p.reason})",
                highlight=False,
            )


@top_app.command("node")
def top_node(
    name: Annotated[str | None, typer.Argument(help="A node; every node if left out.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Each GPU and slice of a node: memory used beside allocated, measured share beside given."""
    usages: list[NodeUsage] = []
    with server_errors(), Client() as client:
        names = [name] if name else [n.name for n in client.list_nodes()]
        for node in names:
            try:
                usages.append(client.node_usage(node))
            except ApiError as exc:
                if name or exc.status != 404:
                    raise
    if output in (Format.JSON, Format.YAML):
        dump(usages[0] if name else usages, output)
        return
    if not usages:
        out.print("no node has reported its GPUs yet", highlight=False)
    for i, usage in enumerate(usages):
        if i:
            out.print("")
        _show_node(usage, output is Format.WIDE)


@top_app.command("job")
def top_job(
    ref: Annotated[str, typer.Argument(help="Job name or id.")],
    project: Annotated[
        str,
        typer.Option("-p", "--project", envvar="TESSERA_PROJECT", help="Project of a job addressed by name."),
    ] = "default",
    output: OutputOpt = Format.TABLE,
) -> None:
    """Each slice of a job: memory used beside allocated, measured share beside given, its tier."""
    with server_errors(), Client() as client:
        usage: JobUsage = client.job_usage(ref, project)
    if output in (Format.JSON, Format.YAML):
        dump(usage, output)
        return
    out.print(f"[bold]{usage.project}/{usage.job}[/bold] {usage.state}", highlight=False)
    wide = output is Format.WIDE
    if not usage.slices:
        out.print("no GPU slices (not placed, or it holds none)", highlight=False)
        return
    table(_SLICE_COLUMNS + (_WIDE_SLICE if wide else []), [_slice_row(s, wide, False) for s in usage.slices])

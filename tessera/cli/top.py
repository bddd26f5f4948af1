"""tessera top node|job: allocation beside real use, per GPU and per slice, as the nodes measure it
(and a node's state and conditions, such as LogDiskFull)."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.table import Table

from tessera.api.cluster import Node
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


def _show_node(usage: NodeUsage, wide: bool, node: Node | None) -> None:
    measured = age(usage.at)
    error = f"; device error: {usage.device_error}" if usage.device_error else ""
    state = f" ({node.state.value})" if node is not None else ""
    out.print(
        f"[bold]node {usage.node}[/bold]{state}: {usage.device} device, measured {measured} ago, "
        f"poll {usage.poll_seconds * 1000:g} ms, share over {usage.window_seconds:g} s{error}",
        highlight=False,
    )
    for condition in node.inventory.conditions if node is not None else []:
        since = f" for {age(condition.since)}" if condition.since else ""
        out.print(f"[yellow]condition {condition.type}{since}[/yellow]: {condition.message}", highlight=False)
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
        nodes = {n.name: n for n in client.list_nodes()}  # their state and conditions
        names = [name] if name else list(nodes)
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
        _show_node(usage, output is Format.WIDE, nodes.get(usage.node))


BARS = "▁▂▃▄▅▆▇█"
HISTORY = 40


def sparkline(values: list[float], top: float) -> str:
    """A row of block characters, one per sample, scaled to ``top``."""
    if top <= 0:
        return ""
    return "".join(BARS[min(len(BARS) - 1, max(0, int(v / top * (len(BARS) - 1) + 0.5)))] for v in values)


@top_app.command("job")
def top_job(
    ref: Annotated[str, typer.Argument(help="Job name or id.")],
    project: Annotated[
        str,
        typer.Option("-p", "--project", envvar="TESSERA_PROJECT", help="Project of a job addressed by name."),
    ] = "default",
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Refresh, with sparklines of use.")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes with -w.")] = 2.0,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Each slice of a job: memory used beside allocated, measured share beside given, its tier."""
    if not watch:
        with server_errors(), Client() as client:
            usage: JobUsage = client.job_usage(ref, project)
        if output in (Format.JSON, Format.YAML):
            dump(usage, output)
            return
        _show_job(usage, output is Format.WIDE, {})
        return
    import time

    from rich.live import Live

    history: dict[uuid.UUID, tuple[list[float], list[float]]] = {}
    with server_errors(), Client() as client, Live(console=out, auto_refresh=False) as live:
        while True:
            usage = client.job_usage(ref, project)
            for s in usage.slices:
                memory, compute = history.setdefault(s.slice_id, ([], []))
                memory.append(float(s.used_memory_mib or 0))
                compute.append(float(s.share_pct or 0))
                del memory[:-HISTORY], compute[:-HISTORY]
            live.update(_job_table(usage, output is Format.WIDE, history), refresh=True)
            if usage.state in {"SUCCEEDED", "FAILED", "CANCELLED"}:
                return
            time.sleep(interval)


def _show_job(usage: JobUsage, wide: bool, history: dict[uuid.UUID, tuple[list[float], list[float]]]) -> None:
    out.print(_job_table(usage, wide, history))


def _job_table(
    usage: JobUsage, wide: bool, history: dict[uuid.UUID, tuple[list[float], list[float]]]
) -> Table:
    t = Table(
        title=f"{usage.project}/{usage.job} {usage.state}",
        box=None,
        header_style="bold",
        title_justify="left",
    )
    columns = _SLICE_COLUMNS + (_WIDE_SLICE if wide else [])
    if history:
        columns = [*columns, f"MEMORY (last {HISTORY})", f"COMPUTE (last {HISTORY})"]
    for column in columns:
        t.add_column(column, overflow="fold")
    if not usage.slices:
        t.caption = "no GPU slices (not placed, or it holds none)"
    for s in usage.slices:
        row = _slice_row(s, wide, False)
        if history:
            memory, compute = history.get(s.slice_id, ([], []))
            row += [sparkline(memory, float(s.memory_mib)), sparkline(compute, 100.0)]
        t.add_row(*row)
    return t

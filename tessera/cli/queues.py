"""Queue verbs: tessera queue create|list|get|update|delete."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tessera.api.quantities import format_mib
from tessera.api.queues import COMPUTE_POLICIES, MEMORY_POLICIES, PLACEMENT_FORM, Queue
from tessera.cli.output import Format, dump, out, server_errors, table
from tessera.client import Client

queue_app = typer.Typer(
    help="Queues: a tree with guaranteed quota, borrowing limit and weight.", no_args_is_help=True
)
AMOUNTS_FORM = "gpu=N,cpu=N,memory=QTY (any subset), e.g. gpu=4,memory=64Gi"
OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, wide, json or yaml.")]


def _amounts(value: str | None, flag: str) -> dict[str, Any] | None:
    if value is None:
        return None
    amounts: dict[str, Any] = {}
    for part in value.split(","):
        key, sep, raw = part.strip().partition("=")
        if not sep or key not in ("gpu", "cpu", "memory") or not raw:
            raise typer.BadParameter(f"{value!r} is not {AMOUNTS_FORM}", param_hint=flag)
        amounts[key] = raw if key == "memory" else _number(raw, value, flag)
    return amounts


def _number(raw: str, value: str, flag: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not {AMOUNTS_FORM}", param_hint=flag) from None


def _changes(
    parent: str | None,
    guaranteed: str | None,
    borrowing_limit: str | None,
    weight: float | None,
    description: str | None,
    placement: str | None = None,
    memory_policy: str | None = None,
    compute_policy: str | None = None,
) -> dict[str, Any]:
    """The fields given on the command line, in the API's spelling (the server checks the values)."""
    policies = {"memory": memory_policy, "compute": compute_policy}
    fields = {
        "parent": parent,
        "guaranteed": _amounts(guaranteed, "--guaranteed"),
        "borrowing_limit": _amounts(borrowing_limit, "--borrowing-limit"),
        "weight": weight,
        "placement": placement,
        "enforcement": {k: v for k, v in policies.items() if v is not None} or None,
        "description": description,
    }
    return {key: value for key, value in fields.items() if value is not None}


def _fmt(amounts: Any) -> str:
    if amounts is None:
        return "unlimited"
    return f"gpu {amounts.gpu:g}, cpu {amounts.cpu:g}, mem {format_mib(amounts.memory)}"


def _show(queues: list[Queue], output: Format) -> None:
    if output in (Format.JSON, Format.YAML):
        dump(queues, output)
        return
    rows = [
        [
            q.name,
            q.spec.parent or "-",
            _fmt(q.spec.guaranteed),
            _fmt(q.spec.borrowing_limit),
            f"{q.spec.weight:g}",
            q.spec.placement or "-",
            f"{q.spec.enforcement.memory or '-'}/{q.spec.enforcement.compute or '-'}",
        ]
        for q in queues
    ]
    table(["NAME", "PARENT", "GUARANTEED", "BORROWING LIMIT", "WEIGHT", "PLACEMENT", "MEMORY/COMPUTE"], rows)


@queue_app.command("usage")
def queue_usage(output: Annotated[Format, typer.Option("-o", "--output")] = Format.TABLE) -> None:
    """What each queue holds against its quota, with dominant and fair shares (as scheduled)."""
    from tessera.api.queues import QueueUsage

    with server_errors(), Client() as client:
        usage = [QueueUsage.model_validate(u) for u in client.request("GET", "/api/v1/queues/usage").json()]
    if output in (Format.JSON, Format.YAML):
        dump(usage, output)
        return
    rows = [
        [
            u.queue,
            _fmt(u.used),
            _fmt(u.guaranteed),
            _fmt(u.borrowed),
            f"{u.dominant_share:.0%} / {u.fair_share:.0%}",
            str(u.running),
            str(u.pending),
        ]
        for u in usage
    ]
    table(["QUEUE", "USED", "GUARANTEED", "BORROWED", "SHARE / FAIR", "RUNNING", "PENDING"], rows)


GuaranteedOpt = Annotated[str | None, typer.Option(help=f"Guaranteed quota: {AMOUNTS_FORM}.")]
BorrowOpt = Annotated[str | None, typer.Option(help=f"Borrowing limit beyond guaranteed: {AMOUNTS_FORM}.")]
PlacementOpt = Annotated[
    str | None, typer.Option(help=f"Placement policy of its jobs: {PLACEMENT_FORM} (default: the cluster's).")
]
MemoryPolicyOpt = Annotated[
    str | None,
    typer.Option(
        help=f"A slice over its GPU memory: {' or '.join(MEMORY_POLICIES)} (unset: the parent's, else kill)."
    ),
]
ComputePolicyOpt = Annotated[
    str | None,
    typer.Option(
        help=f"A slice over its compute share: {', '.join(COMPUTE_POLICIES)} (unset: parent's, else measure)."
    ),
]


@queue_app.command("create")
def create(
    name: str,
    parent: Annotated[str | None, typer.Option(help="Parent queue.")] = None,
    guaranteed: GuaranteedOpt = None,
    borrowing_limit: BorrowOpt = None,
    weight: Annotated[float | None, typer.Option(help="Fair-share weight (default 1).")] = None,
    placement: PlacementOpt = None,
    memory_policy: MemoryPolicyOpt = None,
    compute_policy: ComputePolicyOpt = None,
    description: Annotated[str | None, typer.Option()] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Create a queue (admin)."""
    changes = _changes(
        parent, guaranteed, borrowing_limit, weight, description, placement, memory_policy, compute_policy
    )
    body = {"name": name, **changes}
    with server_errors(), Client() as client:
        queue = Queue.model_validate(client.request("POST", "/api/v1/queues", json=body).json())
    _show([queue], output)


@queue_app.command("list")
def list_queues(output: OutputOpt = Format.TABLE) -> None:
    """List queues."""
    with server_errors(), Client() as client:
        queues = client.list_queues()
    _show(queues, output)


@queue_app.command("get")
def get(name: str, output: OutputOpt = Format.TABLE) -> None:
    """Show one queue."""
    with server_errors(), Client() as client:
        queue = Queue.model_validate(client.request("GET", f"/api/v1/queues/{name}").json())
    _show([queue], output)


@queue_app.command("update")
def update(
    name: str,
    parent: Annotated[str | None, typer.Option(help="New parent queue.")] = None,
    guaranteed: GuaranteedOpt = None,
    borrowing_limit: BorrowOpt = None,
    weight: Annotated[float | None, typer.Option()] = None,
    placement: PlacementOpt = None,
    memory_policy: MemoryPolicyOpt = None,
    compute_policy: ComputePolicyOpt = None,
    description: Annotated[str | None, typer.Option()] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Change a queue (admin); only the given fields change."""
    body = _changes(
        parent, guaranteed, borrowing_limit, weight, description, placement, memory_policy, compute_policy
    )
    with server_errors(), Client() as client:
        queue = Queue.model_validate(client.request("PATCH", f"/api/v1/queues/{name}", json=body).json())
    _show([queue], output)


@queue_app.command("delete")
def delete(name: str) -> None:
    """Delete a queue (admin); its pending jobs fail with QueueDeleted."""
    with server_errors(), Client() as client:
        client.request("DELETE", f"/api/v1/queues/{name}")
    out.print(f"queue {name} deleted", highlight=False)

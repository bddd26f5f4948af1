"""``tessera sim``: replay cluster traces through the placement policies, offline (no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tessera.api.queues import PLACEMENT_FORM
from tessera.cli.output import Format, fail, out, table

sim_app = typer.Typer(
    help="Replay cluster traces through the placement policies (offline).", no_args_is_help=True
)

OutputOpt = Annotated[Format, typer.Option("-o", "--output", help="table, json or yaml.")]


def _dump(document: dict[str, object], output: Format) -> None:
    if output is Format.YAML:
        import yaml

        out.print(yaml.safe_dump(document, sort_keys=False), end="", highlight=False, markup=False)
    else:
        out.print_json(json.dumps(document))


@sim_app.command("openb")
def openb(
    pods: Annotated[
        Path, typer.Option("--pods", help="An openb pod list (CSV).", exists=True, dir_okay=False)
    ],
    nodes: Annotated[
        Path, typer.Option("--nodes", help="An openb node list (CSV).", exists=True, dir_okay=False)
    ],
    policy: Annotated[str, typer.Option("--policy", help=f"Placement policy: {PLACEMENT_FORM}.")] = "tessera",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the arrival order (the paper uses 42-51).")
    ] = 42,
    departures: Annotated[
        bool,
        typer.Option(
            "--departures", help="Replay by creation and deletion time instead; report wait time and JCT."
        ),
    ] = False,
    speedup: Annotated[
        float,
        typer.Option(
            "--speedup",
            min=0.001,
            help="With --departures: arrivals this many times faster (run times kept).",
        ),
    ] = 1.0,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Replay an Alibaba openb trace with the FGD paper's method (ANCHORS.md section 1).

    Pods arrive one by one in a seeded order, tuned to 130% of the cluster's GPU capacity, and never
    leave; the allocation ratio is recorded as arrived demand grows. With --departures, pods arrive
    and leave at their trace times and wait in a queue when nothing fits.
    """
    from tessera.scheduler.policies import POLICIES
    from tessera.scheduler.policies import policy as make_policy
    from tessera.sim.method import cluster, typical_pods
    from tessera.sim.replay import replay_with_departures, run
    from tessera.sim.traces import TraceError, read_nodes, read_pods

    if policy not in POLICIES:
        raise typer.BadParameter(
            f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}", param_hint="--policy"
        )
    try:
        node_table, pod_table = read_nodes(nodes), read_pods(pods)
    except TraceError as exc:
        fail(str(exc))
    if departures:
        if not pod_table.has_times:
            fail(f"{pods}: this pod list has no creation_time/deletion_time columns (needed by --departures)")
        typical = typical_pods(pod_table) if policy in ("fgd", "tessera") else []
        chooser = make_policy(policy, seed=seed, typical=typical)
        result = replay_with_departures(cluster(node_table), chooser, pod_table, speedup=speedup)
        summary = {
            "policy": policy,
            "speedup": speedup,
            "seconds": round(result.seconds, 3),
            **result.summary(),
        }
        if output in (Format.JSON, Format.YAML):
            _dump(summary, output)
            return
        table(
            ["FIGURE", "VALUE"],
            [[k, f"{v:g}" if isinstance(v, float) else str(v)] for k, v in summary.items()],
        )
        return
    replayed = run(node_table, pod_table, policy, seed)
    curve = replayed.curve()
    document = {
        "policy": policy,
        "seed": seed,
        "pods": replayed.pods,
        "failed_pods": replayed.failed_pods,
        "final_alloc_ratio": replayed.final_ratio,
        "seconds": round(replayed.seconds, 3),
        "curve": [{"arrived_pct": k, "alloc_ratio": v} for k, v in curve.items()],
    }
    if output in (Format.JSON, Format.YAML):
        _dump(document, output)
        return
    points = [k for k in curve if k % 10 == 0 or k == max(curve)]
    table(["ARRIVED %", "ALLOCATED %"], [[str(k), f"{curve[k]:.2f}"] for k in points])
    out.print(
        f"policy {policy}, seed {seed}: final allocation ratio {replayed.final_ratio:.2f}% at 130% arrived "
        f"demand ({replayed.failed_pods} of {replayed.pods} pods did not fit; {replayed.seconds:.1f} s)",
        highlight=False,
    )

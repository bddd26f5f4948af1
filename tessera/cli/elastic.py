"""`tessera submit etjob|elastic`: an elastic Ray Train job of min..max workers."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from tessera.cli.jobs import OutputOpt, SubmitProjectOpt, _duration, _gib, _pairs, send_job
from tessera.cli.output import Format


def _config(raw: str | None, sets: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if raw:
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config") from None
        if not isinstance(config, dict):
            raise typer.BadParameter("must be a JSON object, e.g. '{\"lr\": 0.1}'", param_hint="--config")
    for key, value in _pairs(sets, "--set").items():
        try:
            config[key] = json.loads(value)  # numbers, booleans, lists; anything else is a string
        except ValueError:
            config[key] = value
    return config


def submit_elastic(
    entry: Annotated[
        str,
        typer.Option(
            "--entry",
            help="The training function: package.module:train, or a script path with train(config) "
            "(path/to/train.py or path/to/train.py:function).",
        ),
    ],
    min_workers: Annotated[int, typer.Option("--min-workers", min=1, help="The gang: workers to start.")] = 1,
    max_workers: Annotated[
        int | None,
        typer.Option(
            "--max-workers", min=1, help="Grow up to this many while slices are free (default min)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Job name; generated if unset.")] = None,
    project: SubmitProjectOpt = "default",
    queue: Annotated[str | None, typer.Option("-q", "--queue")] = None,
    config: Annotated[str | None, typer.Option("--config", help="train(config) as a JSON object.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="One config KEY=VALUE (JSON value); repeatable.")
    ] = None,
    storage: Annotated[
        str | None, typer.Option(help="Checkpoints: a shared dir or an fsspec URL; default one per job.")
    ] = None,
    max_failures: Annotated[
        int, typer.Option(min=-1, help="Worker failures Ray recovers from (-1: no limit).")
    ] = 3,
    start_timeout: Annotated[
        str, typer.Option(help="Worker-group start timeout before Ray resizes to what is there.")
    ] = "15s",
    resize_interval: Annotated[str, typer.Option(help="How often to look for granted slices.")] = "2s",
    gpus: Annotated[float | None, typer.Option(help="GPUs per worker: 1, or a fraction like 0.5.")] = None,
    gpu_memory: Annotated[str | None, typer.Option(help="Slice memory per worker, e.g. 4Gi.")] = None,
    gpu_compute: Annotated[
        int | None, typer.Option("--gpu-compute", "--gpucore", help="Slice compute percent per worker.")
    ] = None,
    gpumemory: Annotated[
        int | None, typer.Option("--gpumemory", min=1, help="Arena's spelling: slice memory in GiB.")
    ] = None,
    cpu: Annotated[str | None, typer.Option(help="CPU per worker: 2, 0.5 or 500m.")] = None,
    memory: Annotated[str | None, typer.Option(help="Host memory per worker, e.g. 8Gi.")] = None,
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
    workdir: Annotated[
        str | None, typer.Option(help="Working directory (script entries resolve here).")
    ] = None,
    python: Annotated[
        str | None,
        typer.Option(help="Python on the nodes with tessera, ray and torch (default: this CLI's own)."),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Times to restart the whole job if its driver fails.")
    ] = 0,
    deadline: Annotated[str | None, typer.Option(help="Fail if not done within, e.g. 2h.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe submission key.")] = None,
    output: OutputOpt = Format.TABLE,
) -> None:
    """Submit an elastic job: tessera submit etjob --min-workers 1 --max-workers 4 --entry pkg.mod:train

    It runs on its own Ray cluster (a head plus one node per slice) under Ray Train's TorchTrainer;
    it starts with min workers, grows while slices are free, and gives extra slices back first.
    """
    top = max_workers if max_workers is not None else min_workers
    resources: dict[str, Any] = {
        key: value
        for key, value in (
            ("gpus", gpus),
            ("gpu_memory", _gib(gpu_memory, gpumemory)),
            ("gpu_compute", gpu_compute),
            ("cpu", cpu),
            ("memory", memory),
        )
        if value is not None
    }
    group: dict[str, Any] = {
        "name": "worker",
        "replicas": top,
        "min_available": min_workers,
        "command": [python or sys.executable, "-m", "tessera.jobs.elastic"],
        "resources": resources,
        "env": _pairs(env or [], "--env"),
    }
    if workdir:
        group["working_dir"] = workdir
    elastic: dict[str, Any] = {
        "min_workers": min_workers,
        "max_workers": top,
        "entry": entry,
        "config": _config(config, set_ or []),
        "max_failures": max_failures,
        "start_timeout": _duration(start_timeout, "--start-timeout"),
        "resize_interval": _duration(resize_interval, "--resize-interval"),
    }
    if storage:
        elastic["storage"] = storage
    body: dict[str, Any] = {
        "project": project,
        "kind": "elastic",
        "groups": [group],
        "elastic": elastic,
        "preemptible": preemptible,
        "retry": {"max_retries": retries},
        "labels": _pairs(label or [], "--label"),
        "node_selector": _pairs(selector or [], "--selector"),
    }
    what = f"elastic job ({min_workers}..{top} workers)"
    send_job(body, name, queue, priority, deadline, idempotency_key, output, what)


def register(submit: typer.Typer) -> None:
    """`submit etjob` (Arena's spelling) and `submit elastic`."""
    for verb in ("etjob", "elastic"):
        submit.command(verb)(submit_elastic)

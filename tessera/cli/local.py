"""Local verbs: `tessera node` (the agent) and `tessera down`. Heavy imports stay lazy."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from tessera.node.shim import ShimState

from tessera.cli.jobs import _pairs
from tessera.cli.output import fail, out


def node(
    name: Annotated[
        str | None,
        typer.Option(
            help="Node name (DNS label), unique in the cluster. With --kubernetes: default "
            "$TESSERA_NODE_NAME, else $NODE_NAME (the DaemonSet sets both to spec.nodeName)."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Task state, logs and the assignment cache. With --kubernetes: default $TESSERA_HOME."
        ),
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where task logs go, e.g. a disk of their own (default: beside each task's state). "
            "When it is full, tasks keep running, their output is dropped and the node says LogDiskFull."
        ),
    ] = None,
    url: Annotated[str | None, typer.Option(envvar="TESSERA_URL", help="Control-plane URL.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="File holding a node-scope token.")] = None,
    simulate_gpus: Annotated[
        str | None, typer.Option(envvar="TESSERA_SIMULATE_GPUS", help="e.g. 2xA100-80GB (simulated).")
    ] = None,
    listen_host: Annotated[
        str | None,
        typer.Option(
            help="Address for the log and cache server (default 127.0.0.1; 0.0.0.0 with --kubernetes)."
        ),
    ] = None,
    advertise_host: Annotated[
        str | None,
        typer.Option(
            envvar="TESSERA_ADVERTISE_HOST",
            help="Host in the URL the control plane and peers reach this agent at (default: --listen-host; "
            "with --kubernetes: this pod's address).",
        ),
    ] = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Log server port (0: any free).")] = 0,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="KEY=VALUE node label, for node selectors (repeatable)."),
    ] = None,
    grace: Annotated[float, typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL.")] = 10,
    heartbeat: Annotated[float, typer.Option(min=0.1, help="Seconds between heartbeats.")] = 5,
    enforce_poll: Annotated[
        float, typer.Option(min=0.01, max=10, help="Seconds between reads of the GPUs (slice enforcement).")
    ] = 0.1,
    memory_grace: Annotated[
        float, typer.Option(min=0, help="Seconds from SIGTERM to SIGKILL for a slice over its memory.")
    ] = 5,
    unattributed: Annotated[
        str, typer.Option(help="GPU processes that belong to no slice: report or kill.")
    ] = "report",
    cache_capacity: Annotated[
        str | None, typer.Option(help="Dataset cache size on this node, e.g. 200Gi (default: no limit).")
    ] = None,
    kubernetes: Annotated[
        bool,
        typer.Option(
            "--kubernetes",
            help="Run as the DaemonSet does: the kubelet runs the tasks; this agent enforces their "
            "slices by pod cgroup, keeps the dataset cache and serves the device plugin.",
        ),
    ] = False,
    cache_dir: Annotated[
        Path, typer.Option(help="--kubernetes: the dataset cache, the hostPath pods mount datasets from.")
    ] = Path("/var/lib/tessera/cache"),
    device_plugin_dir: Annotated[
        Path, typer.Option(help="--kubernetes: the kubelet's device plugin socket directory.")
    ] = Path("/var/lib/kubelet/device-plugins"),
    cgroup_root: Annotated[
        Path, typer.Option(help="--kubernetes: where the host's cgroup hierarchy is mounted.")
    ] = Path("/sys/fs/cgroup"),
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG", help="--kubernetes: kubeconfig (default: the in-cluster service account)."
        ),
    ] = None,
) -> None:
    """Run a node agent in the foreground: register, heartbeat, run, enforce and report tasks.

    With --kubernetes the kubelet runs the tasks as pods: the agent registers, heartbeats, enforces
    their slices, caches their datasets and serves Tessera's device plugin to the kubelet."""
    import logging

    from tessera.api.common import NAME_FORM, is_name
    from tessera.client.config import resolve
    from tessera.gpushare.enforce import EnforcerConfig
    from tessera.node.agent import Agent, AgentConfig, AgentLocked
    from tessera.node.inventory import detect, open_device

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the log
    if kubernetes:
        name = name or os.environ.get("TESSERA_NODE_NAME") or os.environ.get("NODE_NAME")
        home = os.environ.get("TESSERA_HOME")
        state_dir = state_dir or (Path(home) if home else None)
    if name is None:
        fail("--name is needed" + (" (or $TESSERA_NODE_NAME, $NODE_NAME)" if kubernetes else ""), code=2)
    if state_dir is None:
        fail("--state-dir is needed" + (" (or $TESSERA_HOME)" if kubernetes else ""), code=2)
    if not is_name(name):
        fail(f"--name {name!r} is not {NAME_FORM}", code=2)
    token = os.environ.get("TESSERA_TOKEN")
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            fail(f"--token-file: cannot read {token_file}: {exc}", code=2)
    if not token:
        fail("a node-scope token is needed: --token-file or TESSERA_TOKEN", code=2)
    if unattributed not in ("report", "kill"):
        fail(f"--unattributed {unattributed!r}: valid: report, kill", code=2)
    kube = None
    if kubernetes:
        from tessera.kube.client import Kube, KubeConfig

        try:
            kube = Kube(KubeConfig.load(kubeconfig))
        except (OSError, ValueError) as exc:
            fail(f"cannot reach the Kubernetes API server: {exc}", code=2)
        if advertise_host is None:
            advertise_host = _pod_address()
    try:
        device = open_device(name, state_dir, simulate_gpus)
    except ValueError as exc:
        fail(f"--simulate-gpus: {exc}", code=2)
    inventory = detect(device)
    capacity = None
    if cache_capacity is not None:
        from tessera.api.quantities import QuantityError, parse_memory_mib

        try:
            capacity = parse_memory_mib(cache_capacity) * 1024 * 1024
        except QuantityError as exc:
            fail(f"--cache-capacity: {exc}", code=2)
    config = AgentConfig(
        name=name,
        state_dir=state_dir,
        url=resolve(url, token).url,
        token=token,
        inventory=inventory,
        listen_host=listen_host or ("0.0.0.0" if kubernetes else "127.0.0.1"),
        listen_port=port,
        grace_seconds=grace,
        heartbeat_seconds=heartbeat,
        device=device,
        enforcement=EnforcerConfig(
            poll_seconds=enforce_poll, memory_grace_seconds=memory_grace, unattributed=unattributed
        ),
        cache_capacity_bytes=capacity,
        labels=_pairs(label or [], "--label"),
        advertise_host=advertise_host,
        log_dir=log_dir,
    )
    if kubernetes:
        from tessera.node.kube import KubeAgent, KubeOptions

        options = KubeOptions(
            cache_dir=cache_dir, device_plugin_dir=device_plugin_dir, cgroup_root=cgroup_root
        )
        agent: Agent = KubeAgent(config, options, kube)
    else:
        agent = Agent(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop_event.set())
    try:
        agent.run()
    except AgentLocked as exc:
        fail(str(exc))
    finally:
        if device is not None:
            device.close()


def _pod_address() -> str:
    """This pod's address: $POD_IP if the pod spec passes it, else what the pod's hostname resolves
    to (the kubelet writes the pod's IP for it into /etc/hosts)."""
    import socket

    found = os.environ.get("POD_IP")
    if found:
        return found
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def down(
    keep_tasks: Annotated[bool, typer.Option(help="Leave running tasks running (re-adopted later).")] = False,
    home: Annotated[Path | None, typer.Option(envvar="TESSERA_HOME", help="State directory.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for tasks to stop.")] = 60,
) -> None:
    """Stop what `tessera up` started: the gateway, running jobs (cancelled unless --keep-tasks), the
    control plane, services' replicas (they start again at the next `tessera up`), the agent."""
    from tessera.node.procs import is_alive
    from tessera.platform.backends import gateway, local
    from tessera.platform.settings import Settings

    settings = Settings(**({"home": home} if home else {}))  # type: ignore[arg-type]
    up_file = settings.home / "up.json"
    jobs_dir = local.agent_dir(settings) / "jobs"
    stopped = gateway.stop(settings)
    if stopped is not None:
        out.print(f"stopped gateway (pid {stopped})", highlight=False)
    replicas: set[str] = set()
    deadline = time.monotonic() + timeout
    if not keep_tasks and up_file.exists():
        replicas = _cancel_all()
        while time.monotonic() < deadline and _live_shims(jobs_dir, skip=replicas):
            time.sleep(0.5)
    if up_file.exists():
        doc = json.loads(up_file.read_text())
        if doc.get("start_time") is not None and is_alive(int(doc["pid"]), int(doc["start_time"])):
            _terminate(int(doc["pid"]), "control plane")
        up_file.unlink(missing_ok=True)
    if replicas:
        # the serving controller would have replaced cancelled replicas: with it stopped, the agent
        # stops them; their services start new ones at the next `tessera up`
        for job_id in sorted(replicas):
            _stop_shims(jobs_dir / job_id)
        while time.monotonic() < deadline and _live_shims(jobs_dir):
            time.sleep(0.5)
        out.print(f"stopped {len(replicas)} service replica(s)", highlight=False)
    pid = local.agent_pid(settings)
    if pid and pid > 0:
        _terminate(pid, "node agent")
    out.print("tessera is down" + (" (tasks left running)" if keep_tasks else ""), highlight=False)


def _cancel_all() -> set[str]:
    """Cancel every live job but services' replicas; returns the ids of those replicas' workloads."""
    from tessera.api.jobs import JobState
    from tessera.client import ApiError, Client, Unreachable

    live = [s for s in JobState if not s.terminal]
    replicas = set()
    try:
        with Client() as client:
            for job in client.iter_jobs(states=live, limit=500, services=True):
                if job.spec.kind == "serve":
                    replicas.add(str(job.id))
                    continue
                try:
                    client.cancel_job(str(job.id))
                    out.print(f"cancelled {job.project}/{job.name}", highlight=False)
                except ApiError:
                    pass  # it finished meanwhile
    except (Unreachable, ApiError) as exc:
        out.print(f"could not cancel jobs ({exc}); stopping anyway", highlight=False)
    return replicas


def _task_states(jobs_dir: Path) -> list[tuple[Path, ShimState | None]]:
    from tessera.node import shim

    if not jobs_dir.exists():
        return []
    return [(f.parent, shim.read_state(f.parent)) for f in jobs_dir.glob("**/state.json")]


def _live_shims(jobs_dir: Path, skip: frozenset[str] | set[str] = frozenset()) -> bool:
    from tessera.node.procs import is_alive

    for task_dir, state in _task_states(jobs_dir):
        if task_dir.parent.name in skip:
            continue
        if state is not None and state.exit_code is None and is_alive(state.shim_pid, state.shim_start_time):
            return True
    return False


def _stop_shims(job_dir: Path) -> None:
    """Ask the shims of a job's tasks on this node to stop their tasks (SIGTERM, then the grace)."""
    from tessera.node import shim

    for task_dir, _ in _task_states(job_dir):
        shim.stop(task_dir)


def _terminate(pid: int, what: str, wait: float = 15) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    from tessera.node.procs import read_stat

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        stat = read_stat(pid)
        if stat is None or stat.state in ("Z", "X"):  # gone, or exited and awaiting its parent
            out.print(f"stopped {what} (pid {pid})", highlight=False)
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    out.print(f"killed {what} (pid {pid}) after {wait:g}s", highlight=False)

"""Scheduling on Kubernetes: pods bound per minute on KWOK GPU nodes, Tessera (as the scheduler of
pods others create, schedulerName: tessera) against the default kube-scheduler on the same API
server in the same run; and submit-to-Running latency through Tessera's API.

    python -m bench.k8s_scheduling [--nodes 1000] [--gpus 8] [--pods 3000] [--rounds 30]

Throughput: a scheduler is paused (SIGSTOP) while N one-GPU pods are created, then resumed; the
figure is N over the time from resuming to the last pod bound (each bind seen by a watch). Both
schedulers bind through the same API server; Tessera also writes each pod's binding annotations
(one more request per pod) and stores a job per pod group.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tessera.kube.client import Kube, Obj
from tessera.kube.informer import Informer
from tests.kube.cluster import LocalCluster, bin_dir
from tests.kube.plane import KubePlane


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class BindClock:
    """When each pod of a namespace was first seen bound (a watch: no polling of big lists)."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self._lock = threading.Lock()
        self.informer = Informer(kube, f"/api/v1/namespaces/{namespace}/pods", on_event=self._event)

    def _event(self, kind: str, obj: Obj) -> None:
        name, now = obj["metadata"]["name"], time.monotonic()
        with self._lock:
            if obj["spec"].get("nodeName"):
                self.bound.setdefault(name, now)
            if (obj.get("status") or {}).get("phase") == "Running":
                self.running.setdefault(name, now)

    def start(self) -> BindClock:
        self.informer.start()
        self.informer.wait_synced(30)
        return self

    def wait_bound(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.bound) >= count:
                    return max(self.bound.values())
            time.sleep(0.05)
        raise TimeoutError(f"only {len(self.bound)} of {count} pods bound in {timeout}s")


def namespace(kube: Kube, name: str) -> str:
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def make_nodes(cluster: LocalCluster, count: int, gpus: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: cluster.add_gpu_node(f"gpu-{i:04d}", gpus=gpus), range(count)))
    assert cluster.kube is not None
    kube = cluster.kube

    def ready() -> bool:
        nodes = kube.list("/api/v1/nodes")["items"]
        return sum(1 for n in nodes if _ready(n)) >= count

    cluster.wait_for(f"{count} nodes Ready", ready, timeout=300, every=1.0)


def _ready(node: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions") or [])


def pod(name: str, ns: str, scheduler: str) -> Obj:
    # Tessera's pods ask for its device plugin's resource; the default scheduler's for NVIDIA's
    gpu = "tessera.io/slice" if scheduler == "tessera" else "nvidia.com/gpu"
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [{"name": "task", "image": "busybox", "resources": {"limits": {gpu: "1"}}}],
    }
    notes = {"tessera.io/gpus": "1"} if scheduler == "tessera" else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "annotations": notes},
        "spec": spec,
    }


def throughput(kube: Kube, pid: int, ns: str, scheduler: str, count: int) -> tuple[float, float]:
    """Pods bound per minute by the scheduler process ``pid`` (paused while the pods are created)."""
    clock = BindClock(kube, ns).start()
    os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: kube.create(f"/api/v1/namespaces/{ns}/pods", pod(f"p-{i:05d}", ns, scheduler)),
                    range(count),
                )
            )
        time.sleep(1.0)  # the watch has seen every creation
    finally:
        resumed = time.monotonic()
        os.kill(pid, signal.SIGCONT)
    last = clock.wait_bound(count, timeout=900)
    clock.informer.stop()
    seconds = last - resumed
    return count / seconds * 60, seconds


def delete_pods(kube: Kube, ns: str) -> None:
    kube.request(
        "DELETE",
        f"/api/v1/namespaces/{ns}/pods",
        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
        timeout=600,
    )

    def gone() -> bool:
        return not kube.list(f"/api/v1/namespaces/{ns}/pods", limit=1)["items"]

    deadline = time.monotonic() + 300
    while not gone() and time.monotonic() < deadline:
        time.sleep(1)


def settle(plane: KubePlane, timeout: float = 600) -> None:
    """Wait until the throughput rounds' jobs are all over (their pods deleted, their jobs
    cancelled), so the latency rounds measure a quiet control plane."""
    live = ["PENDING", "SCHEDULED", "STARTING", "RUNNING"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not plane.api("GET", "/jobs", params={"state": live, "limit": 1}).json()["items"]:
            return
        time.sleep(1.0)
    raise TimeoutError("the throughput rounds' jobs did not finish")


def kube_latency(kube: Kube, ns: str, rounds: int) -> list[float]:
    """The default scheduler: pod created -> Running (KWOK starts it at once), one pod at a time."""
    clock = BindClock(kube, ns).start()
    out = []
    for i in range(rounds):
        name = f"l-{i:03d}"
        began = time.monotonic()
        kube.create(f"/api/v1/namespaces/{ns}/pods", pod(name, ns, "default-scheduler"))
        while name not in clock.running:
            time.sleep(0.005)
        out.append(clock.running[name] - began)
    clock.informer.stop()
    return out


def tessera_latency(plane: KubePlane, replicas: int, rounds: int) -> list[float]:
    """Tessera: POST /jobs -> the job RUNNING (every pod bound and running), one job at a time."""
    out = []
    for i in range(rounds):
        body = {
            "name": f"lat-{replicas}-{i}",
            "groups": [
                {
                    "name": "worker",
                    "replicas": replicas,
                    "command": ["python", "train.py"],
                    "image": "busybox",
                    "resources": {"gpus": 1},
                }
            ],
        }
        began = time.monotonic()
        job = plane.submit(body)
        while plane.job(job["id"])["status"]["state"] != "RUNNING":
            time.sleep(0.01)
        out.append(time.monotonic() - began)
        assert plane.api("POST", f"/jobs/{job['id']}/cancel").status_code in (200, 202)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--gang-rounds", type=int, default=5)
    args = parser.parse_args()
    # a timeout's SIGTERM still stops the cluster's processes (they run in sessions of their own)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    path = bin_dir()
    if path is None:
        raise SystemExit("run scripts/k8s-testenv install first")
    cluster = LocalCluster(path).start()
    plane: KubePlane | None = None
    try:
        assert cluster.kube is not None
        kube = cluster.kube
        began = time.monotonic()
        make_nodes(cluster, args.nodes, args.gpus)
        print(f"{args.nodes} KWOK nodes x {args.gpus} GPUs Ready in {time.monotonic() - began:.0f}s")
        jobs_ns = namespace(kube, "tessera-jobs")
        home = Path(tempfile.mkdtemp(prefix="tessera-bench-k8s-"))
        plane = KubePlane(cluster, jobs_ns, home, env_extra={"TESSERA_NODE_HEARTBEAT_TIMEOUT": "120"}).start()
        plane.wait_nodes([f"gpu-{i:04d}" for i in range(args.nodes)], timeout=600)
        assert plane.proc is not None
        rows = []
        rounds = (
            ("default-scheduler", "kube-scheduler (defaults: client QPS 50)", lambda: None),
            (
                "default-scheduler",
                "kube-scheduler (client QPS 1000, burst 2000)",
                lambda: cluster.restart_scheduler(1000, 2000),
            ),
            ("tessera", "Tessera (secondary scheduler)", lambda: None),
        )
        for i, (scheduler, label, prepare) in enumerate(rounds):
            prepare()
            time.sleep(2.0)
            pid = plane.proc.pid if scheduler == "tessera" else cluster.procs["kube-scheduler"].pid
            ns = namespace(kube, f"bench-{i}")
            per_min, seconds = throughput(kube, pid, ns, scheduler, args.pods)
            rows.append((label, per_min, seconds))
            print(f"{label}: {args.pods} pods bound in {seconds:.1f}s = {per_min:,.0f} pods/min", flush=True)
            delete_pods(kube, ns)
        settle(plane)
        lat_ns = namespace(kube, "bench-latency")
        kube_single = kube_latency(kube, lat_ns, args.rounds)
        ours_single = tessera_latency(plane, 1, args.rounds)
        ours_gang = tessera_latency(plane, 64, args.gang_rounds)
        print()
        print(
            f"Pods bound per minute, {args.nodes} KWOK nodes x {args.gpus} GPUs, {args.pods} one-GPU pods "
            "(created while the scheduler was paused), same API server, same run:"
        )
        print()
        print("| scheduler | pods | seconds to bind all | pods bound / min |")
        print("|---|---:|---:|---:|")
        for scheduler, per_min, seconds in rows:
            print(f"| {scheduler} | {args.pods} | {seconds:.1f} | {per_min:,.0f} |")
        print()
        print("| submit -> Running | rounds | p50 s | p99 s | max s |")
        print("|---|---:|---:|---:|---:|")
        for what, values in (
            ("kube-scheduler, 1 pod (create -> Running)", kube_single),
            ("Tessera, 1-pod job (POST /jobs -> RUNNING)", ours_single),
            ("Tessera, 64-pod gang (POST /jobs -> RUNNING)", ours_gang),
        ):
            print(
                f"| {what} | {len(values)} | {statistics.median(values):.3f} | {pct(values, 99):.3f} | "
                f"{max(values):.3f} |"
            )
    finally:
        if plane is not None:
            plane.stop()
        cluster.stop()


if __name__ == "__main__":
    main()

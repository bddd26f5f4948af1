"""Serving: the gateway's added latency, cold start from zero, requests lost in scale-down and promote.

One real single-machine Tessera (`tessera up` with its detached agent and gateway, simulated GPUs)
runs the example model server (examples/model_server.py, stdlib ThreadingHTTPServer) as replicas.

- added latency: the same requests (POST /predict, one row) sent straight to a replica and through
  the gateway, alternating in batches so both see the same machine load; p50/p99 of each and the
  difference, one client with keep-alive (sequential), then 16 concurrent clients;
- cold start: a service at zero replicas gets one request; the time until it is answered (the
  gateway holds it while the autoscaler asks for a replica, the scheduler binds it, the agent
  starts it and the model loads: LOAD_SECONDS); repeated after it has scaled back to zero;
- scale-down: clients push a service to 3 replicas, then most stop and it scales back to 1 (two
  replicas drain and stop) while one client keeps sending: every non-200 answer is counted;
- promote: a canary revision gets 20%, then is promoted while clients send: non-200s counted.

Run: ``.venv/bin/python -m bench.serving [--requests 2000]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cluster import LocalCluster, wait_until

BODY = {"inputs": [[0.1, 0.2, 0.3, 0.4]]}
LIVE = ("Pending", "Starting", "Ready", "Terminating")


def serve(cluster: LocalCluster, name: str, *flags: str) -> dict[str, Any]:
    r = cluster.cli(
        "serve", "custom", "--name", name, "--gpu-memory", "8Gi", "--readiness-path", "/ready", "--public",
        "--cpu", "0.25",
        *flags, "-o", "json", "--", "python", "examples/model_server.py",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def get(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.api("GET", f"/api/v1/services/{name}").json())


def ready(svc: dict[str, Any], revision: int | None = None) -> list[dict[str, Any]]:
    return [
        p
        for p in svc["replicas"]
        if p["state"] == "Ready" and (revision is None or p["revision_number"] == revision)
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(client: httpx.Client, url: str) -> float:
    start = time.perf_counter()
    r = client.post(url, json=BODY)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    return elapsed * 1000


def added_latency(cluster: LocalCluster, requests: int) -> list[tuple[str, float, float, float, float]]:
    serve(cluster, "lat", "--replicas", "1")
    svc = wait_until(lambda: (s := get(cluster, "lat")) and ready(s) and s, 60, what="lat ready")
    direct = f"http://{ready(svc)[0]['endpoint']}/predict"
    via = f"{svc['status']['url']}predict"
    rows = []
    with httpx.Client() as a, httpx.Client() as b:
        for _ in range(50):  # warm both paths (connections, caches)
            timed(a, direct), timed(b, via)
        d: list[float] = []
        g: list[float] = []
        for _ in range(requests // 100):
            d += [timed(a, direct) for _ in range(50)]
            g += [timed(b, via) for _ in range(50)]
    rows.append(("1 client, sequential", pct(d, 0.5), pct(d, 0.99), pct(g, 0.5), pct(g, 0.99)))

    def burst(url: str, n: int, clients: int) -> list[float]:
        out: list[float] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client() as c:
                mine = [timed(c, url) for _ in range(n // clients)]
            with lock:
                out.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    d, g = [], []
    for _ in range(4):
        d += burst(direct, requests // 4, 16)
        g += burst(via, requests // 4, 16)
    rows.append(("16 clients, concurrent", pct(d, 0.5), pct(d, 0.99), pct(g, 0.5), pct(g, 0.99)))
    return rows


def cold_starts(cluster: LocalCluster, rounds: int, load_seconds: float) -> list[tuple[float, float | None]]:
    name = f"cold{int(load_seconds * 10)}"
    serve(
        cluster, name, "--min-replicas", "0", "--max-replicas", "1", "--stable-window", "4s",
        "--panic-window", "1s", "--scale-to-zero-grace", "2s", "-e", f"LOAD_SECONDS={load_seconds}",
    )  # fmt: skip
    url = wait_until(lambda: get(cluster, name)["status"]["url"], 30, what="a gateway url") + "predict"
    out = []
    for _ in range(rounds):
        wait_until(
            lambda: not any(p["state"] in LIVE for p in get(cluster, name)["replicas"]),
            120, what="scale to zero",
        )  # fmt: skip
        start = time.perf_counter()
        r = httpx.post(url, json=BODY, timeout=120)
        assert r.status_code == 200, r.text
        out.append((time.perf_counter() - start, get(cluster, name)["revisions"][0]["cold_start_s"]))
    return out


class Load:
    def __init__(self, url: str, clients: int) -> None:
        self.url, self.stop = url, threading.Event()
        self.codes: list[int] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                try:
                    code = client.post(self.url, json=BODY).status_code
                except httpx.TransportError:
                    code = 0
                with self.lock:
                    self.codes.append(code)

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=130)


def scale_down(cluster: LocalCluster) -> tuple[int, int, int, int]:
    serve(
        cluster, "sd", "--min-replicas", "1", "--max-replicas", "3", "--target-concurrency", "2",
        "--stable-window", "6s", "--panic-window", "2s", "-e", "WORK_MS=100",
    )  # fmt: skip
    url = wait_until(lambda: (s := get(cluster, "sd")) and ready(s) and s["status"]["url"], 60) + "predict"
    heavy = Load(url, 6)
    wait_until(lambda: len(ready(get(cluster, "sd"))) == 3, 120, what="3 ready replicas")
    peak = len(ready(get(cluster, "sd")))
    light = Load(url, 1)
    heavy.end()
    wait_until(
        lambda: sum(p["state"] == "Stopped" for p in get(cluster, "sd")["replicas"]) >= 2,
        120,
        what="two replicas drained and stopped",
    )
    light.end()
    codes = heavy.codes + light.codes
    stopped = sum(p["state"] == "Stopped" for p in get(cluster, "sd")["replicas"])
    return len(codes), peak, stopped, sum(c != 200 for c in codes)


def promote(cluster: LocalCluster) -> tuple[int, int, int]:
    def replicas(name: str) -> list[dict[str, Any]]:
        return list(get(cluster, name)["replicas"])

    serve(cluster, "pr", "--replicas", "1", "-e", "WORK_MS=20")
    url = wait_until(lambda: (s := get(cluster, "pr")) and ready(s) and s["status"]["url"], 60) + "predict"
    load = Load(url, 4)
    r = cluster.cli("serve", "update", "pr", "--canary", "20", "-e", "VERSION=v2")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: ready(get(cluster, "pr"), 2), 60, what="the canary ready")
    time.sleep(2)
    assert cluster.cli("serve", "promote", "pr").returncode == 0
    wait_until(
        lambda: any(p["revision_number"] == 1 and p["state"] == "Stopped" for p in replicas("pr")),
        120, what="revision 1 drained",
    )  # fmt: skip
    time.sleep(1)
    load.end()
    return len(load.codes), sum(c == 200 for c in load.codes), sum(c != 200 for c in load.codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--cold-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-serving-") as tmp:
        cluster = LocalCluster(home=Path(tmp) / "home", gateway=True, gpus="4xA100-80GB").start()
        try:
            report(cluster, args)
        finally:
            cluster.stop()


def report(cluster: LocalCluster, args: argparse.Namespace) -> None:
    """Each table as soon as it is measured."""
    latency = added_latency(cluster, args.requests)
    print(
        "\n| path | direct p50 ms | direct p99 ms | gateway p50 ms | gateway p99 ms "
        "| added p50 ms | added p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, dp50, dp99, gp50, gp99 in latency:
        print(
            f"| {label} | {dp50:.2f} | {dp99:.2f} | {gp50:.2f} | {gp99:.2f} "
            f"| {gp50 - dp50:.2f} | {gp99 - dp99:.2f} |",
            flush=True,
        )
    print(
        "\n| cold start from zero | first request answered, s (each round) | median "
        "| replica created -> ready, s |"
    )
    print("|---|---|---:|---:|", flush=True)
    for label, load_s in (("model loads in 0 s", 0.0), ("model loads in 2 s", 2.0)):
        rounds = cold_starts(cluster, args.cold_rounds, load_s)
        firsts = [f"{a:.2f}" for a, _ in rounds]
        readies = [b for _, b in rounds if b is not None]
        print(
            f"| {label} | {', '.join(firsts)} | {statistics.median(a for a, _ in rounds):.2f} | "
            f"{statistics.median(readies):.2f} |",
            flush=True,
        )
    total, peak, stopped, lost = scale_down(cluster)
    print("\n| lost requests | requests | what happened | non-200 |")
    print("|---|---:|---|---:|")
    print(
        f"| scale-down | {total} | scaled 1 -> {peak} under 6 clients, then {stopped} drained "
        f"and stopped | {lost} |",
        flush=True,
    )
    total, _, lost = promote(cluster)
    print(f"| promote | {total} | canary 20%, then promoted; revision 1 drained and stopped | {lost} |")


if __name__ == "__main__":
    main()

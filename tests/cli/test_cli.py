"""The real `tessera` command against a real `tessera up` on loopback."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.pg import free_port

TESSERA = str(Path(sys.executable).with_name("tessera"))


@dataclass
class Server:
    home: Path
    url: str
    process: subprocess.Popen[bytes]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        return {**env, "TESSERA_HOME": str(self.home), "COLUMNS": "200", **extra}

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TESSERA, *args], env=self.env(**extra), capture_output=True, text=True, timeout=60
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(home: Path, port: int) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["TESSERA_HOME"] = str(home)
    log = open(home.parent / f"up-{port}.log", "ab")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [TESSERA, "up", "--port", str(port), "--no-agent", "--no-gateway"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(home=home, url=url, process=process)
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError((home.parent / f"up-{port}.log").read_text()[-2000:])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = start(tmp_path / "home", free_port())
    yield srv
    srv.stop()


def test_up_writes_private_credentials(server: Server) -> None:
    creds_path = server.home / "credentials.json"
    creds = json.loads(creds_path.read_text())
    assert creds["url"] == server.url and creds["token"].startswith("tsr_")
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600


def test_submit_get_list_cancel_delete(server: Server) -> None:
    r = server.run(
        "submit", "train", "--name", "hello", "--gpu-memory", "4Gi", "--", "python", "-c", "print(1)"
    )
    assert r.returncode == 0, r.stderr
    assert "hello" in r.stdout
    got = json.loads(server.run("get", "hello", "-o", "json").stdout)
    assert got["status"]["state"] == "PENDING"
    assert got["status"]["pending_reason"]["message"] == "no node has joined yet"
    assert got["spec"]["groups"][0]["command"] == ["python", "-c", "print(1)"]
    assert yaml.safe_load(server.run("get", "hello", "-o", "yaml").stdout)["name"] == "hello"
    human = server.run("get", "hello").stdout
    assert "no node has joined yet" in human and "Submitted" in human
    listed = json.loads(server.run("list", "-o", "json").stdout)
    assert [j["name"] for j in listed] == ["hello"]
    wide = server.run("list", "-o", "wide").stdout
    assert "PENDING (NoNodes)" in wide and got["id"] in wide
    assert server.run("cancel", "hello").returncode == 0
    assert json.loads(server.run("get", "hello", "-o", "json").stdout)["status"]["state"] == "CANCELLED"
    assert server.run("delete", "hello").returncode == 0
    missing = server.run("get", "hello")
    assert missing.returncode == 1 and "no job 'hello'" in missing.stderr


def test_submit_with_every_flag(server: Server) -> None:
    r = server.run(
        "submit",
        "train",
        "--name",
        "full",
        "--workers",
        "4",
        "--min-available",
        "2",
        "--gpus",
        "0.5",
        "--cpu",
        "500m",
        "--memory",
        "8Gi",
        "--priority",
        "high",
        "--preemptible",
        "-e",
        "A=1",
        "-l",
        "team=vision",
        "--deadline",
        "1h30m",
        "--expected-runtime",
        "45m",
        "--retries",
        "2",
        "--gpu-model",
        "A100",
        "-o",
        "json",
        "--",
        "python",
        "train.py",
    )
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    group = job["spec"]["groups"][0]
    assert (group["replicas"], group["min_available"]) == (4, 2)
    assert group["resources"]["gpus"] == 0.5 and group["resources"]["cpu"] == 0.5
    assert group["resources"]["memory"] == 8192 and group["resources"]["gpu_models"] == ["A100"]
    assert group["env"] == {"A": "1"} and job["spec"]["labels"] == {"team": "vision"}
    assert job["spec"]["priority"] == 1000 and job["spec"]["preemptible"] is True
    assert job["spec"]["deadline"] == "1h30m" and job["spec"]["retry"]["max_retries"] == 2
    assert job["spec"]["expected_runtime"] == "45m"
    assert len(job["tasks"]) == 4


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--gpu-memory", "-4Gi"], "gpu_memory"),
        (["--gpu-memory", "lots"], "gpu_memory"),
        (["--gpu-compute", "150"], "gpu_compute"),
        (["--queue", "nope"], "queue"),
    ],
)
def test_refusals_exit_1_and_name_the_field(server: Server, flags: list[str], field: str) -> None:
    r = server.run("submit", "train", "--name", "bad", *flags, "--", "python")
    assert r.returncode == 1
    assert field in r.stderr, r.stderr
    assert json.loads(server.run("list", "-o", "json").stdout) == []


def test_usage_errors_exit_2(server: Server) -> None:
    assert server.run("submit", "train", "--no-such-flag", "--", "x").returncode == 2
    bad = server.run("submit", "train", "--deadline", "soon", "--", "x")
    assert bad.returncode == 2 and "90s, 30m, 2h or 1d" in bad.stderr
    bad = server.run("submit", "train", "--expected-runtime", "-5m", "--", "x")
    assert bad.returncode == 2 and "--expected-runtime" in bad.stderr
    assert server.run("list", "-o", "xml").returncode == 2


def test_name_clash_and_idempotency(server: Server) -> None:
    args = ["submit", "train", "--name", "dup", "--idempotency-key", "k1", "-o", "json", "--", "x"]
    first = json.loads(server.run(*args).stdout)
    again = json.loads(server.run(*args).stdout)
    assert first["id"] == again["id"]
    clash = server.run("submit", "train", "--name", "dup", "--", "x")
    assert clash.returncode == 1 and "already exists" in clash.stderr


def test_wrong_token_and_unreachable(server: Server) -> None:
    r = server.run("list", TESSERA_TOKEN="tsr_wrong")
    assert r.returncode == 1 and "not recognised" in r.stderr
    r = server.run("list", TESSERA_URL=f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach the control plane" in r.stderr


def test_admin_check(server: Server) -> None:
    r = server.run("admin", "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: ") and "every invariant holds" in r.stdout
    r = server.run("admin", "check", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_version(server: Server) -> None:
    r = server.run("version", "--server")
    assert r.returncode == 0 and "tessera 0.1.0" in r.stdout and server.url in r.stdout


def test_restart_keeps_jobs_and_credentials(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    srv = start(home, port)
    try:
        assert srv.run("submit", "train", "--name", "keep", "--", "x").returncode == 0
        token = json.loads((home / "credentials.json").read_text())["token"]
    finally:
        srv.stop()
    srv = start(home, port)
    try:
        assert json.loads((home / "credentials.json").read_text())["token"] == token
        assert json.loads(srv.run("get", "keep", "-o", "json").stdout)["status"]["state"] == "PENDING"
    finally:
        srv.stop()


def test_up_refuses_bad_simulated_gpus(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    r = subprocess.run(
        [TESSERA, "up", "--simulate-gpus", "lots", "--port", str(free_port())],
        env={**env, "TESSERA_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "2xA100-80GB" in r.stderr


def test_submit_pytorchjob_is_a_gang_of_kind_pytorchjob(server: Server) -> None:
    r = server.run(
        "submit", "pytorchjob", "--name", "ddp", "--workers", "2", "-o", "json", "--", "python", "x.py"
    )
    assert r.returncode == 0, r.stderr
    job = json.loads(r.stdout)
    assert job["spec"]["kind"] == "pytorchjob" and len(job["tasks"]) == 2
    plain = json.loads(server.run("submit", "train", "--name", "t", "-o", "json", "--", "x").stdout)
    assert plain["spec"]["kind"] == "train"


def test_arena_spellings_prune_top_watch_and_completion(server: Server) -> None:
    r = server.run(
        "submit", "train", "--name", "arena", "-p", "high", "--gpumemory", "8", "--gpucore", "30",
        "--retry", "2", "--project", "default", "--selector", "zone=b", "-o", "json", "--", "python", "-c",
        "pass",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    spec = json.loads(r.stdout)["spec"]
    resources = spec["groups"][0]["resources"]
    assert (spec["priority"], resources["gpu_memory"], resources["gpu_compute"]) == (1000, 8192, 30)
    assert spec["retry"]["max_retries"] == 2 and spec["node_selector"] == {"zone": "b"}
    both = server.run("submit", "train", "--gpumemory", "8", "--gpu-memory", "8Gi", "--", "true")
    assert both.returncode == 2 and "not both" in both.stderr
    assert server.run("cancel", "arena").returncode == 0
    # top job -w refreshes until the job has ended (here at once), with sparkline columns
    top = server.run("top", "job", "arena", "-w", "--interval", "0.2")
    assert top.returncode == 0 and "default/arena CANCELLED" in top.stdout
    # prune: finished jobs older than --since; a dry run deletes nothing
    assert "0 job(s) pruned" in server.run("prune", "--since", "1h").stdout
    dry = server.run("prune", "--since", "0s", "--dry-run").stdout
    assert "would delete default/arena" in dry
    assert server.run("get", "arena").returncode == 0
    assert "deleted default/arena" in server.run("prune", "--since", "0s").stdout
    assert server.run("get", "arena").returncode == 1
    usage = server.run("queue", "usage")
    assert usage.returncode == 0 and "default" in usage.stdout and "SHARE / FAIR" in usage.stdout
    script = server.run("completion", "bash").stdout
    assert "_TESSERA_COMPLETE=complete_bash" in script and "complete -o default -F" in script
    env = {"COMP_WORDS": "tessera ser", "COMP_CWORD": "1", "_TESSERA_COMPLETE": "complete_bash"}
    assert (
        "serve" in subprocess.run([TESSERA], env={**os.environ, **env}, capture_output=True, text=True).stdout
    )


def test_sparkline_scales_to_the_allocation() -> None:
    from tessera.cli.top import sparkline

    assert sparkline([0, 50, 100], 100) == "▁▅█"
    assert sparkline([200], 100) == "█" and sparkline([1], 0) == ""

"""Secrets (tokens, a dataset's credentials) never appear in logs, events, the change feed or any
API response, through a real `tessera up` with its node agent, an S3 source (moto) and a job that
mounts the dataset."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.datacache.sources import put_objects, s3_server
from tests.e2e.cluster import LocalCluster, wait_until

pytestmark = pytest.mark.xdist_group("secrets")

# files that exist to hold a secret: the CLI's credentials, the agent's token file, the database
# (token hashes; a secret's values, which the agent must be able to receive)
SECRET_STORES = {"credentials.json", "node/token", "tessera.db", "tessera.db-wal", "tessera.db-shm"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(home=tmp_path / "home").start()
    yield c
    c.stop()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Leaks:
    """Every secret string, and where each text checked came from."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # value -> what it is
        self.checked: list[str] = []
        self.found: list[str] = []

    def add(self, what: str, value: str) -> None:
        assert len(value) >= 16, f"{what} is too short to search for without false matches"
        self.secrets[value] = what
        self.secrets[value[-16:]] = f"the end of {what}"  # a partial echo (after a shown prefix)

    def scan(self, where: str, text: str) -> None:
        self.checked.append(where)
        for value, what in self.secrets.items():
            if value in text:
                self.found.append(f"{what} in {where}")


def test_no_secret_in_logs_events_or_responses(cluster: LocalCluster, tmp_path: Path) -> None:
    leaks = Leaks()
    admin = cluster.token
    leaks.add("the admin token", admin)
    leaks.add("the node agent's token", (cluster.home / "node" / "token").read_text().strip())
    api = httpx.Client(base_url=cluster.url, headers=as_(admin), timeout=30)
    out: list[str] = []  # the CLI's output

    # tokens of each kind: a member's, a gateway's, a service's
    assert api.post("/api/v1/users", json={"name": "alice"}).status_code == 201
    assert api.put("/api/v1/projects/default/members/alice", json={"role": "member"}).status_code == 200
    r = api.post("/api/v1/tokens", json={"name": "alice-cli", "user": "alice", "scopes": ["user"]})
    alice = r.json()["secret"]
    leaks.add("alice's token", alice)
    assert api.post("/api/v1/users", json={"name": "gw"}).status_code == 201
    r = api.post("/api/v1/tokens", json={"name": "gw", "user": "gw", "scopes": ["gateway"]})
    leaks.add("a gateway token", r.json()["secret"])
    service = {
        "name": "svc",
        "command": [sys.executable, "-c", "pass"],
        "resources": {"gpu_memory": "1Gi"},
        "min_replicas": 0,
        "max_replicas": 1,
    }
    r = api.post("/api/v1/services", json=service)
    assert r.status_code == 201 and r.json()["token"], r.text
    leaks.add("the service's token", r.json()["token"])

    key_id = "AKIA" + secrets.token_hex(8).upper()
    key = secrets.token_urlsafe(30)
    leaks.add("the S3 key id", key_id)
    leaks.add("the S3 secret key", key)
    with s3_server() as endpoint:
        put_objects(endpoint, "data", {f"imgs/{i}.bin": bytes([i]) * 1024 for i in range(4)})
        done = cluster.cli(
            "secret", "create", "s3", f"--from-literal=aws_access_key_id={key_id}",
            f"--from-literal=aws_secret_access_key={key}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out += [done.stdout, done.stderr]
        done = cluster.cli(
            "data", "create", "imgs", "--source", "s3://data/imgs", "--endpoint-url", endpoint,
            "--credentials", "s3",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out += [done.stdout, done.stderr]
        wait_until(lambda: dataset(api, "imgs")["status"]["phase"] == "NotCached", 60, what="the listing")
        # the job prints its whole environment: the credentials must not have been handed to it
        reader = (
            "import os, pathlib; p = pathlib.Path(os.environ['TESSERA_DATA_IMGS']); "
            "print('files', len(list(p.rglob('*.bin')))); print(sorted(os.environ.items()))"
        )
        done = cluster.cli(
            "submit", "train", "--name", "reader", "--data", "imgs:/data/imgs:required", "-o", "json",
            "--", sys.executable, "-c", reader,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out += [done.stdout, done.stderr]
        job = cluster.wait_state("reader", "SUCCEEDED", "FAILED", timeout=120)
        logs = cluster.cli("logs", "reader").stdout
        assert job["status"]["state"] == "SUCCEEDED" and "files 4" in logs, (job["status"], logs)
        out.append(logs)
        wait_until(lambda: dataset(api, "imgs")["status"]["phase"] == "Ready", 30, what="Ready")

    node = api.get("/api/v1/nodes").json()[0]["name"]
    ids = {
        "ref": job["id"],
        "dataset_id": dataset(api, "imgs")["id"],
        "token_id": next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == "alice-cli"),
    }
    names = {
        "jobs": "reader", "queues": "default", "projects": "default", "users": "alice", "nodes": node,
        "datasets": "imgs", "services": "svc",
    }  # fmt: skip

    # the node agent's own channel carries the credentials, to the node token only: proof the scan
    # would see them were they anywhere else
    node_token = (cluster.home / "node" / "token").read_text().strip()
    work = httpx.get(
        f"{cluster.url}/api/v1/nodes/{node}/datasets/{ids['dataset_id']}", headers=as_(node_token)
    )
    assert work.status_code == 200 and key in work.text and key_id in work.text

    # every GET of the API, as the cluster admin and as a member
    schema = api.get("/openapi.json").json()
    gets = [path for path, ops in schema["paths"].items() if "get" in ops]
    for path in gets:
        url = fill(path, ids, names)
        params = query_for(path)
        for who, token in (("admin", admin), ("alice", alice)):
            r = httpx.get(f"{cluster.url}{url}", params=params, headers=as_(token), timeout=30)
            assert r.status_code < 500, (url, r.status_code, r.text)
            leaks.scan(f"GET {url} as {who} ({r.status_code})", r.text + json.dumps(dict(r.headers)))
    # the whole change feed and event list, and the token listing shows prefixes only
    tokens = api.get("/api/v1/tokens").json()
    assert tokens and all("secret" not in t and len(t["prefix"]) < 16 for t in tokens), tokens
    events = api.get("/api/v1/events", params={"limit": 1000}).json()
    assert {"Listed", "Ready"} <= {e["reason"] for e in events}  # the dataset's history is there
    feed = api.get("/api/v1/watch", params={"since": 0, "timeout": 1})
    kinds = {json.loads(line).get("kind") for line in feed.text.splitlines() if line.strip()}
    assert {"secret", "dataset", "job", "service"} <= kinds, kinds  # the objects that hold or name secrets
    leaks.scan("the change feed from revision 0", feed.text)
    leaks.scan("the CLI's output", "\n".join(out))

    # every log and file under TESSERA_HOME (the control plane's and agent's logs, tasks' output)
    skipped: set[str] = set()
    task_output: list[str] = []  # the job's own log (it printed its environment)
    for path in sorted(p for p in cluster.home.rglob("*") if p.is_file()):
        rel = path.relative_to(cluster.home).as_posix()
        if rel in SECRET_STORES:
            skipped.add(rel)
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        leaks.scan(rel, text)
        if "files 4" in text:
            task_output.append(rel)
    assert {"up.log", "node/agent.log"} <= set(leaks.checked), leaks.checked
    assert {"credentials.json", "node/token"} <= skipped, skipped  # the stores are where they were
    assert task_output, "the job's log file was not among the files scanned"
    assert len([c for c in leaks.checked if c.startswith("GET ")]) == 2 * len(gets)
    assert not leaks.found, "\n".join(leaks.found)


def dataset(api: httpx.Client, name: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/datasets/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def fill(path: str, ids: dict[str, str], names: dict[str, str]) -> str:
    """A real object for each path parameter: ``{name}`` is named by the collection before it."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part == "{name}" or part == "{user}":
            parts[i] = names["users"] if part == "{user}" else names[parts[i - 1]]
        elif part.startswith("{"):
            parts[i] = ids[part.strip("{}")]
    return "/".join(parts)


def query_for(path: str) -> dict[str, Any]:
    if path.endswith("/watch"):
        return {"since": 0, "timeout": 1}
    if path.endswith("/logs"):
        return {"follow": "false"}
    if path.endswith("/events") and "/jobs/" not in path:
        return {"limit": 1000}
    return {}


def test_a_users_token_never_reads_a_sources_credentials(api: Api, tmp_path: Path) -> None:
    """A cluster admin's token may act as any node, but the node routes that carry a source's
    credentials (GET /api/v1/nodes/{name}/loads and /datasets/{id}) gave them to it too: only a
    node-scope token gets them now."""
    from tessera.platform.controllers.datasets import list_sources
    from tests.platform.test_datasets_api import create, files
    from tests.platform.test_execution import node

    agent = node(api, "n1")
    data = {"aws_access_key_id": "AKIA-NEVER-ECHOED", "aws_secret_access_key": "TOP-SECRET-VALUE"}
    assert api.call("POST", "/api/v1/secrets", json={"name": "creds", "data": data}).status_code == 201
    r = create(api, "d", f"file://{files(tmp_path / 'data')}", credentials="creds")
    assert r.status_code == 201, r.text
    list_sources(api.db)
    dataset_id = api.call("GET", "/api/v1/datasets/d").json()["id"]
    assert api.call("POST", "/api/v1/datasets/d/loads").status_code == 201
    for path in ("/api/v1/nodes/n1/loads", f"/api/v1/nodes/n1/datasets/{dataset_id}"):
        for_agent = api.call("GET", path, token=agent)
        assert for_agent.status_code == 200 and "TOP-SECRET-VALUE" in for_agent.text, for_agent.text
        for_admin = api.call("GET", path)
        assert for_admin.status_code == 200 and "d" in for_admin.text
        assert "TOP-SECRET-VALUE" not in for_admin.text and "AKIA-NEVER-ECHOED" not in for_admin.text

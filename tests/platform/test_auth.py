"""Authentication and authorization: tokens, scopes, expiry, revocation, project roles."""

from __future__ import annotations

import time

from tessera.platform.app import create_app
from tests.conftest import Api, job_body


def test_missing_wrong_and_malformed_tokens(api: Api) -> None:
    missing = api.client.get("/api/v1/jobs")
    assert missing.status_code == 401 and "missing token" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = api.call("GET", "/api/v1/jobs", token="tsr_not-a-real-token")
    assert wrong.status_code == 401 and "not recognised" in wrong.json()["detail"]
    basic = api.client.get("/api/v1/jobs", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401


def test_expired_token(api: Api) -> None:
    token = api.user("eve", expires_in="1s")
    assert api.call("GET", "/api/v1/jobs", token=token).status_code == 200
    time.sleep(1.2)
    r = api.call("GET", "/api/v1/jobs", token=token)
    assert r.status_code == 401 and "expired at" in r.json()["detail"]


def test_revoked_token(api: Api) -> None:
    token = api.user("rita")
    tokens = api.call("GET", "/api/v1/tokens", token=token).json()
    assert len(tokens) == 1 and "secret" not in tokens[0] and tokens[0]["prefix"] == token[:10]
    assert api.call("POST", f"/api/v1/tokens/{tokens[0]['id']}/revoke", token=token).status_code == 200
    r = api.call("GET", "/api/v1/jobs", token=token)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_tokens_are_hashed_at_rest(api: Api) -> None:
    from sqlalchemy import select

    from tessera.platform.store.rows import TokenRow

    token = api.user("hank")
    with api.db.read() as session:
        stored = [r.secret_hash for r in session.execute(select(TokenRow)).scalars()]
    assert token not in stored and all(len(h) == 64 for h in stored)


def test_viewer_reads_but_cannot_submit_or_cancel(api: Api) -> None:
    api.call("POST", "/api/v1/jobs", json=job_body("theirs"))
    viewer = api.user("vic", role="viewer")
    assert api.call("GET", "/api/v1/jobs/theirs", token=viewer).status_code == 200
    cancel = api.call("POST", "/api/v1/jobs/theirs/cancel", token=viewer)
    assert cancel.status_code == 403 and "needs role member" in cancel.json()["detail"]
    submit = api.call("POST", "/api/v1/jobs", json=job_body("mine"), token=viewer)
    assert submit.status_code == 403
    delete = api.call("DELETE", "/api/v1/jobs/theirs", token=viewer)
    assert delete.status_code == 403
    assert api.call("GET", "/api/v1/jobs/theirs").json()["status"]["state"] == "PENDING"


def test_member_acts_in_own_project_only(api: Api) -> None:
    assert api.call("POST", "/api/v1/projects", json={"name": "other"}).status_code == 201
    api.call("POST", "/api/v1/jobs", json={**job_body("secret"), "project": "other"})
    member = api.user("mia", role="member")
    mine = api.call("POST", "/api/v1/jobs", json=job_body("mine"), token=member)
    assert mine.status_code == 201 and mine.json()["owner"] == "mia"
    assert [j["name"] for j in api.call("GET", "/api/v1/jobs", token=member).json()["items"]] == ["mine"]
    hidden = api.call("GET", "/api/v1/jobs/secret", params={"project": "other"}, token=member)
    assert hidden.status_code == 404
    elsewhere = api.call("POST", "/api/v1/jobs", json={**job_body("x"), "project": "other"}, token=member)
    assert elsewhere.status_code == 403
    assert [p["name"] for p in api.call("GET", "/api/v1/projects", token=member).json()] == ["default"]
    assert api.call("POST", "/api/v1/jobs/mine/cancel", token=member).status_code == 200


def test_admin_only_endpoints(api: Api) -> None:
    member = api.user("max")
    for method, path, body in [
        ("POST", "/api/v1/queues", {"name": "q"}),
        ("POST", "/api/v1/projects", {"name": "p"}),
        ("POST", "/api/v1/users", {"name": "u"}),
        ("GET", "/api/v1/users", None),
        ("DELETE", "/api/v1/queues/default", None),
    ]:
        r = api.call(method, path, token=member, json=body)
        assert r.status_code == 403, (method, path, r.text)
    r = api.call("POST", "/api/v1/tokens", token=member, json={"name": "t", "scopes": ["admin"]})
    assert r.status_code == 422 and "admin scope" in r.json()["detail"]
    r = api.call("POST", "/api/v1/tokens", token=member, json={"name": "t", "user": "admin"})
    assert r.status_code == 403


def test_node_and_metrics_scopes(api: Api) -> None:
    node = api.user("agent", role=None, scopes=["node"])
    metrics = api.user("prom", role=None, scopes=["metrics"])
    user = api.user("ursula")
    inventory = {"name": "n1", "inventory": {"gpus": [], "cpu": 4, "memory": "8Gi"}}
    assert api.call("POST", "/api/v1/nodes", json=inventory, token=user).status_code == 403
    assert api.call("POST", "/api/v1/nodes", json=inventory, token=node).status_code == 200
    assert api.call("GET", "/api/v1/jobs", token=node).status_code == 403
    assert api.call("GET", "/metrics", token=user).status_code == 403
    scrape = api.call("GET", "/metrics", token=metrics)
    assert scrape.status_code == 200 and "tessera_store_revision" in scrape.text
    assert api.call("GET", "/api/v1/jobs", token=metrics).status_code == 403


def test_health_endpoints_are_open(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz").json()
    # controllers are off in this app: it serves the API but does not lead
    assert ready["status"] == "ready" and ready["leader"] is False


# the web sign-in takes the token in its body (tested in test_session.py: a wrong one is a 401)
SIGN_IN = ("post", "/api/v1/session")


def test_every_api_route_requires_a_token() -> None:
    schema = create_app(run_controllers=False).openapi()
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            if (path.startswith("/api/") or path == "/metrics") and (method, path) != SIGN_IN:
                assert op.get("security") == [{"HTTPBearer": []}], f"{method.upper()} {path} is open"
    assert "security" not in schema["paths"][SIGN_IN[1]][SIGN_IN[0]]

"""Web sessions: a user token exchanged for an HttpOnly, SameSite=Strict cookie; writes need the
CSRF header; sign-out revokes; bearer tokens are unaffected."""

from __future__ import annotations

from tests.conftest import Api, job_body
from tests.platform.test_execution import node


def sign_in(api: Api, token: str | None = None) -> dict[str, str]:
    api.client.cookies.clear()
    r = api.client.post("/api/v1/session", json={"token": token or api.admin_token})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sign_in_sets_a_strict_httponly_cookie_and_writes_need_the_csrf_header(api: Api) -> None:
    node(api)
    member = api.user("mia")
    r = api.client.post("/api/v1/session", json={"token": member})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["user"] == "mia" and info["projects"] == {"default": "member"} and info["csrf_token"]
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("tessera_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    csrf = next(c for c in cookies if c.startswith("tessera_csrf="))
    assert "HttpOnly" not in csrf and info["csrf_token"] in csrf
    assert member not in str(cookies)  # the session is a token of its own, not the one signed in with

    # reads with the cookie alone
    assert api.client.get("/api/v1/jobs").status_code == 200
    assert api.client.get("/api/v1/session").json()["user"] == "mia"
    # a write without the CSRF header (what another site's form could send) is refused
    r = api.client.post("/api/v1/jobs", json=job_body("x"))
    assert r.status_code == 403 and "x-csrf-token" in r.text
    r = api.client.post("/api/v1/jobs", json=job_body("x"), headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    assert api.call("GET", "/api/v1/jobs").json()["items"] == []  # nothing was stored
    r = api.client.post("/api/v1/jobs", json=job_body("x"), headers={"X-CSRF-Token": info["csrf_token"]})
    assert r.status_code == 201, r.text
    assert r.json()["owner"] == "mia"

    # sign out: the session token is revoked, the cookies cleared
    r = api.client.delete("/api/v1/session", headers={"X-CSRF-Token": info["csrf_token"]})
    assert r.status_code == 204
    api.client.cookies.clear()
    api.client.cookies.set("tessera_session", "stale")
    assert api.client.get("/api/v1/jobs").status_code == 401


def test_who_may_sign_in(api: Api) -> None:
    node_token = api.user("agent", role=None, scopes=["node"])
    r = api.client.post("/api/v1/session", json={"token": node_token})
    assert r.status_code == 403 and "user token" in r.text
    r = api.client.post("/api/v1/session", json={"token": "tsr_nope"})
    assert r.status_code == 401
    api.client.cookies.clear()
    assert api.client.get("/api/v1/session").status_code == 401


def test_a_session_never_outlives_its_token_and_bearer_calls_need_no_csrf(api: Api) -> None:
    short = api.user("sam", expires_in="1h")
    info = sign_in(api, short)
    tokens = api.call("GET", "/api/v1/tokens", params={"user": "sam"}).json()
    source = next(t for t in tokens if t["name"] == "sam-token")
    assert info["expires_at"] <= source["expires_at"]
    api.client.cookies.clear()
    # a bearer call (CLI, SDK) is not a browser session: no CSRF header needed
    node(api)
    assert api.call("POST", "/api/v1/jobs", json=job_body("y")).status_code == 201

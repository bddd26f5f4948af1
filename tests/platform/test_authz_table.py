"""Who may call what: every route of the API against every kind of caller, from one table.

The table is the specification; the test fails when a route is missing from it (a new route must
say who may call it) and when any caller gets past (or is stopped at) the wrong door. Callers:
anonymous, a project member's user token, a node agent's token, a metrics token, a gateway token,
and a cluster admin. Project-level rules (viewer, member, other projects) are in test_auth.py.
"""

from __future__ import annotations

import pytest

from tessera.platform.app import create_app
from tests.conftest import Api

OPEN, USER, ADMIN, NODE, METRICS, GATEWAY, WATCH = (
    "open",
    "user",
    "admin",
    "node",
    "metrics",
    "gateway",
    "watch",
)
PROJECT_ADMIN = "project-admin"  # a user token, and then the project's admin role (test_auth.py)
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("POST", "/api/v1/session"): OPEN,  # the web sign-in: its token is in the body
    ("GET", "/api/v1/session"): USER,
    ("DELETE", "/api/v1/session"): USER,
    ("GET", "/metrics"): METRICS,
    ("GET", "/api/v1/watch"): WATCH,
    ("POST", "/api/v1/gateway/report"): GATEWAY,
    ("GET", "/api/v1/admin/check"): ADMIN,
    # jobs
    ("GET", "/api/v1/jobs"): USER,
    ("POST", "/api/v1/jobs"): USER,
    ("GET", "/api/v1/jobs/{ref}"): USER,
    ("DELETE", "/api/v1/jobs/{ref}"): USER,
    ("POST", "/api/v1/jobs/{ref}/cancel"): USER,
    ("GET", "/api/v1/jobs/{ref}/events"): USER,
    ("GET", "/api/v1/jobs/{ref}/explain"): USER,
    ("GET", "/api/v1/jobs/{ref}/logs"): USER,
    ("GET", "/api/v1/jobs/{ref}/usage"): USER,
    ("GET", "/api/v1/events"): USER,
    # datasets and secrets
    ("GET", "/api/v1/datasets"): USER,
    ("POST", "/api/v1/datasets"): USER,
    ("GET", "/api/v1/datasets/{name}"): USER,
    ("DELETE", "/api/v1/datasets/{name}"): USER,
    ("GET", "/api/v1/datasets/{name}/loads"): USER,
    ("POST", "/api/v1/datasets/{name}/loads"): USER,
    ("GET", "/api/v1/secrets"): USER,
    ("POST", "/api/v1/secrets"): USER,
    ("DELETE", "/api/v1/secrets/{name}"): USER,
    # services
    ("GET", "/api/v1/services"): USER,
    ("POST", "/api/v1/services"): USER,
    ("GET", "/api/v1/services/{name}"): USER,
    ("PATCH", "/api/v1/services/{name}"): USER,
    ("DELETE", "/api/v1/services/{name}"): USER,
    ("POST", "/api/v1/services/{name}/promote"): USER,
    ("POST", "/api/v1/services/{name}/rollback"): USER,
    ("POST", "/api/v1/services/{name}/token"): USER,
    ("PUT", "/api/v1/services/{name}/traffic"): USER,
    # nodes: users read them, agents act as their node, admins remove them
    ("GET", "/api/v1/nodes"): USER,
    ("POST", "/api/v1/nodes"): NODE,
    ("GET", "/api/v1/nodes/{name}"): USER,
    ("DELETE", "/api/v1/nodes/{name}"): ADMIN,
    ("GET", "/api/v1/nodes/{name}/usage"): USER,
    ("GET", "/api/v1/nodes/{name}/assignments"): NODE,
    ("POST", "/api/v1/nodes/{name}/heartbeat"): NODE,
    ("POST", "/api/v1/nodes/{name}/reports"): NODE,
    ("POST", "/api/v1/nodes/{name}/events"): NODE,
    ("POST", "/api/v1/nodes/{name}/caches"): NODE,
    ("GET", "/api/v1/nodes/{name}/loads"): NODE,
    ("POST", "/api/v1/nodes/{name}/loads/{load_id}"): NODE,
    ("GET", "/api/v1/nodes/{name}/datasets/{dataset_id}"): NODE,
    # queues, projects, users, tokens
    ("GET", "/api/v1/queues"): USER,
    ("GET", "/api/v1/queues/usage"): USER,
    ("GET", "/api/v1/queues/{name}"): USER,
    ("POST", "/api/v1/queues"): ADMIN,
    ("PATCH", "/api/v1/queues/{name}"): ADMIN,
    ("DELETE", "/api/v1/queues/{name}"): ADMIN,
    ("GET", "/api/v1/projects"): USER,
    ("GET", "/api/v1/projects/{name}"): USER,
    ("POST", "/api/v1/projects"): ADMIN,
    ("PATCH", "/api/v1/projects/{name}"): ADMIN,
    ("PUT", "/api/v1/projects/{name}/members/{user}"): PROJECT_ADMIN,
    ("DELETE", "/api/v1/projects/{name}/members/{user}"): PROJECT_ADMIN,
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users/me"): USER,
    ("GET", "/api/v1/users/{name}"): ADMIN,
    ("GET", "/api/v1/tokens"): USER,
    ("POST", "/api/v1/tokens"): USER,
    ("POST", "/api/v1/tokens/{token_id}/revoke"): USER,
}
ALLOWED = {
    OPEN: {"anonymous", "user", "node", "metrics", "gateway", "admin"},
    USER: {"user", "admin"},
    ADMIN: {"admin"},
    NODE: {"node", "admin"},
    METRICS: {"metrics", "admin"},
    GATEWAY: {"gateway", "admin"},
    WATCH: {"user", "node", "admin"},
    PROJECT_ADMIN: {"admin"},  # the member's token passes the scope check, then its role does not
}
NODE_NAME = "authz-node"
UNKNOWN = "00000000-0000-0000-0000-000000000000"


def test_the_table_covers_every_route() -> None:
    schema = create_app(run_controllers=False).openapi()
    routes = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert routes - set(ROUTES) == set(), "routes nobody said who may call"
    assert set(ROUTES) - routes == set(), "the table names routes that do not exist"


def _tokens(api: Api) -> dict[str, str | None]:
    tokens: dict[str, str | None] = {"anonymous": None, "admin": api.admin_token}
    tokens["user"] = api.user("ulla")
    for kind in ("node", "metrics", "gateway"):
        tokens[kind] = api.user(f"svc-{kind}", role=None, scopes=[kind])
    inventory = {"gpus": [], "cpu": 4, "memory": "8Gi"}
    r = api.call(
        "POST", "/api/v1/nodes", token=tokens["node"], json={"name": NODE_NAME, "inventory": inventory}
    )
    assert r.status_code == 200, r.text
    return tokens


def _path(template: str) -> str:
    node_routes = template.startswith("/api/v1/nodes/{name}/")  # an agent acts as its own node only
    project_routes = template.startswith("/api/v1/projects/{name}")  # the member's own project
    name = NODE_NAME if node_routes else "default" if project_routes else "nope"
    return (
        template.replace("{name}", name)
        .replace("{ref}", "nope")
        .replace("{user}", "nobody")
        .replace("{token_id}", UNKNOWN)
        .replace("{load_id}", UNKNOWN)
        .replace("{dataset_id}", UNKNOWN)
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_route_lets_in_exactly_who_the_table_says(api: Api) -> None:
    tokens = _tokens(api)
    wrong = []
    # signing out revokes the caller's session: done last, with tokens of its own
    routes = sorted(ROUTES.items(), key=lambda kv: kv[0] == ("DELETE", "/api/v1/session"))
    for (method, template), who in routes:
        path = _path(template)
        for kind, token in tokens.items():
            if (method, template) == ("DELETE", "/api/v1/session") and token is not None:
                token = api.user(f"out-{kind}", role=None, scopes=["user"]) if kind == "user" else token
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            params = {"timeout": "0.01"} if template == "/api/v1/watch" else {}
            body: dict[str, str] | None = {} if method in ("POST", "PUT", "PATCH") else None
            if template.endswith("/members/{user}") and method == "PUT":
                body = {"role": "viewer"}  # valid, so the role decides
            r = api.client.request(method, path, headers=headers, params=params, json=body)
            allowed = kind in ALLOWED[who]
            if allowed and r.status_code in (401, 403):
                wrong.append(
                    f"{method} {template} as {kind}: {r.status_code} (should be let in) {r.text[:120]}"
                )
            if not allowed and r.status_code != (401 if token is None else 403):
                wrong.append(f"{method} {template} as {kind}: {r.status_code} (should be refused)")
    assert not wrong, "\n".join(wrong)

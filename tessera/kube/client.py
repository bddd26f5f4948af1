"""A small, typed Kubernetes API client over httpx: what Tessera needs and nothing more.

It reads a kubeconfig (client certificates, bearer tokens, embedded or file data) or the in-cluster
service account, speaks JSON to the API server, and streams watches and pod logs. Objects stay plain
dicts, as the API returns them; the modules that build or read them name the fields they use.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

log = logging.getLogger(__name__)
Obj = dict[str, Any]
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(RuntimeError):
    """The API server refused a request: its HTTP status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass
class KubeConfig:
    """Where the API server is and how to prove who we are."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    namespace: str = "default"
    insecure: bool = False
    _tmp: list[str] = field(default_factory=list, repr=False)

    @classmethod
    def from_kubeconfig(cls, path: str | Path, context: str | None = None) -> KubeConfig:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        base = Path(path).parent
        name = context or doc.get("current-context")
        contexts = {c["name"]: c.get("context", {}) for c in doc.get("contexts") or []}
        if name not in contexts:
            raise ValueError(f"kubeconfig {path}: no context {name!r}; it has {sorted(contexts)}")
        ctx = contexts[name]
        clusters = {c["name"]: c.get("cluster", {}) for c in doc.get("clusters") or []}
        users = {u["name"]: u.get("user", {}) for u in doc.get("users") or []}
        cluster, user = clusters.get(ctx.get("cluster"), {}), users.get(ctx.get("user"), {})
        if not cluster.get("server"):
            raise ValueError(f"kubeconfig {path}: context {name!r} names no cluster with a server")
        cfg = cls(server=cluster["server"].rstrip("/"), namespace=ctx.get("namespace") or "default")
        cfg.insecure = bool(cluster.get("insecure-skip-tls-verify"))
        cfg.ca_file = cfg._file(cluster, "certificate-authority", base)
        cfg.cert_file = cfg._file(user, "client-certificate", base)
        cfg.key_file = cfg._file(user, "client-key", base)
        cfg.token = user.get("token")
        cfg.token_file = user.get("tokenFile")
        return cfg

    @classmethod
    def in_cluster(cls) -> KubeConfig:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ValueError("not in a cluster: KUBERNETES_SERVICE_HOST and _PORT are not set")
        ns_file = SA_DIR / "namespace"
        return cls(
            server=f"https://{host}:{port}",
            ca_file=str(SA_DIR / "ca.crt"),
            token_file=str(SA_DIR / "token"),  # re-read on each connection: the kubelet rotates it
            namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        )

    @classmethod
    def load(cls, kubeconfig: str | None = None) -> KubeConfig:
        """A kubeconfig path if given (or $KUBECONFIG), else the in-cluster service account."""
        path = kubeconfig or os.environ.get("KUBECONFIG")
        return cls.from_kubeconfig(path) if path else cls.in_cluster()

    def _file(self, section: Mapping[str, Any], key: str, base: Path) -> str | None:
        if section.get(f"{key}-data"):
            fd, name = tempfile.mkstemp(prefix="tessera-kube-")
            with os.fdopen(fd, "wb") as out:
                out.write(base64.b64decode(section[f"{key}-data"]))
            self._tmp.append(name)
            return name
        value = section.get(key)
        return str(base / value) if value else None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer(self) -> str | None:
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token


class Kube:
    """The API server: requests, lists, watches and pod logs (thread-safe, pooled)."""

    def __init__(self, config: KubeConfig, timeout: float = 30.0) -> None:
        self.config = config
        self.namespace = config.namespace
        self.http = httpx.Client(
            base_url=config.server,
            verify=config.ssl_context(),
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )

    def close(self) -> None:
        self.http.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.config.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    @staticmethod
    def _raise(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        raise KubeError(response.status_code, str(body.get("reason", "")), str(body.get("message", "")))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Obj:
        content = json.dumps(body).encode() if body is not None else None
        response = self.http.request(
            method,
            path,
            content=content,
            params={k: v for k, v in (params or {}).items() if v is not None},
            headers=self._headers(content_type if content is not None else None),
            timeout=httpx.Timeout(timeout, connect=10.0) if timeout else httpx.USE_CLIENT_DEFAULT,
        )
        self._raise(response)
        return response.json() if response.content else {}

    # verbs ------------------------------------------------------------------------------------

    def get(self, path: str, **params: Any) -> Obj:
        return self.request("GET", path, params=params)

    def list(
        self, path: str, label_selector: str | None = None, field_selector: str | None = None, **params: Any
    ) -> Obj:
        return self.request(
            "GET", path, params={"labelSelector": label_selector, "fieldSelector": field_selector, **params}
        )

    def create(self, path: str, body: Obj, dry_run: bool = False) -> Obj:
        return self.request("POST", path, body, params={"dryRun": "All" if dry_run else None})

    def delete(self, path: str, propagation: str | None = "Background", grace: int | None = None) -> Obj:
        body: Obj = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        return self.request("DELETE", path, body)

    def merge_patch(self, path: str, patch: Obj) -> Obj:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def apply(self, path: str, body: Obj, manager: str = "tessera", dry_run: bool = False) -> Obj:
        """Server-side apply of a whole object to its own path."""
        params = {"fieldManager": manager, "force": "true", "dryRun": "All" if dry_run else None}
        return self.request("PATCH", path, body, params=params, content_type="application/apply-patch+yaml")

    def bind(self, namespace: str, pod: str, node: str, annotations: dict[str, str] | None = None) -> Obj:
        """Bind a pod to a node through the Binding API (what a scheduler does). The API server copies
        the Binding's annotations onto the pod in the same write."""
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace, "annotations": annotations or {}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        return self.create(f"/api/v1/namespaces/{namespace}/pods/{pod}/binding", binding)

    # streams ----------------------------------------------------------------------------------

    def watch(
        self,
        path: str,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> Iterator[tuple[str, Obj]]:
        """Events after ``resource_version`` until the server ends the watch: (type, object).

        An ERROR event with status 410 raises KubeError(gone): the caller lists again."""
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        timeout = httpx.Timeout(timeout_seconds + 30.0, connect=10.0)
        query = {k: str(v) for k, v in params.items() if v is not None}
        with self.http.stream("GET", path, params=query, headers=self._headers(), timeout=timeout) as r:
            if not r.is_success:
                r.read()
                self._raise(r)
            for line in r.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type", ""), event.get("object") or {}
                if kind == "ERROR":
                    raise KubeError(int(obj.get("code", 500)), obj.get("reason", ""), obj.get("message", ""))
                yield kind, obj

    def pod_logs(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        follow: bool = False,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
        previous: bool = False,
    ) -> Iterator[bytes]:
        """A container's output through the pod log API (the kubelet serves it behind the API server)."""
        params = {
            "container": container,
            "follow": "true" if follow else None,
            "tailLines": tail_lines,
            "sinceSeconds": since_seconds,
            "previous": "true" if previous else None,
        }
        query = {k: v for k, v in params.items() if v is not None}
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        timeout = httpx.Timeout(None if follow else 60.0, connect=10.0)
        with self.http.stream("GET", path, params=query, headers=self._headers(), timeout=timeout) as r:
            if not r.is_success:
                r.read()
                self._raise(r)
            yield from r.iter_bytes()


def pod_path(namespace: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/pods"
    return f"{base}/{name}" if name else base

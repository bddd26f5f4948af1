"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver (TLS, RBAC, a
per-run CA and client certificates), kube-controller-manager (garbage collection, Deployments,
DaemonSets), kube-scheduler and KWOK's controller for nodes and pod lifecycles.

The programs come from ``scripts/k8s-testenv install`` (built once per machine into a cache dir
outside the repo). Every run gets its own directory, free ports and certificates; stopping kills
exactly the processes it started.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tessera.kube.client import Kube, KubeConfig, KubeError
from tests.e2e.cluster import wait_until

ROOT = Path(__file__).resolve().parents[2]
STAGES = Path(__file__).with_name("stages.yaml")
LOGS = """
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: every-pod
spec:
  logs:
  - containers: [task]
    logsFile: {path}
    follow: true
"""
CONTROLLERS = (
    "garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller,"
    "daemonset-controller,job-controller,serviceaccount-controller"
)


def bin_dir() -> Path | None:
    """The test control plane's programs, if ``scripts/k8s-testenv install`` has built them."""
    env = os.environ.get("TESSERA_K8S_BIN")
    if env:
        return Path(env)
    r = subprocess.run([str(ROOT / "scripts/k8s-testenv"), "path"], capture_output=True, text=True)
    return Path(r.stdout.strip()) if r.returncode == 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = [x509.ExtendedKeyUsageOID.SERVER_AUTH] if server else [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if server:
        sans: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("kubernetes.default.svc"),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def write_pki(d: Path) -> None:
    """This run's CA, the API server's serving cert, an admin client cert and the SA key pair."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = _key(), _name("tessera-test-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write_key(d / "ca.key", ca_key)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, subject, server in (
        ("apiserver", _name("kube-apiserver"), True),
        ("admin", _name("tessera-admin", "system:masters"), False),
    ):
        key = _key()
        cert = _cert(subject, key, ca_name, ca_key, server=server)
        _write_key(d / f"{name}.key", key)
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    sa = _key()
    _write_key(d / "sa.key", sa)
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig_text(server: str, pki: Path, user: str = "admin") -> str:
    return (
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {pki / 'ca.crt'}\n"
        f"users:\n- name: {user}\n  user:\n    client-certificate: {pki / f'{user}.crt'}\n"
        f"    client-key: {pki / f'{user}.key'}\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n"
    )


@dataclass
class LocalCluster:
    """One throwaway cluster. ``start()`` returns when the API server is ready and KWOK runs."""

    bin: Path
    scheduler: bool = True
    controller_manager: bool = True
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tk8s-", dir="/tmp")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_port: int = 0
    kube: Kube | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "admin.kubeconfig"

    @property
    def pod_log(self) -> Path:
        """What KWOK answers for every pod's log (the tests write it)."""
        return self.run_dir / "pod.log"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.run_dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def start(self, timeout: float = 120.0) -> LocalCluster:
        pki = self.run_dir / "pki"
        write_pki(pki)
        etcd_port, peer_port, self.api_port = free_port(), free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(self.bin / "etcd"),
                "--name=t",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=t=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                # the API server reaches KWOK's node servers (pod logs) as an admin client
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--endpoint-reconciler-type=none",
                "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000",
            ],
        )
        self.kubeconfig.write_text(kubeconfig_text(self.server, pki))
        self._wait_ready(timeout)
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0"]
        if self.controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    str(self.bin / "kube-controller-manager"),
                    *common,
                    f"--controllers={CONTROLLERS}",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--kube-api-qps=500",
                    "--kube-api-burst=1000",
                ],
            )
        if self.scheduler:
            self._spawn("kube-scheduler", [str(self.bin / "kube-scheduler"), *common, "--v=2"])
        # KWOK also plays the kubelet's server for the pod log API: the API server reaches it at the
        # node's address (127.0.0.1) and port, and it serves every pod's log from one file
        kwok_port = free_port()
        self.pod_log.write_text("")
        config = self.run_dir / "kwok.yaml"
        config.write_text(STAGES.read_text() + LOGS.format(path=self.pod_log))
        self._spawn(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=true",
                f"--config={config}",
                "--cidr=10.0.0.1/16",
                "--node-ip=127.0.0.1",
                f"--node-port={kwok_port}",
                f"--server-address=127.0.0.1:{kwok_port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
            ],
        )
        time.sleep(0.5)
        self._check_alive()
        return self

    def _wait_ready(self, timeout: float) -> None:
        self.kube = Kube(KubeConfig.from_kubeconfig(self.kubeconfig))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                r = self.kube.http.get("/readyz", headers=self.kube._headers())
                if r.status_code == 200:
                    self.kube.get("/api/v1/namespaces/default")
                    return
            except (httpx.HTTPError, KubeError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"kube-apiserver not ready in {timeout}s; logs in {self.run_dir}")

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.kube is not None:
            self.kube.close()
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3.0  # throwaway state: no need for a long graceful shutdown
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if not os.environ.get("TESSERA_KEEP_K8S"):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def restart_scheduler(self, qps: int, burst: int) -> None:
        """The default scheduler again, with its API client's rate limit raised (its default is 50
        requests/s, which caps how fast it can bind)."""
        proc = self.procs.pop("kube-scheduler", None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        config = self.run_dir / "scheduler.yaml"
        config.write_text(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
            f"clientConnection:\n  kubeconfig: {self.kubeconfig}\n  qps: {qps}\n  burst: {burst}\n"
            "leaderElection:\n  leaderElect: false\n"
        )
        self._spawn(
            "kube-scheduler", [str(self.bin / "kube-scheduler"), f"--config={config}", "--secure-port=0"]
        )

    # helpers ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        r = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r.stdout

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "HELM_CACHE_HOME": str(self.run_dir / "helm"),
        }
        env["HELM_CONFIG_HOME"] = env["HELM_DATA_HOME"] = env["HELM_CACHE_HOME"]
        r = subprocess.run(
            [str(self.bin / "helm"), *args], capture_output=True, text=True, env=env, timeout=180
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed ({r.returncode}): {r.stderr}\n{r.stdout}")
        return r

    def add_gpu_node(
        self,
        name: str,
        gpus: int = 8,
        product: str = "NVIDIA-H100-80GB-HBM3",
        memory_mib: int = 81559,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A KWOK node with GPUs, labelled as NVIDIA's GPU feature discovery labels them."""
        assert self.kube is not None
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "nvidia.com/gpu.product": product,
                    "nvidia.com/gpu.count": str(gpus),
                    "nvidia.com/gpu.memory": str(memory_mib),
                    **(labels or {}),
                },
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "256", "nvidia.com/gpu": str(gpus)},
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "256", "nvidia.com/gpu": str(gpus)},
            },
        }
        return self.kube.create("/api/v1/nodes", node)

    def wait_for(self, what: str, check: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
        return wait_until(check, timeout, every, what)

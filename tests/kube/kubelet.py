"""A fake kubelet that speaks the device plugin protocol (v1beta1) over real unix sockets.

It does what the kubelet's device manager does with a plugin: serves `v1beta1.Registration` on
`<dir>/kubelet.sock`, validates and records each registration, then dials the plugin's endpoint in
the same directory, asks for its options, and consumes ListAndWatch in a thread. Tests call Allocate
through it, and restart it (the kubelet removes the plugin sockets when it starts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from tessera.kube.deviceplugin import api_pb2, api_pb2_grpc

KUBELET_SOCKET = "kubelet.sock"
SUPPORTED_VERSIONS = ("v1beta1",)


class _Connection:
    """The kubelet's side of one registered plugin: a channel and its ListAndWatch consumer."""

    def __init__(self, kubelet: FakeKubelet, request: api_pb2.RegisterRequest) -> None:
        self.kubelet = kubelet
        self.request = request
        self.channel = grpc.insecure_channel(f"unix:{kubelet.dir / request.endpoint}")
        self.stub = api_pb2_grpc.DevicePluginStub(self.channel)
        self.options: api_pb2.DevicePluginOptions | None = None
        self._stream: Any = None
        self.thread = threading.Thread(target=self._run, name="fake-kubelet-listandwatch", daemon=True)

    def _run(self) -> None:
        try:
            self.options = self.stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=5)
            self._stream = self.stub.ListAndWatch(api_pb2.Empty())
            for response in self._stream:
                self.kubelet._got_devices(list(response.devices))
        except grpc.RpcError:
            pass  # the plugin went away, or we hung up
        finally:
            self.kubelet._stream_ended()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self.channel.close()
        self.thread.join(timeout=5)


class FakeKubelet(api_pb2_grpc.RegistrationServicer):
    """Registration server plus device-manager client, for one device plugin directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.socket_path = self.dir / KUBELET_SOCKET
        self.registrations: list[api_pb2.RegisterRequest] = []
        self.device_updates: list[list[api_pb2.Device]] = []
        self.streams_ended = 0
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None
        self._connection: _Connection | None = None

    # lifecycle

    def start(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)
        with self._cond:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def restart(self, clean: bool = True) -> None:
        """Stop, then start again; with `clean`, remove every socket in the directory as the kubelet does."""
        self.stop()
        if clean:
            for path in self.dir.glob("*.sock"):
                path.unlink(missing_ok=True)
        self.start()

    # the Registration service

    def Register(self, request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        if request.version not in SUPPORTED_VERSIONS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version!r}")
        if "/" in request.endpoint or not (self.dir / request.endpoint).exists():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no plugin socket {request.endpoint!r}")
        connection = _Connection(self, request)
        with self._cond:
            previous, self._connection = self._connection, connection
            self.registrations.append(request)
            self._cond.notify_all()
        if previous is not None:  # a plugin registering again replaces its old connection
            threading.Thread(target=previous.close, daemon=True).start()
        connection.thread.start()  # like the kubelet, dial back after answering
        return api_pb2.Empty()

    # what tests read and call

    def _got_devices(self, devices: list[api_pb2.Device]) -> None:
        with self._cond:
            self.device_updates.append(devices)
            self._cond.notify_all()

    def _stream_ended(self) -> None:
        with self._cond:
            self.streams_ended += 1
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[FakeKubelet], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate(self)` holds; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out: {len(self.registrations)} registrations, "
                        f"{len(self.device_updates)} device updates"
                    )
                self._cond.wait(left)

    def devices(self) -> dict[str, str]:
        """The latest device list from ListAndWatch: id -> health."""
        with self._cond:
            latest = self.device_updates[-1] if self.device_updates else []
            return {d.ID: d.health for d in latest}

    def options(self) -> api_pb2.DevicePluginOptions | None:
        with self._cond:
            return self._connection.options if self._connection is not None else None

    def allocate(self, *device_ids: Sequence[str], timeout: float = 5.0) -> api_pb2.AllocateResponse:
        """Allocate, one container request per argument, over the latest registered connection."""
        with self._cond:
            connection = self._connection
        if connection is None:
            raise AssertionError("no device plugin registered")
        request = api_pb2.AllocateRequest(
            container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids)) for ids in device_ids]
        )
        response: api_pb2.AllocateResponse = connection.stub.Allocate(request, timeout=timeout)
        return response

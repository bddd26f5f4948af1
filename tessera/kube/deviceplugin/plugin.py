"""The device plugin: a gRPC server on the kubelet's device plugin socket directory.

It advertises `tessera.io/slice` as virtual devices (`slots_per_gpu` per GPU, ids `<gpu-uuid>-s<k>`),
streams their health to the kubelet, and in Allocate hands the container the slices the control plane
wrote into the pod's binding (see `matching`). The kubelet removes plugin sockets when it restarts and
forgets its plugins, so the plugin watches kubelet.sock and, when it is re-created, serves afresh and
registers again (as NVIDIA's plugin does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from tessera.kube import names
from tessera.kube.deviceplugin import api_pb2, api_pb2_grpc
from tessera.kube.deviceplugin.matching import BindingError, PodBinding, container_grants, pick_pod
from tessera.kube.deviceplugin.pods import PodSource

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET = "kubelet.sock"
PLUGIN_SOCKET = "tessera-slice.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
# Tessera's scheduler does the real accounting: the slots only need to outnumber the slices a GPU holds
DEFAULT_SLOTS_PER_GPU = 16
REGISTER_TIMEOUT_S = 5.0


class AllocationError(Exception):
    """No pod on this node matches an Allocate call, or the matched pod cannot be handed out."""


def device_id(gpu_uuid: str, slot: int) -> str:
    """The id of a GPU's `slot`-th virtual slice device."""
    return f"{gpu_uuid}-s{slot}"


def _socket_identity(path: Path) -> tuple[int, int, int] | None:
    """Tells a re-created socket file from the old one (the inode alone may be reused)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class DevicePlugin(api_pb2_grpc.DevicePluginServicer):
    """The `tessera.io/slice` device plugin of one node: servicer, server and kubelet registration."""

    def __init__(
        self,
        node: str,
        gpus: Sequence[str],
        pods: PodSource,
        *,
        slots_per_gpu: int = DEFAULT_SLOTS_PER_GPU,
        plugin_dir: Path = DEVICE_PLUGIN_DIR,
        socket_name: str = PLUGIN_SOCKET,
        poll_interval_s: float = 1.0,
    ) -> None:
        if slots_per_gpu < 1:
            raise ValueError("slots_per_gpu must be at least 1")
        self.node = node
        self.gpus = list(gpus)
        self.slots_per_gpu = slots_per_gpu
        self.pods = pods
        self.plugin_dir = Path(plugin_dir)
        self.socket_path = self.plugin_dir / socket_name
        self.kubelet_socket = self.plugin_dir / KUBELET_SOCKET
        self.poll_interval_s = poll_interval_s
        # the device list: ListAndWatch streams wait on _changed for a new version or a new server
        self._changed = threading.Condition()
        self._healthy = dict.fromkeys(self.gpus, True)
        self._version = 0
        self._generation = 0
        # Allocate's node lock, and the pods handed out whose "allocated" mark the source may not show yet
        self._allocate_lock = threading.Lock()
        self._handed: set[str] = set()
        # start, stop and the kubelet watcher's restarts
        self._lifecycle = threading.Lock()
        self._server: grpc.Server | None = None
        self._served_for: tuple[int, int, int] | None = None
        self._registered_with: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # lifecycle

    def start(self) -> None:
        """Serve on the plugin socket, register with the kubelet if it is up, and watch it."""
        with self._lifecycle:
            if self._server is not None:
                raise RuntimeError("the device plugin is already running")
            self._stop.clear()
            self._serve()
        self.check_kubelet()
        self._watcher = threading.Thread(target=self._watch, name="tessera-deviceplugin-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """End the ListAndWatch streams, stop serving and remove the plugin socket."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        with self._lifecycle:
            self._shutdown()
            self._served_for = self._registered_with = None

    def check_kubelet(self) -> None:
        """Serve afresh and register again if the kubelet restarted (or first came up) since last time.

        The watcher calls this every `poll_interval_s`; a failed registration is retried next time.
        """
        with self._lifecycle:
            if self._stop.is_set() or self._server is None:
                return
            kubelet = _socket_identity(self.kubelet_socket)
            if kubelet is None:  # the kubelet is down (or restarting): wait for its socket
                return
            if not self.socket_path.exists() or (
                self._served_for is not None and kubelet != self._served_for
            ):
                log.info("the kubelet restarted: serving %s afresh", self.socket_path)
                self._shutdown()
                self._serve()
                self._registered_with = None
            self._served_for = kubelet
            if self._registered_with == kubelet:
                return
            try:
                self._register()
            except grpc.RpcError as e:
                log.warning("registering %s with the kubelet failed (retrying): %s", names.SLICE_RESOURCE, e)
                return
            self._registered_with = kubelet
            log.info("registered %s with the kubelet at %s", names.SLICE_RESOURCE, self.kubelet_socket)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_kubelet()
            except Exception:  # the watcher must outlive one bad round
                log.exception("checking the kubelet failed")

    def _serve(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="tessera-dp"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        server.start()
        self._server = server

    def _shutdown(self) -> None:
        with self._changed:  # a new generation ends the streams of the old server
            self._generation += 1
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace=1.0).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    def _register(self) -> None:
        request = api_pb2.RegisterRequest(
            version=API_VERSION,
            endpoint=self.socket_path.name,
            resource_name=names.SLICE_RESOURCE,
            options=api_pb2.DevicePluginOptions(
                pre_start_required=False, get_preferred_allocation_available=False
            ),
        )
        with grpc.insecure_channel(f"unix:{self.kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(request, timeout=REGISTER_TIMEOUT_S)

    # devices

    def set_health(self, gpu_uuid: str, healthy: bool) -> None:
        """Mark a GPU's slice devices Healthy or Unhealthy; the kubelet hears of a change at once."""
        with self._changed:
            if gpu_uuid not in self._healthy:
                raise KeyError(f"no GPU {gpu_uuid} on node {self.node}; known: {', '.join(self.gpus)}")
            if self._healthy[gpu_uuid] == healthy:
                return
            self._healthy[gpu_uuid] = healthy
            self._version += 1
            self._changed.notify_all()

    def devices(self) -> list[api_pb2.Device]:
        """The virtual slice devices as ListAndWatch sends them."""
        with self._changed:
            return self._devices()

    def _devices(self) -> list[api_pb2.Device]:
        return [
            api_pb2.Device(ID=device_id(gpu, k), health=HEALTHY if self._healthy[gpu] else UNHEALTHY)
            for gpu in self.gpus
            for k in range(self.slots_per_gpu)
        ]

    # the DevicePlugin service

    def GetDevicePluginOptions(self, request: api_pb2.Empty, context: Any) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=False)

    def ListAndWatch(self, request: api_pb2.Empty, context: Any) -> Iterator[api_pb2.ListAndWatchResponse]:
        def wake() -> None:
            with self._changed:
                self._changed.notify_all()

        context.add_callback(wake)  # the kubelet hung up: stop waiting
        with self._changed:
            generation = self._generation
            version = self._version
            devices = self._devices()
        while True:
            yield api_pb2.ListAndWatchResponse(devices=devices)
            with self._changed:
                while self._version == version and self._generation == generation and context.is_active():
                    self._changed.wait()
                if self._generation != generation or not context.is_active():
                    return
                version = self._version
                devices = self._devices()

    def GetPreferredAllocation(
        self, request: api_pb2.PreferredAllocationRequest, context: Any
    ) -> api_pb2.PreferredAllocationResponse:
        # not advertised (get_preferred_allocation_available=False): any devices will do
        return api_pb2.PreferredAllocationResponse(
            container_responses=[
                api_pb2.ContainerPreferredAllocationResponse(
                    deviceIDs=list(r.must_include_deviceIDs)
                    + [d for d in r.available_deviceIDs if d not in r.must_include_deviceIDs][
                        : max(0, r.allocation_size - len(r.must_include_deviceIDs))
                    ]
                )
                for r in request.container_requests
            ]
        )

    def Allocate(self, request: api_pb2.AllocateRequest, context: Any) -> api_pb2.AllocateResponse:
        try:
            return self.allocate([len(c.devices_ids) for c in request.container_requests])
        except AllocationError as e:
            log.warning("Allocate: %s", e)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise  # abort raises; this keeps the type checker and a fake context honest

    def PreStartContainer(
        self, request: api_pb2.PreStartContainerRequest, context: Any
    ) -> api_pb2.PreStartContainerResponse:
        return api_pb2.PreStartContainerResponse()

    def allocate(self, device_counts: Sequence[int]) -> api_pb2.AllocateResponse:
        """Match the oldest "allocating" pod asking for sum(device_counts) slices, mark it allocated and
        answer with its slices' env, one response per container request; raises AllocationError."""
        count = sum(device_counts)
        with self._allocate_lock:
            pods = self.pods.allocating_pods(self.node)
            self._handed &= {p.uid for p in pods}  # forget pods the source now shows as allocated
            pod = pick_pod(pods, count, exclude=self._handed)
            if pod is None:
                raise AllocationError(
                    f"no pod on node {self.node} is waiting for {count} {names.SLICE_RESOURCE} "
                    f"({names.ALLOCATION}={names.ALLOCATING}): {len(pods)} waiting, none with that count"
                )
            try:
                binding = PodBinding.from_annotations(pod.annotations)
            except BindingError as e:
                raise AllocationError(f"pod {pod.namespace}/{pod.name}: {e}") from e
            try:
                self.pods.mark_allocated(pod.namespace, pod.name)
            except Exception as e:
                raise AllocationError(
                    f"pod {pod.namespace}/{pod.name}: marking it allocated failed: {e}"
                ) from e
            self._handed.add(pod.uid)
        log.info("Allocate: %d %s for pod %s/%s", count, names.SLICE_RESOURCE, pod.namespace, pod.name)
        return api_pb2.AllocateResponse(
            container_responses=[
                api_pb2.ContainerAllocateResponse(envs=g.envs, annotations=g.annotations)
                for g in container_grants(binding, device_counts)
            ]
        )

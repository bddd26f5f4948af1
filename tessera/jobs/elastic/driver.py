"""The elastic job's driver: the user's ``train(config)`` under Ray Train V2's TorchTrainer.

Runs on rank 0's slice, connected to the job's own Ray head. Tessera owns the
trainer, so it owns scaling (``num_workers=(min, max)``, one ``tessera_slice``
per worker), failure handling (``FailureConfig``; reclaims are drained as
preemptions and counted apart) and timeouts (the worker-group start timeout,
60 s in Ray, is the job's ``start_timeout``).

    python -m tessera.jobs.elastic.driver   (environment as node.py sets it)
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tessera.api.jobs import ElasticSpec
from tessera.jobs.elastic import entry, events
from tessera.jobs.elastic.node import real_gpus

log = logging.getLogger("tessera.elastic")
SLICE_RESOURCE = "tessera_slice"
# Ray Train reads these in the driver and passes them on to its controller
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
TUNING_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",  # Ray: 2
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",  # Ray: 5; sees a drained (reclaimed) node sooner
}
COORDINATOR_TICK_S = 1  # Ray's: 20 s


def storage(url: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for RunConfig: a local dir as is, any fsspec URL wrapped."""
    if "://" not in url or url.startswith("file://"):
        path = url.removeprefix("file://")
        Path(path).mkdir(parents=True, exist_ok=True)
        return path, None
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(url)
    return path, PyFileSystem(FSSpecHandler(fs))


def _callbacks(events_path: Path) -> list[Any]:
    from ray.train import UserCallback
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class Progress(UserCallback):
        """Each report: the step, the metrics and how many workers reported (progress, for benches)."""

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = metrics[0] if metrics else {}
            numbers = {k: float(v) for k, v in first.items() if isinstance(v, int | float)}
            step = first.get("step")
            events.append(
                events_path,
                "report",
                workers=len(metrics),
                step=int(step) if isinstance(step, int | float) else None,
                metrics=numbers,
                checkpoint=checkpoint is not None,
            )

    class Lifecycle(WorkerGroupCallback, ControllerCallback):
        """A worker group training (its size), and each failure Ray Train handles (its kind)."""

        def after_worker_group_training_start(self, worker_group: Any) -> None:
            events.append(events_path, "running", workers=len(worker_group.get_workers()))

        def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
            error = getattr(current_state, "training_failed_error", None)
            if error is None or type(current_state).__name__ == "ErroredState":
                return
            events.append(events_path, "failed", source=failure_source(error), error=str(error)[:500])

    return [Progress(), Lifecycle()]


def failure_source(error: Any) -> str:
    """What Ray Train charges a failure to: preemption (a drained node: a reclaim), controller (e.g. a
    worker group that did not start in time), or worker (the job's own failure budget)."""
    try:
        from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure
        from ray.train.v2.api.exceptions import ControllerError

        if _is_preemption_failure(error):
            return "preemption"
        if isinstance(error, ControllerError):
            return "controller"
    except Exception:  # Ray internals moved: count it as the job's
        pass
    return "worker"


def fast_coordinator() -> bool:
    """Ray Train's elastic policy sees nodes only through the detached AutoscalingCoordinator actor,
    which refreshes its node list every 20 s and counts draining nodes: a grant waits up to 20 s
    to be noticed, and after a reclaim Train asks for the drained node's worker again and waits out
    the start timeout. This starts that actor first, refreshing every second and leaving draining
    nodes out; Train reuses it by name. It builds on Ray internals (2.60): if they changed, Ray's
    own coordinator is used and resizes are just slower."""
    try:
        import ray
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            _AutoscalingCoordinatorActor,
        )
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        def live_nodes() -> list[dict[str, Any]]:
            draining = ray._private.state.state.get_draining_nodes() or {}
            return [n for n in ray.nodes() if n["NodeID"] not in draining]

        class Coordinator(_AutoscalingCoordinatorActor):
            TICK_INTERVAL_S = COORDINATOR_TICK_S

            def __init__(self) -> None:
                super().__init__(get_cluster_nodes=live_nodes)

        actor: Any = (
            ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Coordinator)
            .options(
                name="AutoscalingCoordinator",
                namespace="AutoscalingCoordinator",
                get_if_exists=True,
                lifetime="detached",
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=False
                ),
            )
            .remote()
        )
        ray.get(actor.get_reserved_resources.remote("tessera-warmup"), timeout=30)
        return True
    except Exception:
        log.warning("could not start the fast AutoscalingCoordinator; using Ray's", exc_info=True)
        return False


def run(spec: ElasticSpec, name: str, address: str, events_path: Path, use_gpu: bool) -> int:
    if os.environ.get("TESSERA_RAY_DEFAULTS") != "1":
        os.environ[START_TIMEOUT_ENV] = str(spec.start_timeout.total_seconds())
        for key, value in TUNING_ENV.items():
            os.environ.setdefault(key, value)
    import ray
    from ray.train.torch import TorchConfig, TorchTrainer

    # V2 classes at run time (Ray Train V2 is the default); typed as V1's, so reached untyped
    config: Any = importlib.import_module("ray.train")

    try:
        train = entry.load(spec.entry, Path.cwd())
    except entry.EntryError as exc:
        sys.stderr.write(f"tessera: {exc}\n")
        return 2
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    if os.environ.get("TESSERA_RAY_DEFAULTS") != "1":  # benchmarks compare against Ray's defaults
        fast_coordinator()
    path, filesystem = storage(spec.storage or str(Path.cwd() / "checkpoints"))
    workers: int | tuple[int, int] = (
        spec.min_workers if spec.min_workers == spec.max_workers else (spec.min_workers, spec.max_workers)
    )
    trainer = TorchTrainer(
        train,
        train_loop_config=spec.config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=config.ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={SLICE_RESOURCE: 1, "CPU": 0, **({"GPU": 1} if use_gpu else {})},
            **(
                {}
                if os.environ.get("TESSERA_RAY_DEFAULTS") == "1"
                else {"elastic_resize_monitor_interval_s": spec.resize_interval.total_seconds()}
            ),
        ),
        run_config=config.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=config.FailureConfig(max_failures=spec.max_failures, max_preemption_failures=-1),
            checkpoint_config=config.CheckpointConfig(num_to_keep=2),
            callbacks=_callbacks(events_path),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        sys.stderr.write(f"tessera: training failed: {exc}\n")
        return 1
    finally:
        ray.shutdown()
    sys.stdout.write(f"tessera: training finished; metrics: {result.metrics}\n")
    return 0


def main() -> int:
    spec = ElasticSpec.model_validate_json(os.environ["TESSERA_ELASTIC"])
    address = os.environ["TESSERA_RAY_ADDRESS"]
    name = f"{os.environ.get('TESSERA_JOB_NAME', 'job')}-{os.environ.get('TESSERA_JOB_ID', '')[:8]}"
    events_path = Path(os.environ.get("TESSERA_ELASTIC_EVENTS", events.FILE))
    use_gpu = bool(real_gpus())
    return run(spec, name, address, events_path, use_gpu)


if __name__ == "__main__":
    raise SystemExit(main())

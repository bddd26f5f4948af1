"""What the node adds to a task's environment when it starts it: its device and its tiers' settings.

The launch contract (`tessera.jobs.launch`) carries no slice limits. The node adds only what the
device and the tiers need: the simulated device's location (``TESSERA_SIM_DEVICE_DIR``), MPS or
HAMi-core settings where those tiers run (enforced by the MPS server or the preloaded library, not by
the task), and the cooperative torch hook, whose fractions sit in a file in the task's directory.
"""

from __future__ import annotations

from pathlib import Path

from tessera.gpushare import cooperative
from tessera.gpushare.device import DeviceBackend
from tessera.gpushare.enforce import Enforcer
from tessera.gpushare.tiers import TaskSlice, tier_env
from tessera.jobs.launch import TaskLaunch


def task_env(
    launch: TaskLaunch,
    device: DeviceBackend | None,
    enforcer: Enforcer,
    task_dir: Path,
    env: dict[str, str],
) -> dict[str, str]:
    """Variables to add to `env` (the task's environment so far) for `launch`."""
    added: dict[str, str] = dict(device.workload_env()) if device is not None else {}
    slices = [a for a in launch.slices if a.gpu_uuid]
    if not slices:
        return added
    task_slices = [
        TaskSlice(
            tiers=enforcer.tiers(a.gpu_uuid or ""),
            mig_instance=a.mig_instance is not None,
            memory_mib=a.memory_mib,
            compute_pct=a.compute_pct,
        )
        for a in slices
    ]
    added.update(tier_env(task_slices, enforcer.node_probe, env))
    if not any(a.mig_instance for a in slices):
        limits = []
        for a in slices:
            gpu = enforcer.gpu(a.gpu_uuid or "")
            limits.append((a.memory_mib, gpu.memory_mib if gpu is not None else a.memory_mib))
        added.update(cooperative.install(task_dir, limits, env))
    return added

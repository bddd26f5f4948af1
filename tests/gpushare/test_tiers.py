"""The tier probe and the cooperative torch hook (with a stand-in torch: there is no GPU here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tessera.gpushare import cooperative
from tessera.gpushare.tiers import (
    GpuTiers,
    NodeProbe,
    TaskSlice,
    gpu_tiers,
    probe_node,
    slice_tier,
    tier_env,
)


def test_probe_finds_mps_hami_and_cgroup_v2_by_reading_only(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "42").mkdir(parents=True)
    (proc / "42" / "comm").write_text("bash\n")
    lib = tmp_path / "libvgpu.so"
    bare = probe_node(
        environ={"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipes")},
        proc=proc,
        hami_libraries=[lib],
        cgroup_marker=tmp_path / "cgroup.controllers",
    )
    assert bare == NodeProbe(mps=False, hami_library=None, cgroup_v2=False)
    (proc / "43").mkdir()
    (proc / "43" / "comm").write_text("nvidia-cuda-mps\n")  # the control daemon (comm is cut at 15)
    lib.write_bytes(b"\x7fELF")
    (tmp_path / "cgroup.controllers").write_text("memory\n")
    found = probe_node(
        environ={}, proc=proc, hami_libraries=[lib], cgroup_marker=tmp_path / "cgroup.controllers"
    )
    assert found == NodeProbe(mps=True, hami_library=str(lib), cgroup_v2=True)
    (tmp_path / "pipes").mkdir()
    (tmp_path / "pipes" / "control").touch()  # a pipe directory with the daemon's control pipe
    piped = probe_node(environ={"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipes")}, proc=tmp_path / "none")
    assert piped.mps


def test_gpu_tiers_never_claim_more_than_the_gpu_offers() -> None:
    node = NodeProbe(mps=True, hami_library="/usr/local/vgpu/libvgpu.so", cgroup_v2=True)
    plain = gpu_tiers(mig_mode=False, node=NodeProbe(), driver_version="550.54", driver_limits_supported=True)
    assert plain.names == ["watchdog", "cooperative"] and plain.best == "watchdog"
    new = gpu_tiers(mig_mode=False, node=node, driver_version="615.1", driver_limits_supported=True)
    assert new.names == ["driver", "mps", "hami", "watchdog", "cooperative"]
    old = gpu_tiers(mig_mode=False, node=node, driver_version="570.1", driver_limits_supported=True)
    assert "driver" not in old.names
    mig = gpu_tiers(mig_mode=True, node=node, driver_version="570.1", driver_limits_supported=False)
    assert mig.names == ["mig", "watchdog", "cooperative"]  # MPS/HAMi share whole GPUs, not instances


def test_slice_tiers_and_the_settings_a_task_gets() -> None:
    mps = GpuTiers(mps=True)
    assert slice_tier(GpuTiers(mig=True), mig_instance=True, throttle=True).name == "mig"
    assert slice_tier(mps, mig_instance=False, throttle=True).compute == "mps"
    watchdog = slice_tier(GpuTiers(), mig_instance=False, throttle=True)
    assert (watchdog.name, watchdog.compute, watchdog.cooperative) == ("watchdog", "throttle", True)
    assert slice_tier(GpuTiers(), mig_instance=False, throttle=False).compute == "measure"
    node = NodeProbe(mps=True, hami_library="/opt/libvgpu.so")
    two = [TaskSlice(mps, False, 4096, 30), TaskSlice(mps, False, 2048, 50)]
    assert tier_env(two, node, {}) == {
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4096M,1=2048M",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
    }
    hami = [TaskSlice(GpuTiers(hami=True), False, 4096, 25)]
    assert tier_env(hami, node, {"LD_PRELOAD": "/x.so"}) == {
        "LD_PRELOAD": "/opt/libvgpu.so:/x.so",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "4096m",
        "CUDA_DEVICE_SM_LIMIT": "25",
    }
    # the simulated device and plain GPUs: nothing about the slice's limits in the environment
    assert tier_env([TaskSlice(GpuTiers(), False, 4096, 25)], NodeProbe(), {}) == {}
    assert tier_env([TaskSlice(GpuTiers(mig=True), True, 4096, 25)], node, {}) == {}


FAKE_TORCH_CUDA = """
import json, os
_initialized = False
_queued = []
def is_initialized(): return _initialized
def _lazy_call(fn): _queued.append(fn)
def device_count(): return 2
def set_per_process_memory_fraction(fraction, device=None):
    with open(os.environ["FAKE_TORCH_LOG"], "a") as f:
        f.write(json.dumps([fraction, device]) + "\\n")
def init():
    global _initialized
    _initialized = True
    for fn in _queued:
        fn()
"""


def _run(tmp_path: Path, code: str, hooked: bool = True) -> tuple[str, list[list[float]]]:
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True, exist_ok=True)
    (fake / "torch" / "__init__.py").write_text("from . import cuda\n")
    (fake / "torch" / "cuda.py").write_text(FAKE_TORCH_CUDA)
    task_dir = tmp_path / "task"
    task_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONPATH"] = str(fake)
    if hooked:
        env.update(cooperative.install(task_dir, [(8192, 81920), (100_000, 81920)], env))
    env["FAKE_TORCH_LOG"] = str(log)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done.stdout.strip(), calls


def test_the_hook_caps_torch_once_cuda_starts_and_only_in_tasks_that_import_it(tmp_path: Path) -> None:
    out, calls = _run(tmp_path, "import sys; print('torch' in sys.modules)")
    assert (out, calls) == ("False", [])  # a task without torch never loads it
    out, calls = _run(tmp_path, "import torch; print(len(torch.cuda._queued))")
    assert (out, calls) == ("1", [])  # queued, not run: importing torch must not initialise CUDA
    out, calls = _run(tmp_path, "import torch; torch.cuda.init()")
    assert calls == [[cooperative.fraction(8192, 81920), 0], [1.0, 1]]
    assert 0 < calls[0][0] < 8192 / 81920  # below the slice: torch's clean OOM comes first
    _, unhooked = _run(tmp_path, "import torch; torch.cuda.init()", hooked=False)
    assert unhooked == []


def test_the_hook_chains_to_the_sitecustomize_it_shadows(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins; builtins.OTHER_SITE = True\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env.update(cooperative.install(tmp_path, [(1024, 2048)], {"PYTHONPATH": str(other)}))
    done = subprocess.run(
        [sys.executable, "-c", "import builtins; print(getattr(builtins, 'OTHER_SITE', False))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "True", done.stderr

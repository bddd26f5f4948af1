"""The reference workload as real processes on the simulated device.

Timing bounds are loose on purpose: the machine is shared and noisy. What is asserted is the shape
(two full-time processes split the GPU, a 30 % process measures about 30 %), not precision.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.gpushare import burn
from tessera.gpushare.simhelper import SimGpu, SimOutOfMemory
from tessera.gpushare.simulated import SimulatedBackend


@pytest.fixture
def sim(tmp_path: Path) -> SimulatedBackend:
    return SimulatedBackend("2xT4-16GB", state_dir=tmp_path / "sim", node="n1")


class Burns:
    """Burn processes started by one test, stopped (by their own pids) when it ends."""

    def __init__(self, sim: SimulatedBackend) -> None:
        self.sim = sim
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, gpu: str, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        env = {**os.environ, **self.sim.workload_env(), "CUDA_VISIBLE_DEVICES": gpu}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tessera.gpushare.burn", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["pid"] == proc.pid
        return proc, ready

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def burns(sim: SimulatedBackend) -> Iterator[Burns]:
    b = Burns(sim)
    yield b
    b.stop_all()


def test_two_full_time_burns_share_one_gpu(sim: SimulatedBackend, burns: Burns) -> None:
    gpu = "SIM-n1-0"
    a, ready_a = burns.start(gpu, "--memory", "512Mi", "--compute", "100", "--seconds", "4")
    b, ready_b = burns.start(gpu, "--memory", "1Gi", "--compute", "100", "--seconds", "4")
    assert (ready_a["engine"], ready_a["gpu"], ready_a["memory_mib"]) == ("sim", gpu, 512)
    assert {(p.pid, p.used_mib) for p in sim.processes(gpu)} == {(a.pid, 512), (b.pid, 1024)}
    time.sleep(0.5)
    since = time.time()
    time.sleep(1.0)
    samples = sim.process_utilization(gpu, since).by_pid()
    device = sim.device_utilization(gpu)
    share_a, share_b = samples[a.pid].sm_pct, samples[b.pid].sm_pct
    assert 25 <= share_a <= 75 and 25 <= share_b <= 75, (share_a, share_b)
    assert device >= 70
    assert abs(share_a + share_b - device) <= 20, (share_a, share_b, device)
    # SIGKILL: no chance to clean up, yet its memory disappears, as the driver frees it at exit.
    a.kill()
    a.wait()
    assert [(p.pid, p.used_mib) for p in sim.processes(gpu)] == [(b.pid, 1024)]
    # SIGTERM: a clean exit, status 0, reported in the last line.
    b.send_signal(signal.SIGTERM)
    out, _ = b.communicate(timeout=10)
    assert b.returncode == 0
    assert json.loads(out.splitlines()[-1])["reason"] == "SIGTERM"
    assert sim.processes(gpu) == []


def test_a_thirty_percent_burn_measures_about_thirty(sim: SimulatedBackend, burns: Burns) -> None:
    gpu = "SIM-n1-1"
    proc, _ = burns.start(gpu, "--memory", "2Gi", "--compute", "30", "--seconds", "2.5", "--progress", "0.5")
    time.sleep(0.4)
    since = time.time()
    time.sleep(1.5)
    (sample,) = sim.process_utilization(gpu, since).samples
    device = sim.device_utilization(gpu)
    assert sample.pid == proc.pid and 15 <= sample.sm_pct <= 45, sample
    assert 15 <= device <= 45, device
    assert [p.used_mib for p in sim.processes(gpu)] == [2048]
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 2 and all(0.1 <= e["busy_fraction"] <= 0.5 for e in progress), progress
    assert events[-1]["event"] == "done" and events[-1]["reason"] == "time"
    assert 0.15 <= events[-1]["busy_fraction"] <= 0.45


def test_burn_past_the_gpu_memory_fails_cleanly(sim: SimulatedBackend, burns: Burns) -> None:
    gpu = "SIM-n1-0"
    holder, _ = burns.start(gpu, "--memory", "12Gi", "--compute", "0")
    env = {**os.environ, **sim.workload_env(), "CUDA_VISIBLE_DEVICES": gpu}
    late = subprocess.run(
        [sys.executable, "-m", "tessera.gpushare.burn", "--memory", "8Gi", "--seconds", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert late.returncode == 1 and "out of memory" in late.stderr and late.stdout == ""
    with SimGpu(sim.state_dir, gpu) as mine:
        mine.allocate(4096)  # 16 GiB - 12 GiB held by the other process
        with pytest.raises(SimOutOfMemory):
            mine.allocate(1)
    assert [(p.pid, p.used_mib) for p in sim.processes(gpu)] == [(holder.pid, 12288)]


def test_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in [
        (["--compute", "150"], "--compute"),
        (["--memory", "lots"], "--memory"),
        (["--seconds", "-1"], "--seconds"),
        (["--period-ms", "0"], "--period-ms"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            burn.main(args)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("sim", "TESSERA_SIM_DEVICE_DIR is not set"),
        pytest.param(
            "torch",
            "torch with CUDA",
            marks=pytest.mark.skipif(
                _cuda_available(),
                reason="torch with CUDA works here; this case needs a machine without it",
            ),
        ),
    ],
)
def test_without_a_device_it_says_so(device: str, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TESSERA_SIM_DEVICE_DIR"}
    done = subprocess.run(
        [sys.executable, "-m", "tessera.gpushare.burn", "--device", device, "--seconds", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and message in done.stderr and done.stdout == "", done

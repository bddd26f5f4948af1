"""The node's inventory comes from its device: simulated, NVML, or none (never an error)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tessera.gpushare.device import DeviceError, DeviceInventory
from tessera.node.inventory import SIM_DEVICE_DIR, detect, open_device


def test_simulated_gpus_come_from_the_simulated_device(tmp_path: Path) -> None:
    device = open_device("n1", tmp_path, "2xT4-16GB")
    assert device is not None and device.simulated
    inventory = detect(device)
    assert inventory.simulated and [(g.uuid, g.memory_mib, g.simulated) for g in inventory.gpus] == [
        ("SIM-n1-0", 16384, True),
        ("SIM-n1-1", 16384, True),
    ]
    assert device.workload_env() == {"TESSERA_SIM_DEVICE_DIR": str(tmp_path / SIM_DEVICE_DIR)}
    with pytest.raises(ValueError, match="simulate_gpus"):
        open_device("n1", tmp_path, "two T4s")


@pytest.mark.skipif(
    importlib.util.find_spec("pynvml") is not None, reason="the NVML binding is installed here"
)
def test_without_nvml_a_node_has_no_gpus(tmp_path: Path) -> None:
    assert open_device("n1", tmp_path) is None
    assert detect(None).gpus == [] and not detect(None).simulated


class Unreadable:
    kind = "nvml"
    simulated = False

    def inventory(self) -> DeviceInventory:
        raise DeviceError("NVML: Unknown Error")


def test_a_device_that_cannot_be_read_registers_no_gpus(caplog: pytest.LogCaptureFixture) -> None:
    assert detect(Unreadable()).gpus == []  # type: ignore[arg-type]
    assert "cannot read the GPUs" in caplog.text

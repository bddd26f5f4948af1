"""`scripts/gpu-check --simulated`: the simulated twin of the real-GPU check runs clean."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"
CHECKS = {
    "inventory",
    "memory-watchdog",
    "cooperative-oom",
    "shares-watchdog-throttle",
    "shares-mps",
    "overhead",
}
# the real-GPU-only tiers: skipped on the simulated device, with the reason
MAY_SKIP = {"shares-mps"}


def test_the_simulated_gpu_check_passes(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_") and k != "OUT"}
    done = subprocess.run(
        [str(SCRIPT), "--simulated", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| check | result |" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["mode"] == "simulated"
    checks = {c["name"]: c for c in doc["checks"]}
    assert set(checks) == CHECKS
    for name, check in checks.items():
        if name in MAY_SKIP and check["result"] == "SKIP":
            assert check["reason"], name
        else:
            assert check["result"] == "PASS", check

    memory = checks["memory-watchdog"]["figures"]
    assert memory["greedy_rc"] == 0 and memory["stubborn_rc"] == -9
    # SIGKILL only once the grace period is over
    assert memory["stubborn_exit_after_term_ms"] >= 1000 * memory["grace_s"] - 300

    coop = checks["cooperative-oom"]["figures"]
    assert coop["child_rc"] == 0 and 0 < coop["allocated_mib"] < coop["slice_mib"]

    shares = checks["shares-watchdog-throttle"]["figures"]
    low, high = shares["achieved_pct"]
    assert sum(shares["achieved_pct"]) <= 105
    assert high > low > 0

    overhead = checks["overhead"]["figures"]
    assert overhead["processes_attributed"] == 1 and overhead["mean_cpu_us"] > 0

"""The cooperative tier: a start-up hook that caps torch's allocator at the slice's memory.

A task gets this directory first on its ``PYTHONPATH``; Python imports the ``sitecustomize`` in it
at start-up, which only installs an import hook: nothing happens unless the task imports torch. When it
does, the hook calls ``torch.cuda.set_per_process_memory_fraction`` for each visible GPU (once CUDA is
initialised, never initialising it itself), so that the task's allocations fail with a clean
``torch.cuda.OutOfMemoryError`` a little before the node's watchdog would stop the task. The
fractions come from a file the node writes in the task's directory, named by ``$TESSERA_COOPERATIVE_FILE``.

The hook is a courtesy to the task, never the enforcement: a task can always undo it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent
CONFIG_ENV = "TESSERA_COOPERATIVE_FILE"
CONFIG_FILE = "cooperative.json"
# what a CUDA context and the allocator's own bookkeeping take on top of torch's tensors, which the
# watchdog counts and torch's fraction does not
CONTEXT_RESERVE_MIB = 512


def fraction(limit_mib: int, gpu_memory_mib: int) -> float:
    """The share of the GPU torch may cache: the slice less a context's worth, at least half of it."""
    if gpu_memory_mib <= 0:
        return 1.0
    usable = max(limit_mib - CONTEXT_RESERVE_MIB, limit_mib // 2)
    return round(min(max(usable / gpu_memory_mib, 0.0), 1.0), 6)


def install(task_dir: Path, limits: Sequence[tuple[int, int]], base_env: dict[str, str]) -> dict[str, str]:
    """Write the task's fractions ((limit, GPU memory) per visible GPU); returns the env to add."""
    path = task_dir / CONFIG_FILE
    doc = {"fractions": {str(i): fraction(limit, total) for i, (limit, total) in enumerate(limits)}}
    path.write_text(json.dumps(doc))
    current = base_env.get("PYTHONPATH")
    return {
        "PYTHONPATH": f"{HOOK_DIR}:{current}" if current else str(HOOK_DIR),
        CONFIG_ENV: str(path),
    }

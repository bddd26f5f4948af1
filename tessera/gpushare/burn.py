"""The reference workload: hold GPU memory and keep the GPU busy at a duty cycle.

    python -m tessera.gpushare.burn --memory 6Gi --compute 30 --seconds 30 --progress 1

Every period (20 ms by default, short enough for a 100 ms sampler to see the duty cycle) it runs
kernels for `compute` percent of the period and idles the rest. When another process holds the GPU,
waiting does not count as busy and the schedule is not caught up afterwards: two processes at 100 %
get about half of the GPU each. It runs for `--seconds`, or until SIGTERM/SIGINT, and exits cleanly
(status 0) either way.

On a real GPU (torch importable, CUDA available) the memory is one tensor and the kernels are
matmuls; the CUDA context's own memory comes on top, as NVML reports it. Otherwise it runs on the
simulated device through `tessera.gpushare.simhelper`, which is also chosen whenever
``$TESSERA_SIM_DEVICE_DIR`` is set (a simulated node), without importing torch.

Standard output carries JSON lines: ``ready`` once the memory is held, ``progress`` every
`--progress` seconds (the busy fraction achieved in that interval and overall), ``done`` at exit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

from tessera.api.quantities import MEMORY_FORM, QuantityError, parse_memory_mib
from tessera.gpushare.simhelper import STATE_DIR_ENV, SimGpu

_MIB = 1024 * 1024


class _Engine(Protocol):
    name: str
    gpu: str

    def busy(self, seconds: float) -> float:
        """Keep the GPU busy for about `seconds`; return the time it actually ran kernels."""
        ...

    def close(self) -> None: ...


class _SimEngine:
    name = "sim"

    def __init__(self, memory_mib: int) -> None:
        self.device = SimGpu.from_env()
        self.gpu = self.device.uuid
        self.device.allocate(memory_mib)

    def busy(self, seconds: float) -> float:
        return self.device.kernel(seconds)

    def close(self) -> None:
        self.device.close()


class _TorchEngine:
    name = "torch"

    def __init__(self, torch: Any, memory_mib: int) -> None:
        self.torch = torch
        device = torch.device("cuda")
        uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
        self.gpu = f"GPU-{uuid}" if uuid is not None else str(device)
        side = 4096 if memory_mib >= 96 else 1024 if memory_mib >= 6 else 256
        operand_mib = math.ceil(3 * side * side * 2 / _MIB)  # a, b and c in float16
        self.a = torch.randn(side, side, device=device, dtype=torch.float16)
        self.b = torch.randn(side, side, device=device, dtype=torch.float16)
        self.c = torch.empty(side, side, device=device, dtype=torch.float16)
        self.hold = torch.empty(max(memory_mib - operand_mib, 0) * _MIB, dtype=torch.uint8, device=device)
        torch.cuda.synchronize()

    def busy(self, seconds: float) -> float:
        start = time.monotonic()
        end = start + seconds
        while True:
            self.torch.matmul(self.a, self.b, out=self.c)
            self.torch.cuda.synchronize()
            if time.monotonic() >= end:
                return time.monotonic() - start

    def close(self) -> None:
        del self.a, self.b, self.c, self.hold
        self.torch.cuda.empty_cache()


def _open_engine(kind: str, memory_mib: int) -> _Engine:
    if kind == "sim" or (kind == "auto" and os.environ.get(STATE_DIR_ENV)):
        return _SimEngine(memory_mib)
    torch: Any
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return _TorchEngine(torch, memory_mib)
    if kind == "torch":
        raise RuntimeError("--device torch: torch with CUDA is not available here")
    return _SimEngine(memory_mib)


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Stop:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


def run(
    engine: _Engine, compute: float, seconds: float | None, period: float, progress: float, stop: _Stop
) -> float:
    """The duty-cycle loop until `seconds` pass or `stop` sees a signal; returns the busy fraction."""
    busy_each = period * compute / 100.0
    began = time.monotonic()
    deadline = math.inf if seconds is None else began + seconds
    next_start = began
    total_busy = owed = 0.0
    mark, mark_busy = began, 0.0
    while stop.signal is None:
        now = time.monotonic()
        if now >= deadline:
            break
        # Kernels overshoot what was asked (timer granularity, launch latency); what they ran past
        # their share is taken off the next ones, so the duty cycle holds on average. At 100 % there
        # is no idle part to take it from: kernels just follow each other.
        owed = busy_each if compute >= 100 else min(owed + busy_each, busy_each)
        if owed > 0:
            ran = engine.busy(min(owed, deadline - now))
            total_busy += ran
            owed = max(owed - ran, -period)
        next_start += period
        now = time.monotonic()
        if next_start <= now:
            next_start = now  # late (the GPU was taken): start afresh rather than catch up
        elif stop.signal is None:
            time.sleep(max(min(next_start, deadline) - now, 0.0))
        if progress > 0 and now - mark >= progress:
            _emit(
                "progress",
                elapsed=round(now - began, 3),
                busy_fraction=round((total_busy - mark_busy) / (now - mark), 4),
                mean_busy_fraction=round(total_busy / (now - began), 4),
            )
            mark, mark_busy = now, total_busy
    elapsed = time.monotonic() - began
    fraction = total_busy / elapsed if elapsed > 0 else 0.0
    _emit(
        "done",
        elapsed=round(elapsed, 3),
        busy_fraction=round(fraction, 4),
        reason="time" if stop.signal is None else signal.Signals(stop.signal).name,
    )
    return fraction


def _parser() -> argparse.ArgumentParser:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m tessera.gpushare.burn", description=summary)
    parser.add_argument("--memory", default="1Gi", help=f"GPU memory to hold: {MEMORY_FORM} (default 1Gi)")
    parser.add_argument("--compute", type=float, default=100.0, help="percent of time running kernels, 0-100")
    parser.add_argument("--seconds", type=float, default=None, help="run time (default: until SIGTERM)")
    parser.add_argument("--period-ms", type=float, default=20.0, help="duty-cycle period (default 20 ms)")
    parser.add_argument("--progress", type=float, default=0.0, help="seconds between progress lines")
    parser.add_argument("--device", choices=("auto", "torch", "sim"), default="auto", help="engine to use")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        memory_mib = parse_memory_mib(args.memory)
    except QuantityError as exc:
        parser.error(f"--memory: {exc}")
    if not 0 <= args.compute <= 100:
        parser.error("--compute must be between 0 and 100")
    if args.seconds is not None and args.seconds < 0:
        parser.error("--seconds must not be negative")
    if not 1 <= args.period_ms <= 10_000:
        parser.error("--period-ms must be between 1 and 10000")
    stop = _Stop()  # installed first: a SIGTERM while the memory is being allocated still exits cleanly
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        engine = _open_engine(args.device, memory_mib)
    except RuntimeError as exc:  # SimGpuError, and torch's CUDA errors (out of memory among them)
        sys.stderr.write(f"burn: {exc}\n")
        return 1
    try:
        ready = {"engine": engine.name, "gpu": engine.gpu, "memory_mib": memory_mib, "pid": os.getpid()}
        _emit("ready", compute=args.compute, **ready)
        run(engine, args.compute, args.seconds, args.period_ms / 1000.0, args.progress, stop)
    except RuntimeError as exc:
        sys.stderr.write(f"burn: {exc}\n")
        return 1
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

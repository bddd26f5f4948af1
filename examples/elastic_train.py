"""An elastic training function, written for Ray Train: Tessera runs it as ``train(config)``.

    tessera submit etjob --name lin --min-workers 1 --max-workers 4 \\
        --entry examples/elastic_train.py --set steps=400 --set lr=0.05

Linear regression on synthetic data with DDP (gloo on CPU, NCCL on GPUs).
Every ``checkpoint_every`` steps rank 0 saves the model and the step, and
every worker reports its loss; after any restart (a grow, a shrink, a failed
worker) training resumes from the latest checkpoint, so at most the steps
since it are redone. The global batch is split across however many workers
there are, so the work per step is the same at any size.

Config: ``steps``, ``lr``, ``global_batch``, ``checkpoint_every``,
``step_seconds`` (simulated work per step) and ``stop_file``: once that file
exists (a path every worker sees), training ends at the next checkpoint.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint
from ray.train.torch import prepare_model

TRUE_W = torch.arange(1.0, 9.0)  # the weights to learn


def _batch(step: int, rank: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(size, TRUE_W.numel(), generator=g)
    return x, x @ TRUE_W + 0.01 * torch.randn(size, generator=g)


def _agreed(flag: bool) -> bool:
    """True on every rank if it is true on any (ranks must stop at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def train(config: dict[str, Any]) -> None:
    steps = int(config.get("steps", 200))
    every = int(config.get("checkpoint_every", 10))
    delay = float(config.get("step_seconds", 0.05))  # stands in for real work per step
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model = torch.nn.Linear(TRUE_W.numel(), 1, bias=False)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = torch.load(os.path.join(path, "state.pt"))
        model.load_state_dict(state["model"])
        start = int(state["step"]) + 1
    model = prepare_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=float(config.get("lr", 0.05)))
    per_worker = max(1, int(config.get("global_batch", 64)) // world)
    stop_file = config.get("stop_file")
    for step in range(start, steps):
        x, y = _batch(step, rank, per_worker)
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(delay)
        metrics = {"step": step, "loss": float(loss), "workers": world}
        # every report is a round trip through Ray Train: report (and checkpoint) every few steps
        if step % every == every - 1 or step == steps - 1:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    inner = model.module if hasattr(model, "module") else model
                    torch.save({"model": inner.state_dict(), "step": step}, os.path.join(tmp, "state.pt"))
                    checkpoint = Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint)
            if stop_file and _agreed(os.path.exists(stop_file)):
                return

"""A tiny data-parallel training script for `tessera submit pytorchjob` (CPU and gloo, or CUDA and NCCL).

    tessera submit pytorchjob --name ddp --workers 2 -- python examples/ddp_train.py --steps 50

torch.distributed reads the launch contract Tessera sets on every worker (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT); each rank trains on its own shard of a synthetic regression problem, DDP
averages the gradients, and every rank prints its loss and a digest of its final weights, which
must be identical on all ranks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # env:// from the launch contract
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(nn.Linear(8, 1).to(device), device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    true_w = torch.arange(8, dtype=torch.float32, device=device)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    first = last = 0.0
    for step in range(args.steps):
        x = torch.randn(64, 8, generator=data).to(device)
        y = (x @ true_w).unsqueeze(1)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0:
            first = loss.item()
        last = loss.item()
    weights = torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
    digest = hashlib.sha256(weights.numpy().tobytes()).hexdigest()[:16]
    print(
        f"rank={rank} world={world} first_loss={first:.4f} last_loss={last:.4f} weights={digest}", flush=True
    )
    dist.barrier()  # no rank tears the group down while another still talks to it
    dist.destroy_process_group()
    # torch's gloo backend can abort in its C++ teardown at interpreter exit ("terminate called
    # without an active exception") after all work is done; leave without running it
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

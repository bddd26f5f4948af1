"""A tiny 'training' loop for the quickstart: prints its launch contract and a few steps."""

import os
import time

print(
    f"hello from rank {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')} "
    f"on {os.environ.get('TESSERA_NODE')}, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'}, "
    f"slice {os.environ.get('TESSERA_SLICE_ID', '-')}",
    flush=True,
)
for step in range(int(os.environ.get("STEPS", "3"))):
    print(f"step {step} loss {1.0 / (step + 1):.3f}", flush=True)
    time.sleep(float(os.environ.get("STEP_SECONDS", "0.2")))
print("done", flush=True)

"""torchrun worker for tests/test_distributed.py: stream one epoch on every rank with gloo.

Usage: torchrun --standalone --nproc_per_node=N tests/dist_worker.py DATA OUT.json SCHEDULE
Each batch is followed by an all_reduce (what DDP does per step), so ranks with unequal
batch counts would hang here; rank 0 writes what every rank saw to OUT.json.
"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

from foundir_data.streaming.stream import FoundIRStream


def main() -> int:
    data, out, schedule = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    # rank/world_size come from torch.distributed (the stream's default).
    stream = FoundIRStream(data, schedule=schedule, batch_size=8, crop=32, seed=5)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    seen = []
    for batch in loader:
        seen.append({"step": batch["step"], "key": batch["key"], "shape": list(batch["lq"].shape)})
        t = torch.ones(1)
        dist.all_reduce(t)  # a DDP step: every rank must arrive
        assert t.item() == world
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": stream.rank, "world": stream.world_size,
                                      "steps_per_epoch": stream.steps_per_epoch, "batches": seen})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(gathered, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run under ``torchrun``: train the tiny preset with DDP on gloo, then record what each rank
ended with (``rank<R>.json``) so the test can compare ranks: the saved checkpoint, and each
rank's own live weights (the module DDP wrapped in this process). ``argv[3] == "stop-at-2"``
kills the run on every rank right after its step-2 checkpoint (a job killed mid-run; the next
run resumes from ``last.pt``)."""

import json
import os
import sys

import torch

import torch.distributed as dist

from foundir_model.config import TrainConfig
from foundir_model.train.loop import train

WRAPPED: list[torch.nn.Module] = []


class _Recorded(torch.nn.parallel.DistributedDataParallel):
    """DDP that remembers the module it wraps, so this rank's live weights can be read."""

    def __init__(self, module, *args, **kwargs):
        super().__init__(module, *args, **kwargs)
        WRAPPED.append(module)


class _Killed(Exception):
    pass


def _stop_after_first_checkpoint(last: str) -> None:
    barrier = dist.barrier

    def stop(*args, **kwargs):
        barrier(*args, **kwargs)  # rank 0 has written last.pt before every rank passes this
        if os.path.exists(last):
            raise _Killed
    dist.barrier = stop

if __name__ == "__main__":
    torch.set_num_threads(1)
    data, out = sys.argv[1], sys.argv[2]
    torch.nn.parallel.DistributedDataParallel = _Recorded  # train() looks the class up when it wraps
    if sys.argv[3:] == ["stop-at-2"]:
        _stop_after_first_checkpoint(os.path.join(out, "last.pt"))
    cfg = TrainConfig(data=data, out_dir=out, preset="tiny", batch_size=4, crop=32, steps=4, ckpt_every=2,
                      log_every=1, config="isolated", schedule="mix", seed=1, device="cpu", grad_accum=2)
    try:
        res = train(cfg)
    except _Killed:  # train() has closed the process group on its way out
        sys.exit(0)
    rank = int(os.environ["RANK"])
    from foundir_model import checkpoint as ckpt

    state = ckpt.load(os.path.join(out, "last.pt"))
    live = [p.detach().double() for p in WRAPPED[0].parameters()]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": int(os.environ["WORLD_SIZE"]), "step": res.step, "losses": res.losses,
                   "param_sum": float(sum(v.double().sum() for v in state["model"].values())),
                   "live": [float(p.sum()) for p in live] + [float((p * p).sum()) for p in live],
                   "data": state["data"]}, f)

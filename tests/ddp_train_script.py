"""Run under ``torchrun``: train the tiny preset with DDP on gloo, then record what each rank
ended with (``rank<R>.json``) so the test can compare ranks."""

import json
import os
import sys

import torch

from foundir_model.config import TrainConfig
from foundir_model.train import train

if __name__ == "__main__":
    torch.set_num_threads(1)
    data, out = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(data=data, out_dir=out, preset="tiny", batch_size=4, crop=32, steps=4, ckpt_every=2,
                      log_every=1, config="isolated", schedule="mix", seed=1, device="cpu", grad_accum=2)
    res = train(cfg)
    rank = int(os.environ["RANK"])
    from foundir_model import checkpoint as ckpt

    state = ckpt.load(os.path.join(out, "last.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": int(os.environ["WORLD_SIZE"]), "step": res.step, "losses": res.losses,
                   "param_sum": float(sum(v.double().sum() for v in state["model"].values())),
                   "data": state["data"]}, f)

"""Two-process DDP training with torchrun on gloo (CPU), on a real packed sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _model_helpers import pack_train_sample  # noqa: E402


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    data = pack_train_sample(tmp_path / "d", per_type=2, size=64, types=("Blur", "Noise", "Haze", "Rain"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(Path(__file__).parent / "ddp_train_script.py"), str(data), str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["step"] == r1["step"] == 4
    # Losses are all-reduced: both ranks log the same curve; weights stay in sync.
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 4
    assert r0["param_sum"] == r1["param_sum"]
    # 8 pairs at a global batch of 4 (2 crops per rank) = 2 stream steps per pass; with
    # grad_accum 2 (no_sync on the first micro-batch) 4 optimiser steps read 8 batches: the mix
    # phase lasts the whole run, so the saved stream state is at its end, step 8 of epoch 0.
    assert (r0["data"]["epoch"], r0["data"]["step"]) == (0, 8)
    assert r0["data"]["schedule"]["phases"][0]["steps"] == 8
    assert "step 4/4 loss" in p.stdout and (out / "model.safetensors").is_file()
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert r0["live"] == r1["live"]  # each rank's own weights, not only the file rank 0 saved
    # Killed after step 2 and resumed: the release's stage 2 loads a checkpoint and then trains
    # unsynchronised replicas (docs/training.md, "Recipes"); ours loads before wrapping in DDP.
    again = tmp_path / "again"
    for extra in (["stop-at-2"], []):
        p = subprocess.run(cmd[:-1] + [str(again)] + extra, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "resumed from" in p.stdout
    a0, a1 = (json.loads((again / f"rank{r}.json").read_text()) for r in (0, 1))
    assert a0["step"] == a1["step"] == 4 and a0["losses"] == a1["losses"] == r0["losses"][2:]
    assert a0["live"] == a1["live"] == r0["live"]  # in sync, and the same as the uninterrupted run

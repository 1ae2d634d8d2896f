"""torchrun --nproc_per_node=2 with gloo on CPU: disjoint, complete coverage, equal batch counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundir_data.sample import make_sample
from foundir_data.remote.store import Store

WORKER = Path(__file__).with_name("dist_worker.py")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from shard_tools.pack.packer import PackConfig, pack

    root = tmp_path_factory.mktemp("dist")
    make_sample(root / "src", per_type=2, size=64, layout="list", seed=1)
    assert pack(PackConfig(source=str(root / "src" / "MillionIRData_train_meta_info.txt"),
                           out=str(root / "packed"), shard_count=2, progress=False)) == 0
    return root


def torchrun(data: Path, out: Path, schedule: str, nproc: int = 2) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc_per_node={nproc}", str(WORKER), str(data), str(out), schedule]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_ranks_cover_the_epoch_disjointly_with_equal_batch_counts(packed, tmp_path):
    ranks = torchrun(packed / "packed", tmp_path / "out.json", "mix")
    keys = Store.open(str(packed / "packed")).index(columns=["key"]).column("key").to_pylist()
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world"] for r in ranks} == {2}
    steps = ranks[0]["steps_per_epoch"]
    assert steps == 5  # 40 pairs / global batch 8
    for r in ranks:
        assert [b["step"] for b in r["batches"]] == list(range(steps))  # equal counts, in order
        assert all(b["shape"] == [4, 3, 32, 32] for b in r["batches"])
    served = [k for r in ranks for b in r["batches"] for k in b["key"]]
    assert sorted(served) == sorted(keys)  # complete and disjoint: each pair exactly once
    for s in range(steps):
        assert not set(ranks[0]["batches"][s]["key"]) & set(ranks[1]["batches"][s]["key"])

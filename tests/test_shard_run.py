"""Frame sharding over ranks: a pure function, every frame exactly once, balanced; the per-frame
noise does not depend on what else a rank restores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foundir_data.errors import UsageError
from foundir_model.restore import shard_run
from foundir_model.restore.infer import RestoreTiling, restore_array


@pytest.mark.parametrize("count", [0, 1, 2, 7, 20, 1500, 1501])
def test_every_frame_on_exactly_one_rank_and_balanced_for_many_world_sizes(count):
    for world in range(1, 70):
        parts = [shard_run.shard(count, r, world) for r in range(world)]
        flat = np.concatenate(parts)
        assert sorted(flat.tolist()) == list(range(count))  # each frame exactly once
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1  # balanced
        assert all(np.array_equal(p, shard_run.shard(count, r, world)) for r, p in enumerate(parts))  # pure


def test_sharding_depends_on_the_sorted_names_only_not_their_listing_order():
    names = [f"{t:02d}Type/{i:04d}" for t in range(20) for i in range(5)]
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 8, 13):
        want = None
        for _ in range(5):
            shuffled = list(rng.permutation(names))
            got = [sorted(shuffled[i] for i in shard_run.my_frames(shuffled, shard_run.RankContext(r, world)))
                   for r in range(world)]
            assert want is None or got == want
            want = got
        assert sorted(n for part in want for n in part) == sorted(names)


def test_two_frames_with_one_name_are_refused():
    with pytest.raises(ValueError, match="01Blur/0001"):
        shard_run.sorted_order(["01Blur/0001", "02Noise/0001", "01Blur/0001"])


def test_bad_rank_and_world_are_refused(monkeypatch):
    with pytest.raises(ValueError):
        shard_run.shard(10, 2, 2)
    with pytest.raises(ValueError):
        shard_run.shard(-1, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(UsageError, match="RANK=5"):
        shard_run.context("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UsageError, match="RANK"):
        shard_run.context("cpu")


def test_without_torchrun_the_world_is_one_cpu_rank(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    ctx = shard_run.context("cpu")
    assert (ctx.rank, ctx.world, ctx.device, ctx.initialised, ctx.is_main) == (0, 1, "cpu", False, True)
    assert shard_run.gather({"a": 1}, ctx) == [{"a": 1}] and shard_run.total([1, 2], ctx) == [1, 2]
    assert shard_run.rank_device("cpu", 3, 4) == "cpu"  # CPU ranks share the CPU, and its memory:
    assert shard_run.RankContext(0, 4, 0, "cpu", local_world=2).memory_share == 2
    assert shard_run.RankContext(0, 4, 0, "cuda:0", local_world=2).memory_share == 1
    if not torch.cuda.is_available():
        assert shard_run.rank_device(None, 1, 2) == "cpu"


class _Recorder:
    """A restorer that keeps the start noise it is given, per call."""

    def __init__(self):
        self.noise: list[torch.Tensor] = []

    def __call__(self, lq, degradation=None, noise=None):
        self.noise.append(noise.clone())
        return lq


def test_a_frames_noise_depends_only_on_seed_frame_and_tile_not_on_earlier_frames():
    """What makes a sharded run equal a single one: the draw is per frame, whatever it is."""
    cfg = RestoreTiling(tile=32, stride=16)
    rng = np.random.default_rng(1)
    frames = [rng.random((48, 40 + 8 * i, 3), dtype=np.float32) for i in range(4)]
    alone = []
    for f in frames:  # each frame in a fresh restorer: what a rank holding only that frame draws
        rec = _Recorder()
        restore_array(rec, f, None, cfg, seed=7)
        alone.append(torch.cat(rec.noise))
    for order in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 0]):  # one rank restoring several, in any order
        rec = _Recorder()
        torch.manual_seed(len(order))  # the global generator plays no part
        for i in order:
            start = len(rec.noise)
            restore_array(rec, frames[i], None, cfg, seed=7)
            assert torch.equal(torch.cat(rec.noise[start:]), alone[i])
    rec = _Recorder()
    restore_array(rec, frames[0], None, cfg, seed=8)
    assert not torch.equal(torch.cat(rec.noise), alone[0])  # the seed does matter

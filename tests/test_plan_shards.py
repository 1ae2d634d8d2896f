"""A plan from shard-level facts (the manifest's shard list) serves exactly the batches of the
plan over the full index: same (shard, position) in every slot, for many seeds, world sizes,
schedules, shuffle blocks and node counts; and the golden plans of ``fixtures/rng_golden.json``
(written before plans from shard facts existed) come out of it unchanged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from foundir_data import taxonomy
from foundir_data.sampling.plan import CurriculumPlan
from foundir_data.sampling.schedules import SCHEDULES

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "rng_golden.json").read_text())


def _index(seed: int):
    """A shuffled synthetic index: per-row (deg, shard code, position) and the shard facts."""
    r = np.random.default_rng(seed)
    types = r.choice(len(taxonomy.TYPES), size=int(r.integers(1, 8)), replace=False)
    shard_deg = np.repeat(types, r.integers(1, 5, len(types)))
    r.shuffle(shard_deg)  # shard codes (sorted paths) do not follow types
    count = r.integers(1, 30, len(shard_deg))
    code = np.repeat(np.arange(len(count)), count)
    pos = np.concatenate([np.arange(c) for c in count])
    perm = r.permutation(len(code))  # the index's row order is arbitrary
    return shard_deg[code][perm], code[perm], pos[perm], shard_deg, count


def _served(plan: CurriculumPlan, rank, world, worker, workers, start, nodes, code=None, pos=None):
    out = []
    for step, rows in plan.batches(rank, world, worker, workers, start, nodes=nodes):
        c, p = (code[rows], pos[rows]) if code is not None else plan.locate(rows)
        out.append((step, c.tolist(), p.tolist()))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_plan_from_shards_equals_plan_from_index(seed):
    deg, code, pos, shard_deg, count = _index(seed)
    r = np.random.default_rng(1000 + seed)
    for schedule in sorted(SCHEDULES):
        world = int(r.choice([1, 2, 4]))
        nodes = int(r.choice([n for n in (1, 2) if world % n == 0]))
        batch = world * int(r.integers(1, 5))
        kw = dict(seed=int(r.integers(0, 1 << 30)), epoch=int(r.integers(0, 3)), shuffle_block=int(r.choice([0, 1, 3])),
                  steps=int(r.integers(3, 12)), chunk_slots=int(r.choice([16, 1 << 16])))
        try:
            full = CurriculumPlan(deg, code, pos, schedule, batch, **kw)
        except ValueError:  # a schedule whose types are absent: the same refusal both ways
            with pytest.raises(ValueError):
                CurriculumPlan.from_shards(shard_deg, count, schedule, batch, **kw)
            continue
        facts = CurriculumPlan.from_shards(shard_deg, count, schedule, batch, **kw)
        assert facts.num_rows == full.num_rows == len(deg) and facts.total_steps == full.total_steps
        for rank in range(world):
            start = int(r.integers(0, max(1, full.total_steps)))
            for worker, workers in ((0, 1), (1, 2)):
                a = _served(full, rank, world, worker, workers, start, nodes, code, pos)
                b = _served(facts, rank, world, worker, workers, start, nodes)
                assert a == b, (schedule, rank, worker)


def test_empty_shards_take_no_code():
    deg, code, pos, shard_deg, count = _index(3)
    with_empty = np.insert(count, [0, 2], 0)
    degs = np.insert(shard_deg, [0, 2], shard_deg[0])
    a = CurriculumPlan.from_shards(shard_deg, count, "mix", 4, seed=5)
    b = CurriculumPlan.from_shards(degs, with_empty, "mix", 4, seed=5)
    assert [c.tolist() for _, c in a.batches()] == [c.tolist() for _, c in b.batches()]


def _golden_index():
    """tests/test_rng.py's synthetic index (the one the golden file was written from)."""
    r = np.random.default_rng(2024)
    deg = np.repeat(np.arange(len(taxonomy.TYPES)), r.integers(3, 40, len(taxonomy.TYPES)))
    return deg, deg * 10 + r.integers(0, 3, len(deg)), np.arange(len(deg))


@pytest.mark.parametrize("name", sorted({k.split("/")[0] for k in GOLDEN if "/" in k}))
@pytest.mark.parametrize("shuffle_block", [0, 2])
def test_plan_from_shards_keeps_the_golden_plans(name, shuffle_block):
    deg, shard, within = _golden_index()
    codes, rows_of = np.unique(shard, return_inverse=True)
    count = np.bincount(rows_of)
    shard_deg = codes // 10
    # Row of (shard code, position): the shard's rows in position order.
    by_shard = np.lexsort((within, rows_of))
    first = np.concatenate([[0], np.cumsum(count)])
    plan = CurriculumPlan.from_shards(shard_deg, count, name, 12, seed=123, epoch=1, steps=40,
                                      shuffle_block=shuffle_block, chunk_slots=96)
    want = GOLDEN[f"{name}/block{shuffle_block}"]

    def rows(step):
        c, p = plan.locate(plan.global_batch(step))
        return by_shard[first[c] + p]

    assert rows(0).tolist() == want["first_batch"]
    h = hashlib.sha256()
    for s in range(want["steps"]):
        h.update(np.ascontiguousarray(rows(s), np.int64).tobytes())
    assert h.hexdigest() == want["sha256"]

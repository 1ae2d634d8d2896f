"""Named RNG streams: the refactor to ``foundir_data.sampling.rng`` kept every plan and subset.

``fixtures/rng_golden.json`` was written by the code before the stream numbers got names
(bare ``1..7`` in counts.py / plan.py / stream.py, ``0x5B5E7`` in schedules.py): global
batches of every named schedule for a fixed seed, and a nested subset.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from foundir_data.sampling import rng
from foundir_data import taxonomy
from foundir_data.sampling.plan import CurriculumPlan
from foundir_data.sampling.schedules import SCHEDULES, nested_subset

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "rng_golden.json").read_text())


def _synthetic():
    r = np.random.default_rng(2024)  # the synthetic index itself (not under test)
    deg = np.repeat(np.arange(len(taxonomy.TYPES)), r.integers(3, 40, len(taxonomy.TYPES)))
    return deg, deg * 10 + r.integers(0, 3, len(deg)), np.arange(len(deg))


# The schedules that existed when the golden file was written (``release`` came later).
GOLDEN_SCHEDULES = sorted({k.split("/")[0] for k in GOLDEN if "/" in k})


def test_golden_covers_the_schedules_it_predates():
    assert set(GOLDEN_SCHEDULES) == set(SCHEDULES) - {"release"}


@pytest.mark.parametrize("name", GOLDEN_SCHEDULES)
@pytest.mark.parametrize("shuffle_block", [0, 2])
def test_known_seed_gives_the_same_plan_as_before(name, shuffle_block):
    want = GOLDEN[f"{name}/block{shuffle_block}"]
    plan = CurriculumPlan(*_synthetic(), name, 12, seed=123, epoch=1, steps=40, shuffle_block=shuffle_block, chunk_slots=96)
    assert plan.global_batch(0).tolist() == want["first_batch"]
    h = hashlib.sha256()
    for s in range(want["steps"]):
        h.update(np.ascontiguousarray(plan.global_batch(s), np.int64).tobytes())
    assert h.hexdigest() == want["sha256"]


def test_known_seed_gives_the_same_subset_as_before():
    assert nested_subset(200, 0.3, seed=7).tolist() == GOLDEN["nested_subset"]


def test_streams_are_unique_and_documented():
    assert len(set(rng.STREAMS.values())) == len(rng.STREAMS)
    assert rng.STREAMS == {k: getattr(rng, k) for k in rng.STREAMS}
    rows = dict(re.findall(r"^``(\w+)``\s+(\w+)", rng.__doc__, re.M))
    assert {k: int(v, 0) for k, v in rows.items()} == rng.STREAMS

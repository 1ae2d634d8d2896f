"""A run longer than its curriculum: the last phase continues to the run's end, for every
schedule (named, dict and YAML phase lists), in the counts, the plan and the training loop."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundir_data.sampling import counts as C
from foundir_data.sampling import schedules as S
from foundir_data import taxonomy
from foundir_data.sampling.plan import CurriculumPlan

sys.path.insert(0, str(Path(__file__).parent))

COUNTS = {t.name: 3 * (t.test_ids[1] - t.test_ids[0] + 1) for t in taxonomy.TYPES}
NAMES = list(taxonomy.NAMES)
PHASE_LIST = {"name": "mine", "phases": [
    {"name": "isolated", "steps": 9, "weights": "isolated"},
    {"name": "weather", "steps": 6, "weights": {"Rain": 1, "Haze": 1, "Rain_Haze": 2}, "mode": "share"},
    {"name": "unused", "steps": 0, "weights": {}},  # a trailing empty phase: the one before continues
]}


def _schedule(kind: str, tmp_path: Path):
    if kind == "dict":
        return PHASE_LIST
    if kind == "yaml":
        path = tmp_path / "mine.yaml"
        path.write_text(yaml.safe_dump(PHASE_LIST))
        return str(path)
    return kind


def _pool(phase: S.Phase) -> set[int]:
    return {NAMES.index(t) for t, w in phase.weights.items() if w > 0}


@pytest.mark.parametrize("kind", sorted(S.SCHEDULES) + ["dict", "yaml"])
def test_last_phase_continues_to_the_end_of_the_run(kind, tmp_path):
    schedule = _schedule(kind, tmp_path)
    own = S.resolve(schedule, COUNTS, 16, steps=7)
    live = [i for i, p in enumerate(own.phases) if p.steps and _pool(p)][-1]
    start = sum(p.steps for p in own.phases[:live])  # first step of the phase that continues
    run = own.total_steps * 3 + 5
    cur = S.resolve(schedule, COUNTS, 16, steps=7, run_steps=run)
    assert cur.total_steps == run
    assert [p.steps for p in cur.phases[:live]] == [p.steps for p in own.phases[:live]]
    assert cur.phases[live].steps == own.phases[live].steps + run - own.total_steps
    bc = C.BatchCounts(cur, NAMES, 16, seed=1, chunk_slots=160)
    c = bc.counts()
    assert c.shape == (run, 20) and (c.sum(1) == 16).all()
    last = own.phases[live]
    # Every step from the last phase's start to the run's end is that phase: never an earlier one.
    assert all(bc.phase_of(s).name == last.name for s in range(start, run))
    assert set(np.flatnonzero(c[start:].sum(0))) <= _pool(last)
    if last.groups:  # incremental stage 2: an isolated and a coupled half in every batch, to the end
        for g in last.groups:
            cols = [NAMES.index(t) for t in g]
            assert (c[start:, cols].sum(1) == 8).all()
    if last.mode == "share":  # every batch holds each type's share (floor or ceil), to the end
        total = sum(last.weights.values())
        cols = [NAMES.index(t) for t in last.weights]
        quota = np.array([w / total * 16 for w in last.weights.values()])
        assert (c[start:, cols] >= np.floor(quota)).all() and (c[start:, cols] <= np.ceil(quota)).all()
    # The batches before the last phase do not depend on the run's length.
    np.testing.assert_array_equal(C.BatchCounts(own, NAMES, 16, seed=1, chunk_slots=160).counts(0, start), c[:start])
    # A run no longer than the curriculum keeps it as it is.
    assert S.resolve(schedule, COUNTS, 16, steps=7, run_steps=own.total_steps - 1).to_dict() == own.to_dict()
    assert S.resolve(schedule, COUNTS, 16, steps=7, run_steps=None).to_dict() == own.to_dict()


def test_incremental_stage2_never_falls_back_to_stage1():
    # The docs' old failure: n = 500k in a 2M run ended stage 2 at 1.5M and restarted stage 1.
    cur = S.resolve("incremental", COUNTS, 16, steps=5, run_steps=100)
    bc = C.BatchCounts(cur, NAMES, 16, seed=0, chunk_slots=160)
    c = bc.counts()
    coupled = [NAMES.index(t) for t in taxonomy.COUPLED]
    assert (c[:5, coupled] == 0).all() and (c[5:, coupled].sum(1) == 8).all()
    assert cur.phases[-1].steps == 95 and cur.phases[-1].name == "incremental-2"


def test_plan_serves_exactly_the_run_and_resumes_inside_the_continued_phase():
    rng = np.random.default_rng(0)
    deg = np.repeat(np.arange(20), 6)
    shard = rng.integers(0, 10, len(deg))
    plan = CurriculumPlan(deg, shard, None, "incremental", 8, seed=2, steps=3, run_steps=40, shuffle_block=2)
    assert plan.total_steps == 40 and plan.curriculum.phases[-1].steps == 37
    full = list(plan.batches())
    assert [s for s, _ in full] == list(range(40))
    coupled = {taxonomy.get(t).index for t in taxonomy.COUPLED}
    for s, rows in full[3:]:
        assert sum(int(deg[r]) in coupled for r in rows) == 4  # half coupled in every stage-2 batch
    # Stage 2 cycles through each type's rows as seeded permutations: every pair is served.
    served = np.concatenate([rows for _, rows in full])
    assert set(served) == set(range(len(deg)))
    again = CurriculumPlan(deg, shard, None, "incremental", 8, seed=2, steps=3, run_steps=40, shuffle_block=2)
    resumed = list(again.batches(rank=1, world_size=2, start=23))
    for (s, rows), (s2, rows2) in zip(full[23:], resumed):
        assert s == s2 and np.array_equal(rows[4:], rows2)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    from _model_helpers import pack_train_sample

    return pack_train_sample(tmp_path_factory.mktemp("data"), per_type=1, size=64)  # short side 42 >= the 32px crop


def test_stream_refuses_to_resume_a_run_of_another_length(packed):
    from foundir_data.streaming.stream import FoundIRStream

    kw = dict(schedule="incremental", steps_per_phase=2, batch_size=4, crop=32, seed=1)
    a = FoundIRStream(packed, run_steps=12, **kw)
    state = a.state_dict(step=5)
    b = FoundIRStream(packed, **kw)
    b.set_run_steps(12)
    b.load_state_dict(state)  # the same run: fine
    assert [x["step"] for x in b] == list(range(5, 12))
    b.set_run_steps(20)
    with pytest.raises(ValueError, match=r"incremental-2: 10 vs .*incremental-2: 18.*steps"):
        b.load_state_dict(state)


def test_train_runs_the_curriculum_for_all_steps_with_accumulation(packed, tmp_path, capsys):
    """A real training run: n = 2 optimiser steps, grad accumulation 2, 7 steps: stage 1 is
    4 batches, stage 2 lasts the other 10 (it used to end after 8 and restart stage 1)."""
    from _model_helpers import OneThread

    from foundir_data.streaming.stream import FoundIRStream
    from foundir_model.config import TrainConfig
    from foundir_model.train.loop import train

    seen: list[list[int]] = []

    class Recorder(FoundIRStream):
        def __iter__(self):
            for b in super().__iter__():
                seen.append(b["degradation"].tolist())
                yield b

    cfg = TrainConfig(data=str(packed), out_dir=str(tmp_path / "run"), preset="tiny", batch_size=4, crop=32,
                      steps=7, grad_accum=2, steps_per_phase=2, schedule="incremental", log_every=3,
                      ckpt_every=0, seed=1, device="cpu")
    # The stream counts batches: n = 2 optimiser steps x 2 micro-batches (train.stream_steps).
    stream = Recorder(cfg.data, schedule=cfg.schedule, steps_per_phase=4, batch_size=4, crop=32, seed=1)
    with OneThread():
        res = train(cfg, data=stream)
    assert res.step == 7 and len(seen) == 14
    coupled = {taxonomy.get(t).index for t in taxonomy.COUPLED}
    assert all(not coupled & set(b) for b in seen[:4])
    assert all(len([d for d in b if d in coupled]) == 2 for b in seen[4:])  # stage 2 to the end
    assert stream.curriculum.total_steps == 14 and stream.curriculum.phases[-1].steps == 10
    # Progress: the first step, then every log_every steps and the last, each with an ETA.
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["1/7", "3/7", "6/7", "7/7"]
    assert all("patch pairs/s" in x and " ETA " in x for x in lines)
    assert "phase incremental-1" in lines[0] and "phase incremental-2" in lines[-1]

"""Curricula and batch counts: phase proportions over many seeds, pool growth, nesting."""

from __future__ import annotations

import numpy as np
import pytest

from foundir_data.sampling import counts as C
from foundir_data.sampling import schedules as S
from foundir_data import taxonomy

# Type sizes shaped like the release's test set (docs/release.md, "Data"), times 3.
COUNTS = {t.name: 3 * (t.test_ids[1] - t.test_ids[0] + 1) for t in taxonomy.TYPES}
N = sum(COUNTS.values())
NAMES = list(taxonomy.NAMES)


def table(schedule, batch=16, steps=None, seed=0, counts=COUNTS, chunk_slots=C.CHUNK_SLOTS):
    cur = S.resolve(schedule, counts, batch, steps)
    present = [t for t in NAMES if counts.get(t, 0)]
    bc = C.BatchCounts(cur, present, batch, seed=seed, chunk_slots=chunk_slots)
    return cur, bc, bc.counts()


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_every_batch_is_full_and_deterministic(name):
    cur, bc, c = table(name, seed=3, chunk_slots=200)
    assert c.shape == (cur.total_steps, 20)
    assert (c.sum(1) == 16).all() and (c >= 0).all()
    _, _, again = table(name, seed=3, chunk_slots=200)
    np.testing.assert_array_equal(c, again)
    _, _, other = table(name, seed=4, chunk_slots=200)
    assert name == "sequence" or not np.array_equal(c, other)


@pytest.mark.parametrize("name", sorted(S.SCHEDULES))
def test_cursor_and_ranges_agree_across_chunks(name):
    _, bc, c = table(name, seed=1, chunk_slots=160)  # 10 steps per chunk
    assert bc.num_chunks > 3
    for s in (0, 7, 10, 11, 95, bc.total_steps - 1, bc.total_steps):
        np.testing.assert_array_equal(bc.cursor(s), c[:s].sum(0))
    np.testing.assert_array_equal(bc.counts(8, 33), c[8:33])


def test_mix_one_epoch_serves_every_type_its_size():
    for seed in range(5):
        _, bc, c = table("mix", batch=32, seed=seed, chunk_slots=320)
        tot = c.sum(0)
        assert bc.total_steps == -(-N // 32)
        assert (tot >= np.array([COUNTS[t] for t in NAMES])).all()
        assert tot.sum() - N < 32  # padding is less than one batch


def test_mix_is_a_uniform_shuffle_over_seeds():
    # The fraction of each type in the first 20 batches, averaged over seeds, is its share.
    frac = np.mean([table("mix", seed=s, chunk_slots=160)[2][:20].sum(0) / 320 for s in range(200)], 0)
    expect = np.array([COUNTS[t] / N for t in NAMES])
    np.testing.assert_allclose(frac, expect, atol=0.012)


def test_combine_puts_every_type_in_every_batch():
    _, _, c = table("combine", batch=40, seed=2)
    assert (c == 2).all()  # 40 slots / 20 types
    frac = np.mean([table("combine", batch=16, seed=s)[2][:50].sum(0) / 800 for s in range(60)], 0)
    np.testing.assert_allclose(frac, 1 / 20, atol=0.006)
    _, _, c = table("combine", batch=16, seed=9)
    assert set(np.unique(c)) <= {0, 1}  # floor/ceil of 0.8 each


def test_incremental_pool_grows_then_combines_isolated_and_coupled():
    cur, bc, c = table("incremental", batch=16, seed=5)
    iso = [NAMES.index(t) for t in taxonomy.ISOLATED]
    cpl = [NAMES.index(t) for t in taxonomy.COUPLED]
    n = -(-sum(COUNTS[t] for t in taxonomy.ISOLATED) // 16)
    assert [p.steps for p in cur.phases] == [n * (i + 1) // 7 - n * i // 7 for i in range(7)] + [2 * n]
    start = 0
    for k, ph in enumerate(cur.phases[:7]):
        part = c[start: start + ph.steps]
        seen = set(np.flatnonzero(part.sum(0)))
        assert seen == set(iso[: k + 1])  # the first k+1 isolated types, and only those
        start += ph.steps
    stage2 = c[start:]
    assert len(stage2) == 2 * n
    assert (stage2[:, iso].sum(1) == 8).all() and (stage2[:, cpl].sum(1) == 8).all()
    # Within each class, types in proportion to their sizes (averaged over seeds).
    avg = np.mean([table("incremental", seed=s)[2][-2 * n:].sum(0) for s in range(20)], 0)
    si = sum(COUNTS[t] for t in taxonomy.ISOLATED)
    np.testing.assert_allclose(avg[iso] / avg[iso].sum(), [COUNTS[t] / si for t in taxonomy.ISOLATED], atol=0.01)


def test_incremental_reversed_starts_with_coupled():
    cur, _, c = table("incremental-reversed", steps=70)
    first = set(np.flatnonzero(c[: sum(p.steps for p in cur.phases[:-1])].sum(0)))
    assert first == {NAMES.index(t) for t in taxonomy.COUPLED}
    assert cur.phases[-1].steps == 140


def test_sequence_is_one_task_after_another():
    cur, _, c = table("sequence", steps=5)
    assert len(cur.phases) == 20 and cur.total_steps == 100
    for i in range(20):
        assert (c[5 * i: 5 * i + 5, i] == 16).all()


def test_single_mode_and_shares_over_many_seeds():
    spec = {"name": "u", "phases": [{"name": "a", "steps": 400, "mode": "single",
                                     "weights": {"Blur": 3, "Rain": 1}}]}
    for seed in range(3):
        _, bc, c = table(spec, seed=seed)
        assert ((c == 0) | (c == 16)).all()
        assert (c[:, NAMES.index("Blur")] > 0).sum() == 300  # exact phase totals


def test_only_present_types_are_used_and_empty_pools_fail():
    counts = {"Blur": 10, "Noise": 5, "Blur_Noise": 7}
    cur, _, c = table("incremental", counts=counts, batch=4)
    assert set(cur.types()) == set(counts)
    assert sum(1 for p in cur.phases if p.steps) == 3  # Blur, +Noise, then combined
    with pytest.raises(ValueError, match="none of its types"):
        S.resolve({"phases": [{"name": "rainy", "steps": 3, "weights": ["Rain"]}]}, counts, 4)
    with pytest.raises(ValueError, match="none of"):
        S.resolve("incremental", {"Blur_Noise": 3}, 4)


def test_bad_specs_give_helpful_errors(tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        S.resolve("mixx", COUNTS, 8)
    with pytest.raises(ValueError, match="unknown mode"):
        S.Curriculum.from_dict({"phases": [{"steps": 3, "weights": ["Blur"], "mode": "zigzag"}]})
    with pytest.raises(taxonomy.UnknownDegradationError, match="valid names"):
        S.Curriculum.from_dict({"phases": [{"steps": 3, "weights": {"Snow": 1}}]})
    with pytest.raises(ValueError, match="unknown fields"):
        S.Curriculum.from_dict({"phases": [{"steps": 3, "weight": {"Blur": 1}}]})
    with pytest.raises(ValueError, match="positive weight"):
        S.Curriculum.from_dict({"phases": [{"steps": 3, "weights": {"Blur": 0}}]})
    with pytest.raises(ValueError, match="in no group"):
        S.Curriculum.from_dict({"phases": [{"steps": 3, "weights": ["Blur", "Rain"], "groups": [["Blur"]]}]})


def test_yaml_round_trip(tmp_path):
    import yaml

    cur = S.resolve("incremental", COUNTS, 16, steps=21)
    path = tmp_path / "cur.yaml"
    path.write_text(yaml.safe_dump(cur.to_dict()))
    again = S.resolve(str(path), COUNTS, 16)
    assert again.to_dict() == cur.to_dict()
    np.testing.assert_array_equal(C.BatchCounts(again, NAMES, 16, 1).counts(), C.BatchCounts(cur, NAMES, 16, 1).counts())


def test_systematic_rounding_is_exact_in_expectation():
    u = np.random.default_rng(0).random(20000)
    w = np.array([0.5, 0.3, 0.15, 0.05])
    c = C.systematic(np.full(20000, 7), w, u)
    assert (c.sum(1) == 7).all()
    q = w * 7
    assert ((c == np.floor(q)) | (c == np.ceil(q))).all()
    np.testing.assert_allclose(c.mean(0), q, atol=0.02)
    assert list(C.hamilton(10, [1, 1, 1])) == [4, 3, 3]


def test_nested_subsets():
    keys = [f"k{i:05d}" for i in range(5000)]
    strata = np.arange(5000) % 7
    prev: set[int] = set()
    for f in (0.1, 0.2, 0.5, 0.9, 1.0):
        sub = S.nested_subset(keys, f, seed=1)
        assert len(sub) == round(f * 5000)
        assert prev <= set(sub.tolist())
        prev = set(sub.tolist())
        strat = S.nested_subset(keys, f, seed=1, strata=strata)
        assert (np.bincount(strata[strat], minlength=7) == np.round(f * np.bincount(strata))).all()
    # The subset is a set of keys: it does not depend on the order of the rows.
    perm = np.random.default_rng(2).permutation(5000)
    shuffled = [keys[i] for i in perm]
    a = {keys[i] for i in S.nested_subset(keys, 0.3, seed=4)}
    b = {shuffled[i] for i in S.nested_subset(shuffled, 0.3, seed=4)}
    assert a == b
    assert a != {keys[i] for i in S.nested_subset(keys, 0.3, seed=5)}
    assert len(S.nested_subset(100, 0.25)) == 25
    with pytest.raises(ValueError, match="fraction"):
        S.nested_subset(10, 0)

"""Curricula over per-degradation streams: how many samples of each type go in every batch.

A :class:`Curriculum` is a list of :class:`Phase` objects. :class:`BatchCounts` turns it into
integer counts: for global step ``s``, ``counts[s, d]`` samples of degradation type ``d`` go
into the global batch. The counts depend only on (seed, epoch, curriculum, batch size, step),
never on the number of ranks or workers; which *rows* fill those slots is ``plan.py``'s job.

Batch composition modes (``Phase.mode``):
    ``shuffle``: the phase's slots are an exact seeded shuffle of a multiset holding each type
        in proportion to its weight (sequential multivariate-hypergeometric draws per chunk of
        steps, so the whole phase is one uniform shuffle without materialising it). With
        weights proportional to type sizes this is uniform sampling over all pairs (``mix``).
    ``share``: every batch holds each type's share ``weight * batch`` (systematic rounding
        of the fractional parts, so expected counts are exact and a type whose share is at
        least one sample is in every batch): DiffUIR-style ``combine``.
    ``single``: each batch is drawn from a single type, types in proportion to weights.

``Phase.groups`` first splits each batch between groups of types (by the groups' total
weights, systematic rounding) and then applies the mode inside each group: the paper's
stage 2 (Algorithm 1, lines 8-9) samples ``[isolated mini-batch, coupled mini-batch]``.

Named variants are builders in :data:`SCHEDULES` (paper section 4.2 and Table 3(a)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from foundir_data import taxonomy

MODES = ("shuffle", "share", "single")
#: Planning chunk of about this many slots: the unit of randomness (fixed by the global
#: batch size only, so it never depends on world size or workers).
CHUNK_SLOTS = 1 << 16


@dataclass(frozen=True)
class Phase:
    """One phase of a curriculum.

    Attributes:
        name: Label shown in logs.
        steps: Number of global steps (iterations) of the phase.
        weights: Degradation type name -> non-negative weight (types absent or 0 are unused).
        mode: Batch composition, one of :data:`MODES`.
        groups: Optional partition of the weighted types into groups that share every batch
            in proportion to their total weights (e.g. ``(ISOLATED, COUPLED)``).
    """

    name: str
    steps: int
    weights: Mapping[str, float]
    mode: str = "shuffle"
    groups: tuple[tuple[str, ...], ...] | None = None

    def validate(self) -> None:
        """Raise ValueError describing the first problem with this phase."""
        if self.mode not in MODES:
            raise ValueError(f"phase {self.name!r}: unknown mode {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise ValueError(f"phase {self.name!r}: steps must be a non-negative integer, got {self.steps!r}")
        for k, w in self.weights.items():
            taxonomy.get(k)  # unknown names raise with the list of valid ones
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"phase {self.name!r}: weight of {k!r} must be a finite number >= 0, got {w!r}")
        if self.steps and not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"phase {self.name!r}: no degradation type has a positive weight (empty task pool)")
        if self.groups is not None:
            flat = [t for g in self.groups for t in g]
            if len(set(flat)) != len(flat):
                raise ValueError(f"phase {self.name!r}: groups overlap: {self.groups}")
            missing = [k for k, w in self.weights.items() if w > 0 and k not in flat]
            if missing:
                raise ValueError(f"phase {self.name!r}: weighted types {missing} are in no group")


@dataclass
class Curriculum:
    """An ordered list of phases; the run lasts ``total_steps`` global steps."""

    phases: list[Phase]
    name: str = "custom"

    @property
    def total_steps(self) -> int:
        return int(sum(p.steps for p in self.phases))

    def types(self) -> list[str]:
        """Names of all types with a positive weight somewhere, in taxonomy order."""
        used = {k for p in self.phases for k, w in p.weights.items() if w > 0}
        return [n for n in taxonomy.NAMES if n in used]

    def validate(self) -> "Curriculum":
        if not self.phases:
            raise ValueError(f"curriculum {self.name!r} has no phases")
        for p in self.phases:
            p.validate()
        return self

    def restrict(self, present: Sequence[str]) -> "Curriculum":
        """Drop types not present in the data; a phase left with an empty pool is an error."""
        keep = set(present)
        phases = []
        for p in self.phases:
            w = {k: v for k, v in p.weights.items() if k in keep and v > 0}
            if p.steps and not w:
                raise ValueError(
                    f"curriculum {self.name!r}, phase {p.name!r}: none of its types "
                    f"{sorted(k for k, v in p.weights.items() if v > 0)} is in the data "
                    f"(present: {sorted(keep)}); pick another schedule or config"
                )
            groups = None
            if p.groups is not None:
                groups = tuple(g2 for g2 in (tuple(t for t in g if t in w) for g in p.groups) if g2)
            phases.append(Phase(p.name, int(p.steps), w, p.mode, groups))
        return Curriculum(phases, self.name).validate()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "phases": [
            {"name": p.name, "steps": int(p.steps), "weights": dict(p.weights), "mode": p.mode,
             **({"groups": [list(g) for g in p.groups]} if p.groups else {})}
            for p in self.phases]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "curriculum") -> "Curriculum":
        """Build from ``{"name": ..., "phases": [{"name", "steps", "weights", "mode", "groups"}]}``.

        ``weights`` may also be a selector list/string (``"isolated"``, ``["Blur", "Rain"]``)
        meaning weight 1 for each selected type.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("phases"), list):
            raise ValueError(f"{where}: expected a mapping with a 'phases' list")
        phases = []
        for i, p in enumerate(data["phases"]):
            if not isinstance(p, Mapping):
                raise ValueError(f"{where}: phase {i} is not a mapping")
            extra = set(p) - {"name", "steps", "weights", "mode", "groups"}
            if extra:
                raise ValueError(f"{where}: phase {i} has unknown fields {sorted(extra)}")
            w = p.get("weights", "all")
            if isinstance(w, (str, list, tuple)):
                w = {t.name: 1.0 for t in taxonomy.select(list(w) if not isinstance(w, str) else w)}
            groups = p.get("groups")
            if groups is not None:
                groups = tuple(tuple(t.name for t in taxonomy.select(g)) for g in groups)
            phases.append(Phase(str(p.get("name", f"phase{i}")), int(p.get("steps", 0)),
                                {taxonomy.get(k).name: float(v) for k, v in w.items()},
                                str(p.get("mode", "shuffle")), groups))
        return cls(phases, str(data.get("name", "custom"))).validate()

    @classmethod
    def from_yaml(cls, path: str) -> "Curriculum":
        import yaml

        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f), where=path)


# ---------------------------------------------------------------- named variants
def _prop(counts: Mapping[str, int], names: Sequence[str]) -> dict[str, float]:
    return {n: float(counts[n]) for n in names if counts.get(n, 0) > 0}


def _ceil(a: int, b: int) -> int:
    return max(1, -(-int(a) // int(b)))


def incremental(counts: Mapping[str, int], batch_size: int, steps: int | None = None,
                first: Sequence[str] = taxonomy.ISOLATED, second: Sequence[str] = taxonomy.COUPLED,
                name: str = "incremental", stage2_factor: int = 2) -> Curriculum:
    """The paper's incremental learning (section 4.2, Algorithm 1).

    Phase 1 lasts ``n`` steps over the first class, whose types join the task pool one after
    another (sub-phase k samples the first k types, in proportion to their sizes). Phase 2
    lasts ``stage2_factor * n`` steps in which every batch combines a mini-batch of the first
    class and one of the second (``groups``), each in proportion to type sizes.
    ``n`` defaults to one pass over the first class. (REFERENCE.md section 2 reports 500k +
    1.5M iterations in the release; the paper's text says n and 2n: use ``stage2_factor``.)
    """
    pool = [t for t in first if counts.get(t, 0) > 0]
    other = [t for t in second if counts.get(t, 0) > 0]
    if not pool:
        raise ValueError(f"schedule {name!r}: none of {list(first)} is in the data")
    n = int(steps) if steps is not None else _ceil(sum(counts[t] for t in pool), batch_size)
    phases = []
    k = len(pool)
    for i in range(k):  # split n as evenly as possible over the k growing pools
        sub = n * (i + 1) // k - n * i // k
        phases.append(Phase(f"{name}-1.{i + 1}+{pool[i]}", sub, _prop(counts, pool[: i + 1]), "shuffle"))
    both = _prop(counts, pool + other)
    groups = (tuple(pool), tuple(other)) if other else None
    if other:
        # Equal class shares in every stage-2 batch (Algorithm 1 line 9 samples one mini-batch
        # from each class); within a class types are in proportion to their sizes.
        si, so = sum(counts[t] for t in pool), sum(counts[t] for t in other)
        both = {t: counts[t] / si for t in pool} | {t: counts[t] / so for t in other}
    phases.append(Phase(f"{name}-2", stage2_factor * n, both, "shuffle", groups))
    return Curriculum(phases, name).validate()


def incremental_reversed(counts: Mapping[str, int], batch_size: int, steps: int | None = None) -> Curriculum:
    """Table 3(a)'s D_c -> D_i: coupled types first, then combined batches."""
    return incremental(counts, batch_size, steps, taxonomy.COUPLED, taxonomy.ISOLATED, "incremental-reversed")


def mix(counts: Mapping[str, int], batch_size: int, steps: int | None = None) -> Curriculum:
    """Mix-Train: uniform over all pairs; default one epoch (ceil(N / batch) steps)."""
    n = int(steps) if steps is not None else _ceil(sum(counts.values()), batch_size)
    return Curriculum([Phase("mix", n, _prop(counts, taxonomy.NAMES), "shuffle")], "mix").validate()


def combine(counts: Mapping[str, int], batch_size: int, steps: int | None = None) -> Curriculum:
    """Combine-Train (DiffUIR): every batch holds an equal share of every type present."""
    n = int(steps) if steps is not None else _ceil(sum(counts.values()), batch_size)
    w = {t: 1.0 for t in taxonomy.NAMES if counts.get(t, 0) > 0}
    return Curriculum([Phase("combine", n, w, "share")], "combine").validate()


def sequence(counts: Mapping[str, int], batch_size: int, steps: int | None = None) -> Curriculum:
    """Sequence-Train: one task after another (taxonomy order); default one pass per task,
    else ``steps`` per task."""
    phases = [Phase(f"sequence-{t}", int(steps) if steps is not None else _ceil(counts[t], batch_size),
                    {t: 1.0}, "shuffle") for t in taxonomy.NAMES if counts.get(t, 0) > 0]
    return Curriculum(phases, "sequence").validate()


Builder = Callable[[Mapping[str, int], int, "int | None"], Curriculum]
#: Named schedules: name -> builder(counts per type, global batch size, steps) -> Curriculum.
SCHEDULES: dict[str, Builder] = {
    "incremental": incremental,
    "incremental-reversed": incremental_reversed,
    "mix": mix,
    "combine": combine,
    "sequence": sequence,
}


def resolve(schedule: "str | Curriculum | Mapping[str, Any]", counts: Mapping[str, int], batch_size: int,
            steps: int | None = None) -> Curriculum:
    """A named schedule, a dict/YAML path, or a Curriculum -> a Curriculum restricted to the
    types present in ``counts`` (types with zero rows are dropped)."""
    present = [t for t in taxonomy.NAMES if counts.get(t, 0) > 0]
    if not present:
        raise ValueError("no samples to schedule: the selection holds no rows")
    if isinstance(schedule, Curriculum):
        cur = schedule
    elif isinstance(schedule, Mapping):
        cur = Curriculum.from_dict(schedule)
    elif isinstance(schedule, str) and schedule in SCHEDULES:
        cur = SCHEDULES[schedule](counts, batch_size, steps)
    elif isinstance(schedule, str) and schedule.endswith((".yaml", ".yml")):
        cur = Curriculum.from_yaml(schedule)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}, "
                         f"a Curriculum, a dict or a .yaml file")
    return cur.validate().restrict(present)


def nested_subset(keys_or_n: "int | Sequence[str] | Any", fraction: float, seed: int = 0,
                  strata: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices of a deterministic subset holding ``fraction`` of the rows.

    Subsets are nested: for the same keys and seed, the subset at a smaller fraction is
    contained in the one at a larger fraction (Figure 6's 10%..100% data-scaling study).
    Ranks come from a seeded permutation of the rows in *key* order, so the subset does not
    depend on the order of the index rows. With ``strata`` (e.g. degradation ids, one per
    row) each stratum keeps ``round(fraction * size)`` rows (at least one), so the type
    distribution is preserved.

    Args:
        keys_or_n: Row count, or the rows' keys (list, numpy or pyarrow array).
        fraction: In (0, 1].
        seed: Seed of the ranking.
        strata: Optional integer label per row.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"subset fraction must be in (0, 1], got {fraction!r}")
    if isinstance(keys_or_n, (int, np.integer)):
        n, order = int(keys_or_n), None
    else:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = keys_or_n if isinstance(keys_or_n, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys_or_n), pa.string())
        n = len(arr)
        order = np.asarray(pc.sort_indices(arr))  # position of each row in key order
    rank_in_keys = np.random.default_rng([seed, 0x5B5E7]).permutation(n)
    rank = np.empty(n, np.int64)
    if order is None:
        rank[:] = rank_in_keys
    else:
        rank[order] = rank_in_keys
    if fraction >= 1:
        return np.arange(n)
    if strata is None:
        return np.sort(np.argsort(rank, kind="stable")[: int(round(fraction * n))])
    strata = np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"strata has {len(strata)} labels for {n} rows")
    by = np.lexsort((rank, strata))  # rows grouped by stratum, each group by rank
    labels, starts, sizes = np.unique(strata[by], return_index=True, return_counts=True)
    take = np.maximum(1, np.round(fraction * sizes).astype(np.int64))
    pos = np.arange(n) - np.repeat(starts, sizes)
    return np.sort(by[pos < np.repeat(take, sizes)])


# ---------------------------------------------------------------- integer batch counts
def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def hamilton(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``total`` by ``weights`` (ties to the lower index)."""
    w = np.asarray(weights, np.float64)
    q = w / w.sum() * total
    out = np.floor(q).astype(np.int64)
    r = int(total - out.sum())
    if r > 0:
        out[np.argsort(-(q - out), kind="stable")[:r]] += 1
    return out


def systematic(totals: np.ndarray, weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Split each ``totals[s]`` by ``weights``: floors plus systematic rounding at offset
    ``u[s]`` in [0, 1), so every part gets ``floor`` or ``ceil`` of its exact quota and its
    expected value is the quota exactly. Returns (S, D) int64."""
    p = np.asarray(weights, np.float64)
    q = (p / p.sum())[None, :] * np.asarray(totals, np.float64)[:, None]
    fl = np.floor(q)
    r = np.asarray(totals, np.float64) - fl.sum(1)
    cum = np.minimum(np.cumsum(q - fl, axis=1), r[:, None])
    cum[:, -1] = r
    prev = np.concatenate([np.zeros((len(q), 1)), cum[:, :-1]], axis=1)
    extra = np.ceil(cum - u[:, None] - 1e-9) - np.ceil(prev - u[:, None] - 1e-9)
    return (fl + extra).astype(np.int64)


class BatchCounts:
    """Per-step integer counts of each type in the global batch, computed chunk by chunk.

    Only per-chunk totals are kept (a few KB even for millions of steps); the counts of a
    chunk are regenerated on demand from seeded generators keyed by
    (seed, epoch, phase, group, chunk), so any step can be computed without the others.

    Args:
        curriculum: Phases over the types present (see :func:`resolve`).
        types: Column order of the count arrays (type names).
        batch_size: Global batch size (slots per step).
        seed: Seed of all draws.
        epoch: Epoch number, mixed into every draw.
        chunk_slots: Slots per planning chunk (the unit of randomness); changing it changes
            the order, so keep the default except in tests.
    """

    def __init__(self, curriculum: Curriculum, types: Sequence[str], batch_size: int,
                 seed: int = 0, epoch: int = 0, chunk_slots: int = CHUNK_SLOTS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.curriculum, self.types = curriculum, list(types)
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), int(epoch)
        col = {t: i for i, t in enumerate(self.types)}
        missing = [t for t in curriculum.types() if t not in col]
        if missing:
            raise ValueError(f"curriculum uses types {missing} that are not in the data {self.types}")
        self.chunk_steps = max(1, int(chunk_slots) // self.batch_size)
        self._chunks: list[tuple[int, int, int, int]] = []  # (phase, local chunk, start, steps)
        self._groups: list[list[tuple[np.ndarray, np.ndarray]]] = []  # per phase: (columns, weights)
        self._draws: list[list[np.ndarray | None]] = []  # per phase, group: chunk totals table
        start = 0
        for pi, ph in enumerate(curriculum.phases):
            groups = ph.groups or (tuple(t for t in self.types if ph.weights.get(t, 0) > 0),)
            gl = []
            for g in groups:
                names = [t for t in g if ph.weights.get(t, 0) > 0]
                gl.append((np.array([col[t] for t in names], np.int64),
                           np.array([ph.weights[t] for t in names], np.float64)))
            self._groups.append(gl)
            nch = -(-ph.steps // self.chunk_steps)
            for c in range(nch):
                n = min(self.chunk_steps, ph.steps - c * self.chunk_steps)
                self._chunks.append((pi, c, start + c * self.chunk_steps, n))
            start += ph.steps
            self._draws.append([self._hyper(pi, gi) for gi in range(len(gl))])
        self._starts = np.array([c[2] for c in self._chunks] + [start], np.int64)
        # Cumulative per-type totals before each chunk: cursors of the per-type streams.
        tot = np.zeros((len(self._chunks) + 1, len(self.types)), np.int64)
        for ci in range(len(self._chunks)):
            tot[ci + 1] = tot[ci] + self._chunk_totals(ci)
        self._cum = tot

    @property
    def total_steps(self) -> int:
        return int(self._starts[-1])

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    def chunk_range(self, ci: int) -> tuple[int, int]:
        """Global (start, stop) steps of chunk ``ci``."""
        return int(self._chunks[ci][2]), int(self._chunks[ci][2] + self._chunks[ci][3])

    def chunk_cursor(self, ci: int) -> np.ndarray:
        """Samples of each type consumed by all chunks before chunk ``ci``."""
        return self._cum[ci]

    def chunk_of(self, step: int) -> int:
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside 0..{self.total_steps - 1}")
        return int(np.searchsorted(self._starts, step, side="right") - 1)

    def phase_of(self, step: int) -> Phase:
        return self.curriculum.phases[self._chunks[self.chunk_of(step)][0]]

    def _group_sizes(self, pi: int, c: int, n: int) -> np.ndarray:
        gl = self._groups[pi]
        if len(gl) == 1:
            return np.full((n, 1), self.batch_size, np.int64)
        u = _rng(self.seed, self.epoch, 1, pi, c).random(n)
        return systematic(np.full(n, self.batch_size), np.array([w.sum() for _, w in gl]), u)

    def _hyper(self, pi: int, gi: int) -> np.ndarray | None:
        """Per-chunk type totals of a shuffle/single group: a sequential multivariate
        hypergeometric split of the phase's exact totals, i.e. one uniform shuffle."""
        ph = self.curriculum.phases[pi]
        if ph.mode == "share":
            return None
        cols, w = self._groups[pi][gi]
        chunks = [(c, n) for (p, c, _, n) in self._chunks if p == pi]
        if ph.mode == "shuffle":
            units = [int(self._group_sizes(pi, c, n)[:, gi].sum()) for c, n in chunks]
        else:  # single: one type per step
            units = [n for _, n in chunks]
        remaining = hamilton(sum(units), w)
        rng = _rng(self.seed, self.epoch, 2, pi, gi)
        table = np.zeros((len(chunks), len(cols)), np.int64)
        for i, L in enumerate(units):
            table[i] = rng.multivariate_hypergeometric(remaining, L) if L else 0
            remaining = remaining - table[i]
        return table

    def _chunk_totals(self, ci: int) -> np.ndarray:
        """Per-type totals of chunk ``ci`` (shuffle phases: straight from the draw table)."""
        pi, c, _, _ = self._chunks[ci]
        if self.curriculum.phases[pi].mode != "shuffle":
            return self.chunk_counts(ci).sum(0)
        out = np.zeros(len(self.types), np.int64)
        for gi, (cols, _) in enumerate(self._groups[pi]):
            out[cols] += self._draws[pi][gi][c]
        return out

    def chunk_counts(self, ci: int) -> np.ndarray:
        """(steps, types) counts of chunk ``ci``."""
        pi, c, _, n = self._chunks[ci]
        ph = self.curriculum.phases[pi]
        sizes = self._group_sizes(pi, c, n)
        out = np.zeros((n, len(self.types)), np.int64)
        for gi, (cols, w) in enumerate(self._groups[pi]):
            b = sizes[:, gi]
            if ph.mode == "share":
                out[:, cols] += systematic(b, w, _rng(self.seed, self.epoch, 3, pi, gi, c).random(n))
                continue
            t = self._draws[pi][gi][c]
            rng = _rng(self.seed, self.epoch, 4, pi, gi, c)
            labels = rng.permutation(np.repeat(np.arange(len(cols)), t))
            if ph.mode == "shuffle":
                step_of = np.repeat(np.arange(n), b)
                part = np.bincount(step_of * len(cols) + labels, minlength=n * len(cols)).reshape(n, len(cols))
            else:
                part = np.zeros((n, len(cols)), np.int64)
                part[np.arange(n), labels] = b
            out[:, cols] += part
        return out

    def cursor(self, step: int) -> np.ndarray:
        """Samples of each type consumed by all steps before ``step``."""
        if step >= self.total_steps:
            return self._cum[-1].copy()
        ci = self.chunk_of(step)
        s0 = self.chunk_range(ci)[0]
        return self._cum[ci] + self.chunk_counts(ci)[: step - s0].sum(0)

    def counts(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(stop - start, types) counts of a range of steps."""
        stop = self.total_steps if stop is None else stop
        if start >= stop:
            return np.zeros((0, len(self.types)), np.int64)
        parts = []
        for ci in range(self.chunk_of(start), self.chunk_of(stop - 1) + 1):
            a, b = self.chunk_range(ci)
            parts.append(self.chunk_counts(ci)[max(start, a) - a: min(stop, b) - a])
        return np.concatenate(parts)

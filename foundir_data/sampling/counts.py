"""Integer batch composition: how many samples of each type go into every global batch.

:class:`BatchCounts` turns a :class:`foundir_data.sampling.schedules.Curriculum` into integer counts:
for global step ``s``, ``counts[s, d]`` samples of degradation type ``d`` go into the global
batch. The counts depend only on (seed, epoch, curriculum, batch size, step), never on the
number of ranks or workers; which *rows* fill those slots is ``plan.py``'s job.

How each ``Phase.mode`` is realised (the modes themselves are described in ``schedules.py``):
    ``shuffle``: sequential multivariate-hypergeometric draws of the phase's exact totals
        (:func:`hamilton`) per chunk of :data:`CHUNK_SLOTS` slots, then a seeded permutation
        inside the chunk, so the whole phase is one uniform shuffle without materialising it.
    ``share``: :func:`systematic` rounding of ``weight * batch`` in every step.
    ``single``: the chunk's steps are dealt to types like ``shuffle`` deals slots.

``Phase.groups`` first splits each step's batch between groups with :func:`systematic`.
Pure seeded numpy (mosaicml streaming style): every draw comes from a generator keyed by
(seed, epoch, purpose, phase, group, chunk), so any step is computable on its own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from foundir_data.sampling.rng import GROUP_SIZES, SHARE_COUNTS, STEP_LABELS, TYPE_TOTALS, generator
from foundir_data.sampling.schedules import Curriculum, Phase

#: Planning chunk of about this many slots: the unit of randomness (fixed by the global
#: batch size only, so it never depends on world size or workers).
CHUNK_SLOTS = 1 << 16


def hamilton(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder (Hamilton) split of ``total`` by ``weights``.

    Args:
        total: Integer to split.
        weights: Non-negative weights, not all zero.

    Returns:
        int64 parts, each the floor or ceil of its exact quota, summing to ``total``
        (ties go to the lower index).
    """
    w = np.asarray(weights, np.float64)
    q = w / w.sum() * total
    out = np.floor(q).astype(np.int64)
    r = int(total - out.sum())
    if r > 0:
        out[np.argsort(-(q - out), kind="stable")[:r]] += 1
    return out


def systematic(totals: np.ndarray, weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Split each ``totals[s]`` by ``weights`` with systematic rounding.

    Floors plus systematic rounding at offset ``u[s]``, so every part gets the floor or ceil
    of its exact quota and, for uniform ``u``, its expected value is the quota exactly.

    Args:
        totals: (S,) integers to split.
        weights: (D,) non-negative weights, not all zero.
        u: (S,) offsets in [0, 1).

    Returns:
        (S, D) int64 parts; row ``s`` sums to ``totals[s]``.
    """
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
        curriculum: Phases over the types present (see :func:`foundir_data.sampling.schedules.resolve`).
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
        """Global steps of the whole curriculum."""
        return int(self._starts[-1])

    @property
    def num_chunks(self) -> int:
        """Number of planning chunks over all phases."""
        return len(self._chunks)

    def chunk_range(self, ci: int) -> tuple[int, int]:
        """Global (start, stop) steps of chunk ``ci``."""
        return int(self._chunks[ci][2]), int(self._chunks[ci][2] + self._chunks[ci][3])

    def chunk_cursor(self, ci: int) -> np.ndarray:
        """Samples of each type consumed by all chunks before chunk ``ci``."""
        return self._cum[ci]

    def chunk_of(self, step: int) -> int:
        """Index of the chunk holding global ``step``; IndexError outside the run."""
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside 0..{self.total_steps - 1}")
        return int(np.searchsorted(self._starts, step, side="right") - 1)

    def phase_of(self, step: int) -> Phase:
        """The :class:`~foundir_data.sampling.schedules.Phase` that global ``step`` belongs to."""
        return self.curriculum.phases[self._chunks[self.chunk_of(step)][0]]

    def _group_sizes(self, pi: int, c: int, n: int) -> np.ndarray:
        gl = self._groups[pi]
        if len(gl) == 1:
            return np.full((n, 1), self.batch_size, np.int64)
        u = generator(self.seed, self.epoch, GROUP_SIZES, pi, c).random(n)
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
        rng = generator(self.seed, self.epoch, TYPE_TOTALS, pi, gi)
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
                out[:, cols] += systematic(b, w, generator(self.seed, self.epoch, SHARE_COUNTS, pi, gi, c).random(n))
                continue
            t = self._draws[pi][gi][c]
            rng = generator(self.seed, self.epoch, STEP_LABELS, pi, gi, c)
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

"""Curricula over per-degradation streams: which types go in every batch, in what share.

A :class:`Curriculum` is a list of :class:`Phase` objects. :class:`foundir_data.sampling.counts.BatchCounts`
turns it into integer counts: for global step ``s``, ``counts[s, d]`` samples of degradation
type ``d`` go into the global batch; which *rows* fill those slots is ``plan.py``'s job.

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

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from foundir_data import taxonomy
from foundir_data.sampling.rng import NESTED_SUBSET, generator

MODES = ("shuffle", "share", "single")


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
        """Global steps over all phases."""
        return int(sum(p.steps for p in self.phases))

    def types(self) -> list[str]:
        """Names of all types with a positive weight somewhere, in taxonomy order."""
        used = {k for p in self.phases for k, w in p.weights.items() if w > 0}
        return [n for n in taxonomy.NAMES if n in used]

    def validate(self) -> "Curriculum":
        """Raise ValueError describing the first problem; returns ``self`` for chaining."""
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

    def run_for(self, steps: int | None) -> "Curriculum":
        """The curriculum a run of ``steps`` global steps follows.

        When the run is longer than the curriculum, its last phase (the last one with a task
        pool) continues to the run's end: stage 2 of ``incremental`` never falls back to stage
        1, ``sequence`` stays on its last task. A run shorter than the curriculum stops inside
        it and the curriculum is returned unchanged, as it is for ``steps=None``. Lengthening
        only the last phase keeps every earlier phase's draws, so the batches before the last
        phase do not depend on the run's length (``docs/sampler.md``).

        Args:
            steps: Global steps of the run (``--steps`` times gradient accumulation), or None.
        """
        if steps is None or int(steps) <= self.total_steps:
            return self
        live = [i for i, p in enumerate(self.phases) if any(w > 0 for w in p.weights.values())]
        if not live:
            raise ValueError(f"curriculum {self.name!r}: no phase has a task pool to continue")
        phases = list(self.phases)
        last = phases[live[-1]]
        phases[live[-1]] = dataclasses.replace(last, steps=int(last.steps) + int(steps) - self.total_steps)
        return Curriculum(phases, self.name).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, the inverse of :meth:`from_dict` (saved in checkpoints/logs)."""
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
        """:meth:`from_dict` of a YAML file; errors name ``path``."""
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
    ``n`` defaults to one pass over the first class. The paper's text says n and 2n; the
    release's own two stages are :func:`release` (``docs/training.md``, "Recipes").
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


def release(counts: Mapping[str, int], batch_size: int, steps: int | None = None,
            stage2_factor: int = 3) -> Curriculum:
    """The release's two training stages (its ``train.sh``; ``docs/training.md``, "Recipes").

    Stage 1 lasts ``n`` steps, uniform over the isolated pairs (the release's isolated pair
    list, shuffled); stage 2 lasts ``stage2_factor * n`` steps, uniform over all pairs (the
    full list). The release runs n = 500k, then continues to 2M: 1.5M more steps.
    ``n`` defaults to one pass over the isolated pairs.
    """
    iso = [t for t in taxonomy.ISOLATED if counts.get(t, 0) > 0]
    if not iso:
        raise ValueError(f"schedule 'release': none of {list(taxonomy.ISOLATED)} is in the data")
    n = int(steps) if steps is not None else _ceil(sum(counts[t] for t in iso), batch_size)
    return Curriculum([Phase("release-1-isolated", n, _prop(counts, iso), "shuffle"),
                       Phase("release-2-all", stage2_factor * n, _prop(counts, taxonomy.NAMES), "shuffle")],
                      "release").validate()


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
    "release": release,
}


def resolve(schedule: "str | Curriculum | Mapping[str, Any]", counts: Mapping[str, int], batch_size: int,
            steps: int | None = None, run_steps: int | None = None) -> Curriculum:
    """A named schedule, a dict/YAML path, or a Curriculum -> a Curriculum restricted to the
    types present in ``counts`` (types with zero rows are dropped).

    Args:
        schedule: See above.
        counts: Rows per type name.
        batch_size: Global batch size.
        steps: The schedule's step parameter (``n``; see :data:`SCHEDULES`).
        run_steps: Global steps of the run: the last phase continues to this step
            (:meth:`Curriculum.run_for`); None keeps the curriculum's own length.
    """
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
    return cur.validate().restrict(present).run_for(run_steps)


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
        arr = keys_or_n if isinstance(keys_or_n, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys_or_n), pa.string())
        n = len(arr)
        order = np.asarray(pc.sort_indices(arr))  # position of each row in key order
    rank_in_keys = generator(seed, NESTED_SUBSET).permutation(n)
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


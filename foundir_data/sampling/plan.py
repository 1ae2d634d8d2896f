"""The seeded global sample order and its partition over ranks and DataLoader workers.

Pure numpy, mosaicml-streaming style: nothing here depends on the world size except the
final slicing, so the global order is a function of (seed, epoch, schedule, batch size, step)
only.

* Each degradation type present has an endless *stream* of its rows: stream-epoch ``e`` is a
  seeded permutation keyed by (seed, epoch, type, e) that shuffles the type's shards, groups
  them into blocks of ``shuffle_block`` shards and shuffles the samples inside each block, so
  consecutive reads stay within a few shards (``shuffle_block=0``: one uniform shuffle).
* Global step ``s`` takes ``counts[s, d]`` rows (``counts.BatchCounts``) from the cursor of
  each stream ``d`` and shuffles them within the batch (seeded by the chunk of steps).
* Rank ``r`` of ``W`` takes columns ``[r*B/W, (r+1)*B/W)`` of every global batch, so every rank
  gets the same number of batches (DDP never waits on an uneven rank); worker ``k`` of ``K``
  takes steps ``start + k, start + k + K, ...`` and a ``DataLoader(batch_size=None)`` that
  round-robins over workers yields them in step order.
* Resuming at step ``s`` needs only ``s``: cursors come from per-chunk count totals.

With ``mix`` and its default length (``ceil(N / B)`` steps) one pass serves every row once,
plus fewer than ``B`` rows of padding that start the next stream-epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from foundir_data import taxonomy
from foundir_data.sampling.counts import CHUNK_SLOTS, BatchCounts
from foundir_data.sampling.rng import BATCH_SHUFFLE, STREAM_ORDER, generator
from foundir_data.sampling.schedules import Curriculum, resolve

#: Default shards per shuffle block (mosaicml streaming's py1b idea: shuffle within a block
#: of shards so a reader touches few shards at a time).
DEFAULT_SHUFFLE_BLOCK = 8


#: Small streams are shuffled in groups of about this many slots per generator.
STREAM_GROUP_SLOTS = 512


def _group_shuffle(rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
    """Indices that sort ``group`` ascending, uniformly shuffled within each group value
    (a random permutation, then a stable sort by group: radix sort for small ints)."""
    perm = rng.permutation(len(group))
    g = group[perm]
    if len(g) and g.max() < 1 << 16:
        g = g.astype(np.uint16)
    return perm[np.argsort(g, kind="stable")]


class CurriculumPlan:
    """The global batch order of a whole curriculum (every phase, to ``run_steps``) over an index.

    Args:
        degradation_id: Taxonomy index of each row (int array).
        shard: Shard code of each row (int array; rows of one shard share a code, and codes
            sort like the shard paths).
        within: Position of each row inside its shard (int array) or None.
        schedule: A name from ``schedules.SCHEDULES``, a dict/YAML path or a Curriculum.
        batch_size: Global batch size in rows (pairs).
        seed: Seed of every draw.
        epoch: Epoch number mixed into every draw (``set_epoch`` in the stream).
        steps: The schedule's step parameter (``n`` for incremental, the run length for
            mix/combine, steps per task for sequence); None for one pass.
        run_steps: Global steps of the run: the curriculum's last phase continues to this
            step (``Curriculum.run_for``), so the plan never restarts at its first phase;
            None: the curriculum's own length.
        shuffle_block: Shards per shuffle block; 0 shuffles each stream uniformly.
        chunk_slots: See ``counts.BatchCounts`` (tests only).
    """

    def __init__(self, degradation_id: np.ndarray, shard: np.ndarray | None, within: np.ndarray | None,
                 schedule: "str | Curriculum | Mapping", batch_size: int, *, seed: int = 0,
                 epoch: int = 0, steps: int | None = None, run_steps: int | None = None,
                 shuffle_block: int = DEFAULT_SHUFFLE_BLOCK, chunk_slots: int = CHUNK_SLOTS,
                 shard_count: np.ndarray | None = None) -> None:
        deg = np.asarray(degradation_id, np.int64)
        if len(deg) and (deg.min() < 0 or deg.max() >= len(taxonomy.TYPES)):
            raise ValueError(f"degradation_id outside 0..{len(taxonomy.TYPES) - 1} in the index")
        if shuffle_block < 0:
            raise ValueError(f"shuffle_block must be >= 0, got {shuffle_block}")
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), int(epoch)
        self.shuffle_block = int(shuffle_block)
        cnt = None if shard_count is None else np.asarray(shard_count, np.int64)
        sizes = np.bincount(deg, weights=cnt, minlength=len(taxonomy.TYPES)).astype(np.int64)
        self.num_rows = int(sizes.sum())
        self.type_ids = np.flatnonzero(sizes)  # taxonomy indices of the present types
        self.types = [taxonomy.TYPES[i].name for i in self.type_ids]
        counts = {taxonomy.TYPES[i].name: int(sizes[i]) for i in self.type_ids}
        self.curriculum = resolve(schedule, counts, self.batch_size, steps, run_steps)
        self.counts = BatchCounts(self.curriculum, self.types, self.batch_size, self.seed, self.epoch, chunk_slots)
        self._streams: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._n = [int(sizes[i]) for i in self.type_ids]
        if cnt is not None:
            self._virtual(deg, cnt)
            return
        # Rows of each type sorted by (shard, position): the unshuffled stream.
        shard = np.asarray(shard, np.int64)
        within = np.zeros(len(deg), np.int64) if within is None else np.asarray(within, np.int64)
        order = np.lexsort((within, shard, deg))
        bounds = np.concatenate([[0], np.cumsum(sizes[self.type_ids])])
        self._rows: list[np.ndarray | None] = [order[bounds[j]: bounds[j + 1]] for j in range(len(self.type_ids))]
        self._runs = [_run_sizes(shard[r]) for r in self._rows]  # a shard's rows are contiguous
        self._shard, self._within = shard, within

    def _virtual(self, deg: np.ndarray, cnt: np.ndarray) -> None:
        """Shard-level state of :meth:`from_shards`: rows numbered by (type, shard, position)."""
        keep = np.flatnonzero(cnt > 0)  # an empty shard has no rows (the index gives it no code)
        code = np.full(len(cnt), -1, np.int64)
        code[keep] = np.arange(len(keep))
        order = keep[np.lexsort((code[keep], deg[keep]))]
        self._vstart = np.concatenate([[0], np.cumsum(cnt[order])])
        self._vcode = code[order]
        d = deg[order]
        first = np.searchsorted(d, self.type_ids)
        last = np.searchsorted(d, self.type_ids, side="right")
        self._runs = [cnt[order][a:b] for a, b in zip(first, last)]
        self._base = [int(self._vstart[a]) for a in first]
        self._rows = [None] * len(self.type_ids)
        self._shard = self._within = None

    @classmethod
    def from_shards(cls, shard_deg: Sequence[int], shard_count: Sequence[int],
                    schedule: "str | Curriculum | Mapping", batch_size: int, **kw) -> "CurriculumPlan":
        """Plan from shard-level facts only (the manifest's shard list): O(shards) memory.

        Args:
            shard_deg: Taxonomy index of each shard's degradation type, shards in the order of
                their sorted paths (``shard_codes`` order).
            shard_count: Samples in each shard (positions ``0 .. count-1``).
            schedule, batch_size, **kw: As for the constructor.

        Rows are *virtual*: numbered by (type, shard, position), so a type's rows are one
        range; :meth:`locate` turns rows into (shard code, position). Every batch holds the
        same (shard, position) pairs as the plan over the full index of the same shards: the
        permutations depend on the per-shard counts only (``tests/test_plan_shards.py``).
        """
        return cls(np.asarray(shard_deg, np.int64), None, None, schedule, batch_size,
                   shard_count=np.asarray(shard_count, np.int64), **kw)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard code, position in the shard) of each of ``rows``."""
        rows = np.asarray(rows, np.int64)
        if self._shard is not None:
            return self._shard[rows], self._within[rows]
        k = np.searchsorted(self._vstart, rows, side="right") - 1
        return self._vcode[k], rows - self._vstart[k]

    def _map(self, j: int, perm: np.ndarray) -> np.ndarray:
        """Rows at stream positions ``perm`` of present type ``j``."""
        rows = self._rows[j]
        return perm + self._base[j] if rows is None else rows[perm]

    @classmethod
    def from_index(cls, index: pa.Table, schedule: "str | Curriculum | Mapping", batch_size: int,
                   **kw) -> "CurriculumPlan":
        """Plan over an index table (needs ``degradation_id``, ``shard``, ``sample_index``)."""
        for c in ("degradation_id", "shard", "sample_index"):
            if c not in index.column_names:
                raise ValueError(f"index lacks column {c!r} needed for planning")
        return cls(index.column("degradation_id").to_numpy(), shard_codes(index.column("shard")),
                   index.column("sample_index").to_numpy(), schedule, batch_size, **kw)

    @property
    def total_steps(self) -> int:
        return self.counts.total_steps

    # ------------------------------------------------------------ streams
    def _group_size(self, j: int) -> int:
        # Small streams draw many stream-epochs from one generator (vectorised), so a type
        # with a handful of rows does not cost one generator per served sample.
        return max(1, STREAM_GROUP_SLOTS // self._n[j])

    def _stream_group(self, j: int, g: int) -> np.ndarray:
        """Row orders of stream-epochs ``g*G .. g*G+G-1`` of present type ``j``: (G, n)."""
        key = (j, g)
        hit = self._streams.get(key)
        if hit is not None:
            self._streams.move_to_end(key)
            return hit
        n, G = self._n[j], self._group_size(j)
        rng = generator(self.seed, self.epoch, STREAM_ORDER, self.type_ids[j], g)
        sizes = self._runs[j]  # rows per shard, in shard order
        nsh = len(sizes)
        if G == 1:
            if self.shuffle_block == 0:
                perm = rng.permutation(n)
            else:
                block = np.empty(nsh, np.int64)
                block[rng.permutation(nsh)] = np.arange(nsh) // self.shuffle_block
                perm = _group_shuffle(rng, np.repeat(block, sizes))
            out = self._map(j, perm)[None, :]
        else:
            if self.shuffle_block == 0:
                row_block = np.zeros((G, n))
            else:  # per epoch: a shard permutation, blocks of shuffle_block shards
                pos = np.argsort(np.argsort(rng.random((G, nsh)), axis=1), axis=1)
                row_block = np.repeat(pos // self.shuffle_block, sizes, axis=1).astype(np.float64)
            out = self._map(j, np.argsort(row_block + rng.random((G, n)), axis=1))
        self._streams[key] = out
        while len(self._streams) > 2 * len(self._n) + 2:
            self._streams.popitem(last=False)
        return out

    def stream_epoch(self, j: int, e: int) -> np.ndarray:
        """Row order of stream-epoch ``e`` of the ``j``-th present type: a seeded permutation
        of the type's rows that shuffles shards, then samples within blocks of shards."""
        G = self._group_size(j)
        return self._stream_group(j, e // G)[e % G]

    def stream_rows(self, j: int, start: int, stop: int) -> np.ndarray:
        """Rows at positions ``[start, stop)`` of the endless stream of present type ``j``."""
        n, G = self._n[j], self._group_size(j)
        e0, off0 = divmod(start, n)
        if stop - start <= n - off0:  # within one stream-epoch: a slice
            return self._stream_group(j, e0 // G)[e0 % G, off0: off0 + stop - start]
        p = np.arange(start, stop, dtype=np.int64)
        e = p // n
        off = p - e * n
        g = e // G
        if not len(p):
            return p
        g0, g1 = int(g[0]), int(g[-1])
        if g0 == g1:
            return self._stream_group(j, g0)[e - g0 * G, off]
        out = np.empty(len(p), np.int64)
        cuts = np.searchsorted(g, np.arange(g0, g1 + 2))  # g is sorted: one range per group
        for gi, a, b in zip(range(g0, g1 + 1), cuts[:-1], cuts[1:]):
            out[a:b] = self._stream_group(j, gi)[e[a:b] - gi * G, off[a:b]]
        return out

    # ------------------------------------------------------------ batches
    def chunk_batches(self, ci: int) -> tuple[int, np.ndarray]:
        """Global batches of chunk ``ci``: (first step, rows array of shape (steps, B))."""
        counts = self.counts.chunk_counts(ci)
        s0, s1 = self.counts.chunk_range(ci)
        n = s1 - s0
        cur = self.counts.chunk_cursor(ci)
        rows, steps = [], []
        for j in range(len(self.types)):
            c = counts[:, j]
            t = int(c.sum())
            if t:
                rows.append(self.stream_rows(j, int(cur[j]), int(cur[j]) + t))
                steps.append(np.repeat(np.arange(n), c))
        rows_a, steps_a = np.concatenate(rows), np.concatenate(steps)
        # Shuffle inside each batch so ranks do not get type-sorted slices.
        order = _group_shuffle(generator(self.seed, self.epoch, BATCH_SHUFFLE, ci), steps_a)
        return s0, rows_a[order].reshape(n, self.batch_size)

    def global_batch(self, step: int) -> np.ndarray:
        """Rows of the global batch at ``step``."""
        s0, b = self.chunk_batches(self.counts.chunk_of(step))
        return b[step - s0]

    def batches(self, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
                start: int = 0, nodes: int = 1, with_slots: bool = False) -> Iterator[tuple]:
        """Yield ``(step, rows)`` for this rank's slice of the steps this worker serves.

        Args:
            rank, world_size: This process's slice of every global batch.
            worker, num_workers: DataLoader worker id and count.
            start: First step (resume point).
            nodes: With ``nodes > 1`` the slots of each global batch are dealt so that the
                ranks of one node (``world_size / nodes`` consecutive ranks, torchrun's
                numbering) get rows of the same shards (a shard prefers one node, by hash),
                so with whole-shard caching each node downloads few shards instead of all.
                The global batches are unchanged; only who gets which slot differs.
            with_slots: Also yield each row's canonical slot in the global batch
                (``(step, rows, slots)``); per-sample randomness keyed by it does not
                depend on ``nodes`` or the world size.
        """
        lo, hi = partition_columns(self.batch_size, rank, world_size)
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker {worker} outside 0..{num_workers - 1}")
        if nodes < 1 or world_size % nodes:
            raise ValueError(f"world size {world_size} is not a multiple of nodes={nodes}")
        total = self.total_steps
        first = start + worker
        if first >= total:
            return
        ci = self.counts.chunk_of(first)
        s = first
        while s < total:
            s0, b = self.chunk_batches(ci)
            slots = np.broadcast_to(np.arange(self.batch_size), b.shape)
            if nodes > 1:
                slots = node_affinity_order(self.locate(b)[0], nodes)
                b = np.take_along_axis(b, slots, axis=1)
            s1 = s0 + len(b)
            while s < s1:
                if with_slots:
                    yield s, b[s - s0, lo:hi], slots[s - s0, lo:hi]
                else:
                    yield s, b[s - s0, lo:hi]
                s += num_workers
            while ci < self.counts.num_chunks and self.counts.chunk_range(ci)[1] <= s:
                ci += 1

    def steps_for(self, worker: int = 0, num_workers: int = 1, start: int = 0) -> int:
        """Number of batches a worker yields from ``start`` (the same on every rank)."""
        return len(range(start + worker, self.total_steps, num_workers))


def _run_sizes(sh: np.ndarray) -> np.ndarray:
    """Lengths of the runs of equal values in ``sh`` (rows per shard, in order)."""
    if not len(sh):
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sh[1:] != sh[:-1]])
    return np.diff(np.r_[starts, len(sh)])


def node_affinity_order(shards: np.ndarray, nodes: int) -> np.ndarray:
    """Per batch (row of ``shards``), the slot order that groups slots by their shard's
    preferred node (a multiplicative hash of the shard code): cutting the reordered batch
    into ``nodes`` equal parts gives each node mostly its own shards (spill-over only where
    a node's shards hold more or fewer slots than its share)."""
    pref = ((shards.astype(np.uint64) * np.uint64(2654435761)) >> np.uint64(7)) % np.uint64(nodes)
    return np.argsort(pref, axis=1, kind="stable")


def partition_columns(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Columns ``[lo, hi)`` of the global batch that belong to ``rank``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if batch_size % world_size:
        raise ValueError(f"global batch size {batch_size} is not divisible by world size "
                         f"{world_size}; choose a multiple so every rank gets equal batches")
    b = batch_size // world_size
    return rank * b, (rank + 1) * b


def shard_codes(shards: "pa.Array | pa.ChunkedArray | Sequence[str]") -> np.ndarray:
    """Integer code per row whose order follows the sorted shard paths."""
    arr = shards if isinstance(shards, (pa.Array, pa.ChunkedArray)) else pa.array(list(shards), pa.string())
    enc = pc.dictionary_encode(arr)
    if isinstance(enc, pa.ChunkedArray):
        enc = enc.combine_chunks()
    names = enc.dictionary
    rank = np.empty(len(names), np.int64)
    rank[np.asarray(pc.sort_indices(names))] = np.arange(len(names))
    return rank[enc.indices.to_numpy(zero_copy_only=False)]



def plan_batches(index: pa.Table, schedule: "str | Curriculum | Mapping", batch_size: int, *,
                 rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1,
                 start: int = 0, **kw) -> Iterator[tuple[int, np.ndarray]]:
    """Shortcut: ``CurriculumPlan.from_index(index, schedule, batch_size, **kw).batches(...)``.

    Yields ``(step, row positions in index)`` for this rank's slice of this worker's steps.
    """
    plan = CurriculumPlan.from_index(index, schedule, batch_size, **kw)
    return plan.batches(rank, world_size, worker, num_workers, start)

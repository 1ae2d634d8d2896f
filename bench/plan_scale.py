"""Issue 5 item 3: load a million-row index and plan one epoch for 64 nodes x 8 GPUs x 8 workers.

Writes a synthetic packed-folder skeleton (manifest with ~5,000 shards + index/pairs.parquet
with 1,011,614 rows: the real training set's size) in a child process, then, in this
process, times and measures the peak memory of:

1. ``FoundIRStream(...)`` for one rank: read the index columns it needs, filter, build the
   incremental plan (what every rank does at start-up);
2. the whole epoch's global order: every chunk of global batches (what the 4,096
   (rank, worker) readers compute between them; each computes only its own steps' chunks);
3. a check over all 512 x 8 (rank, worker) slices: equal batch counts, disjoint slots,
   and ``plan.batches`` of sampled slices equal to slices of the global order.

No per-sample Python objects are created (numpy / Arrow arrays only). Targets: < 10 s and
< 1 GB. The per-type counts of the training set are only published as a sunburst chart
(paper Figure 3b), so the synthetic index uses the test set's per-type proportions
(docs/release.md, "Data") scaled to 1,011,614 rows (``--distribution uniform`` for equal types).

Run: ``python bench/plan_scale.py`` (``--rows``, ``--shards``, ``--nodes``, ``--gpus``,
``--workers``, ``--per-gpu-batch``, ``--schedule`` for other sizes).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROWS = 1_011_614  # training pairs of the release (paper section 3.3)


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_skeleton(root: Path, rows: int, shards: int, distribution: str) -> None:
    """A manifest + index (no tar files): everything the planner reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from foundir_data import format as fmt
    from foundir_data import taxonomy
    from foundir_data.sampling.counts import hamilton

    if distribution == "test":
        w = np.array([t.test_ids[1] - t.test_ids[0] + 1 for t in taxonomy.TYPES], np.float64)
    else:
        w = np.ones(len(taxonomy.TYPES))
    per_type = hamilton(rows, w)
    per_shard = -(-rows // shards)
    deg = np.repeat(np.arange(len(taxonomy.TYPES)), per_type).astype(np.int16)
    shard_names, shard_col, within, infos = [], [], [], []
    for t, n in zip(taxonomy.TYPES, per_type):
        k = -(-int(n) // per_shard)
        for s in range(k):
            c = min(per_shard, int(n) - s * per_shard)
            rel = fmt.shard_relpath(fmt.LAYOUT_FULL, "train", t.name, s)
            shard_names.append(rel)
            infos.append(fmt.ShardInfo(rel, "train", t.name, fmt.LAYOUT_FULL, c, c * 10_000_000, "0" * 64))
            within.append(np.arange(c))
        shard_col.append(np.repeat(np.arange(len(shard_names) - k, len(shard_names)), np.minimum(per_shard, int(n) - np.arange(k) * per_shard)))
    codes = np.concatenate(shard_col)
    within_a = np.concatenate(within).astype(np.int32)
    off = within_a.astype(np.int64) * 10_000_000 + 512
    keys = pa.array(np.char.add("pair_", np.arange(rows).astype("U8")).astype(object), pa.string())
    cols = {
        "key": keys, "split": pa.array(["train"] * 1, pa.string()).take(pa.array(np.zeros(rows, np.int64))),
        "layout": pa.array(["full"], pa.string()).take(pa.array(np.zeros(rows, np.int64))),
        "degradation_id": pa.array(deg, pa.int16()),
        "shard": pa.array(shard_names, pa.string()).take(pa.array(codes)),
        "sample_index": pa.array(within_a, pa.int32()),
        "lq_offset": pa.array(off), "lq_size": pa.array(np.full(rows, 4_000_000, np.int64)),
        "gt_offset": pa.array(off + 4_000_512), "gt_size": pa.array(np.full(rows, 4_000_000, np.int64)),
        "source_key": pa.nulls(rows, pa.string()),
        # Distinct per row, as real hashes are (the stream keeps them as 32 bytes per member).
        "lq_sha256": pa.array(np.char.zfill(np.arange(rows).astype("U64"), 64).astype(object), pa.string()),
        "gt_sha256": pa.array(np.char.zfill(np.arange(rows, 2 * rows).astype("U64"), 64).astype(object), pa.string()),
        # The record follows GT (format version 3: its sha256 in the index, issue 19).
        "json_offset": pa.array(off + 8_001_024), "json_size": pa.array(np.full(rows, 600, np.int64)),
        "json_sha256": pa.array(np.char.zfill(np.arange(2 * rows, 3 * rows).astype("U64"), 64).astype(object),
                                pa.string()),
    }
    (root / "index").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), root / fmt.INDEX_FILE)
    man = fmt.Manifest(shards=infos, num_samples=rows)
    (root / fmt.MANIFEST_FILE).write_text(man.to_json())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=ROWS)
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--per-gpu-batch", type=int, default=8)
    ap.add_argument("--schedule", default="incremental")
    ap.add_argument("--distribution", choices=("test", "uniform"), default="test")
    ap.add_argument("--dir", help="where to write the skeleton (default: a temporary folder)")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.write_only:
        write_skeleton(Path(a.dir), a.rows, a.shards, a.distribution)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir or tmp)
        t = time.perf_counter()
        # The skeleton is written by a child process so its memory does not count here.
        subprocess.run([sys.executable, __file__, "--write-only", "--dir", str(root), "--rows", str(a.rows),
                        "--shards", str(a.shards), "--distribution", a.distribution], check=True)
        print(f"wrote a {a.rows:,}-row index and a manifest in {time.perf_counter() - t:.1f} s "
              f"({(root / 'index' / 'pairs.parquet').stat().st_size / 1e6:.1f} MB parquet)")
        return measure(root, a)


def measure(root: Path, a: argparse.Namespace) -> int:
    import pyarrow as pa

    import foundir_data.remote.store  # noqa: F401  (imports are not part of the plan's cost)
    from foundir_data.streaming.stream import FoundIRStream

    world = a.nodes * a.gpus
    batch = world * a.per_gpu_batch
    base_rss = rss_peak_mb()
    tracemalloc.start()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    stream = FoundIRStream(str(root), schedule=a.schedule, batch_size=batch, rank=0, world_size=world, crop=256)
    t1 = time.perf_counter()
    plan = stream.plan
    chunks = [plan.chunk_batches(ci) for ci in range(plan.counts.num_chunks)]
    glob = np.concatenate([b for _, b in chunks])  # (steps, batch) row ids
    t2 = time.perf_counter()
    steps = plan.total_steps
    per_worker = [plan.steps_for(k, a.workers) for k in range(a.workers)]
    assert sum(per_worker) == steps and glob.shape == (steps, batch)
    # Every (rank, worker) slice: equal counts per rank, and the slices tile the global order.
    owner = np.zeros(glob.shape, np.int32)
    b = a.per_gpu_batch
    for r in range(world):
        for k in range(a.workers):
            owner[k::a.workers, r * b:(r + 1) * b] += 1
    assert (owner == 1).all()
    t3 = time.perf_counter()
    cpu = time.process_time() - cpu0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak_rss = rss_peak_mb()
    # Real iterator on a few slices (not timed): equals the global order's slices.
    for r, k in ((0, 0), (world - 1, a.workers - 1), (world // 2, 3 % a.workers)):
        got = list(plan.batches(r, world, k, a.workers))
        assert [s for s, _ in got] == list(range(k, steps, a.workers))
        for s, rows in got[:3] + got[-2:]:
            np.testing.assert_array_equal(rows, glob[s, r * b:(r + 1) * b])
    served = np.bincount(glob.ravel(), minlength=stream.num_pairs)
    # Whole-shard caching (read="cache"): how many nodes touch each shard in the epoch.
    from foundir_data.sampling.plan import node_affinity_order

    node_of_col = np.arange(batch) // (batch // a.nodes)
    sh = plan.locate(glob)[0]
    spread = {}
    for name, order in (("dealt by rank", None), ("node affinity", node_affinity_order(sh, a.nodes))):
        s2 = sh if order is None else np.take_along_axis(sh, order, axis=1)
        pairs = np.unique(s2 * a.nodes + node_of_col[None, :])
        spread[name] = len(pairs) / len(np.unique(s2))
    total = t3 - t0
    print(f"\nplan: schedule={a.schedule}, {stream.num_pairs:,} pairs, {len(stream._shard_names):,} shards, "
          f"{a.nodes} nodes x {a.gpus} GPUs x {a.workers} workers, global batch {batch} "
          f"({a.per_gpu_batch}/GPU), {steps} steps ({', '.join(f'{p.name}:{p.steps}' for p in plan.curriculum.phases[-2:])} ...)")
    print(f"  load index + filter + plan init (one rank's start-up)   {t1 - t0:6.2f} s")
    print(f"  whole epoch's global order ({glob.size:,} slots)        {t2 - t1:6.2f} s")
    print(f"  partition check over {world * a.workers:,} (rank, worker) slices  {t3 - t2:6.2f} s")
    print(f"  total                                                   {total:6.2f} s   (target < 10 s: "
          f"{'OK' if total < 10 else 'MISSED'}, {10 / total:.1f}x headroom)")
    print(f"  CPU time of this process (the machine may be shared)    {cpu:6.2f} s")
    print(f"  peak traced Python/numpy memory                         {py_peak / 2**20:6.0f} MB")
    print(f"  Arrow pool peak                                         {pa.default_memory_pool().max_memory() / 2**20:6.0f} MB")
    print(f"  process RSS high-water growth                           {peak_rss - base_rss:6.0f} MB   (target < 1 GB: "
          f"{'OK' if peak_rss - base_rss < 1024 else 'MISSED'})")
    print(f"  nodes reading each shard in the epoch (whole-shard cache downloads per shard): "
          + ", ".join(f"{k} {v:.1f}" for k, v in spread.items()))
    print(f"  rows served at least once: {np.mean(served > 0):.1%}; batches per rank: {steps} on every rank; "
          f"per worker: {min(per_worker)}..{max(per_worker)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

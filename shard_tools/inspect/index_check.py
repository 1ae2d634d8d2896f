"""``shard_tools verify``'s index checks, without per-row Python objects for the whole index.

* ``index/pairs.parquet`` is streamed row group by row group: rows per shard against the
  manifest (:func:`shard_counts`, :func:`count_problems`), then one shard's rows at a time
  for the shard checks (:func:`shard_groups`; merge writes a shard's rows together).
* Folders with per-shard index parts (format version 3, docs/format.md): each part is
  checked against the manifest (size, sha256, rows ``0 .. count-1``) and must equal the
  shard's rows of the index (:func:`part_problems`); the key lookup is streamed file by file
  (keys sorted and unique across the whole folder, as many as the manifest counts:
  :func:`layout_problems`). Memory: one shard's rows, one key file, one row group.
* Older folders: the whole index (Arrow), grouped by shard with one sort (:func:`group_rows`)
  and its keys checked for duplicates by one Arrow group-by (``integrity.repeated_keys``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.read.index_parts import ShardRows, iter_index
from shard_tools.inspect.shard_check import Problem


def group_rows(index: pa.Table) -> dict[str, pa.Table]:
    """The index rows of each shard, in sample order (one sort, then zero-copy slices)."""
    t = index.sort_by([("shard", "ascending"), ("sample_index", "ascending")])
    shard = t["shard"].combine_chunks()
    if not len(shard):
        return {}
    change = pc.not_equal(shard[1:], shard[:-1]).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    stops = np.concatenate([starts[1:], [len(shard)]])
    names = shard.take(pa.array(starts)).to_pylist()  # one string per shard
    return {n: t.slice(int(a), int(b - a)) for n, a, b in zip(names, starts, stops)}


def shard_groups(store: Any) -> Iterator[tuple[str, pa.Table]]:
    """``(shard, its rows of index/pairs.parquet in sample order)``, streamed row group by row
    group: merge writes each shard's rows together, so one shard's rows are held at a time
    (:func:`layout_problems` reports a folder where they are not, and verify then groups the
    whole index instead)."""
    cur, parts = None, []

    def flush() -> tuple[str, pa.Table]:
        t = pa.Table.from_batches(parts)
        return cur, t.take(pc.sort_indices(t["sample_index"]))

    for batch in iter_index(store):
        shard = batch.column(batch.schema.get_field_index("shard"))
        if not len(shard):
            continue
        change = np.flatnonzero(pc.not_equal(shard[1:], shard[:-1]).to_numpy(zero_copy_only=False)) + 1
        for a, b in zip(np.r_[0, change], np.r_[change, len(shard)]):
            name = shard[int(a)].as_py()
            if name != cur and parts:
                yield flush()
                parts = []
            cur = name
            parts.append(batch.slice(int(a), int(b - a)))
    if parts:
        yield flush()


def part_problems(parts: ShardRows, info: fmt.ShardInfo, rows: pa.Table) -> list[Problem]:
    """A shard's index part checked against the manifest and equal to its rows of the index."""
    rel = fmt.index_part(info.path)
    try:
        t = parts.rows(info.path)
        parts.drop(info.path)
    except FileNotFoundError:
        return [Problem(rel, "index part is missing (run `shard_tools upgrade`)")]
    except Exception as e:  # ChecksumError, FormatError, remote errors after retries
        return [Problem(rel, f"index part refused ({type(e).__name__}: {e})")]
    if not t.equals(fmt.check_index_schema(rows, rel)):
        return [Problem(rel, f"index part differs from {fmt.INDEX_FILE} (run `shard_tools upgrade` after fixing the index)")]
    return []


def layout_problems(manifest: fmt.Manifest, store: Any) -> list[Problem]:
    """The folder-wide index checks of a folder with parts, streamed (see the module docstring)."""
    problems: list[Problem] = []
    total = sum(s.count for s in manifest.shards)
    keys_rel = manifest.keys or fmt.KEYS_FILE
    try:
        files = json.loads(store.read_bytes(keys_rel))["files"]
        prev, n = None, 0
        for f in files:
            t = pq.read_table(pa.BufferReader(store.read_bytes(f["path"])), columns=["key"])
            k = t["key"].combine_chunks()
            n += len(k)
            if len(k) and prev is not None and k[0].as_py() <= prev:
                problems.append(Problem(f["path"], "key lookup not sorted or a key repeated across files",
                                        key=k[0].as_py()))
            if len(k) > 1:
                order_bad = pc.less_equal(k[1:], k[:-1])
                for key in sorted(set(k[1:].filter(order_bad).to_pylist()))[:20]:
                    problems.append(Problem(f["path"], "duplicate key (or keys out of order) in the index", key=key))
            prev = k[-1].as_py() if len(k) else prev
        if n != total:
            problems.append(Problem(keys_rel, "key lookup row count differs from the manifest's shard counts",
                                    expected=total, found=n))
    except Exception as e:  # missing or unreadable lookup files
        problems.append(Problem(keys_rel, f"key lookup unreadable ({type(e).__name__}: {e})"))
    return problems


def shard_counts(store: Any) -> tuple[Counter, bool]:
    """Rows per shard of ``index/pairs.parquet`` (streamed, its ``shard`` column only) and
    whether each shard's rows lie together (what :func:`shard_groups` needs)."""
    counts: Counter[str] = Counter()
    done: set[str] = set()
    together, last = True, None
    for batch in iter_index(store, ["shard"]):
        col = batch.column(0)
        vc = pc.value_counts(col)
        counts.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
        if len(col):
            change = np.flatnonzero(pc.not_equal(col[1:], col[:-1]).to_numpy(zero_copy_only=False)) + 1
            for name in col.take(pa.array(np.r_[0, change])).to_pylist():  # one per run
                if name != last:
                    together = together and name not in done
                    if last is not None:
                        done.add(last)
                    last = name
    return counts, together


def count_problems(manifest: fmt.Manifest, counts: Counter) -> list[Problem]:
    """The index's rows per shard against the manifest's shard list."""
    problems: list[Problem] = []
    total = sum(s.count for s in manifest.shards)
    listed = {s.path: s.count for s in manifest.shards}
    if sum(counts.values()) != total:
        problems.append(Problem(manifest.index, "index row count differs from the manifest's shard counts",
                                expected=total, found=sum(counts.values())))
    for rel in sorted(set(counts) - set(listed)):
        problems.append(Problem(manifest.index, f"{counts[rel]} index row(s) name a shard not in the manifest", found=rel))
    return problems  # rows missing from a listed shard: verify_shard names each sample

"""Write a packed folder's index in the version-3 layout: the whole index, one part per shard, keys.

``merge``, ``tile`` and ``upgrade`` all end here (docs/format.md, "Version 3"):

* ``index/pairs.parquet``: every row (for people, DuckDB, the dataset viewer), in row groups
  of :data:`ROW_GROUP` rows so tools stream it by row group;
* ``index/by-shard/<layout>/<split>/<degradation>/<name>.parquet`` (``format.index_part``): the
  rows of one shard sorted by ``sample_index``; its size and sha256 go into the shard's
  manifest entry, so a reader checks the part before using a row of it;
* ``index/keys/NNNNN.parquet``: ``(key, shard, sample_index)`` sorted by key,
  ``format.KEYS_ROWS`` rows a file, listed with their first and last keys in
  ``index/keys/ranges.json``: ``get_pair`` reads that list and one file (two GETs).

Sorting every key once also finds duplicates: a key that appears twice is refused here (one
shard's rows are checked when a reader loads them; uniqueness across shards is only visible
to a writer or ``verify``, which see every key).

``shard_tools upgrade FOLDER`` adds parts and keys to a folder of an older layout in place:
the shards are not touched, the format version stays (the parts only add to what an older
reader reads), and readers use the parts from then on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.errors import FoundIRError
from shard_tools.pack.summary import plural
from foundir_data.output.atomic import write_atomic

#: Rows per row group of ``index/pairs.parquet``: tools read it one group at a time.
ROW_GROUP = 65536


class DuplicateKeyError(FoundIRError, ValueError):
    """Two index rows share one key: the folder would serve a sample twice."""


def _parquet_bytes(table: pa.Table, row_group: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group)
    return sink.getvalue().to_pybytes()


def _shard_runs(index: pa.Table) -> tuple[pa.Table, list[tuple[str, int, int]]]:
    """The index with each shard's rows together in sample order, and its ``(shard, start,
    stop)`` runs. Merge writes rows that way already: then the table itself (no copy of the
    whole index), else a sorted copy."""
    runs = _runs(index)
    names = [n for n, _, _ in runs]
    if len(set(names)) == len(names):
        pos = index["sample_index"].to_numpy()
        start = np.repeat(np.array([a for _, a, _ in runs], np.int64), [b - a for _, a, b in runs])
        if np.array_equal(pos, np.arange(len(pos)) - start):
            return index, runs
    order = pc.sort_indices(index, [("shard", "ascending"), ("sample_index", "ascending")])
    srt = index.take(order)
    return srt, _runs(srt)


def _runs(index: pa.Table) -> list[tuple[str, int, int]]:
    """``(shard, start, stop)`` of each run of equal ``shard`` values, in row order."""
    shard = index["shard"].combine_chunks()
    if not len(shard):
        return []
    change = pc.not_equal(shard[1:], shard[:-1]).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(change) + 1])
    stops = np.concatenate([starts[1:], [len(shard)]])
    names = shard.take(pa.array(starts)).to_pylist()  # one string per shard, not per row
    return list(zip(names, starts.tolist(), stops.tolist()))


def write_parts(root: Path, index: pa.Table, manifest: fmt.Manifest) -> None:
    """Write one part per manifest shard and record its size and sha256 in ``manifest``.

    Raises:
        FormatError: a shard whose rows do not number ``0 .. count-1``, or rows of a shard
            the manifest does not list.
    """
    srt, runs = _shard_runs(index)
    by_path = {s.path: s for s in manifest.shards}
    stray = [name for name, _, _ in runs if name not in by_path]
    if stray:
        raise fmt.FormatError(f"{root}: the index has rows of shards the manifest does not list: {stray[:3]}")
    seen = set()
    for name, a, b in runs:
        info = by_path[name]
        part = srt.slice(a, b - a)
        pos = part["sample_index"].combine_chunks()
        if info.count != b - a or (b > a and (pc.min(pos).as_py() != 0 or pc.max(pos).as_py() != b - a - 1
                                              or pc.count_distinct(pos).as_py() != b - a)):
            raise fmt.FormatError(f"{root}: shard {name} lists {info.count} samples but its index rows number "
                                  f"{b - a} with sample_index not 0..{info.count - 1}; re-pack it")
        data = _parquet_bytes(part.replace_schema_metadata(None))
        write_atomic(root / fmt.index_part(name), data, fsync=False)
        info.index_bytes, info.index_sha256 = len(data), hashlib.sha256(data).hexdigest()
        if b > a:  # the stream refuses a crop larger than this from the manifest alone
            info.min_side = int(pc.min(pc.min_element_wise(part["lq_width"], part["lq_height"])).as_py())
        seen.add(name)
    missing = [s.path for s in manifest.shards if s.path not in seen and s.count]
    if missing:
        raise fmt.FormatError(f"{root}: the manifest lists shards without index rows: {missing[:3]}")


def write_keys(root: Path, index: pa.Table) -> str:
    """Write the key lookup (sorted by key, :data:`format.KEYS_ROWS` rows a file); returns
    the path of its list (``format.KEYS_FILE``).

    Raises:
        DuplicateKeyError: naming a key that two rows share, and their shards.
    """
    keys = index.select(["key", "shard", "sample_index"])
    keys = keys.take(pc.sort_indices(keys, [("key", "ascending"), ("shard", "ascending")]))
    k = keys["key"].combine_chunks()
    if len(k) > 1:
        dup = pc.equal(k[1:], k[:-1])
        if pc.any(dup).as_py():
            i = pc.index(dup, True).as_py()
            raise DuplicateKeyError(f"{root}: key {k[i].as_py()!r} is in shards {keys['shard'][i].as_py()} and "
                                    f"{keys['shard'][i + 1].as_py()}; a sample must be packed once (re-pack "
                                    "without the duplicate)")
    files = []
    for n, a in enumerate(range(0, len(k), fmt.KEYS_ROWS)):
        part = keys.slice(a, fmt.KEYS_ROWS)
        rel = f"{fmt.KEYS_DIR}/{n:05d}.parquet"
        write_atomic(root / rel, _parquet_bytes(part), fsync=False)
        files.append({"path": rel, "first": part["key"][0].as_py(), "last": part["key"][-1].as_py(),
                      "rows": part.num_rows})
    write_atomic(root / fmt.KEYS_FILE, json.dumps({"rows": len(k), "files": files}, indent=0).encode(), fsync=False)
    return fmt.KEYS_FILE


def write_index(root: str | Path, index: pa.Table, manifest: fmt.Manifest) -> None:
    """Write ``index/pairs.parquet``, the parts and the keys of ``index`` (rows as given) and
    fill ``manifest``'s part fields; the caller writes the manifest last (docs/format.md)."""
    root = Path(root)
    index = index.replace_schema_metadata(None)
    write_parts(root, index, manifest)
    manifest.keys = write_keys(root, index)
    write_atomic(root / fmt.INDEX_FILE, _parquet_bytes(index, ROW_GROUP))


def upgrade(root: str | Path) -> fmt.Manifest:
    """Add the per-shard parts and the key lookup to a local packed folder (shards untouched).

    Raises:
        FormatError: not a packed folder, or an index that does not match its manifest.
    """
    root = Path(root)
    mpath = root / fmt.MANIFEST_FILE
    if not mpath.exists():
        raise fmt.FormatError(f"{root}: no {fmt.MANIFEST_FILE}; upgrade a local folder written by `shard_tools pack`")
    manifest = fmt.Manifest.from_json(mpath.read_text(), str(mpath))
    ipath = root / (manifest.index or fmt.INDEX_FILE)
    index = fmt.check_index_schema(pq.read_table(ipath), str(ipath))
    write_parts(root, index, manifest)
    manifest.keys = write_keys(root, index)
    write_atomic(mpath, manifest.to_json().encode())  # last: readers switch to the parts now
    return manifest


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``upgrade``'s arguments."""
    parser.description = ("Add per-shard index parts and the key lookup (format version 3's layout) to a "
                          "packed folder of an older layout; the shards are not touched.")
    parser.add_argument("root", help="a local packed folder")


def run(args: argparse.Namespace) -> int:
    """0 = upgraded (also when it already was: the parts are rewritten, same bytes)."""
    m = upgrade(args.root)
    print(f"upgraded {args.root}: {plural(len(m.shards), 'index part')} and the key lookup of "
          f"{plural(m.num_samples, 'sample')} written; shards untouched", file=sys.stderr)
    return 0

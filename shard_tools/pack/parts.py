"""Index parts: the file that finishes a shard and marks it done, and the rules resume reads.

A shard is *done* when its index part ``index/parts/<shard>.parquet`` (tile shards:
``index/parts/tile/...``) exists and its tar has the size the part records (docs/format.md).
The part is written last, atomically, with the shard's rows and, in its Parquet metadata, the
shard's ``ShardInfo`` (size and sha256 of the tar) and rejected pairs, so one atomic write and
one fsync finish a shard. Everything that asks "is this shard done?" (pack,
tile, a pack into object storage) or clears what a killed writer left (``.tmp-`` files) uses
this module; merge reads the parts it wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.output.atomic import write_atomic


class Planned(Protocol):
    """A planned shard (full frames or tiles): its tar and its index part, relative to the root."""

    path: str

    @property
    def part(self) -> str: ...


#: Parquet key-value metadata keys of an index part: the shard's ShardInfo, and the pairs
#: of this shard that were rejected (a JSON list of rejects.jsonl records). Keeping both in
#: the one done-marker file means one atomic write and one fsync per shard.
SHARD_META_KEY = b"foundir.shard"
REJECTS_META_KEY = b"foundir.rejects"
#: The format version of the part's shard (parts without it are version 1): a resumed pack
#: rebuilds, and merge refuses, parts of another version, so one folder never mixes member names.
VERSION_META_KEY = b"foundir.format_version"


def write_part(path: str | os.PathLike, rows: list[dict], info: fmt.ShardInfo, rejects: list[dict] | None = None,
               *, sync_dir: bool = True, fsync: bool = True) -> None:
    """Write an index part atomically: ``rows`` as Parquet, ``info`` (and ``rejects``) in its metadata.

    Args:
        path: The part (``index/parts/<shard>.parquet``).
        rows: The shard's index rows, in member order.
        info: The shard's ShardInfo (stored under :data:`SHARD_META_KEY`).
        rejects: The shard's rejected pairs (stored under :data:`REJECTS_META_KEY`); None
            leaves that key out (tile shards reject nothing).
        sync_dir: Passed to :func:`write_atomic`.
        fsync: Passed to :func:`write_atomic`.
    """
    meta = {SHARD_META_KEY: json.dumps(info.__dict__, sort_keys=True).encode(),
            VERSION_META_KEY: str(fmt.FORMAT_VERSION).encode()}
    if rejects is not None:
        meta[REJECTS_META_KEY] = json.dumps(rejects, sort_keys=True).encode()
    sink = pa.BufferOutputStream()
    pq.write_table(fmt.index_table(rows).replace_schema_metadata(meta), sink)
    write_atomic(path, sink.getvalue().to_pybytes(), sync_dir=sync_dir, fsync=fsync)


def read_part_meta(path: str | os.PathLike, schema=None) -> tuple[fmt.ShardInfo, list[dict]]:
    """The ShardInfo and the rejects stored in an index part's metadata.

    Args:
        path: The part (read unless ``schema`` is given; used in messages).
        schema: The part's already-read Arrow schema.
    """
    if schema is None:
        schema = pq.read_schema(path)
    meta = schema.metadata or {}
    if SHARD_META_KEY not in meta:
        raise fmt.FormatError(f"{path}: index part without {SHARD_META_KEY.decode()} metadata")
    version = int(meta.get(VERSION_META_KEY, b"1"))
    if version != fmt.FORMAT_VERSION:
        raise fmt.FormatError(f"{path}: index part of format version {version}; this foundir writes "
                              f"version {fmt.FORMAT_VERSION} and does not mix versions in one folder: "
                              "pack into a new folder (or rerun pack here to rebuild every shard)")
    return fmt.ShardInfo(**json.loads(meta[SHARD_META_KEY])), json.loads(meta.get(REJECTS_META_KEY, b"[]"))


def part_info(path: Path) -> fmt.ShardInfo | None:
    """The ShardInfo of an index part, or None where it is missing or unreadable."""
    try:
        return read_part_meta(path)[0]
    except Exception:
        return None


def done(info: fmt.ShardInfo | None, tar_size: int | None) -> bool:
    """The done rule: a readable part whose shard is empty (every pair rejected, no tar) or whose
    tar has exactly the recorded size (a tar removed or altered since is not done)."""
    return info is not None and (info.count == 0 or tar_size == info.bytes)


def is_done(root: Path, shard: Planned) -> bool:
    """Whether ``shard`` under the local folder ``root`` is done (:func:`done`)."""
    tar = root / shard.path
    return done(part_info(root / shard.part), tar.stat().st_size if tar.exists() else None)


def remove_stale(root: Path, shard: Planned) -> None:
    """Remove the ``.tmp-`` files a killed writer left beside ``shard``'s tar and part."""
    for rel in (shard.path, shard.part):
        p = root / rel
        if p.parent.exists():
            for tmp in p.parent.glob(f"{p.name}.tmp-*"):
                tmp.unlink(missing_ok=True)

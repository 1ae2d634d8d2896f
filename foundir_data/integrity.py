"""The checks every reader makes before it hands anything on: records, duplicates, sizes.

Small pure functions, one per check, so each read path calls the same code at the point
where it has the data (docs/format.md, "Integrity"):

* :func:`check_manifest_shards`: no shard listed twice (O(shards), when the manifest is read);
* :func:`check_shard_rows`: the index rows of one shard name that shard, and no key or
  position repeats among them (when that shard's rows are loaded);
* :func:`check_unique_keys`: no key repeats in a whole index (Arrow group-by on the key
  column, no Python object per row: ``verify``, ``merge``, ``tile`` and today's readers that
  load the whole index);
* :func:`check_record`: the ``<key>.json`` member against its index row, before the record
  is handed on: its sha256 against ``json_sha256`` (format version 3), or, in version 1/2
  folders that have no such column, every field of the record against the row (the record
  is the row's, ``format.record_from_row``), the key included.

Errors name the file and the problem on one line: :class:`~foundir_data.format.FormatError`
for a folder that contradicts itself (duplicates), :class:`~foundir_data.errors.ChecksumError`
for a member that differs from its index row (so ``on_error="skip"`` leaves that sample out).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from foundir_data import format as fmt
from foundir_data.errors import ChecksumError

#: Largest record member parsed (records are a few hundred bytes).
MAX_RECORD_BYTES = 1 << 20


def _first_repeat(values: pa.ChunkedArray | pa.Array) -> Any:
    """One value that occurs more than once in ``values``, or None (Arrow only)."""
    t = pa.table({"v": values}).group_by("v").aggregate([("v", "count")])
    dup = t.filter(pc.greater(t["v_count"], 1))
    return dup["v"][0].as_py() if dup.num_rows else None


def repeated_keys(keys: pa.ChunkedArray | pa.Array, limit: int = 1000) -> list[tuple[Any, int]]:
    """Up to ``limit`` (value, count) of values that occur more than once (Arrow only)."""
    if not len(keys) or pc.count_distinct(keys, mode="all").as_py() == len(keys):
        return []
    t = pa.table({"v": keys}).group_by("v").aggregate([("v", "count")])
    dup = t.filter(pc.greater(t["v_count"], 1)).slice(0, limit)
    return list(zip(dup["v"].to_pylist(), dup["v_count"].to_pylist()))


def check_manifest_shards(manifest: fmt.Manifest, where: str) -> fmt.Manifest:
    """Raise :class:`FormatError` naming ``where`` if a shard is listed twice (its samples
    would be served twice per epoch)."""
    seen: set[str] = set()
    for s in manifest.shards:
        if s.path in seen:
            raise fmt.FormatError(f"{where}: shard {s.path} is listed more than once; a reader would serve "
                                  "its samples twice: re-run `shard_tools merge` or re-pack the folder")
        seen.add(s.path)
    return manifest


def check_unique_keys(keys: pa.ChunkedArray | pa.Array, where: str) -> None:
    """Raise :class:`FormatError` naming ``where`` and one repeated key if any key repeats."""
    if len(keys) and pc.count_distinct(keys, mode="all").as_py() != len(keys):
        raise fmt.FormatError(f"{where}: the index lists key {_first_repeat(keys)!r} more than once; a reader "
                              "would serve it twice: run `shard_tools verify`, re-merge or re-pack the folder")


def check_shard_rows(table: pa.Table, shard: str, where: str) -> pa.Table:
    """Check the index rows of one shard (``shard``, ``key`` and, when present,
    ``sample_index`` columns): each names ``shard``, no key or position repeats.

    Raises:
        FormatError: naming ``where``, the shard and the offending value.
    """
    if table.num_rows == 0:
        return table
    other = pc.filter(table["shard"], pc.not_equal(table["shard"], shard))
    if len(other) or table["shard"].null_count:
        raise fmt.FormatError(f"{where}: an index row of shard {shard} names shard "
                              f"{other[0].as_py() if len(other) else None!r}; the index is damaged: re-pack the folder")
    check_unique_keys(table["key"], f"{where} (shard {shard})")
    if "sample_index" in table.column_names:
        pos = _first_repeat(table["sample_index"]) if pc.count_distinct(
            table["sample_index"], mode="all").as_py() != table.num_rows else None
        if pos is not None:
            raise fmt.FormatError(f"{where}: two index rows of shard {shard} claim sample {pos}; the index is "
                                  "damaged: re-pack the folder")
    return table


def check_record(data: bytes | memoryview | None, row: Mapping[str, Any], where: str,
                 fields: Iterable[str] | None = None) -> dict[str, Any] | None:
    """Check a ``<key>.json`` member against its index row before anything is handed on.

    Args:
        data: The member's bytes (None: the sample has no record member).
        row: The index row (``key`` and ``json_sha256``; in version 1/2 folders the record
            fields to compare).
        where: The shard URL, for messages.
        fields: Record fields to compare when ``row`` has no ``json_sha256`` (default: every
            record field present in ``row``; the key is always compared).

    Returns:
        The parsed record, or None when the row's ``json_sha256`` matched and ``fields`` is
        empty (the caller needs no parse).

    Raises:
        ChecksumError: missing, unparsable or different from the row (names the member).
    """
    key = row["key"]
    member = f"{key}.{fmt.JSON_MEMBER}"
    if data is None:
        raise ChecksumError(where, f"sample {key!r} has no {fmt.JSON_MEMBER} member; the shard is damaged: "
                                   "run `shard_tools verify`, re-pack or re-upload")
    want = row.get("json_sha256")
    if want is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != want:
            raise ChecksumError(where, f"member {member}: sha256 mismatch: expected {want}, found {found}; the "
                                       "record is damaged or belongs to another sample: run `shard_tools verify`, "
                                       "re-pack or re-upload")
        if fields is not None and not list(fields):
            return None
    if len(data) > MAX_RECORD_BYTES:
        raise ChecksumError(where, f"member {member}: {len(data)} bytes, more than a record may have "
                                   f"({MAX_RECORD_BYTES}); the shard is damaged")
    try:
        record = json.loads(bytes(data))  # JSON only: never pickle from shards
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ChecksumError(where, f"member {member}: unreadable JSON record ({type(e).__name__}); the "
                                   "shard is damaged: re-pack or re-upload") from None
    if not isinstance(record, dict):
        raise ChecksumError(where, f"member {member}: the record is not a JSON object; the shard is damaged")
    if want is None:
        names = [f for f in fmt.RECORD_FIELDS if f in row] if fields is None else list(fields)
        for name in ("key", *names):
            if name not in record or record[name] != row.get(name):
                raise ChecksumError(where, f"member {member}: record field {name!r} is "
                                           f"{str(record.get(name, '<missing>'))[:60]!r}, the index says "
                                           f"{row.get(name)!r}; the record is damaged or belongs to another "
                                           "sample: run `shard_tools verify`, re-pack or re-upload")
    return record

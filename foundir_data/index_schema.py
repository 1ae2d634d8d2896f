"""The packed index's schema, part of the format (``foundir_data.format`` re-exports it).

One row per sample of ``index/pairs.parquet`` and of each shard's index part (docs/format.md,
"Index"); the ``<key>.json`` record is a subset of the row (:data:`RECORD_FIELDS`). Kept in its
own module only for size: readers and writers import it through ``format``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa

from foundir_data import taxonomy
from foundir_data.errors import FormatError

#: One row per sample. Offsets/sizes are of the member's *data* inside its tar, so a
#: reader can fetch one image with a single HTTP range request.
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("degradation", pa.string()),
        ("degradation_id", pa.int16()),
        ("cls", pa.string()),  # "isolated" | "coupled"
        *[(c, pa.bool_()) for c in taxonomy.COMPONENTS],
        ("layout", pa.string()),  # "full" | "tile"
        ("lq_source", pa.string()),
        ("gt_source", pa.string()),
        ("shard", pa.string()),  # relative path of the tar
        ("sample_index", pa.int32()),  # position of the sample inside its shard
        ("lq_offset", pa.int64()),
        ("lq_size", pa.int64()),
        ("gt_offset", pa.int64()),
        ("gt_size", pa.int64()),
        ("json_offset", pa.int64()),
        ("json_size", pa.int64()),
        ("lq_width", pa.int32()),
        ("lq_height", pa.int32()),
        ("gt_width", pa.int32()),
        ("gt_height", pa.int32()),
        ("lq_format", pa.string()),  # Pillow format name lower-cased: "png", "jpeg", ...
        ("gt_format", pa.string()),
        ("lq_sha256", pa.string()),
        ("gt_sha256", pa.string()),
        # EXIF camera fields, null where the source has none.
        ("iso", pa.int32()),
        ("exposure_time", pa.float64()),
        ("f_number", pa.float64()),
        ("camera_model", pa.string()),
        # Tile layout only (null for full frames): the tile's window in the source frame.
        ("source_key", pa.string()),
        ("tile_x", pa.int32()),
        ("tile_y", pa.int32()),
        ("tile_w", pa.int32()),
        ("tile_h", pa.int32()),
        # Version 3: sha256 (hex) of the ``<key>.json`` member, checked by every reader
        # before a record is handed on (docs/format.md, "Integrity").
        ("json_sha256", pa.string()),
        # Version 3: xxh3-128 (hex) of the image members, checked by readers in place of
        # the sha256 (25x less CPU per byte; docs/format.md "Version 3"). Null in older folders.
        ("lq_xxh3", pa.string()),
        ("gt_xxh3", pa.string()),
    ]
)
#: The fast member checksums of version 3 (nullable; absent or null: readers check sha256).
FAST_HASH_COLUMNS = ("lq_xxh3", "gt_xxh3")
INDEX_COLUMNS = tuple(INDEX_SCHEMA.names)
#: Columns added after version 2: absent (read as null) in older folders' indexes.
OPTIONAL_COLUMNS = ("json_sha256", *FAST_HASH_COLUMNS)

#: Fields of the per-sample JSON record (a subset of the index row: what a streaming
#: reader needs without the index).
RECORD_FIELDS = (
    "key", "split", "degradation", "degradation_id", "cls", *taxonomy.COMPONENTS, "layout",
    "lq_source", "gt_source", "lq_width", "lq_height", "gt_width", "gt_height",
    "lq_format", "gt_format", "lq_sha256", "gt_sha256",
    "iso", "exposure_time", "f_number", "camera_model",
    "source_key", "tile_x", "tile_y", "tile_w", "tile_h",
)


def record_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON record stored in the tar for an index row (missing fields become null)."""
    return {k: row.get(k) for k in RECORD_FIELDS}


def encode_record(record: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of a record (sorted keys, no spaces: reproducible tars)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")


def empty_index() -> pa.Table:
    return INDEX_SCHEMA.empty_table()


def index_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Build an index table with exactly :data:`INDEX_SCHEMA` from row dicts."""
    rows = list(rows)
    return pa.Table.from_pylist([{k: r.get(k) for k in INDEX_COLUMNS} for r in rows], schema=INDEX_SCHEMA)


def check_index_schema(table: pa.Table, where: str) -> pa.Table:
    """Raise :class:`FormatError` naming ``where`` if ``table`` lacks index columns."""
    return index_columns(table, INDEX_COLUMNS, where)


def known_columns(columns: Iterable[str] | None) -> None:
    """Raise ValueError naming any of ``columns`` that is not an index column."""
    unknown = [c for c in columns or () if c not in INDEX_COLUMNS]
    if unknown:
        raise ValueError(f"unknown index columns {unknown}; valid: {', '.join(INDEX_COLUMNS)}")


def index_columns(table: pa.Table, columns: Iterable[str], where: str) -> pa.Table:
    """``table``'s ``columns`` cast to :data:`INDEX_SCHEMA`'s types; an
    :data:`OPTIONAL_COLUMNS` column an older folder lacks reads as null.

    Raises:
        FormatError: naming ``where``, if a required column is missing.
    """
    columns = list(columns)
    names = set(table.column_names)  # column_names builds a new list on every access
    missing = [c for c in columns if c not in names and c not in OPTIONAL_COLUMNS]
    if missing:
        raise FormatError(f"{where}: index is missing columns {missing}")
    for c in columns:
        if c not in names:
            table = table.append_column(INDEX_SCHEMA.field(c), pa.nulls(table.num_rows, INDEX_SCHEMA.field(c).type))
    return table.select(columns).cast(pa.schema([INDEX_SCHEMA.field(c) for c in columns]))

"""Test helper: turn a freshly packed (format 3) folder into what an older foundir wrote.

A version 1/2 folder has no per-shard index parts, no key lookup and none of format 3's
optional index columns (``format.OPTIONAL_COLUMNS``): readers read its whole index and check
members by sha256 and records field by field (docs/format.md, "Version 3").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from foundir_data import format as fmt


def as_version2(root: Path, drop: tuple[str, ...] = fmt.OPTIONAL_COLUMNS) -> None:
    """Rewrite ``root`` in place as a format version 2 folder without the columns ``drop``."""
    t = pq.read_table(root / fmt.INDEX_FILE)
    pq.write_table(t.drop_columns([c for c in drop if c in t.column_names]), root / fmt.INDEX_FILE)
    m = json.loads((root / fmt.MANIFEST_FILE).read_text())
    m["format_version"] = 2
    m.pop("keys", None)
    for s in m["shards"]:
        for k in ("index_bytes", "index_sha256", "min_side"):
            s.pop(k, None)
    (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    for d in (fmt.INDEX_SHARDS_DIR, fmt.KEYS_DIR):
        shutil.rmtree(root / d, ignore_errors=True)

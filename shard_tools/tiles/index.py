"""The tile shards of a packed folder in its index and manifest: the finished tile parts under
``index/parts/tile/`` (``shard_tools.tiles.plan``) replace any tile rows and shards the folder's
index and manifest held. Used by ``shard_tools.pack.merge`` (a re-merge keeps the tiles) and by
``shard_tools.tiles.tiler.merge_tiles``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.integrity import check_unique_keys
from shard_tools.tiles.plan import TILE_PLAN_FILE, TileError, TileShard
from shard_tools.pack.parts import part_info


def read_index(path: Path) -> pa.Table:
    """A local index (or index part), schema-checked, with unique keys (a repeated row would be
    tiled and counted twice).

    Raises:
        TileError: naming ``path``, for a file that is not a Parquet index.
        FormatError: a missing column or a repeated key.
    """
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise TileError(f"{path}: not a readable Parquet index ({' '.join(str(e).split())[:200]}); "
                        "re-run `shard_tools merge` or re-pack the folder") from None
    table = fmt.check_index_schema(table, str(path)).replace_schema_metadata(None)
    check_unique_keys(table["key"], str(path))
    return table


def with_tiles(root: str | Path, index, manifest: fmt.Manifest):
    """``(index, manifest)`` with the tile rows and shards of ``root``'s tile parts in place of
    any they held (unchanged where ``root`` has no tile plan). For ``shard_tools.pack.merge`` and :func:`shard_tools.tiles.tiler.merge_tiles`.

    Raises:
        TileError: a planned tile shard that is not finished.
    """
    base = Path(root)
    if not (base / TILE_PLAN_FILE).exists():
        return index, manifest
    plan = json.loads((base / TILE_PLAN_FILE).read_text())
    tables, infos = [index.filter(pc.not_equal(index["layout"], fmt.LAYOUT_TILE))], []
    for s in plan["shards"]:
        part = base / TileShard(s["path"], "", "").part
        info = part_info(part)
        if info is None:
            raise TileError(f"{root}: tile shard {s['path']} is not finished; rerun `shard_tools tile`")
        tables.append(read_index(part))
        infos.append(info)
    index = pa.concat_tables(tables)
    check_unique_keys(index["key"], f"{root}/{fmt.INDEX_FILE}")
    manifest.shards = [s for s in manifest.shards if s.layout != fmt.LAYOUT_TILE] + infos
    manifest.tile = {"size": plan["size"], "stride": plan["stride"], "codec": plan.get("codec", "png")}
    manifest.format_minor = fmt.FORMAT_MINOR  # the tile codec is recorded (format.FORMAT_MINOR)
    # As merge and verify count it: every row of the index, whatever its layout.
    manifest.num_samples = index.num_rows
    manifest.extra = {**manifest.extra, "num_tiles": sum(i.count for i in infos), "tile_png_level": plan["png_level"]}
    if plan.get("codec", "png") in ("zstd", "zstd-up"):
        manifest.extra["tile_zstd_level"] = plan["zstd_level"]
    return index, manifest

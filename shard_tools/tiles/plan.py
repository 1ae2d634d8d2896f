"""The tile plan of ``shard_tools tile``: grid math and the cut of full-frame index rows into tile shards.

Grid: top-left corners at ``0, stride, 2*stride, ...`` and the last row/column snapped to the
edge so the whole frame is covered (as the release's tiled inference does,
docs/release.md, "Generalist model"); a frame side shorter than ``size`` gives one tile of that side (no upscaling).

The plan is a pure function of (index, :class:`TileConfig`): it needs no pixels (tile counts
and byte estimates come from the index's sizes), so the same input gives the same shards, and
``plan_json`` the same ``index/parts/tile/_plan.json``, with any ``--workers``. Building the
planned shards is ``shard_tools.tiles.tiler``.
"""

from __future__ import annotations

import functools
from array import array
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from foundir_data import format as fmt
from foundir_data.errors import FoundIRError
from shard_tools.tiles.codec import DEFAULT_ZSTD_LEVEL

TILE_PARTS_DIR = f"{fmt.INDEX_PARTS_DIR}/tile"
TILE_PLAN_FILE = f"{TILE_PARTS_DIR}/_plan.json"

#: Tile side and codec, chosen by one rule (bench/README.md "Tile codec and side"; measured by
#: ``bench/tile_sweep.py`` and ``bench/tiles.py`` on 2514x1516 camera-like frames): the fewest
#: bytes read per 256 training crop (what a job streaming from a bucket pays) among settings that
#: serve >= 300 crops per CPU-second (~3 cores per GPU at 1,000 crops/s) at <= 1.5x the source
#: PNG bytes. 384 px tiles tile a 2514x1516 frame 7x4 with 1.08x its pixels; zstd over Up-filtered
#: rows is ~27% smaller than zstd over raw pixels on noisy frames. What 384 gives up: a crop can
#: start at 16% of a frame's 256-crop positions (512 px: 35%); ``--size 512`` where that matters.
DEFAULT_SIZE = 384
#: zlib level of the tile PNGs, chosen by ``python bench/decode.py --repeat 5`` (bench/README.md;
#: 512 tiles of 2000 px photos, one core, Pillow 13 + zlib-ng): kB/tile, encode ms, decode ms =
#: level 0: 787, 13, 3.7 | 1: 461, 26, 7.6 | 3: 451, 35, 7.5 | 6: 434, 82, 7.3 | 9: 429, 556, 7.1.
#: Compressed levels decode alike (within 8%) and level 1 is within 7% of the smallest bytes
#: while encoding 3x faster than 6 and 20x faster than 9: the least core time for packing once
#: plus a 2M-iteration training run. Level 0 halves decode time but stores raw pixels (1.7-2.8x
#: the bytes; ~1.6 GB/s per GPU at 1,000 pairs/s): ``--png-level 0`` where disks keep up.
DEFAULT_PNG_LEVEL = 1
#: Tile codec (``format.TILE_CODECS``), by the rule of :data:`DEFAULT_SIZE`.
DEFAULT_CODEC = "zstd-up"


class TileError(FoundIRError, RuntimeError):
    """A folder that cannot be tiled (not packed, not local, other tile layout present)."""


def grid(length: int, size: int, stride: int) -> list[int]:
    """Tile starts along one side: every ``stride``, the last snapped to ``length - size``.

    A side shorter than ``size`` gives the single start 0 (the tile is then the whole side).
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def windows(height: int, width: int, size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """All tile windows ``(y, x, h, w)`` of a ``height`` x ``width`` frame, row-major."""
    th, tw = min(size, height), min(size, width)
    return [(y, x, th, tw) for y in grid(height, size, stride) for x in grid(width, size, stride)]


# ---------------------------------------------------------------- plan
@dataclass
class TileShard:
    """One planned tile shard: its path and which full-frame index rows it tiles."""

    path: str
    split: str
    degradation: str
    # Positions in the planned full-frame table: a packed int64 array, not a Python int per row.
    rows: array = field(default_factory=lambda: array("q"))
    count: int = 0  # tiles

    @property
    def part(self) -> str:
        return f"{TILE_PARTS_DIR}/{Path(self.path).name[:-len('.tar')]}.parquet"


@dataclass(frozen=True)
class TileConfig:
    """``shard_tools tile`` arguments (CLI flags map one-to-one onto these fields)."""

    root: str
    size: int = DEFAULT_SIZE
    stride: int | None = None
    workers: int = 1
    split: str | None = "train"
    png_level: int = DEFAULT_PNG_LEVEL
    shard_bytes: float = fmt.DEFAULT_SHARD_BYTES
    shard_count: int = fmt.DEFAULT_SHARD_COUNT
    progress: bool = True
    codec: str = DEFAULT_CODEC
    zstd_level: int = DEFAULT_ZSTD_LEVEL

    @property
    def step(self) -> int:
        return self.stride or self.size


def plan_tiles(index, cfg: TileConfig):
    """Cut the full-frame rows of ``index`` into tile shards, per (split, degradation).

    Pairs keep the index order (the full shards' order); a shard rolls over at
    ``cfg.shard_count`` tiles or at an estimate of ``cfg.shard_bytes`` (the source bytes
    scaled by the tiles' area over the frame's: known before anything is encoded, so the plan
    is the same on every run). Rows become Python values one batch at a time and each shard
    keeps its rows as a packed int64 array, so memory does not grow with Python objects per row.

    Returns:
        ``(shards, table)``: the planned :class:`TileShard` list and the full-frame rows they
        index into (a pyarrow Table).
    """
    mask = pc.equal(index["layout"], fmt.LAYOUT_FULL)
    if cfg.split is not None:
        mask = pc.and_(mask, pc.equal(index["split"], cfg.split))
    table = index.filter(mask)
    shards: list[TileShard] = []
    cur: dict[tuple[str, str], TileShard] = {}
    est: dict[tuple[str, str], float] = {}
    seq: dict[tuple[str, str], int] = {}
    cols = ["key", "split", "degradation", "lq_width", "lq_height", "gt_width", "gt_height", "lq_size", "gt_size"]
    for i, (key, sp, deg, lw, lh, gw, gh, ls, gs) in enumerate(_rows(table.select(cols))):
        if (lw, lh) != (gw, gh) or not lw or not lh:
            raise TileError(f"index row {key}: LQ {lw}x{lh} and GT {gw}x{gh} differ or are empty; "
                            f"cannot cut aligned tiles")
        ntiles, area = _tile_stats(lh, lw, cfg.size, cfg.step)
        nbytes = (ls + gs) * area + ntiles * 3 * 512
        g = (sp, deg)
        s = cur.get(g)
        if s is None or (s.count and (s.count + ntiles > cfg.shard_count or est[g] + nbytes > cfg.shard_bytes)):
            seq[g] = seq.get(g, -1) + 1
            s = cur[g] = TileShard(fmt.shard_relpath(fmt.LAYOUT_TILE, g[0], g[1], seq[g]), g[0], g[1])
            shards.append(s)
            est[g] = 0.0
        s.rows.append(i)
        s.count += ntiles
        est[g] += nbytes
    return shards, table


def _rows(table, batch_rows: int = 65536) -> Iterator[tuple]:
    """The rows of ``table`` as tuples, one batch of Python values at a time (memory stays
    one batch whatever the index's size)."""
    for b in table.to_batches(max_chunksize=batch_rows):
        yield from zip(*(c.to_pylist() for c in b.columns))


def source_rows(table, s: TileShard):
    """The full-frame rows ``s`` tiles (an Arrow table)."""
    return table.take(pa.array(np.frombuffer(s.rows, np.int64) if len(s.rows) else np.zeros(0, np.int64)))


@functools.lru_cache(maxsize=4096)
def _tile_stats(height: int, width: int, size: int, stride: int) -> tuple[int, float]:
    """(number of tiles, tiles' total area / frame area); cached: frames share a few sizes."""
    wins = windows(height, width, size, stride)
    return len(wins), sum(h * w for _, _, h, w in wins) / (height * width)


def plan_json(shards: list[TileShard], table, cfg: TileConfig) -> str:
    """The plan file's text: arguments, a fingerprint of every shard's source keys, the shards."""
    h = hashlib.sha256()
    for s in shards:  # one shard's keys at a time
        h.update(s.path.encode() + b"\0" + "\0".join(source_rows(table, s)["key"].to_pylist()).encode() + b"\0\0")
    return json.dumps({
        "size": cfg.size, "stride": cfg.step, "png_level": cfg.png_level, "split": cfg.split,
        "codec": cfg.codec, "zstd_level": cfg.zstd_level,
        "fingerprint": h.hexdigest(),
        "shards": [{"path": s.path, "count": s.count, "sources": len(s.rows)} for s in shards],
    }, indent=1, sort_keys=True) + "\n"

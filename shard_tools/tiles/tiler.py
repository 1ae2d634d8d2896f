"""``shard_tools tile``: lossless aligned LQ/GT training tiles from a packed folder's full frames.

The paper trains on 256x256 crops of ~2514x1516 frames (docs/release.md, "Generalist model"); decoding a
whole 2000 px PNG frame for one crop costs ~100 ms, a 512 tile ~7.5 ms (``bench/decode.py``). So
each pair is decoded ONCE here (by content, ``foundir_data.read.decode``), cut into aligned tiles of
``size`` at ``stride`` and every tile is stored with a lossless codec (``--codec``: PNG, QOI, zstd
over raw pixels with or without the PNG Up row filter, or raw pixels; ``shard_tools.tiles.codec``):
pixel-exact with the decoded source (the source's JPEG pixels are stored as decoded, never
re-encoded lossily).

The grid and the shard plan are ``shard_tools.tiles.plan`` (re-exported here); this module builds
the planned shards and merges them into the folder's index and manifest.

Output, next to the full frames (``format.LAYOUT_TILE``): tile shards
``shards/tile/<split>/<degradation>/...tar`` with the usual members and keys
``format.tile_key(pair_key, y, x)``; one index part per tile shard under
``index/parts/tile/`` (the shard's *done* marker: rerunning resumes); then the folder's
``index/pairs.parquet`` gets the tile rows (layout ``tile``, ``source_key``, ``tile_*``) and
``manifest.json`` the tile shards and ``tile = {"size", "stride", "codec"}``.

The tile plan is a pure function of (index, arguments): the same input gives the same shards,
byte for byte, with any ``--workers``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import pyarrow.compute as pc
import xxhash
from tqdm import tqdm

from foundir_data import format as fmt
from foundir_data.output.atomic import write_atomic
from foundir_data.command import run_module
from foundir_data.read.decode import DecodeError, decode_image
from foundir_data.integrity import check_manifest_shards
from foundir_data.read.reader import PairReader
from foundir_data.remote.store import Store
from shard_tools.pack.guard import PLAN_FILE as PACK_PLAN_FILE
from shard_tools.tiles.plan import source_rows
from shard_tools.tiles.plan import (  # re-exported: callers import these from shard_tools.tiles.tiler
    DEFAULT_CODEC,
    DEFAULT_PNG_LEVEL,
    DEFAULT_SIZE,
    TILE_PARTS_DIR,
    TILE_PLAN_FILE,
    TileConfig,
    TileError,
    TileShard,
    grid,
    plan_json,
    plan_tiles,
    windows,
)
from shard_tools.publish.card import write_card
from shard_tools.publish.croissant import write_croissant
from shard_tools.pack.index_write import write_index
from shard_tools.pack.merge import merge
from shard_tools.pack.summary import plural
from shard_tools.tiles.index import read_index, with_tiles  # with_tiles: re-exported
from shard_tools.tiles.codec import (DEFAULT_UP_LEVEL, DEFAULT_ZSTD_LEVEL, CodecError, check_codec, encode, encode_png,
                                    zstd_level_of)
from shard_tools.pack.parts import is_done, write_part
from shard_tools.pack.writer import TarShardWriter, add_sample

__all__ = ["DEFAULT_CODEC", "DEFAULT_PNG_LEVEL", "DEFAULT_ZSTD_LEVEL", "DEFAULT_SIZE", "TILE_PARTS_DIR", "TILE_PLAN_FILE", "TileConfig", "TileError",
           "TileShard", "build_tile_shard", "configure", "encode_png", "grid", "main", "merge_tiles", "pack_tiles",
           "plan_json", "plan_tiles", "run", "windows", "with_tiles"]


# ---------------------------------------------------------------- build one tile shard
def build_tile_shard(root: str, shard: TileShard, sources: list[dict], cfg: TileConfig) -> int:
    """Decode each source pair once, write its tiles into one tar, then the index part.

    ``sources`` are the index rows (dicts) of ``shard.rows``. Returns the number of tiles
    written. Runs in a worker process.

    Raises:
        ChecksumError: a source member whose bytes do not match the index's sha256.
    """
    base = Path(root)
    rows = []
    tile_format = fmt.TILE_CODECS[cfg.codec]
    reader = PairReader(Store.open(root), "pread")  # one pread per pair, checked against the index
    with TarShardWriter(base / shard.path) as w:
        for src in sources:
            pix = {side: decode_image(data, f"{src['shard']}:{src['key']}.{side}")
                   for side, data in zip(("lq", "gt"), reader.read_pair(src))}
            h, wd = pix["lq"].shape[:2]
            if pix["gt"].shape[:2] != (h, wd):
                raise TileError(f"{src['shard']}: {src['key']} decodes to LQ {wd}x{h} but GT "
                                f"{pix['gt'].shape[1]}x{pix['gt'].shape[0]}")
            for y, x, th, tw in windows(h, wd, cfg.size, cfg.step):
                key = fmt.tile_key(src["key"], y, x)
                lq, gt = (encode(pix[side][y:y + th, x:x + tw], cfg.codec, cfg.png_level, cfg.zstd_level)
                          for side in ("lq", "gt"))
                row = {**src, "key": key, "layout": fmt.LAYOUT_TILE, "shard": shard.path, "sample_index": len(rows),
                       "lq_width": tw, "lq_height": th, "gt_width": tw, "gt_height": th,
                       "lq_format": tile_format, "gt_format": tile_format,
                       "lq_sha256": hashlib.sha256(lq).hexdigest(), "gt_sha256": hashlib.sha256(gt).hexdigest(),
                       "lq_xxh3": xxhash.xxh3_128_hexdigest(lq), "gt_xxh3": xxhash.xxh3_128_hexdigest(gt),
                       "source_key": src["key"], "tile_x": x, "tile_y": y, "tile_w": tw, "tile_h": th}
                rows.append(add_sample(w, row, lq, gt))
    info = fmt.ShardInfo(shard.path, shard.split, shard.degradation, fmt.LAYOUT_TILE, len(rows), w.bytes, w.sha256)
    write_part(base / shard.part, rows, info)
    return len(rows)


# ---------------------------------------------------------------- the command
def pack_tiles(root: str, size: int = DEFAULT_SIZE, stride: int | None = None, *, workers: int = 1,
               split: str | None = "train", png_level: int = DEFAULT_PNG_LEVEL,
               shard_bytes: float = fmt.DEFAULT_SHARD_BYTES, shard_count: int = fmt.DEFAULT_SHARD_COUNT,
               progress: bool = False, codec: str = DEFAULT_CODEC, zstd_level: int | None = None) -> dict:
    """Tile the full-frame shards of the packed folder ``root`` (local) and update its index
    and manifest.

    Args:
        root: A folder written by ``shard_tools pack``.
        size: Tile side in pixels.
        stride: Distance between tile starts (default ``size``: no overlap).
        workers: Processes building tile shards in parallel.
        split: Split to tile (``None``: all splits).
        png_level: zlib level of PNG tiles (lossless at every level).
        shard_bytes, shard_count: Tile shard roll-over (estimated bytes, tiles).
        progress: Show a progress bar.
        codec: Tile codec, a key of ``format.TILE_CODECS`` (``png``, ``qoi``, ``zstd``,
            ``zstd-up``, ``raw``).
        zstd_level: zstd level of ``zstd``/``zstd-up`` tiles (1..22; None: the codec's default,
            ``tile_codec.zstd_level_of``).

    Returns:
        A summary dict: ``shards``, ``tiles``, ``built`` (shards built by this call),
        ``bytes`` (all tile shards), ``source_pairs``, ``seconds``.

    Raises:
        TileError: bad arguments, an unpacked folder, or another tile layout in ``root``.
    """
    zstd_level = zstd_level_of(codec, zstd_level)
    cfg = TileConfig(root, size, stride, workers, split, png_level, shard_bytes, shard_count, progress,
                     codec, zstd_level)
    if size < 1 or cfg.step < 1 or workers < 1 or shard_count < 1 or shard_bytes <= 0:
        raise TileError("--size, --stride, --workers, --shard-count and --shard-bytes must be positive")
    if cfg.step > size:
        raise TileError(f"--stride {cfg.step} > --size {size} would leave parts of frames untiled")
    if not 0 <= png_level <= 9:
        raise TileError(f"--png-level {png_level} must be in 0..9")
    if not 1 <= zstd_level <= 22:
        raise TileError(f"--zstd-level {zstd_level} must be in 1..22")
    try:
        check_codec(codec)
    except CodecError as e:
        raise TileError(str(e)) from None
    if split is not None and split not in fmt.SPLITS:
        raise TileError(f"--split {split!r}: expected one of {fmt.SPLITS} or 'all'")
    base = Path(root)
    if "://" in root or not (base / fmt.INDEX_FILE).exists():
        raise TileError(f"{root}: no {fmt.INDEX_FILE} here; tile a local folder written by `shard_tools pack`")
    mpath = base / fmt.MANIFEST_FILE
    if mpath.exists():  # tile shards are written in the current version only
        fmt.check_writable(check_manifest_shards(fmt.Manifest.from_json(mpath.read_text(), str(mpath)), str(mpath)),
                           str(mpath))
    t0 = time.monotonic()
    index = read_index(base / fmt.INDEX_FILE)
    shards, table = plan_tiles(index, cfg)
    if not shards:
        have = sorted(pc.unique(index["split"]).to_pylist())
        raise TileError(f"{root}: no full-frame pairs of split {split!r} to tile (the index has splits {have}); "
                        f"pass --split {have[0] if have else 'all'} or --split all")
    plan = plan_json(shards, table, cfg)
    old = base / TILE_PLAN_FILE
    if old.exists() and old.read_text() != plan:
        raise TileError(f"{root} already holds tiles of another plan (other size/stride/codec/level/split or "
                        f"source); delete {base / fmt.SHARDS_DIR / fmt.LAYOUT_TILE} and {base / TILE_PARTS_DIR} "
                        f"to re-tile")
    write_atomic(old, plan.encode())
    todo = [s for s in shards if not is_done(base, s)]
    for s in todo:
        for p in (base / s.path, base / s.part):
            for tmp in p.parent.glob(f"{p.name}.tmp-*") if p.parent.exists() else ():
                tmp.unlink(missing_ok=True)
    _build(root, todo, table, cfg)
    manifest = merge_tiles(root)
    tile_shards = manifest.select(layout=fmt.LAYOUT_TILE)
    return {"shards": len(tile_shards), "tiles": sum(s.count for s in tile_shards), "built": len(todo),
            "bytes": sum(s.bytes for s in tile_shards), "source_pairs": table.num_rows,
            "seconds": time.monotonic() - t0}


def _build(root: str, todo: list[TileShard], table, cfg: TileConfig) -> None:
    """Build ``todo`` with ``cfg.workers`` processes; a shard's source rows become dicts only
    when it is submitted (at most two shards per worker in flight: flat memory)."""
    def sources(s: TileShard) -> list[dict]:
        return source_rows(table, s).to_pylist()

    bar = tqdm(total=sum(s.count for s in todo), unit="tile", disable=not cfg.progress, desc="tile",
               dynamic_ncols=True, mininterval=1.0)
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            for s in todo:
                bar.update(build_tile_shard(root, s, sources(s), cfg))
            return
        with ProcessPoolExecutor(cfg.workers) as pool:
            it, pending = iter(todo), set()
            try:
                for s in it:
                    pending.add(pool.submit(build_tile_shard, root, s, sources(s), cfg))
                    if len(pending) >= 2 * cfg.workers:
                        break
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        bar.update(f.result())
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.add(pool.submit(build_tile_shard, root, nxt, sources(nxt), cfg))
            except BaseException:
                for f in pending:  # start nothing new; running shards finish (or leave .tmp- files)
                    f.cancel()
                raise
    finally:
        bar.close()


def merge_tiles(root: str) -> fmt.Manifest:
    """Put the tile parts into ``index/pairs.parquet``, ``manifest.json`` and the card (idempotent).

    Runs ``shard_tools.pack.merge`` first when the pack's parts are there (it rewrites index and
    manifest from the full-frame parts), then :func:`with_tiles`.
    """
    base = Path(root)
    if (base / PACK_PLAN_FILE).exists():
        merge(root)
    manifest = fmt.Manifest.from_json((base / fmt.MANIFEST_FILE).read_text(), str(base / fmt.MANIFEST_FILE))
    index = read_index(base / fmt.INDEX_FILE)
    index, manifest = with_tiles(base, index, manifest)
    write_index(base, index, manifest)  # the index, its per-shard parts and the key lookup
    write_card(str(base), manifest, index)
    write_croissant(base, manifest, index_schema=index.schema)
    write_atomic(base / fmt.MANIFEST_FILE, manifest.to_json().encode())  # last (docs/format.md)
    return manifest


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``tile``'s flags."""
    parser.description = "Cut a packed folder's full frames into lossless aligned LQ/GT tile shards."
    parser.add_argument("root", help="a local folder written by `shard_tools pack` (rerun to resume)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"tile side in px (default {DEFAULT_SIZE})")
    parser.add_argument("--stride", type=int, default=None, help="distance between tiles (default: --size)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--split", choices=(*fmt.SPLITS, "all"), default="train", help="split to tile (default train)")
    parser.add_argument("--codec", choices=sorted(fmt.TILE_CODECS), default=DEFAULT_CODEC,
                        help=f"lossless tile codec (default {DEFAULT_CODEC}; chosen by measurement, see bench/README.md)")
    parser.add_argument("--png-level", type=int, default=DEFAULT_PNG_LEVEL,
                        help=f"zlib level of PNG tiles, lossless at any level (default {DEFAULT_PNG_LEVEL})")
    parser.add_argument("--zstd-level", type=int, default=None,
                        help=f"zstd level of --codec zstd / zstd-up tiles "
                             f"(default {DEFAULT_ZSTD_LEVEL} / {DEFAULT_UP_LEVEL})")
    parser.add_argument("--shard-bytes", type=float, default=fmt.DEFAULT_SHARD_BYTES, help="roll tile shards over at about this size")
    parser.add_argument("--shard-count", type=int, default=fmt.DEFAULT_SHARD_COUNT, help="... or at this many tiles")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


#: Bad input the runner reports in one line (exit status 2); the others are FoundIRErrors.
USER_ERRORS = (DecodeError,)


def run(args: argparse.Namespace) -> int:
    """Run ``tile``: 0 = done; errors end in the runner (``foundir_data.command``)."""
    s = pack_tiles(args.root, args.size, args.stride, workers=args.workers,
                   split=None if args.split == "all" else args.split, png_level=args.png_level,
                   shard_bytes=args.shard_bytes, shard_count=args.shard_count, progress=args.progress,
                   codec=args.codec, zstd_level=args.zstd_level)
    print(f"{plural(s['tiles'], 'tile')} of {plural(s['source_pairs'], 'pair')} in {plural(s['shards'], 'shard')} ({s['bytes'] / 1e6:.1f} MB; "
          f"{s['built']} built now) under {args.root}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m shard_tools.tiles.tiler ROOT ...`` (the same as ``shard_tools tile``)."""
    return run_module(sys.modules[__name__], argv, "shard_tools tile", "cut training tiles")


if __name__ == "__main__":
    raise SystemExit(main())

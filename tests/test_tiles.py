"""shard_tools.tiles.tiler: lossless aligned LQ/GT tiles from packed full frames."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from foundir_data.read.decode import decode_image
from foundir_data.sample import make_sample
from shard_tools.tiles import tiler as tiles
from shard_tools.pack.packer import PackConfig, pack


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """6 train pairs of 3 types (2 isolated, 1 coupled), ~160 px frames (LQ JPEG, JPEG GT,
    JPEG bytes behind .png)."""
    base = tmp_path_factory.mktemp("packed")
    make_sample(base / "src", per_type=2, size=160, layout="list", types=("Blur", "JPEG", "Blur_Noise"))
    rc = pack(PackConfig(source=str(base / "src" / "MillionIRData_train_meta_info.txt"), out=str(base / "out"),
                         progress=False))
    assert rc == 0
    return base / "out"


@pytest.fixture
def root(packed: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(packed, dst)
    return dst


def read_index(root: Path):
    return pq.read_table(root / fmt.INDEX_FILE).to_pylist()


def member(root: Path, row: dict, side: str) -> bytes:
    with open(root / row["shard"], "rb") as f:
        f.seek(row[f"{side}_offset"])
        return f.read(row[f"{side}_size"])


# ---------------------------------------------------------------- the grid
@pytest.mark.parametrize("length,size,stride,expected", [
    (128, 64, 64, [0, 64]),
    (100, 64, 64, [0, 36]),       # not a multiple: last start snapped to the edge
    (100, 64, 48, [0, 36]),       # 48 + 64 > 100, so the snapped start replaces it
    (200, 64, 48, [0, 48, 96, 136]),
    (64, 64, 32, [0]),
    (40, 64, 32, [0]),            # smaller than a tile: one tile of the whole side
])
def test_grid(length, size, stride, expected):
    assert tiles.grid(length, size, stride) == expected


@pytest.mark.parametrize("h,w,size,stride", [(132, 200, 64, 48), (97, 131, 32, 32), (50, 70, 64, 64), (64, 64, 64, 16)])
def test_windows_cover_the_frame_inside_it(h, w, size, stride):
    cover = np.zeros((h, w), int)
    for y, x, th, tw in tiles.windows(h, w, size, stride):
        assert 0 <= y and y + th <= h and 0 <= x and x + tw <= w
        assert (th, tw) == (min(size, h), min(size, w))
        cover[y:y + th, x:x + tw] += 1
    assert cover.min() >= 1


# ---------------------------------------------------------------- tiling a packed folder
def test_every_tile_equals_its_window_of_the_decoded_source(root: Path):
    summary = tiles.pack_tiles(str(root), size=64, stride=48, shard_count=20)
    rows = read_index(root)
    full = {r["key"]: r for r in rows if r["layout"] == fmt.LAYOUT_FULL}
    tile_rows = [r for r in rows if r["layout"] == fmt.LAYOUT_TILE]
    assert summary["tiles"] == len(tile_rows) > 0 and summary["source_pairs"] == len(full) == 6
    cover = {k: np.zeros((r["lq_height"], r["lq_width"]), int) for k, r in full.items()}
    decoded = {k: {s: decode_image(member(root, r, s), k) for s in ("lq", "gt")} for k, r in full.items()}
    for t in tile_rows:
        src = full[t["source_key"]]
        assert t["key"] == fmt.tile_key(src["key"], t["tile_y"], t["tile_x"])
        assert (t["split"], t["degradation"], t["lq_source"]) == (src["split"], src["degradation"], src["lq_source"])
        assert t["shard"].startswith(f"{fmt.SHARDS_DIR}/{fmt.LAYOUT_TILE}/")
        y, x, h, w = t["tile_y"], t["tile_x"], t["tile_h"], t["tile_w"]
        for side in ("lq", "gt"):
            data = member(root, t, side)
            assert hashlib.sha256(data).hexdigest() == t[f"{side}_sha256"]
            assert t[f"{side}_format"] == fmt.TILE_CODECS[tiles.DEFAULT_CODEC]
            px = decode_image(data, t["key"])
            assert (t[f"{side}_width"], t[f"{side}_height"]) == (w, h)
            np.testing.assert_array_equal(px, decoded[src["key"]][side][y:y + h, x:x + w])
        record = json.loads(member(root, t, "json"))
        assert record == fmt.record_from_row(t)
        cover[src["key"]][y:y + h, x:x + w] += 1
    assert all(c.min() >= 1 for c in cover.values())
    # The sources include a JPEG LQ, a JPEG GT and JPEG bytes behind a .png name.
    assert {"jpeg", "png"} <= {r["lq_format"] for r in full.values()} | {r["gt_format"] for r in full.values()}


def test_manifest_lists_both_layouts(root: Path):
    tiles.pack_tiles(str(root), size=64, shard_count=20)
    m = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    assert m.tile == {"size": 64, "stride": 64, "codec": tiles.DEFAULT_CODEC}
    tile_shards = m.select(layout=fmt.LAYOUT_TILE)
    assert len(m.select(layout=fmt.LAYOUT_FULL)) == 3 and len(tile_shards) >= 3
    rows = read_index(root)
    assert sum(r["layout"] == fmt.LAYOUT_FULL for r in rows) == 6
    assert m.num_samples == len(rows) == sum(s.count for s in m.shards) == 6 + m.extra["num_tiles"]
    for s in tile_shards:
        data = (root / s.path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (s.bytes, s.sha256)
        assert s.count == sum(r["shard"] == s.path for r in rows)
        assert s.path == fmt.shard_relpath(fmt.LAYOUT_TILE, s.split, s.degradation, int(s.path[-10:-4]))


def test_shard_tools_verify_accepts_the_tiled_folder(root: Path):
    from shard_tools.inspect.verify import verify

    tiles.pack_tiles(str(root), size=64, stride=48)
    report = verify(str(root))
    assert not report.problems, report.problems


def test_frame_smaller_than_tile_gives_one_whole_frame_tile(root: Path):
    tiles.pack_tiles(str(root), size=512)
    rows = read_index(root)
    full = {r["key"]: r for r in rows if r["layout"] == fmt.LAYOUT_FULL}
    tile_rows = [r for r in rows if r["layout"] == fmt.LAYOUT_TILE]
    assert len(tile_rows) == len(full)
    for t in tile_rows:
        src = full[t["source_key"]]
        assert (t["tile_y"], t["tile_x"], t["tile_w"], t["tile_h"]) == (0, 0, src["lq_width"], src["lq_height"])
        np.testing.assert_array_equal(decode_image(member(root, t, "gt"), "t"),
                                      decode_image(member(root, src, "gt"), "s"))


def test_webdataset_reads_tile_samples(root: Path):
    import webdataset as wds

    tiles.pack_tiles(str(root), size=64, shard_count=20)
    m = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    urls = [str(root / s.path) for s in m.select(layout=fmt.LAYOUT_TILE)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == m.extra["num_tiles"]
    for s in samples[:5]:
        assert {fmt.LQ_MEMBER, fmt.GT_MEMBER, fmt.JSON_MEMBER} <= set(s)
        assert json.loads(s[fmt.JSON_MEMBER])["key"] == s["__key__"]


def tile_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / fmt.SHARDS_DIR / fmt.LAYOUT_TILE).rglob("*.tar"))}


def test_resume_rebuilds_only_missing_shards(root: Path):
    first = tiles.pack_tiles(str(root), size=64, stride=32, shard_count=10)
    before = tile_files(root)
    index_before = (root / fmt.INDEX_FILE).read_bytes()
    assert first["built"] == first["shards"] >= 4
    again = tiles.pack_tiles(str(root), size=64, stride=32, shard_count=10)
    assert again["built"] == 0 and again["tiles"] == first["tiles"]
    # An interrupted build: one shard's done marker gone, another's tar truncated, a stale tmp file.
    parts = sorted((root / tiles.TILE_PARTS_DIR).glob("*.parquet"))
    parts[0].unlink()
    tars = sorted((root / fmt.SHARDS_DIR / fmt.LAYOUT_TILE).rglob("*.tar"))
    tars[-1].write_bytes(tars[-1].read_bytes()[:1000])
    (tars[0].parent / f"{tars[0].name}.tmp-99999").write_bytes(b"partial")
    resumed = tiles.pack_tiles(str(root), size=64, stride=32, shard_count=10)
    assert resumed["built"] == 2
    assert tile_files(root) == before
    assert (root / fmt.INDEX_FILE).read_bytes() == index_before
    assert not list((root / fmt.SHARDS_DIR).rglob("*.tmp-*"))


def test_other_tile_plan_in_same_folder_is_refused(root: Path):
    tiles.pack_tiles(str(root), size=64)
    with pytest.raises(tiles.TileError, match="another plan"):
        tiles.pack_tiles(str(root), size=48)


def test_deterministic_across_runs_and_workers(packed: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(packed, a)
    shutil.copytree(packed, b)
    tiles.pack_tiles(str(a), size=64, stride=48, shard_count=8, workers=1)
    tiles.pack_tiles(str(b), size=64, stride=48, shard_count=8, workers=2)
    assert tile_files(a) == tile_files(b) and len(tile_files(a)) >= 4
    assert (a / fmt.INDEX_FILE).read_bytes() == (b / fmt.INDEX_FILE).read_bytes()
    assert (a / fmt.MANIFEST_FILE).read_bytes() == (b / fmt.MANIFEST_FILE).read_bytes()


def test_bad_arguments_and_folders(root: Path, tmp_path: Path):
    with pytest.raises(tiles.TileError, match="stride"):
        tiles.pack_tiles(str(root), size=64, stride=128)
    with pytest.raises(tiles.TileError, match="no index/pairs.parquet"):
        tiles.pack_tiles(str(tmp_path / "nowhere"))
    with pytest.raises(tiles.TileError, match="png-level"):
        tiles.pack_tiles(str(root), png_level=12)


def test_test_split_needs_split_flag(tmp_path: Path):
    make_sample(tmp_path / "src", per_type=1, size=96, layout="test", types=("Blur", "Noise"))
    assert pack(PackConfig(source=str(tmp_path / "src"), out=str(tmp_path / "out"), progress=False)) == 0
    with pytest.raises(tiles.TileError, match=r"no full-frame pairs of split 'train'.*\['test'\]"):
        tiles.pack_tiles(str(tmp_path / "out"), size=64)
    s = tiles.pack_tiles(str(tmp_path / "out"), size=64, split=None)
    rows = read_index(tmp_path / "out")
    assert s["source_pairs"] == 2 and {r["split"] for r in rows if r["layout"] == fmt.LAYOUT_TILE} == {"test"}
    assert all(r["shard"].startswith("shards/tile/test/") for r in rows if r["layout"] == fmt.LAYOUT_TILE)


def test_damaged_source_is_named(root: Path):
    rows = [r for r in read_index(root) if r["layout"] == fmt.LAYOUT_FULL]
    r = rows[0]
    shard = root / r["shard"]
    data = bytearray(shard.read_bytes())
    data[r["lq_offset"] + 100] ^= 0xFF
    shard.write_bytes(bytes(data))
    from foundir_data.errors import ChecksumError

    with pytest.raises(ChecksumError, match=r"xxh3 mismatch.*damaged"):
        tiles.pack_tiles(str(root), size=64)


def test_stream_over_tiles_yields_crops_of_the_right_tile_in_schedule_order(root: Path):
    from foundir_data import taxonomy
    from foundir_data.streaming.stream import FoundIRStream

    tiles.pack_tiles(str(root), size=64, stride=48)
    by_key = {r["key"]: r for r in read_index(root)}
    frames: dict[tuple[str, str], np.ndarray] = {}

    def frame(key: str, side: str) -> np.ndarray:
        if (key, side) not in frames:
            frames[key, side] = decode_image(member(root, by_key[key], side), key)
        return frames[key, side]

    stream = FoundIRStream(str(root), layout="tile", schedule="incremental", batch_size=4, crop=32,
                           augment="none", seed=3)
    assert stream.num_pairs == sum(r["layout"] == fmt.LAYOUT_TILE for r in by_key.values())
    stage1 = sum(p.steps for p in stream.curriculum.phases[:-1])
    isolated = {taxonomy.get(n).index for n in taxonomy.ISOLATED}
    steps, types_seen = 0, set()
    for batch in stream:
        steps += 1
        for i, key in enumerate(batch["key"]):
            t = by_key[key]
            assert t["layout"] == fmt.LAYOUT_TILE and int(batch["degradation"][i]) == t["degradation_id"]
            y, x, op = batch["window"][i].tolist()
            assert op == 0 and 0 <= y <= t["tile_h"] - 32 and 0 <= x <= t["tile_w"] - 32
            # The crop is the window of its tile, i.e. of the source frame at the tile's offset.
            fy, fx = t["tile_y"] + y, t["tile_x"] + x
            for side in ("lq", "gt"):
                np.testing.assert_array_equal(batch[side][i].numpy().transpose(1, 2, 0),
                                              frame(t["source_key"], side)[fy:fy + 32, fx:fx + 32])
            if batch["step"] < stage1:
                assert t["degradation_id"] in isolated
            types_seen.add(t["degradation"])
    assert steps == stream.steps_per_epoch > stage1
    assert types_seen == {"Blur", "JPEG", "Blur_Noise"}


def test_cli_run(root: Path, capsys):
    assert tiles.main([str(root), "--size", "64", "--stride", "48", "--no-progress"]) == 0
    assert "tiles of 6 pairs" in capsys.readouterr().err
    assert tiles.main([str(root), "--size", "32", "--no-progress"]) == 2
    assert "another plan" in capsys.readouterr().err


# ---------------------------------------------------------------- pack --tile and re-merge
def test_pack_tile_flag_then_remerge_keeps_tiles(tmp_path: Path):
    """`pack --tile` writes both layouts; a later `merge` (e.g. a resumed pack) keeps the tiles."""
    from shard_tools.cli import main as cli_main
    from shard_tools.pack.merge import merge

    make_sample(tmp_path / "src", per_type=1, size=96, layout="list", types=("Blur", "Rain_Haze"))
    out = tmp_path / "out"
    rc = cli_main(["pack", str(tmp_path / "src" / "MillionIRData_train_meta_info.txt"), str(out),
                   "--tile", "64", "--tile-stride", "32", "--no-progress"])
    assert rc == 0
    m = fmt.Manifest.from_json((out / fmt.MANIFEST_FILE).read_text())
    assert m.layouts == [fmt.LAYOUT_FULL, fmt.LAYOUT_TILE] and m.tile == {"size": 64, "stride": 32, "codec": tiles.DEFAULT_CODEC}
    rows = read_index(out)
    n_tiles = sum(r["layout"] == fmt.LAYOUT_TILE for r in rows)
    assert sum(r["layout"] == fmt.LAYOUT_FULL for r in rows) == 2 and n_tiles >= 2 * 4
    merge(out)  # what a resumed pack or `shard_tools merge` does
    again = read_index(out)
    assert sum(r["layout"] == fmt.LAYOUT_TILE for r in again) == n_tiles
    assert fmt.Manifest.from_json((out / fmt.MANIFEST_FILE).read_text()).layouts == [fmt.LAYOUT_FULL, fmt.LAYOUT_TILE]

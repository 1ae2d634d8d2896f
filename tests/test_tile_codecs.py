"""Every tile codec (``shard_tools tile --codec``) is lossless and read by every reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from foundir_data.read.access import get_pair
from foundir_data.read.decode import decode_image
from foundir_data.sample import make_sample
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.tiles import tiler as tiles
from shard_tools.pack.packer import PackConfig, pack
from shard_tools.inspect.verify import verify


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """4 train pairs (a noisy and a JPEG-compressed type), ~160 px frames."""
    base = tmp_path_factory.mktemp("codecs")
    make_sample(base / "src", per_type=2, size=160, layout="list", types=("Noise", "JPEG"))
    assert pack(PackConfig(source=str(base / "src" / "MillionIRData_train_meta_info.txt"),
                           out=str(base / "out"), progress=False)) == 0
    return base / "out"


def _member(root: Path, row: dict, side: str) -> bytes:
    with open(root / row["shard"], "rb") as f:
        f.seek(row[f"{side}_offset"])
        return f.read(row[f"{side}_size"])


@pytest.mark.parametrize("codec", ["qoi", "zstd", "png", "raw", "zstd-up"])
def test_codec_is_lossless_and_every_reader_decodes_it(packed, tmp_path, codec):
    root = tmp_path / "out"
    shutil.copytree(packed, root)
    s = tiles.pack_tiles(str(root), size=64, stride=48, codec=codec)
    manifest = fmt.Manifest.from_json((root / fmt.MANIFEST_FILE).read_text())
    assert manifest.tile["codec"] == codec and manifest.format_minor == fmt.FORMAT_MINOR
    assert json.loads((root / tiles.TILE_PLAN_FILE).read_text())["codec"] == codec
    rows = pq.read_table(root / fmt.INDEX_FILE).to_pylist()
    full = {r["key"]: r for r in rows if r["layout"] == fmt.LAYOUT_FULL}
    tile_rows = [r for r in rows if r["layout"] == fmt.LAYOUT_TILE]
    assert len(tile_rows) == s["tiles"] > 0
    frames = {(k, side): decode_image(_member(root, r, side), k) for k, r in full.items() for side in ("lq", "gt")}
    for t in tile_rows:
        y, x, h, w = t["tile_y"], t["tile_x"], t["tile_h"], t["tile_w"]
        for side in ("lq", "gt"):
            data = _member(root, t, side)
            assert t[f"{side}_format"] == fmt.TILE_CODECS[codec]
            want = frames[t["source_key"], side][y:y + h, x:x + w]
            np.testing.assert_array_equal(decode_image(data, t["key"]), want)
            np.testing.assert_array_equal(decode_image(data, t["key"], backend="pillow"), want)
    # Random access and the training stream read the codec through the one decoder.
    t = tile_rows[-1]
    pair = get_pair(str(root), t["key"])
    np.testing.assert_array_equal(np.asarray(pair["gt"]), frames[t["source_key"], "gt"][
        t["tile_y"]:t["tile_y"] + t["tile_h"], t["tile_x"]:t["tile_x"] + t["tile_w"]])
    stream = FoundIRStream(str(root), layout="tile", schedule="mix", batch_size=4, crop=32, seed=1)
    batch = next(iter(stream))
    for i, key in enumerate(batch["key"]):
        t = next(r for r in tile_rows if r["key"] == key)
        yy, xx, op = (int(v) for v in batch["window"][i])
        win = frames[t["source_key"], "lq"][t["tile_y"] + yy:t["tile_y"] + yy + 32, t["tile_x"] + xx:t["tile_x"] + xx + 32]
        np.testing.assert_array_equal(batch["lq"][i].numpy().transpose(1, 2, 0), win[:, ::-1] if op == 1 else win)
    report = verify(str(root), full_decode=True)
    assert report.ok, report


def test_unknown_codec_is_refused(packed, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(packed, root)
    with pytest.raises(tiles.TileError, match="--codec 'webp'"):
        tiles.pack_tiles(str(root), size=64, codec="webp")
    with pytest.raises(tiles.TileError, match="--zstd-level 0"):
        tiles.pack_tiles(str(root), size=64, codec="zstd", zstd_level=0)


@pytest.mark.parametrize("codec", ["zstd", "raw", "zstd-up"])
def test_load_dataset_gives_pixels_of_zstd_and_raw_tiles(packed, tmp_path, codec):
    """``load_dataset(layout="tile")`` (``datasets.Image``, i.e. Pillow) decodes the codecs
    Pillow has no plugin for (zstd frames), and raw PPM tiles."""
    from foundir_data.load import load_dataset

    root = tmp_path / "out"
    shutil.copytree(packed, root)
    tiles.pack_tiles(str(root), size=64, codec=codec)
    rows = {r["key"]: r for r in pq.read_table(root / fmt.INDEX_FILE).to_pylist()}
    ds = load_dataset(str(root), split="train", layout="tile", streaming=True)
    n = 0
    for ex in ds:
        r = rows[ex["key"]]
        np.testing.assert_array_equal(np.asarray(ex["gt"].convert("RGB")), decode_image(_member(root, r, "gt"), r["key"]))
        n += 1
    assert n == sum(r["layout"] == fmt.LAYOUT_TILE for r in rows.values())


@pytest.mark.parametrize("codec", ["raw", "zstd-up", "zstd"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (9, 13), (64, 48)])
def test_raw_and_zstd_codecs_round_trip_any_shape(codec, shape):
    """Edge tiles (a frame smaller than the tile) have any shape; every byte value survives the
    Up filter's mod-256 arithmetic; ``pillow_readable`` gives Pillow the same pixels."""
    import io

    from PIL import Image

    from foundir_data.read.decode import pillow_readable
    from shard_tools.tiles.codec import encode

    rng = np.random.default_rng(sum(shape))
    tile = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    tile[0, 0] = 255  # wrap-around both ways under the filter
    tile[-1, -1] = 0
    data = encode(tile, codec)
    np.testing.assert_array_equal(decode_image(data, "t"), tile)
    with Image.open(io.BytesIO(pillow_readable(data))) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), tile)

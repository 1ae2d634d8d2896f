"""Raw tiles are read as views, and the fast member checksums of format version 3 (``lq_xxh3`` /
``gt_xxh3``) are written by pack and tile and checked by every reader; version 2 folders
(sha256 only) still read."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash

from foundir_data import format as fmt
from shard_tools.pack.index_write import upgrade
from _folders import as_version2
from foundir_data.read.access import get_pair
from foundir_data.read.decode import decode_image, decode_pair
from foundir_data.read.reader import PairReader, check_member
from foundir_data.errors import ChecksumError
from foundir_data.sample import make_sample
from foundir_data.remote.store import Store
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.tiles import tiler as tiles
from shard_tools.pack.packer import PackConfig, pack
from shard_tools.inspect.verify import verify


@pytest.fixture(scope="module")
def raw_tiles(tmp_path_factory) -> Path:
    """4 train pairs of ~160 px, packed, then tiled 64/64 with ``--codec raw``."""
    base = tmp_path_factory.mktemp("fast")
    make_sample(base / "src", per_type=2, size=160, layout="list", types=("Noise", "Blur"))
    assert pack(PackConfig(source=str(base / "src" / "MillionIRData_train_meta_info.txt"),
                           out=str(base / "out"), progress=False)) == 0
    tiles.pack_tiles(str(base / "out"), size=64, codec="raw")
    return base / "out"


@pytest.fixture
def root(raw_tiles: Path, tmp_path: Path) -> Path:
    shutil.copytree(raw_tiles, tmp_path / "out")
    return tmp_path / "out"


def _rows(root: Path) -> list[dict]:
    return pq.read_table(root / fmt.INDEX_FILE).to_pylist()


def _member(root: Path, row: dict, side: str) -> bytes:
    with open(root / row["shard"], "rb") as f:
        f.seek(row[f"{side}_offset"])
        return f.read(row[f"{side}_size"])


def test_pack_and_tile_write_xxh3_of_every_member(raw_tiles: Path):
    rows = _rows(raw_tiles)
    assert {r["layout"] for r in rows} == {fmt.LAYOUT_FULL, fmt.LAYOUT_TILE}
    manifest = fmt.Manifest.from_json((raw_tiles / fmt.MANIFEST_FILE).read_text())
    assert manifest.format_version == 3
    for r in rows:
        for side in ("lq", "gt"):
            assert r[f"{side}_xxh3"] == xxhash.xxh3_128_hexdigest(_member(raw_tiles, r, side))
    assert pq.read_schema(raw_tiles / fmt.INDEX_FILE).names[-2:] == list(fmt.FAST_HASH_COLUMNS)


def test_raw_tile_is_read_as_a_view_on_the_read_buffer(raw_tiles: Path):
    row = next(r for r in _rows(raw_tiles) if r["layout"] == fmt.LAYOUT_TILE)
    reader = PairReader(Store.open(str(raw_tiles)), "pread")
    lq_bytes, gt_bytes = reader.read_pair(row, reuse=True)
    lq, gt = decode_pair(lq_bytes, gt_bytes, row["key"], reuse=True)
    buf = np.frombuffer(reader._buf, np.uint8)
    assert np.shares_memory(lq, buf) and np.shares_memory(gt, buf)  # no decode, no full copy
    assert lq.shape == (64, 64, 3) and lq.flags.writeable
    # The view is the stored pixels, exactly what Pillow reads from the PPM.
    np.testing.assert_array_equal(lq, decode_image(_member(raw_tiles, row, "lq"), "t", backend="pillow"))
    # A PPM that is not exactly one 8-bit binary image (trailing bytes) goes to Pillow instead.
    data = bytearray(_member(raw_tiles, row, "lq")) + b"\0"
    assert not np.shares_memory(decode_image(memoryview(data), "t"), np.frombuffer(data, np.uint8))


def _flip(root: Path, row: dict, side: str, at: int = -5) -> None:
    with open(root / row["shard"], "r+b") as f:
        f.seek(row[f"{side}_offset"] + row[f"{side}_size"] + at)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))


def test_flipped_byte_in_raw_tile_caught_by_xxh3_in_readers_and_sha256_in_verify(root: Path):
    row = next(r for r in _rows(root) if r["layout"] == fmt.LAYOUT_TILE)
    _flip(root, row, "gt")  # one pixel bit: the PPM still "decodes"
    with pytest.raises(ChecksumError, match=r"gt\.png at byte \d+: xxh3 mismatch"):
        get_pair(str(root), row["key"])
    with pytest.raises(ChecksumError, match="xxh3 mismatch"):
        for _ in FoundIRStream(str(root), layout="tile", schedule="mix", batch_size=4, crop=32):
            pass
    from foundir_data.load import load_dataset

    with pytest.raises(ChecksumError, match="xxh3 mismatch"):
        for _ in load_dataset(str(root), split="train", layout="tile", streaming=True):
            pass
    report = verify(str(root))
    assert any("sha256" in p.what and p.member == fmt.GT_MEMBER for p in report.problems), report


def test_readers_check_xxh3_not_only_sha256(root: Path):
    """An index whose xxh3 is wrong (sha256 right) is refused: the fast checksum is the one read."""
    t = pq.read_table(root / fmt.INDEX_FILE)
    rows = t.to_pylist()
    i = next(i for i, r in enumerate(rows) if r["layout"] == fmt.LAYOUT_TILE)
    rows[i]["lq_xxh3"] = "0" * 32
    pq.write_table(fmt.index_table(rows), root / fmt.INDEX_FILE)
    upgrade(root)  # the per-shard parts readers read (format 3) from the edited index
    with pytest.raises(ChecksumError, match="xxh3 mismatch: expected 0{32}"):
        get_pair(str(root), rows[i]["key"])
    assert not check_member(rows[i], "lq", _member(root, rows[i], "lq"), "t")
    assert check_member({**rows[i], "lq_xxh3": None}, "lq", _member(root, rows[i], "lq"), "t")
    report = verify(str(root))  # verify checks both digests
    assert [p.what for p in report.problems] == ["member xxh3 differs from the index"], report


def test_version_2_folder_with_sha256_only_still_reads_and_is_checked(root: Path):
    """A version 2 folder (no xxh3 columns) reads through every reader, checked by sha256."""
    t = pq.read_table(root / fmt.INDEX_FILE)
    as_version2(root, drop=fmt.FAST_HASH_COLUMNS)
    rows = [r for r in t.to_pylist() if r["layout"] == fmt.LAYOUT_TILE]
    pair = get_pair(str(root), rows[0]["key"])
    np.testing.assert_array_equal(np.asarray(pair["lq"]), decode_image(_member(root, rows[0], "lq"), "t"))
    batch = next(iter(FoundIRStream(str(root), layout="tile", schedule="mix", batch_size=4, crop=32)))
    assert len(batch["key"]) == 4
    assert Store.open(str(root)).index(columns=["key", "lq_xxh3"])["lq_xxh3"].null_count == len(t)
    _flip(root, rows[0], "lq")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        get_pair(str(root), rows[0]["key"])

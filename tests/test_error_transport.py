"""Errors keep their type and message (issue 19, data side of class 6): through real
DataLoader workers, out of a non-streaming ``load_dataset``, and under ``on_error="skip"``
for every error a damaged read raises; one-line errors for ``tile`` on a broken index and
for undecodable bytes.

Each table row damages a packed folder (or a server) one way and names the error class a
user must see, from 2 DataLoader workers with ``on_error="raise"``, and the pairs the
stream still serves with ``on_error="skip"``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from foundir_data import format as fmt
from shard_tools.pack.index_write import upgrade
from foundir_data.read.decode import decode_image
from foundir_data.load import load_dataset
from foundir_data.errors import ChecksumError, ShardError, TruncatedShardError
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.cli import main as cli

REPO = "foundir/Transport"
DEG = "Blur"


def _victim(root: Path) -> dict:
    """The last sample of the Blur shard (a truncation there leaves the others whole)."""
    rows = [r for r in pq.read_table(root / fmt.INDEX_FILE).to_pylist() if r["degradation"] == DEG]
    return max(rows, key=lambda r: r["sample_index"])


def _flip_lq(root: Path, hub) -> tuple[str, dict]:
    row = _victim(root)
    data = bytearray((root / row["shard"]).read_bytes())
    data[row["lq_offset"] + 50] ^= 0xFF
    (root / row["shard"]).write_bytes(bytes(data))
    return str(root), {}


def _truncate(root: Path, hub) -> tuple[str, dict]:
    row = _victim(root)
    with open(root / row["shard"], "r+b") as f:
        f.truncate(row["gt_offset"])  # pread mode: the index points past the end
    return str(root), {"read": "pread"}


def _negative_offset(root: Path, hub) -> tuple[str, dict]:
    t = pq.read_table(root / fmt.INDEX_FILE).to_pylist()
    key = _victim(root)["key"]
    for r in t:
        if r["key"] == key:
            r["lq_offset"] = -512
    pq.write_table(fmt.index_table(t), root / fmt.INDEX_FILE)
    upgrade(root)  # the per-shard parts readers read (format 3) from the edited index
    return str(root), {"read": "pread"}


def _server_errors(root: Path, hub) -> tuple[str, dict]:
    hub.add_repo(REPO, root)
    hub.fail_first(1000, 500, match=_victim(root)["shard"])
    return f"hf://datasets/{REPO}", {"read": "range", "store_kwargs": {"retries": 1, "backoff": 0.001}}


def _server_truncates(root: Path, hub) -> tuple[str, dict]:
    hub.add_repo(REPO, root)
    with open(root / _victim(root)["shard"], "r+b") as f:  # the server's copy ends early
        f.truncate(4096)
    return f"hf://datasets/{REPO}", {"read": "cache", "store_kwargs": {"retries": 1, "backoff": 0.001}}


#: damage -> (the error class the training loop sees, words of its message, what "skip"
#: leaves out: the damaged pair, or its whole shard when the server fails the shard)
CASES = {
    "a flipped image byte (ChecksumError)": (_flip_lq, ChecksumError, "xxh3 mismatch", "pair"),
    "a truncated shard in pread mode (FormatError)": (_truncate, fmt.FormatError, "truncated shard", "pair"),
    "a negative offset in the index (FormatError)": (_negative_offset, fmt.FormatError, "no valid member offsets",
                                                     "pair"),
    "a server answering 500 (ShardError)": (_server_errors, ShardError, "HTTP 500", "shard"),
    "a server cutting the body (TruncatedShardError)": (_server_truncates, TruncatedShardError, "truncated", "shard"),
}


def _stream(loc: str, on_error: str, kw: dict, tmp: Path) -> FoundIRStream:
    kw = {**kw, "store_kwargs": {**kw.get("store_kwargs", {}), "on_error": on_error, "cache_dir": str(tmp)}}
    return FoundIRStream(loc, split="test", config=DEG, schedule="mix", batch_size=1, crop=32, seed=0,
                         rank=0, world_size=1, **kw)


def _first_error(loader) -> BaseException | None:
    """The error iterating ``loader`` raises, without its traceback: a traceback would keep
    the DataLoader iterator alive in a reference cycle, and shutting its workers down from the
    garbage collector waits seconds per worker (measured), where the direct way is instant."""
    try:
        for _ in loader:
            pass
    except Exception as e:  # noqa: BLE001 - the test asserts its type
        return e.with_traceback(None)
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_errors_arrive_from_dataloader_workers_with_their_type_and_skip_skips_them(
        packed_copy, hub_server, tmp_path, case):
    damage, cls, words, lost = CASES[case]
    loc, kw = damage(packed_copy, hub_server)
    row = _victim(packed_copy)
    err = _first_error(torch.utils.data.DataLoader(_stream(loc, "raise", kw, tmp_path / "a"), batch_size=None,
                                                   num_workers=2))
    assert type(err) is cls and words in str(err) and row["shard"] in str(err), repr(err)
    kept = [k for b in _stream(loc, "skip", kw, tmp_path / "b") for k in b["key"]]
    others = [r["key"] for r in pq.read_table(packed_copy / fmt.INDEX_FILE).to_pylist()
              if r["degradation"] == DEG and r["key"] != row["key"] and lost == "pair"]
    assert sorted(kept) == sorted(others)


def test_load_dataset_raises_our_error_not_datasets_wrapper(packed_copy, tmp_path):
    _flip_lq(packed_copy, None)
    with pytest.raises(ChecksumError, match="xxh3 mismatch"):
        load_dataset(str(packed_copy), name=DEG, split="test", cache_dir=str(tmp_path))
    with pytest.raises(ChecksumError, match="xxh3 mismatch"):
        load_dataset(str(packed_copy), name=DEG, split="test", cache_dir=str(tmp_path / "2"), num_proc=2)


@pytest.mark.parametrize("content", [b"not parquet at all", b"PAR1" + b"\0" * 100, b""])
def test_tile_on_a_broken_index_is_one_line(packed_copy, content, capsys):
    (packed_copy / fmt.INDEX_FILE).write_bytes(content)
    assert cli(["tile", str(packed_copy), "--size", "32", "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert f"{packed_copy / fmt.INDEX_FILE}: not a readable Parquet index" in err


def test_undecodable_bytes_name_the_file_not_a_buffer():
    from foundir_model.restore.images import ImageError, decode

    with pytest.raises(Exception) as e:
        decode_image(b"plain text" * 10, "shards/x.tar member k.lq.png")
    assert "shards/x.tar member k.lq.png" in str(e.value) and "BytesIO" not in str(e.value)
    with pytest.raises(ImageError) as e:
        decode(b"plain text" * 10, "photos/a.png")
    assert "photos/a.png" in str(e.value) and "BytesIO" not in str(e.value)


def test_a_missing_record_member_is_skipped_too(packed_copy):
    # A sample whose JSON member is gone from the tar (renamed, and its bytes damaged): it is
    # looked for at the index's offsets, fails there, and is skipped; its shard still serves.
    row = _victim(packed_copy)
    data = bytearray((packed_copy / row["shard"]).read_bytes())
    data[row["json_offset"] + 5] ^= 0x01
    hdr = row["json_offset"] - tarfile.BLOCKSIZE
    info = tarfile.TarInfo.frombuf(bytes(data[hdr:hdr + 512]), "utf-8", "surrogateescape")
    info.name = f"{row['key']}.txt"  # no longer <key>.json
    data[hdr:hdr + 512] = info.tobuf(tarfile.USTAR_FORMAT)
    (packed_copy / row["shard"]).write_bytes(bytes(data))
    m = json.loads((packed_copy / fmt.MANIFEST_FILE).read_text())
    for s in m["shards"]:
        if s["path"] == row["shard"]:
            s["sha256"] = hashlib.sha256(data).hexdigest()
    (packed_copy / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    keys = [ex["key"] for ex in load_dataset(str(packed_copy), name=DEG, split="test", streaming=True,
                                             on_error="skip")]
    assert row["key"] not in keys and len(keys) == 1
    with pytest.raises(ChecksumError, match=f"member {row['key']}.json at byte {row['json_offset']}: sha256 mismatch"):
        list(load_dataset(str(packed_copy), name=DEG, split="test", streaming=True))

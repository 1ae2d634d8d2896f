"""Every read path checks each member against the index's sha256 before decoding or yielding
(docs/streaming.md, "Integrity"): the stream in every read mode, load_dataset, get_pair,
validation, preview; a remote mismatch is read once more; skipped means never yielded;
sizes from the index or a tar header are bounded by the shard's real size."""

from __future__ import annotations

import hashlib
import json
import resource
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from foundir_data.errors import ChecksumError, FoundIRError, ShardError
from foundir_data.load import load_dataset
from foundir_data.remote.store import Store
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.pack.index_write import upgrade

REPO = "foundir/Integrity"
TOKEN = "hf_IntegrityTokenNeverShown42"


def _rows(root: Path) -> list[dict]:
    return pq.read_table(root / fmt.INDEX_FILE).to_pylist()


def _flip(root: Path, rec: dict, member: str = "lq", at: int = 100, fix_manifest: bool = False) -> None:
    """Flip one byte inside a member; with ``fix_manifest`` the manifest's shard size/sha256
    are rewritten to match, so only the member check can tell."""
    shard = root / rec["shard"]
    data = bytearray(shard.read_bytes())
    data[rec[f"{member}_offset"] + at] ^= 0xFF
    shard.write_bytes(bytes(data))
    if fix_manifest:
        m = json.loads((root / fmt.MANIFEST_FILE).read_text())
        for s in m["shards"]:
            if s["path"] == rec["shard"]:
                s["sha256"] = hashlib.sha256(data).hexdigest()
        (root / fmt.MANIFEST_FILE).write_text(json.dumps(m))


def _stream(location, **kw) -> FoundIRStream:
    kw.setdefault("split", "test")
    return FoundIRStream(location, schedule="mix", batch_size=4, crop=32, seed=0, rank=0, world_size=1, **kw)


def _keys(stream) -> list[str]:
    return [k for b in stream for k in b["key"]]


def _one_shard_row(root: Path) -> dict:
    return next(r for r in _rows(root) if r["split"] == "test" and r["layout"] == "full")


# ---------------------------------------------------------------- the stream, every read mode
def test_stream_pread_refuses_or_skips_a_damaged_member(packed_copy):
    good = _keys(_stream(str(packed_copy)))
    rec = _one_shard_row(packed_copy)
    _flip(packed_copy, rec)
    with pytest.raises(ChecksumError) as e:
        _keys(_stream(str(packed_copy), read="pread"))
    assert rec["shard"] in str(e.value) and f"{rec['key']}.{fmt.LQ_MEMBER}" in str(e.value) and rec["lq_xxh3"] in str(e.value)
    st = _stream(str(packed_copy), read="pread", store_kwargs={"on_error": "skip"})
    got = _keys(st)
    assert rec["key"] not in got and sorted(got) == sorted(k for k in good if k != rec["key"])
    assert [k for k, _ in st.skipped] == [rec["key"]]


@pytest.fixture
def hub(hub_server, packed_copy, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.add_repo(REPO, packed_copy)
    return hub_server


def _hub_stream(read: str, tmp_path: Path, **store_kw) -> FoundIRStream:
    kw = {"token": TOKEN, "backoff": 0.001, "cache_dir": str(tmp_path / "cache"), **store_kw}
    return _stream(f"hf://datasets/{REPO}", read=read, store_kwargs=kw)


def test_stream_range_corruption_in_transit_is_read_again(hub, packed_copy, tmp_path):
    good = list(_stream(str(packed_copy)))
    st = _hub_stream("range", tmp_path)
    hub.corrupt("/shards/", times=1)
    batches = list(st)
    assert st._reader.retried == 1  # the corrupted body failed the check, the second read passed
    assert [b["key"] for b in batches] == [b["key"] for b in good]
    for b, g in zip(batches, good):
        assert np.array_equal(b["lq"].numpy(), g["lq"].numpy()) and np.array_equal(b["gt"].numpy(), g["gt"].numpy())


def test_stream_range_corruption_twice_raises_or_skips(hub, tmp_path):
    st = _hub_stream("range", tmp_path)
    hub.corrupt("/shards/", times=2)
    with pytest.raises(ChecksumError, match="xxh3 mismatch"):
        list(st)
    st = _hub_stream("range", tmp_path, on_error="skip")
    n_all = st.num_pairs
    hub.corrupt("/shards/", times=2)
    keys = _keys(st)
    assert len(st.skipped) == 1 and st.skipped[0][0] not in keys and len(keys) == n_all - 1


def test_stream_cache_mode_checks_members(hub, packed_copy, tmp_path):
    rec = _one_shard_row(packed_copy)
    _flip(packed_copy, rec, "gt", fix_manifest=True)  # the whole-shard check passes
    with pytest.raises(ChecksumError, match=f"{rec['key']}.{fmt.GT_MEMBER}"):
        list(_hub_stream("cache", tmp_path))
    st = _hub_stream("cache", tmp_path, on_error="skip")
    assert rec["key"] not in _keys(st) and [k for k, _ in st.skipped] == [rec["key"]]


# ---------------------------------------------------------------- load_dataset
def test_load_dataset_never_yields_a_damaged_sample(packed_copy):
    rec = _one_shard_row(packed_copy)
    _flip(packed_copy, rec, fix_manifest=True)
    seen = []
    with pytest.raises(ChecksumError, match=rec["key"]):
        for ex in load_dataset(str(packed_copy), split="test", streaming=True):
            seen.append(ex["key"])
    assert rec["key"] not in seen
    ds = load_dataset(str(packed_copy), split="test", streaming=True, on_error="skip")
    keys = [ex["key"] for ex in ds]
    expected = [r["key"] for r in _rows(packed_copy) if r["split"] == "test" and r["layout"] == "full"]
    assert sorted(keys) == sorted(k for k in expected if k != rec["key"])


def test_load_dataset_over_the_hub_reads_a_corrupted_member_again(hub, packed_copy, tmp_path):
    # The member check runs before the whole-shard check: one corrupted transfer of a shard
    # is caught at the member, the member is read once more by a range request.
    from foundir_data.load import checked_samples

    store = Store.open(f"hf://datasets/{REPO}", token=TOKEN, backoff=0.001, verify=False)
    sh = store.manifest().shards[0]
    rows = {r["key"]: r for r in store.index().to_pylist() if r["shard"] == sh.path}
    hub.corrupt(sh.path, times=1)
    got = list(checked_samples(store, sh.path, rows))
    assert [s["__key__"] for s in got] == sorted(rows, key=lambda k: rows[k]["sample_index"])
    for s in got:
        r = rows[s["__key__"]]
        assert hashlib.sha256(s[fmt.LQ_MEMBER]).hexdigest() == r["lq_sha256"]
        assert hashlib.sha256(s[fmt.GT_MEMBER]).hexdigest() == r["gt_sha256"]


# ---------------------------------------------------------------- other readers
def test_validation_and_preview_refuse_a_damaged_member(packed_copy, tmp_path):
    from foundir_model.train.validation import load_val_pairs
    from shard_tools.inspect.preview import PreviewConfig, preview

    rows = sorted((r for r in _rows(packed_copy) if r["split"] == "test"), key=lambda r: r["key"])
    for r in rows:  # every test pair: whichever the readers pick is damaged
        _flip(packed_copy, r, "gt", at=50)
    with pytest.raises(ChecksumError):
        load_val_pairs(str(packed_copy), per_type=1, size=32)
    with pytest.raises(ChecksumError):
        preview(PreviewConfig(location=str(packed_copy), out=str(tmp_path / "p.png"), per_type=1, split="test"))


# ---------------------------------------------------------------- sizes bounded before allocating
def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_hostile_index_size_is_refused_before_allocating(packed_copy):
    t = pq.read_table(packed_copy / fmt.INDEX_FILE)
    sizes = t["lq_size"].to_pylist()
    sizes[0] = 6 << 30  # an index claiming a 6 GiB member in a small shard
    import pyarrow as pa

    t = t.set_column(t.schema.get_field_index("lq_size"), "lq_size", pa.array(sizes, t.schema.field("lq_size").type))
    pq.write_table(t, packed_copy / fmt.INDEX_FILE)
    rec = t.slice(0, 1).to_pylist()[0]
    before = _peak_rss()
    from foundir_data.read.reader import PairReader

    for mode in ("pread", "range"):
        with pytest.raises(fmt.FormatError, match="past the end"):
            PairReader(Store.open(str(packed_copy)), mode).read_pair(rec)
    assert _peak_rss() - before < 1 << 30


def _set_tar_size(path: Path, member_offset_data: int, size: int) -> None:
    """Rewrite the size field of the tar header before ``member_offset_data`` (checksum fixed)."""
    data = bytearray(path.read_bytes())
    h = member_offset_data - 512
    data[h + 124:h + 136] = f"{size:011o}\0".encode()
    data[h + 148:h + 156] = b" " * 8
    data[h + 148:h + 156] = f"{sum(data[h:h + 512]):06o}\0 ".encode()
    path.write_bytes(bytes(data))


def test_hostile_tar_header_size_is_refused(packed_copy):
    rec = _one_shard_row(packed_copy)
    sh = packed_copy / rec["shard"]
    _set_tar_size(sh, rec["lq_offset"], 6 << 30)
    store = Store.open(str(packed_copy), verify=False)
    with pytest.raises(ShardError, match="claims 6442450944 bytes") as e:
        list(store.iter_samples(rec["shard"]))
    assert isinstance(e.value, FoundIRError)


def test_stream_cache_download_corrupted_in_transit_is_fetched_again(hub, packed_copy, tmp_path):
    good = list(_stream(str(packed_copy)))
    hub.corrupt("/shards/", times=1)  # one shard download arrives damaged: refetched once
    got = list(_hub_stream("cache", tmp_path))
    assert [b["key"] for b in got] == [b["key"] for b in good]
    assert all(np.array_equal(a["gt"].numpy(), b["gt"].numpy()) for a, b in zip(got, good))
    hub.corrupt("/shards/", times=2)  # twice in a row: the remote copy is taken to be damaged
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        list(_hub_stream("cache", tmp_path / "fresh"))


def test_range_read_of_a_shard_the_manifest_does_not_list_is_refused(packed_copy):
    from foundir_data.read.reader import PairReader

    rec = dict(_one_shard_row(packed_copy), shard="shards/full/test/Blur/not-listed.tar")
    with pytest.raises(fmt.FormatError, match="does not list"):
        PairReader(Store.open(str(packed_copy)), "range").read_pair(rec)


@pytest.mark.parametrize("bad", ["", "z" * 64, None])
def test_stream_refuses_an_index_without_valid_hashes(packed_copy, bad):
    import pyarrow as pa

    t = pq.read_table(packed_copy / fmt.INDEX_FILE)
    col = t["gt_sha256"].to_pylist()
    col[3] = bad
    t = t.set_column(t.schema.get_field_index("gt_sha256"), "gt_sha256", pa.array(col, pa.string()))
    pq.write_table(t, packed_copy / fmt.INDEX_FILE)
    upgrade(packed_copy)  # the per-shard parts (what the stream reads) now carry the bad hash
    with pytest.raises(fmt.FormatError, match="gt_sha256"):
        _keys(_stream(str(packed_copy)))

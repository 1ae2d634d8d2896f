"""Store on local folders: manifest/index/ranges/streams, integrity errors, cache, retry policy."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from foundir_data import format as fmt
from foundir_data.remote.cache import DiskCache
from foundir_data.remote.retry import Truncated, is_transient, retry_after, retry_delay
from foundir_data.remote.store import (
    ChecksumError, NoManifestError, ShardError, Store, TruncatedShardError, parse_hf_location,
)


def _plain_folder(root: Path, files: dict[str, bytes]) -> Path:
    """A folder whose manifest lists arbitrary files as shards (no tar needed)."""
    shards = [fmt.ShardInfo(rel, "test", "Blur", "full", 1, len(b), hashlib.sha256(b).hexdigest())
              for rel, b in files.items()]
    for rel, b in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b)
    (root / fmt.MANIFEST_FILE).write_text(fmt.Manifest(shards=shards).to_json())
    return root


def test_plain_files_read_bytes_range_stream(tmp_path):
    data = bytes(range(256)) * 300
    root = _plain_folder(tmp_path, {"shards/a.bin": data, "shards/b.bin": b"hello"})
    store = Store.open(str(root))
    assert store.location == str(root) and store.is_local
    assert [s.path for s in store.manifest().shards] == ["shards/a.bin", "shards/b.bin"]
    assert store.read_bytes("shards/a.bin") == data
    assert store.read_range("shards/a.bin", 1000, 777) == data[1000:1777]
    assert store.read_range("shards/a.bin", 5, 0) == b""
    with store.open_shard("shards/a.bin") as f:
        assert f.read() == data
    assert store.local_path("shards/b.bin") == str(root / "shards" / "b.bin")
    # file:// is the same folder
    assert Store.open(f"file://{root}").read_bytes("shards/b.bin") == b"hello"
    with pytest.raises(TruncatedShardError, match="a.bin"):
        store.read_range("shards/a.bin", len(data) - 10, 20)


def test_plain_file_corrupt_and_truncated(tmp_path):
    data = b"x" * 5000
    root = _plain_folder(tmp_path, {"shards/a.bin": data, "shards/b.bin": data})
    (root / "shards/a.bin").write_bytes(b"y" + data[1:])
    (root / "shards/b.bin").write_bytes(data[:4000])
    store = Store.open(str(root))
    store.manifest()
    with pytest.raises(ChecksumError) as e:
        store.open_shard("shards/a.bin").read()
    msg = str(e.value)
    assert str(root / "shards" / "a.bin") in msg and hashlib.sha256(data).hexdigest() in msg
    assert hashlib.sha256(b"y" + data[1:]).hexdigest() in msg
    with pytest.raises(TruncatedShardError, match=r"b\.bin.*expected 5000 bytes, got 4000"):
        store.open_shard("shards/b.bin").read()
    with pytest.raises(ChecksumError, match="a.bin: sha256 mismatch"):
        store.read_bytes("shards/a.bin")
    # verify=False (per call or per store) skips the checksum; the size is still checked
    assert store.open_shard("shards/a.bin", verify=False).read()[:1] == b"y"
    trusting = Store.open(str(root), verify=False)
    assert trusting.open_shard("shards/a.bin").read()[:1] == b"y"
    with pytest.raises(TruncatedShardError):
        trusting.open_shard("shards/b.bin").read()


def test_no_manifest_and_bad_version(tmp_path):
    with pytest.raises(NoManifestError, match=r"no manifest\.json at .*shard_tools pack"):
        Store.open(str(tmp_path)).manifest()
    m = fmt.Manifest().to_json().replace(f'"format_version": {fmt.FORMAT_VERSION}', '"format_version": 7')
    (tmp_path / fmt.MANIFEST_FILE).write_text(m)
    with pytest.raises(fmt.FormatError, match=r"manifest\.json: format_version 7 is not readable"):
        Store.open(str(tmp_path)).manifest()


def test_bad_arguments_and_paths(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        Store.open(str(tmp_path), on_error="ignore")
    store = Store.open(str(tmp_path))
    for bad in ("../x", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(fmt.FormatError, match="invalid path"):
            store.url(bad)
    with pytest.raises(ValueError, match="hf://datasets/<org>/<name>"):
        Store.open("hf://datasets/onlyorg")


def test_parse_hf_location():
    assert parse_hf_location("hf://datasets/foundir/MillionIRData") == ("foundir/MillionIRData", "main", "")
    assert parse_hf_location("hf://datasets/a/b@v1.0/sub/dir") == ("a/b", "v1.0", "sub/dir")
    assert parse_hf_location("hf://datasets/a/b@refs%2Fpr%2F3") == ("a/b", "refs/pr/3", "")
    assert parse_hf_location("hf://datasets/a/b@refs/pr/3/sub") == ("a/b", "refs/pr/3", "sub")


def test_packed_folder_manifest_index_samples(packed, sample_source):
    store = Store.open(str(packed))
    m = store.manifest()
    table = store.index()
    assert table.schema == fmt.INDEX_SCHEMA and table.num_rows == m.num_samples == 40
    sub = store.index(["key", "shard"])
    assert sub.column_names == ["key", "shard"] and sub.num_rows == 40
    with pytest.raises(ValueError, match="unknown index columns"):
        store.index(["nope"])
    rows = {r["key"]: r for r in table.to_pylist()}
    seen = []
    for sh in m.shards:
        for s in store.iter_samples(sh.path):
            r = rows[s["__key__"]]
            assert s[fmt.LQ_MEMBER] == (sample_source / r["lq_source"]).read_bytes()
            assert s[fmt.GT_MEMBER] == (sample_source / r["gt_source"]).read_bytes()
            assert r["shard"] == sh.path and s["__url__"] == store.url(sh.path)
            seen.append(s["__key__"])
    assert sorted(seen) == sorted(rows)
    r = next(iter(rows.values()))
    assert store.read_range(r["shard"], r["lq_offset"], r["lq_size"]) == (sample_source / r["lq_source"]).read_bytes()


def test_iter_samples_on_error_policy(packed_copy, caplog):
    store = Store.open(str(packed_copy))
    sh = store.manifest().shards[0]
    path = packed_copy / sh.path
    raw = bytearray(path.read_bytes())
    raw[1500] ^= 0xFF  # inside the first member's data: same size, different bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match=sh.sha256):
        list(store.iter_samples(sh.path))
    skipping = Store.open(str(packed_copy), on_error="skip")
    skipping.manifest()
    with caplog.at_level(logging.WARNING, logger="foundir_data.remote.store"):
        list(skipping.iter_samples(sh.path))
    assert [u for u, _ in skipping.skipped] == [str(path)]
    assert str(path) in caplog.text and "skip" in caplog.text
    # A missing shard is a failure too: named, and skipped by policy.
    path.unlink()
    list(skipping.iter_samples(sh.path))
    assert len(skipping.skipped) == 2
    with pytest.raises(ShardError, match=sh.path.rsplit("/", 1)[-1]):
        list(store.iter_samples(sh.path))


def test_store_pickles(packed):
    store = Store.open(str(packed))
    store.manifest()
    again = pickle.loads(pickle.dumps(store))
    assert again.manifest() == store.manifest() and repr(again) == repr(store)
    err = pickle.loads(pickle.dumps(ChecksumError("s3://b/x.tar", "bad")))
    assert isinstance(err, ChecksumError) and err.url == "s3://b/x.tar"


def test_retry_policy_is_deterministic_and_honours_retry_after():
    class Resp(Exception):
        def __init__(self, status, headers=None):
            super().__init__(status)
            self.status, self.headers = status, headers or {}

    assert is_transient(Resp(429)) and is_transient(Resp(503)) and is_transient(Resp(500))
    assert not is_transient(Resp(404)) and not is_transient(Resp(403))
    assert is_transient(ConnectionResetError()) and is_transient(Truncated("u", 10, 5))
    assert not is_transient(FileNotFoundError()) and not is_transient(ValueError())
    assert retry_after(Resp(429, {"Retry-After": "7"})) == 7.0
    assert retry_after(Resp(429)) is None
    d = [retry_delay(a, 0.5, "https://x/y.tar") for a in range(5)]
    assert d == [retry_delay(a, 0.5, "https://x/y.tar") for a in range(5)]
    assert all(0.25 * 2 ** a <= v < 0.75 * 2 ** a for a, v in enumerate(d))
    assert retry_delay(0, 0.5, "u", after=9.0) == 9.0
    assert retry_delay(30, 0.5, "u") == 120.0


def test_disk_cache_lru_limit(tmp_path):
    cache = DiskCache(tmp_path / "c", limit_bytes=2500)
    paths = []
    for i in range(4):
        p = cache.path_for(f"https://h/f{i}", hashlib.sha256(bytes([i])).hexdigest())
        cache.fill(p, lambda f, i=i: f.write(bytes([i]) * 1000))
        paths.append(p)
        if i == 1:  # use f0 again: f1 becomes the least recently used
            import os
            os.utime(paths[0], (paths[0].stat().st_mtime + 10,) * 2)
    assert cache.size() <= 2500
    assert paths[3].exists()
    assert not paths[1].exists()
    # A failing write leaves nothing behind.
    bad = cache.path_for("https://h/bad", None)
    with pytest.raises(RuntimeError):
        cache.fill(bad, lambda f: (f.write(b"partial"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert not bad.exists() and not list(bad.parent.glob("*.part"))


def test_index_errors_name_the_file(packed_copy):
    (packed_copy / fmt.INDEX_FILE).write_bytes(b"not parquet")
    with pytest.raises(fmt.FormatError, match=r"pairs\.parquet: unreadable index"):
        Store.open(str(packed_copy)).index()
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": ["a"]}), packed_copy / fmt.INDEX_FILE)
    with pytest.raises(fmt.FormatError, match="missing columns"):
        Store.open(str(packed_copy)).index()

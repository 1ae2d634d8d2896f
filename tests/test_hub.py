"""The Hub path (hf://) against a local Hub-like HTTP server reached through HF_ENDPOINT."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data.read.access import get_pair
from foundir_data.load import load_dataset
from foundir_data.remote.store import (
    ChecksumError, NoManifestError, ShardError, Store, TruncatedShardError,
)

TOKEN = "hf_TestTokenDoNotLog1234"
REPO = "foundir/TestData"


@pytest.fixture
def hub(hub_server, packed, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub_server.add_repo(REPO, packed)
    return hub_server


def _open(**kw) -> Store:
    kw.setdefault("token", TOKEN)
    kw.setdefault("backoff", 0.001)
    return Store.open(f"hf://datasets/{REPO}", **kw)


def _no_api_calls(hub) -> None:
    prefix = f"/datasets/{REPO}/resolve/"
    assert hub.requests and all(r.path.startswith(prefix) for r in hub.requests), hub.paths()


def test_reads_only_resolve_urls_with_token(hub, packed):
    store = _open()
    assert store.url("manifest.json") == f"{hub.url}/datasets/{REPO}/resolve/main/manifest.json"
    m = store.manifest()
    assert store.index().num_rows == m.num_samples
    sh = m.shards[3]
    with store.open_shard(sh.path) as f:
        assert f.read() == (packed / sh.path).read_bytes()
    _no_api_calls(hub)
    assert all(r.method == "GET" for r in hub.requests)
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in hub.requests)


def test_token_from_environment_and_revision_subdir(hub_server, packed, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub_server.add_repo("org/name", packed.parent, revision="v1.0")
    store = Store.open(f"hf://datasets/org/name@v1.0/{packed.name}")
    assert store.location == f"hf://datasets/org/name@v1.0/{packed.name}"
    assert store.manifest().num_samples == 40
    assert hub_server.requests[-1].path == f"/datasets/org/name/resolve/v1.0/{packed.name}/manifest.json"
    assert hub_server.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_429_and_503_then_success(hub):
    hub.fail_first(2, 429, retry_after="0")
    hub.fail_first(2, 503, retry_after=None)
    store = _open()
    assert store.manifest().num_samples == 40
    assert [r.status for r in hub.requests] == [429, 429, 503, 503, 200]


def test_connection_drops_mid_shard_resume_with_range(hub, packed):
    store = _open()
    sh = max(store.manifest().shards, key=lambda s: s.bytes)
    hub.clear_log()
    hub.drop_after(sh.path, 3000, times=2)
    with store.open_shard(sh.path) as f:
        data = f.read()
    assert data == (packed / sh.path).read_bytes()
    gets = [r for r in hub.requests if r.path.endswith(sh.path)]
    assert [r.headers.get("Range") for r in gets] == [None, "bytes=3000-", "bytes=6000-"]
    # the samples of a shard read through drops are the packed ones
    hub.drop_after(sh.path, 5000, times=1)
    keys = [s["__key__"] for s in store.iter_samples(sh.path)]
    assert len(keys) == sh.count


def test_persistent_failure_names_url_not_token(hub, caplog):
    store = _open(retries=2)
    sh = store.manifest().shards[0]
    hub.fail_first(100, 503, match=sh.path)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ShardError) as e:
            list(store.iter_samples(sh.path))
    assert store.url(sh.path) in str(e.value) and "after 3 attempts" in str(e.value)
    assert TOKEN not in str(e.value) and TOKEN not in caplog.text and TOKEN not in repr(store)
    skipping = _open(retries=1, on_error="skip")
    skipping.manifest()
    assert list(skipping.iter_samples(sh.path)) == []
    assert skipping.skipped[0][0] == store.url(sh.path)


def test_truncated_and_corrupt_shards_on_server(hub_server, packed_copy):
    hub_server.add_repo(REPO, packed_copy)
    store = _open(retries=1)
    a, b = store.manifest().shards[:2]
    full = (packed_copy / a.path).read_bytes()
    (packed_copy / a.path).write_bytes(full[:-4000])
    with pytest.raises(TruncatedShardError) as e:
        store.open_shard(a.path).read()
    assert store.url(a.path) in str(e.value) and f"expected {a.bytes} bytes" in str(e.value)
    raw = bytearray((packed_copy / b.path).read_bytes())
    raw[2000] ^= 1
    (packed_copy / b.path).write_bytes(bytes(raw))
    with pytest.raises(ChecksumError) as e:
        store.local_path(b.path)
    assert store.url(b.path) in str(e.value) and b.sha256 in str(e.value)


def test_no_manifest_and_access_denied(hub_server, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(NoManifestError, match=r"no manifest\.json at http://127\.0\.0\.1.*/resolve/main/manifest\.json"):
        Store.open("hf://datasets/foundir/Missing", token=TOKEN).manifest()
    hub_server.fail_first(1, 401, retry_after=None)
    with pytest.raises(PermissionError, match="access denied") as e:
        Store.open("hf://datasets/foundir/Missing", token=TOKEN).manifest()
    assert TOKEN not in str(e.value)


def test_local_path_cache_limit(hub, packed, tmp_path):
    shards = sorted(_open().manifest().shards, key=lambda s: s.path)[:6]
    limit = 2 * max(s.bytes for s in shards) + 1
    assert sum(s.bytes for s in shards) > limit  # so something must be evicted
    store = _open(cache_dir=str(tmp_path / "cache"), cache_limit_bytes=limit)
    for sh in shards:
        p = store.local_path(sh.path)
        with open(p, "rb") as f:
            assert f.read() == (packed / sh.path).read_bytes()
        assert store._cache.size() <= limit
    assert len(store._cache.files()) < len(shards)
    # the most recent one is a hit: no new request
    n = len(hub.requests)
    assert store.local_path(shards[-1].path) == p and len(hub.requests) == n
    _no_api_calls(hub)


def test_get_pair_one_range_request(hub, packed, sample_source):
    store = _open()
    rec = store.index().slice(5, 1).to_pylist()[0]
    hub.clear_log()
    pair = get_pair(store, rec["key"])
    # Format 3: the key lookup's list and one key file, the shard's index part, then one range
    # request for the pair (docs/format.md, "Version 3"); never the whole index or shard.
    paths = [r.path.split("/resolve/main/")[1] for r in hub.requests]
    assert paths[:3] == [fmt.KEYS_FILE, paths[1], fmt.index_part(rec["shard"])] and paths[1].startswith(fmt.KEYS_DIR)
    assert paths[3:] == [rec["shard"]] and hub.requests[3].headers["Range"].startswith("bytes=")
    src = np.asarray(Image.open(sample_source / rec["lq_source"]))
    assert np.array_equal(np.asarray(pair["lq"]), src)
    assert get_pair(store, rec["key"], decode=False)["gt"] == (sample_source / rec["gt_source"]).read_bytes()


def test_load_dataset_streaming_from_hub(hub, sample_source):
    ds = load_dataset("foundir", location=f"hf://datasets/{REPO}", split="test", streaming=True,
                      token=TOKEN, name="coupled", backoff=0.001)
    hub.drop_after(".tar", 2500, times=1)
    index = {r["key"]: r for r in Store.open(f"hf://datasets/{REPO}", token=TOKEN).index().to_pylist()}
    n = 0
    for ex in ds:
        r = index[ex["key"]]
        assert np.array_equal(np.asarray(ex["gt"]), np.asarray(Image.open(sample_source / r["gt_source"])))
        assert ds.features["degradation"].int2str(ex["degradation"]) == r["degradation"]
        assert ex["cls"] == "coupled"
        n += 1
    assert n == sum(r["cls"] == "coupled" for r in index.values()) == 26
    _no_api_calls(hub)


def _read_in_child(store, rel, queue):
    queue.put(store.read_bytes(rel))


def test_store_used_in_forked_worker(hub, packed):
    import multiprocessing as mp

    store = _open()
    sh = store.manifest().shards[1]  # the parent's HTTP client now exists (and is not fork-safe)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(store, sh.path, queue))
    proc.start()
    try:
        assert queue.get(timeout=120) == (packed / sh.path).read_bytes()
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0


def test_redirect_to_cdn_drops_token_and_resumes(hub, packed):
    from servers import HubServer

    cdn = HubServer().start()
    try:
        cdn.add_repo(REPO, packed)
        hub.redirect(".tar", cdn.url)
        store = _open()
        sh = max(store.manifest().shards, key=lambda s: s.bytes)
        cdn.drop_after(sh.path, 4000, times=1)
        with store.open_shard(sh.path) as f:
            assert f.read() == (packed / sh.path).read_bytes()
        assert [r.status for r in hub.requests if r.path.endswith(".tar")] == [302, 302]
        assert [r.headers.get("Range") for r in cdn.requests] == [None, "bytes=4000-"]
        assert all("Authorization" not in r.headers for r in cdn.requests)
        assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in hub.requests)
    finally:
        cdn.stop()


def test_plain_https_location(hub, packed):
    store = Store.open(f"{hub.url}/datasets/{REPO}/resolve/main/", backoff=0.001)
    assert store.protocol == "http" and store.location == f"{hub.url}/datasets/{REPO}/resolve/main"
    rec = store.index().slice(0, 1).to_pylist()[0]
    assert store.read_range(rec["shard"], rec["lq_offset"], 100) == \
        (packed / rec["shard"]).read_bytes()[rec["lq_offset"]:rec["lq_offset"] + 100]
    assert all("Authorization" not in r.headers for r in hub.requests)  # tokens go to the Hub only


def test_load_dataset_non_streaming_from_hub_every_pair(hub, sample_source, tmp_path):
    hub.fail_first(1, 503, match=".tar")
    dd = load_dataset(f"hf://datasets/{REPO}", token=TOKEN, cache_dir=str(tmp_path / "hf"), backoff=0.001)
    ds = dd["test"]
    index = {r["key"]: r for r in Store.open(f"hf://datasets/{REPO}", token=TOKEN).index().to_pylist()}
    assert sorted(ds["key"]) == sorted(index)
    for ex in ds:
        r = index[ex["key"]]
        for side in ("lq", "gt"):
            assert np.array_equal(np.asarray(ex[side]), np.asarray(Image.open(sample_source / r[f"{side}_source"])))
        assert ds.features["degradation"].int2str(ex["degradation"]) == r["degradation"]
    _no_api_calls(hub)


def test_missing_index_named(hub_server, packed_copy):
    (packed_copy / fmt.INDEX_FILE).unlink()
    hub_server.add_repo(REPO, packed_copy)
    with pytest.raises(FileNotFoundError, match=r"no index at http://.*/index/pairs\.parquet: the manifest names it"):
        _open().index()

"""s3:// through s3fs against moto's S3 server on loopback (server mode, not an in-process mock)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from foundir_data import format as fmt
from foundir_data.read.access import get_pair
from foundir_data.load import load_dataset
from foundir_data.remote.store import NoManifestError, Store


@pytest.fixture
def s3_url(moto_s3, packed) -> str:
    return moto_s3.upload_folder(packed, "foundir-test", "data/v1")


def test_store_reads_s3(s3_url, packed, tmp_path):
    store = Store.open(s3_url + "/", cache_dir=str(tmp_path / "cache"))
    assert store.location == "s3://foundir-test/data/v1" and store.protocol == "s3"
    m = store.manifest()
    assert m.num_samples == 40
    table = store.index()
    assert table.schema == fmt.INDEX_SCHEMA and table.num_rows == 40
    r = table.slice(7, 1).to_pylist()[0]
    local = (packed / r["shard"]).read_bytes()
    assert store.read_range(r["shard"], r["gt_offset"], r["gt_size"]) == local[r["gt_offset"]:r["gt_offset"] + r["gt_size"]]
    with store.open_shard(r["shard"]) as f:
        assert f.read() == local
    p = store.local_path(r["shard"])
    assert p.startswith(str(tmp_path / "cache")) and open(p, "rb").read() == local
    keys = [s["__key__"] for sh in m.shards for s in store.iter_samples(sh.path)]
    assert sorted(keys) == sorted(table.column("key").to_pylist())
    with pytest.raises(NoManifestError, match=r"no manifest\.json at s3://foundir-test/elsewhere/manifest\.json"):
        Store.open("s3://foundir-test/elsewhere").manifest()


def test_s3_endpoint_from_storage_options(moto_s3, s3_url, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    opts = {"client_kwargs": {"endpoint_url": moto_s3.endpoint}}
    assert Store.open(s3_url, storage_options=opts).manifest().num_samples == 40


def test_get_pair_and_load_dataset_from_s3(s3_url, sample_source, tmp_path):
    store = Store.open(s3_url)
    index = {r["key"]: r for r in store.index().to_pylist()}
    key = sorted(index)[11]
    pair = get_pair(store, key, decode=False)
    assert pair["lq"] == (sample_source / index[key]["lq_source"]).read_bytes()

    def check(ds, n):
        seen = set()
        for ex in ds:
            r = index[ex["key"]]
            assert np.array_equal(np.asarray(ex["lq"]), np.asarray(Image.open(sample_source / r["lq_source"])))
            assert ds.features["degradation"].names[ex["degradation"]] == r["degradation"]
            seen.add(ex["key"])
        assert len(seen) == n

    check(load_dataset(s3_url, split="test", streaming=True), 40)
    check(load_dataset(s3_url, name="Haze", split="test", cache_dir=str(tmp_path / "hf")), 2)

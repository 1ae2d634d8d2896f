"""load_dataset on local folders: configs, splits, features, streaming and not, worker sharding."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature, IterableDataset, IterableDatasetDict
from datasets.distributed import split_dataset_by_node
from PIL import Image

from foundir_data import taxonomy
from foundir_data.load import DEFAULT_LOCATION, config_types, load_dataset, resolve_location
from foundir_data.remote.store import NoManifestError, Store


def _check_pairs(ds, packed, sample_source, expect_keys):
    index = {r["key"]: r for r in Store.open(str(packed)).index().to_pylist()}
    seen = []
    for ex in ds:
        r = index[ex["key"]]
        for side in ("lq", "gt"):
            src = np.asarray(Image.open(sample_source / r[f"{side}_source"]))
            assert np.array_equal(np.asarray(ex[side]), src), (ex["key"], side)
        assert ex["degradation"] == taxonomy.get(r["degradation"]).index
        assert ex["lq_source"] == r["lq_source"] and ex["iso"] == r["iso"] and ex["cls"] == r["cls"]
        assert all(ex[c] == r[c] for c in taxonomy.COMPONENTS)
        seen.append(ex["key"])
    assert sorted(seen) == sorted(expect_keys)


def test_resolve_location_and_configs(monkeypatch):
    monkeypatch.delenv("FOUNDIR_DATA", raising=False)
    assert resolve_location() == DEFAULT_LOCATION == "hf://datasets/foundir/MillionIRData"
    monkeypatch.setenv("FOUNDIR_DATA", "s3://bucket/foundir")
    assert resolve_location() == "s3://bucket/foundir"
    assert resolve_location(location="/data/x") == "/data/x"
    assert resolve_location("/other") == "/other"
    assert config_types("all") == list(taxonomy.NAMES)
    assert config_types("isolated") == list(taxonomy.ISOLATED)
    assert config_types("NightRain") == ["NightRain"]
    with pytest.raises(ValueError, match="valid configs: all, isolated, coupled.*Lowlight_Noise_JPEG"):
        config_types("Snow")


def test_non_streaming_dict_every_pair(packed, sample_source, tmp_path):
    dd = load_dataset(str(packed), cache_dir=str(tmp_path / "hf"))
    assert isinstance(dd, DatasetDict) and list(dd) == ["test"]
    ds = dd["test"]
    assert isinstance(ds, Dataset) and ds.num_rows == 40
    assert isinstance(ds.features["degradation"], ClassLabel)
    assert ds.features["degradation"].names == list(taxonomy.NAMES)
    assert isinstance(ds.features["lq"], ImageFeature)
    _check_pairs(ds, packed, sample_source, Store.open(str(packed)).index(["key"]).column("key").to_pylist())


def test_streaming_config_from_env(packed, sample_source, monkeypatch):
    monkeypatch.setenv("FOUNDIR_DATA", str(packed))
    ds = load_dataset("foundir", name="Blur_Noise", split="test", streaming=True)
    assert isinstance(ds, IterableDataset) and ds.n_shards == 1
    keys = [r["key"] for r in Store.open(str(packed)).index().to_pylist() if r["degradation"] == "Blur_Noise"]
    _check_pairs(ds, packed, sample_source, keys)
    assert isinstance(load_dataset("foundir", streaming=True), IterableDatasetDict)


def test_shards_split_over_nodes(packed):
    ds = load_dataset(str(packed), split="test", streaming=True)
    assert ds.n_shards == 20
    parts = [[ex["key"] for ex in split_dataset_by_node(ds, rank=r, world_size=2).select_columns(["key"])]
             for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) + len(parts[1]) == 40


def test_bad_names(packed, tmp_path):
    with pytest.raises(ValueError, match="unknown foundir config 'Fog'"):
        load_dataset(str(packed), name="Fog")
    with pytest.raises(ValueError, match=r"has no split 'train'; it has \['test'\]"):
        load_dataset(str(packed), split="train")
    with pytest.raises(ValueError, match="has no 'tile' layout"):
        load_dataset(str(packed), layout="tile")
    with pytest.raises(NoManifestError, match="shard_tools pack"):
        load_dataset(str(tmp_path))


def test_dataloader_workers_share_the_shards(packed):
    import torch.utils.data

    ds = load_dataset(str(packed), name="isolated", split="test", streaming=True).select_columns(["key", "degradation"])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    keys = [ex["key"] for ex in loader]
    expect = [r["key"] for r in Store.open(str(packed)).index(["key", "cls"]).to_pylist() if r["cls"] == "isolated"]
    assert sorted(keys) == sorted(expect) and len(set(keys)) == 14

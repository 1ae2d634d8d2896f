"""Format version 3's index layout on real packed folders: per-shard parts and the key lookup.

* A stream plans from the manifest's shard list and serves the batches a plan over the full
  index serves (full frames and tiles, subsets, world sizes);
* over S3 (moto's server on loopback, its request recorder), a rank fetches the index parts of
  the shards it reads and never ``index/pairs.parquet``; ``get_pair`` reads the key list, one
  key file, one part and one range of the shard;
* ``shard_tools upgrade`` gives an older folder the same parts; damaged parts are refused.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from foundir_data import format as fmt
from foundir_data import taxonomy
from foundir_data.read.access import get_pair, get_record
from foundir_data.sampling.plan import CurriculumPlan
from foundir_data.errors import ChecksumError
from foundir_data.sampling.schedules import nested_subset
from foundir_data.remote.store import Store
from foundir_data.streaming.stream import FoundIRStream
from shard_tools.pack.index_write import DuplicateKeyError, upgrade, write_keys


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 types x 7 pairs in shards of at most 3 pairs, tiled to 32 px (several tiles a frame)."""
    from foundir_data.sample import make_sample
    from shard_tools.pack.packer import PackConfig, pack
    from shard_tools.tiles.tiler import pack_tiles

    base = tmp_path_factory.mktemp("parts")
    make_sample(base / "src", per_type=7, size=64, layout="test", types=("Blur", "Haze", "Rain"))
    out = base / "out"
    assert pack(PackConfig(source=str(base / "src"), out=str(out), progress=False, shard_count=3)) == 0
    pack_tiles(str(out), 32, split="test", shard_count=5, codec="png")
    return out


def _old_plan_keys(root: Path, layout: str, fraction: float, **kw) -> list[list[str]]:
    """Batches (keys) as the whole-index stream planned them: select rows, subset, plan."""
    t = pq.read_table(root / fmt.INDEX_FILE)
    sel = t.filter(pc.and_(pc.equal(t["split"], "test"), pc.equal(t["layout"], layout)))
    if fraction < 1:
        keys = sel["key"] if layout == fmt.LAYOUT_FULL else pc.coalesce(sel["source_key"], sel["key"])
        if layout == fmt.LAYOUT_FULL:
            sel = sel.take(pa.array(nested_subset(keys, fraction, 0, strata=sel["degradation_id"].to_numpy())))
        else:
            src = pa.table({"k": keys, "d": sel["degradation_id"]}).group_by("k").aggregate([("d", "min")])
            keep = nested_subset(src["k"], fraction, 0, strata=src["d_min"].to_numpy())
            sel = sel.filter(pc.is_in(keys, value_set=src["k"].take(pa.array(keep))))
    plan = CurriculumPlan.from_index(sel, "mix", kw["batch"], seed=kw["seed"], steps=6)
    key = sel["key"].to_pylist()
    return [[key[i] for i in rows] for _, rows in plan.batches(kw["rank"], kw["world"], nodes=kw["nodes"])]


@pytest.mark.parametrize("layout", [fmt.LAYOUT_FULL, fmt.LAYOUT_TILE])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_stream_serves_the_batches_of_the_whole_index_plan(folder, layout, fraction):
    m = json.loads((folder / fmt.MANIFEST_FILE).read_text())
    assert m["format_version"] == 3 and all(s["index_sha256"] for s in m["shards"])
    assert sum(s["layout"] == layout and s["degradation"] == "Blur" for s in m["shards"]) >= 3
    for seed, world, nodes in ((0, 1, 1), (3, 2, 1), (9, 4, 2)):
        batch = 4 * world
        for rank in range(world):
            st = FoundIRStream(str(folder), split="test", layout=layout, schedule="mix", steps_per_phase=6,
                               batch_size=batch, crop=16, seed=seed, rank=rank, world_size=world, nodes=nodes,
                               subset_fraction=fraction)
            got = [b["key"] for b in st]
            assert got == _old_plan_keys(folder, layout, fraction, batch=batch, seed=seed, rank=rank,
                                          world=world, nodes=nodes)


def _post(moto_s3, verb: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{moto_s3.endpoint}/moto-api/recorder/{verb}", method="POST")).read()


def _recording(moto_s3, tmp_path, monkeypatch) -> Path:
    """Start moto's request recorder (it runs in this process: its file goes to tmp_path);
    it is stopped when the test ends, before its file location is restored."""
    from moto.moto_api import recorder

    log = tmp_path / "moto_requests.jsonl"
    monkeypatch.setattr(recorder, "_location", str(log))
    # monkeypatch undoes in reverse order: this runs first, so no later request is recorded.
    monkeypatch.setattr(recorder, "_user_enabled", False)
    for verb in ("reset-recording", "start-recording"):
        _post(moto_s3, verb)
    return log


def _gets(log: Path, prefix: str) -> list[str]:
    out = []
    for line in log.read_text().splitlines():
        e = json.loads(line)
        path = e["url"].split("?")[0].split(prefix, 1)
        if e["method"] == "GET" and len(path) == 2:
            out.append(path[1])
    return out


def test_a_rank_reads_the_index_parts_of_its_shards_only(folder, moto_s3, tmp_path, monkeypatch):
    url = moto_s3.upload_folder(folder, "foundir-parts", "v3")
    log = _recording(moto_s3, tmp_path, monkeypatch)
    st = FoundIRStream(url, split="test", layout="tile", schedule="mix", batch_size=8, crop=16, seed=1,
                       rank=1, world_size=2, read="range", store_kwargs={"cache_dir": str(tmp_path / "c")})
    it = iter(st)
    next(it)
    next(it)
    gets = _gets(log, "/foundir-parts/v3/")
    shards = {g for g in gets if g.startswith(fmt.SHARDS_DIR + "/")}
    parts = [g for g in gets if g.startswith("index/")]
    assert fmt.INDEX_FILE not in gets and not any(g.startswith(fmt.KEYS_DIR) for g in gets)
    assert shards and sorted(parts) == sorted(fmt.index_part(s) for s in shards)  # each read once
    total = sum(s.count for s in st.store.manifest().select(split="test", layout="tile"))
    assert st._parts.parts_read == len(parts) < len(st.store.manifest().select(layout="tile")) and total > 16


def test_get_pair_reads_two_key_files_one_part_and_one_range(folder, moto_s3, tmp_path, monkeypatch):
    url = moto_s3.upload_folder(folder, "foundir-keys", "v3")
    t = pq.read_table(folder / fmt.INDEX_FILE)
    key = t["key"][17].as_py()
    store = Store.open(url)
    store.manifest()
    log = _recording(moto_s3, tmp_path, monkeypatch)
    pair = get_pair(store, key, decode=False)
    row = t.slice(17, 1).to_pylist()[0]
    assert pair["record"] == row and pair["lq"] == (folder / row["shard"]).read_bytes()[
        row["lq_offset"]:row["lq_offset"] + row["lq_size"]]
    gets = _gets(log, "/foundir-keys/v3/")
    assert gets[:2] == [fmt.KEYS_FILE, f"{fmt.KEYS_DIR}/00000.parquet"]
    assert gets[2:] == [fmt.index_part(row["shard"]), row["shard"]]
    with pytest.raises(KeyError, match="no sample"):
        get_record(store, key + "x")


def test_upgrade_gives_an_old_folder_the_same_parts(folder, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    m = json.loads((old / fmt.MANIFEST_FILE).read_text())
    for s in m["shards"]:
        s.pop("index_sha256"), s.pop("index_bytes")
    m.pop("keys")
    m["format_version"] = 2
    (old / fmt.MANIFEST_FILE).write_text(json.dumps(m))
    shutil.rmtree(old / fmt.INDEX_SHARDS_DIR)
    shutil.rmtree(old / fmt.KEYS_DIR)
    key = pq.read_table(folder / fmt.INDEX_FILE)["key"][5].as_py()
    before = get_record(str(old), key)  # the whole-index fallback
    kw = dict(split="test", layout="tile", schedule="mix", batch_size=4, crop=16, seed=2)
    keys_before = [b["key"] for b in FoundIRStream(str(old), **kw)]
    upgrade(old)
    up = json.loads((old / fmt.MANIFEST_FILE).read_text())
    assert up["format_version"] == 2 and all(s["index_sha256"] for s in up["shards"])  # shards untouched
    for s in up["shards"]:
        assert (old / fmt.index_part(s["path"])).read_bytes() == (folder / fmt.index_part(s["path"])).read_bytes()
    assert get_record(Store.open(str(old)), key) == before
    assert [b["key"] for b in FoundIRStream(str(old), **kw)] == keys_before


def test_a_damaged_part_is_refused(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    sh = json.loads((bad / fmt.MANIFEST_FILE).read_text())["shards"][0]["path"]
    t = pq.read_table(bad / fmt.index_part(sh))
    t = t.set_column(t.schema.get_field_index("lq_offset"), "lq_offset", pc.add(t["lq_offset"], 1))
    pq.write_table(t, bad / fmt.index_part(sh))
    st = FoundIRStream(str(bad), split="test", schedule="mix", batch_size=4, crop=16)
    with pytest.raises(ChecksumError, match="index part of"):
        list(st)


def test_duplicate_keys_are_refused(folder, tmp_path):
    t = pq.read_table(folder / fmt.INDEX_FILE)
    dup = pa.concat_tables([t, t.slice(4, 1)])
    with pytest.raises(DuplicateKeyError, match=t["key"][4].as_py()):
        write_keys(tmp_path, dup)


def test_types_come_from_the_manifest_and_are_checked(folder):
    st = FoundIRStream(str(folder), split="test", schedule="mix", batch_size=4, crop=16)
    names = [taxonomy.TYPES[i].name for i in np.unique(st._code_deg)]
    assert names == ["Blur", "Haze", "Rain"] and st.num_pairs == 21


def test_verify_reports_a_damaged_part_and_passes_a_clean_folder(folder, tmp_path):
    from shard_tools.inspect.verify import verify

    assert verify(folder).ok
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    sh = json.loads((bad / fmt.MANIFEST_FILE).read_text())["shards"][1]["path"]
    part = bad / fmt.index_part(sh)
    part.write_bytes(part.read_bytes()[:-9] + b"012345678")
    found = [(p.path, p.what) for p in verify(bad).problems]
    assert len(found) == 1 and found[0][0] == fmt.index_part(sh) and "sha256" in found[0][1]


def test_parts_do_not_depend_on_the_index_row_order(folder, tmp_path):
    from shard_tools.pack.index_write import write_parts

    t = pq.read_table(folder / fmt.INDEX_FILE)
    m = fmt.Manifest.from_json((folder / fmt.MANIFEST_FILE).read_text())
    shuffled = t.take(pa.array(np.random.default_rng(0).permutation(t.num_rows)))
    write_parts(tmp_path, shuffled, m)  # the sorting path; merge's own order takes the no-copy path
    for s in m.shards:
        assert (tmp_path / fmt.index_part(s.path)).read_bytes() == (folder / fmt.index_part(s.path)).read_bytes()
